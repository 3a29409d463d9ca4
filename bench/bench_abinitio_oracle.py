"""The class ceiling of ab initio's own quadrature (issue 12, K > 1): the E-step of `hpcem abinitio`
(:class:`hpcem.algorithms.sagd.model.SagdModel`, the full grid, oversampling as the job runs it)
with the TRUE maps held fixed, at a resolution (Fourier radius) and a quadrature, on simulated
particles of several maps; prints the class ARI and the median pose error per quadrature.  The
noise is the residual power of a first pass at the true maps (per optics group and shell).

    python bench/bench_abinitio_oracle.py --dir /tmp/abo --N 300                      # K = 3, 64 px, SNR 0.05
    python bench/bench_abinitio_oracle.py --dir /tmp/abo2 --set two --N 800 --orders seed,2
    python bench/bench_abinitio_oracle.py --dir /tmp/abo3 --set junk --N 800 --res 9.2   # map + 30% junk
    python bench/bench_abinitio_oracle.py --dir /tmp/abo4 --set junk --N 800 --res 9.2 --junk_maps BLOB.mrc \
        --junk_kinds offcentre --offcentre 0.1,0.5        # where a misplaced particle stops being one

Sets: ``three`` (the gated K = 3 test's maps: pseudo_atomic_volume seeds 21-23, 64 px, 3 A/px,
SNR 0.05, simulate_dataset seed 12), ``two`` (the gated K = 2 test's: seeds 1-2, 32 px, 3.75 A/px,
SNR 1, dataset seed 5), ``junk`` (the gated map + junk test's: seed 1 of ``two`` with 30% of the particles
replaced by junk, :func:`hpcem.simulate.sets.small_set`; the second class map is empty, the
best a junk class can do for empty picks and the junk that is no projection of the map; the classes
of each junk kind are printed, and those of the misplaced particles by their distance from the
centre).  ``--orders``: ``seed`` is the seed's quadrature at the resolution
(:func:`hpcem.algorithms.sagd.schedule.quadrature`); an integer is that HEALPix order with the
in-plane step of the same angular spacing.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from hpcem.simulate import sets as small

_SMALL = dict(n=small.BOX, angpix=small.ANGPIX, snr=small.SNR, data_seed=small.SEED, diameter=96.0)
SETS = {"three": dict(n=64, angpix=3.0, snr=0.05, seeds=(21, 22, 23), data_seed=12, diameter=150.0),
        "two": dict(_SMALL, seeds=(1, 2)),       # hpcem.simulate.sets.small_set's (the gated K = 2 test's)
        "junk": dict(_SMALL, seeds=(1,), junk=0.3)}


def make_set(a, s):
    from hpcem.simulate.particles import simulate_dataset
    from hpcem.simulate.volumes import pseudo_atomic_volume
    from hpcem.simulate.write import write_dataset

    if a.set != "three":
        oc = tuple(float(x) for x in a.offcentre.split(",")) if a.offcentre else None
        d, truths = small.small_set(len(s["seeds"]), s.get("junk", 0.0), a.N, offcentre=oc,
                              junk_kinds=a.junk_kinds.split(",") if a.junk_kinds else None)
    else:
        truths = [pseudo_atomic_volume(s["n"], s["angpix"], seed=k).astype(np.float64) for k in s["seeds"]]
        d = simulate_dataset(n=s["n"], n_particles=a.N, angpix=s["angpix"], snr=s["snr"], ctf=True,
                             seed=s["data_seed"], volumes=truths, n_classes=len(truths), model="atoms")
    if s.get("junk") and not a.no_empty:
        truths = truths + [np.zeros_like(truths[0])]
    os.makedirs(a.dir, exist_ok=True)
    write_dataset(d, a.dir)
    return d, truths


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--set", default="three", choices=sorted(SETS))
    ap.add_argument("--N", type=int, default=300)
    ap.add_argument("--res", type=float, default=12.0, help="resolution (A) of the E-step (abinitio's --max_res)")
    ap.add_argument("--orders", default="seed", help="comma-separated: seed or HEALPix orders")
    ap.add_argument("--maxsig", type=int, default=300)
    ap.add_argument("--junk_maps", default="", help="set junk: comma-separated MRC files held fixed as further "
                                                    "junk classes (e.g. a run's junk class map)")
    ap.add_argument("--offcentre", default="", help="set junk: the off-centre kind's range 'lo,hi' (box fractions; "
                                                    "default hpcem.simulate.sets.small_set's)")
    ap.add_argument("--no_empty", action="store_true", help="set junk: no empty class (only the --junk_maps)")
    ap.add_argument("--junk_kinds", default="", help="set junk: comma-separated kinds (default every kind)")
    a = ap.parse_args(argv)
    from hpcem.algorithms.sagd.config import AbInitioConfig
    from hpcem.algorithms.sagd.model import SagdModel
    from hpcem.algorithms.sagd.schedule import Quadrature, quadrature
    from hpcem.cli.inputs import read_particles
    from hpcem.core.euler import angular_distance, euler_to_matrix
    from hpcem.core.sampling import angular_step
    from hpcem.estep import FullGrid
    from hpcem.metrics import adjusted_rand_index
    from hpcem.parallel.comm import SerialComm

    s = SETS[a.set]
    d, truths = make_set(a, s)
    if a.junk_maps:
        from hpcem.io.mrc import read_mrc

        truths = truths + [read_mrc(f)[0].astype(np.float64) for f in a.junk_maps.split(",")]
    K = len(truths)
    ps = read_particles(os.path.join(a.dir, "particles.star"), ctf=True, diameter=s["diameter"])
    cfg = AbInitioConfig(K=K, ctf=True, particle_diameter=s["diameter"], maxsig=a.maxsig, noise_priorw=1e-3)
    m = SagdModel(ps, cfg, SerialComm())
    m.load()
    r_f = min(s["n"] * s["angpix"] / a.res, s["n"] / 2.0)
    r = int(np.floor(r_f + 1e-9))
    V = np.stack(truths)
    allp = np.arange(a.N)
    seed_q = quadrature(r_f, m.radius_px)
    # the noise: the residual power of a pass at the true maps (order 3), twice (first against the images' power)
    m.S, m.C = np.zeros_like(m.sigma0), np.zeros_like(m.sigma0)
    sig2 = m.sigma0
    noise_q = Quadrature(3, angular_step(3), seed_q.t_step)
    for _ in range(2):
        sums, _ = m.e_step(V, r, noise_q, allp, sig2, FullGrid(), accumulate=True)
        m.S[:], m.C[:] = 0.0, 0.0
        m.update_noise(sums.noise, m.group_counts(allp), r, allp)
        sig2 = m.sigma2()
    At = euler_to_matrix(d.rot, d.tilt, d.psi)
    print("set %s: %d particles, %d px, SNR %g, K %d, E-step at %.1f A (Fourier radius %.2f); seed's quadrature: %s"
          % (a.set, a.N, s["n"], s["snr"], K, a.res, r_f, seed_q.describe()))
    for o in a.orders.split(","):
        q = seed_q if o == "seed" else Quadrature(int(o), angular_step(int(o)), seed_q.t_step)
        t0 = time.perf_counter()
        m.e_step(V, r, q, allp, sig2, FullGrid(), accumulate=False, record=True)
        c = np.asarray(m.res["class"], int)
        A = euler_to_matrix(m.res["rot"], m.res["tilt"], m.res["psi"])
        err = angular_distance(A, At)
        print("%-40s ARI %.3f  median pose error %.1f deg, beyond 20 deg %.1f%%  (%.0f s)"
              % (q.describe(), adjusted_rand_index(c, d.classes), np.median(err), 100 * np.mean(err > 20),
                 time.perf_counter() - t0), flush=True)
        kinds = d.meta.get("junk_kind")
        if kinds:
            kk = np.array([kinds.get(i, "particle") for i in range(a.N)])
            print("   classes per kind: " + ", ".join("%s %s" % (k, np.bincount(c[kk == k], minlength=K + 1)[1:].tolist())
                                                     for k in sorted(set(kk))), flush=True)
            _by_shift(c, d.meta.get("junk_shift", {}), K)


def _by_shift(c, shift, K):
    """The classes of the misplaced particles (off-centre, cut) per 1-px bin of their distance from the
    centre."""
    if not shift:
        return
    idx = np.array(sorted(shift))
    r = np.array([shift[i] for i in idx])
    for lo in range(int(r.min()), int(np.ceil(r.max()))):
        m = (r >= lo) & (r < lo + 1)
        if m.any():
            counts = np.bincount(c[idx[m]], minlength=K + 1)[1:].tolist()
            print("   shifted %2d-%2d px: classes %s" % (lo, lo + 1, counts))


if __name__ == "__main__":
    main()
