"""python evit.py DATA RUNDIR [it ...]: per written iteration (default every run_itNNN_data.star, then the final
run_data.star): last-visit ARI, each class's FSC 0.5 to the true map after align_maps, particles / junk per class,
junk kinds of each class for the final one."""
import glob, os, re, sys
import numpy as np
from hpcem.core.align3d import align_maps, apply_alignment
from hpcem.core.fsc import fsc, resolution_at
from hpcem.io.mrc import read_mrc
from hpcem.io.star import read_star
from hpcem.metrics import adjusted_rand_index

data, run = sys.argv[1], sys.argv[2]
t = np.load(os.path.join(data, "truth.npz"))
truth, classes, kind = t["map"], t["classes"], t["kind"]


def res(vol):
    al = align_maps(truth, vol)
    return resolution_at(fsc(truth, apply_alignment(vol, al))[1], 0.5, truth.shape[0], 3.75)


def one(prefix, label, kinds=False):
    c = read_star(prefix + "_data.star")["particles"]["rlnClassNumber"].to_numpy()
    K = 3
    r = [res(read_mrc(prefix + "_class%03d.mrc" % k)[0].astype(np.float64)) for k in range(1, K + 1)]
    npart = [int(np.sum((c == k) & (classes > 0))) for k in range(1, K + 1)]
    njunk = [int(np.sum((c == k) & (classes == 0))) for k in range(1, K + 1)]
    km = int(np.argmax(npart))
    print("%-6s ARI %.3f  FSC0.5 %s A (map class %d: %.1f A)  particles %s  junk %s" % (
        label, adjusted_rand_index(c, classes), " / ".join("%.1f" % x for x in r), km + 1, r[km], npart, njunk),
        flush=True)
    if kinds:
        for k in range(1, K + 1):
            ks, n = np.unique(kind[c == k], return_counts=True)
            print("   class %d: %s" % (k, ", ".join("%s %d" % kv for kv in zip(ks, n))))


its = [int(a) for a in sys.argv[3:]] or sorted(int(re.search(r"_it(\d+)_data", f).group(1))
                                          for f in glob.glob(os.path.join(run, "run_it*_data.star")))
for it in its:
    one(os.path.join(run, "run_it%03d" % it), "it %d" % it)
if os.path.exists(os.path.join(run, "run_data.star")):
    one(os.path.join(run, "run"), "final", kinds=True)
