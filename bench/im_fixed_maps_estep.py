"""K = 3 initial model (issue 11): the E-step alone with the TRUE maps held fixed (the VDAM step
patched to 0), the issue's three-map set drawn with N particles: ARI of the final pass at a HEALPix
order and an E-step limit.  Run from a scratch folder:

    python bench/im_fixed_maps_estep.py 1500 2 10      # N, --healpix_order, --grad_min_resol (A)
    python bench/im_fixed_maps_estep.py 1500 2 10 run_it150_class00{1,2,3}.mrc [tv]   # a run's maps instead
                                       # (tv: each regularised first: uniform weight, --tv_auto, 150 iterations)
"""
import sys, os, numpy as np
from hpcem.simulate.particles import simulate_dataset
from hpcem.simulate.volumes import pseudo_atomic_volume
from hpcem.simulate.write import write_dataset
import hpcem.algorithms.map_em.initial_model as im
N, order, res = int(sys.argv[1]), sys.argv[2], sys.argv[3]
truths = [pseudo_atomic_volume(64, 3.0, seed=s).astype(np.float64) for s in (21, 22, 23)]
held = truths
if len(sys.argv) > 6:
    from hpcem.io.mrc import read_mrc
    held = [read_mrc(p)[0].astype(np.float64) for p in sys.argv[4:7]]
    if sys.argv[7:] == ["tv"]:
        from hpcem.recon.tv import TVReconstructor, TVSettings
        rec = TVReconstructor(TVSettings(auto=True, iters=150))
        held = [rec.regularise(m, np.ones((64, 64, 33), np.float32), prev=m).astype(np.float64) for m in held]
d = simulate_dataset(n=64, n_particles=N, angpix=3.0, snr=0.05, ctf=True, seed=12, volumes=truths)
ds = "k3s%d" % N
if not os.path.exists(ds):
    write_dataset(d, ds)
orig_init = im.InitialModel.initialise
def init(self):
    orig_init(self)
    self.maps = np.stack(held)
    self._set_refs()
im.InitialModel.initialise = init
orig_upd = im.vdam_update
im.vdam_update = lambda *a: orig_upd(*a[:9], 0.0, *a[10:])    # argument 10 is the step eta
from hpcem.cli.main import main
out = "fx_%s_%s_%d%s" % (order, res, N, "" if held is truths else "_maps" + "".join(sys.argv[7:]))
rc = main(["initial_model", "--i", ds + "/particles.star", "--o", out + "/run", "--particle_diameter", "150", "--ctf",
           "--K", "3", "--random_seed", "1", "--iter", "1", "--healpix_order", order, "--grad_min_resol", res, "--j", "1"])
from hpcem.io.star import read_star
from hpcem.metrics import adjusted_rand_index
c = read_star(out + "/run_it001_data.star")["particles"]["rlnClassNumber"].to_numpy()
print("N %d order %s limit %s A: ARI %.3f" % (N, order, res, adjusted_rand_index(c, d.classes)))
