"""K = 3 initial model on a mixture of three pseudo-atomic maps (issue 11): the classes' ARI at
every --grad_write_iter mini-batch, the FSC 0.5 of each class against each true map after
superposition, and the ceiling of the classification: the maximum-likelihood class of every
particle with the true maps at its TRUE pose (white noise), per low-pass of the maps.

    python bench/bench_im_three_maps.py --dir /tmp/k3 --N 2400 --n 40 --snr 0.1 --iter 100   # small
    python bench/bench_im_three_maps.py --dir /tmp/k3f --N 6000 --n 64 --snr 0.05 --iter 200 # the issue's
    # the early phase only, against the plain run: --seed 1 --write 10 --stop_after 80 --no_ceiling [--flags "--tv --tv_auto"]

Data: maps pseudo_atomic_volume(seed 21, 22, 23), 3 A/px, CTF, equal thirds (simulate_dataset seed 12).
--SNR is the set's mean; map 22 has about half the mass of the others, so its particles are at two
thirds of it (0.033 in a set at 0.05), where K = 1 fails on its own particles (DESIGN_NOTES).  With
--equal_signal the maps are scaled to equal projected signal, so that every map's particles are at --snr.
"""
from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import time

import numpy as np


def ceiling(d, truths, lowpass_A):
    """ARI of the ML class with the true maps (low-passed to ``lowpass_A``, or full) at the true poses."""
    from hpcem.core.euler import euler_to_matrix
    from hpcem.core.filters import lowpass
    from hpcem.metrics import adjusted_rand_index
    from hpcem.simulate.particles import simulate_projections

    R = euler_to_matrix(d.rot, d.tilt, d.psi)
    vols = truths if lowpass_A is None else [lowpass(v, lowpass_A, 3.0, dims=3) for v in truths]
    ll = [-((d.images.astype(np.float64) - simulate_projections([v], R, np.zeros(len(R), int), d.origins_A / 3.0,
                                                               d.ctf, 3.0)) ** 2).sum((1, 2)) for v in vols]
    return adjusted_rand_index(np.argmax(np.array(ll), 0) + 1, d.classes)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--N", type=int, default=2400)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--snr", type=float, default=0.1)
    ap.add_argument("--iter", type=int, default=100)
    ap.add_argument("--j", type=int, default=1)
    ap.add_argument("--flags", default="", help="extra initial_model flags")
    ap.add_argument("--seed", type=int, default=0, help="--random_seed of initial_model")
    ap.add_argument("--write", type=int, default=0, help="--grad_write_iter (0: --iter / 10)")
    ap.add_argument("--stop_after", type=int, default=0, help="stop the run once this mini-batch is written")
    ap.add_argument("--no_ceiling", action="store_true", help="skip the true-pose ceiling")
    ap.add_argument("--name", default="K3", help="output folder in --dir")
    ap.add_argument("--equal_signal", action="store_true", help="every map's particles at --snr (see above)")
    a = ap.parse_args(argv)
    from hpcem.core.align3d import aligned_resolution
    from hpcem.io.mrc import read_mrc
    from hpcem.io.star import read_star
    from hpcem.metrics import adjusted_rand_index
    from hpcem.simulate.particles import equal_signal_volumes, simulate_dataset
    from hpcem.simulate.volumes import pseudo_atomic_volume
    from hpcem.simulate.write import write_dataset

    os.makedirs(a.dir, exist_ok=True)
    truths = [pseudo_atomic_volume(a.n, 3.0, seed=s).astype(np.float64) for s in (21, 22, 23)]
    if a.equal_signal:
        truths = equal_signal_volumes(truths, 3.0)
    d = simulate_dataset(n=a.n, n_particles=a.N, angpix=3.0, snr=a.snr, ctf=True, seed=12, volumes=truths)
    star = os.path.join(a.dir, "particles.star")
    if not os.path.exists(star):
        write_dataset(d, a.dir)
    if not a.no_ceiling:
        print("ceiling (true maps, true poses): " + ", ".join(
            "%s ARI %.3f" % ("full" if r is None else "%g A" % r, ceiling(d, truths, r)) for r in (None, 20.0)),
            flush=True)
    out = os.path.join(a.dir, a.name)
    t0 = time.perf_counter()
    cmd = ["initial_model", "--i", star, "--o", out + "/run", "--particle_diameter", round(a.n * 3.0 * 150 / 192),
           "--ctf", "--K", 3, "--iter", a.iter, "--grad_write_iter", a.write or max(a.iter // 10, 1), "--j", a.j,
           "--random_seed", a.seed]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "log.txt"), "w") as log:
        p = subprocess.Popen([sys.executable, "-m", "hpcem.cli.main"] + [str(x) for x in cmd] + a.flags.split(),
                             stdout=log, stderr=subprocess.STDOUT, text=True)
        stop = os.path.join(out, "run_it%03d_data.star" % a.stop_after)
        while p.poll() is None and not (a.stop_after and os.path.exists(stop)):
            time.sleep(2)
        if p.poll() is None:
            time.sleep(5)      # the rest of that mini-batch's files
            p.kill()
            p.wait()
        elif p.returncode:
            sys.exit(open(log.name).read()[-4000:])
    print("initial_model K = 3 %s: %.1f s" % (a.flags, time.perf_counter() - t0))
    for f in sorted(glob.glob(out + "/run_it*_data.star")):
        c = read_star(f)["particles"]["rlnClassNumber"].to_numpy()
        tab = [[int(np.sum((c == k + 1) & (d.classes == t + 1))) for t in range(3)] for k in range(3)]
        print("%s ARI %.3f  class x truth %s" % (os.path.basename(f)[:9], adjusted_rand_index(c, d.classes), tab))
    if not os.path.exists(os.path.join(out, "initial_model_class001.mrc")):
        return 0
    maps = [read_mrc(os.path.join(out, "initial_model_class%03d.mrc" % (k + 1)))[0].astype(np.float64)
            for k in range(3)]
    for t, truth in enumerate(truths):
        res = [aligned_resolution(truth, m, 3.0)[0] for m in maps]
        print("truth %d: FSC 0.5 of classes 1-3 after --align %s A" % (t + 1, np.round(res, 1)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
