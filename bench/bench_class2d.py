"""Benchmark of hpcem class2d (MAP-EM) on simulated data.

Defaults follow the issue: 10,000 particles, 64 px, 3 A/px, CTF (defocus 1-3 um), 10 projection classes of three
volumes, SNR 0.05, K = 10, 50, 100, --psi_step 10 --offset_range 5 --offset_step 1
--oversampling 1.  Prints seconds per iteration per K, the coarse_diff2 kernel's GFLOP/s
against a numpy SGEMM measured here, and the adjusted Rand index after --ari_iter iterations
at K = 10.  Shrink with --n, --iter, --Ks.  For the 1 -> 2 rank efficiency run it again under
`OMP_NUM_THREADS=1 mpiexec -n 2` and divide the s/iter figures (particles are split across ranks).

    python bench/bench_class2d.py --n 2000 --iter 2 --Ks 10,50
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from common import sgemm_gflops

from hpcem.metrics import adjusted_rand_index as ari


def kernel_gflops(model, r_cur: int, B: int = 256) -> tuple[float, int]:
    """coarse_diff2 GFLOP/s on the model's sampling at radius r_cur; returns (rate, M)."""
    from hpcem import kernels
    from hpcem.estep import coefficients

    kidx = coefficients(model.parts.shell, r_cur)
    model.space.refs = model.refs
    Rc, _ = model.space.begin(kidx, kidx.size, r_cur + 1.0, r_cur + 1.0)
    phc, _ = model.trans.phases(model.n, kidx)
    B = min(B, model.parts.size)
    X, c = model.parts.batch(np.arange(B), kidx, np.zeros((B, 2)))
    s = np.ones(X.shape, np.float32)
    kernels.coarse_diff2(X, c, s, phc, Rc)
    t = time.perf_counter()
    kernels.coarse_diff2(X, c, s, phc, Rc)
    dt = time.perf_counter() - t
    return kernels.coarse_flops(B, phc.shape[0], Rc.shape[0], len(kidx)) / dt / 1e9, len(kidx)


def iterate(model) -> dict:
    """One iteration as the job driver runs it (E-step, reduce, M-step), timed."""
    t0 = time.time()
    acc = model.e_step()
    t1 = time.time()
    model.reduce(acc)
    st = model.m_step(acc)
    st.update(t_estep=t1 - t0, t_iter=time.time() - t0, mean_nsig=st["mean_nsig"])
    return st


def main(argv=None):
    from hpcem.algorithms.map_em.class2d import Class2D, Class2DConfig
    from hpcem.io.particles import ParticleSet
    from hpcem.parallel import get_comm
    from hpcem.simulate.particles import simulate_dataset

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10000, help="particles")
    p.add_argument("--box", type=int, default=64)
    p.add_argument("--Ks", default="10,50,100")
    p.add_argument("--iter", type=int, default=3, help="timed iterations per K")
    p.add_argument("--ari_iter", type=int, default=5, help="iterations for the ARI at K=10 (0: skip)")
    p.add_argument("--psi_step", type=float, default=10.0)
    p.add_argument("--offset_range", type=float, default=5.0)
    p.add_argument("--offset_step", type=float, default=1.0)
    a = p.parse_args(argv)
    comm = get_comm()
    say = print if comm.rank == 0 else (lambda *x, **k: None)   # rank 0 reports

    t = time.time()
    d = simulate_dataset(n=a.box, n_particles=a.n, mode="2d", n_views=10, n_volumes=3, snr=0.05, ctf=True,
                         defocus=(10000.0, 30000.0),
                         seed=7)
    c = d.ctf
    one = lambda v: float(np.atleast_1d(v)[0])  # noqa: E731
    ps = ParticleSet.from_arrays(d.images, d.angpix, defocus_u=c["defocus_u"], defocus_v=c["defocus_v"],
                                 defocus_angle=c["defocus_angle"], voltage=one(c["voltage"]), cs=one(c["cs"]),
                                 amp_contrast=one(c["amp_contrast"]))
    say("simulated %d particles at %d px in %.1f s" % (a.n, a.box, time.time() - t))
    sg = sgemm_gflops()
    say("numpy SGEMM: %.1f GFLOP/s" % sg)

    rows = []
    for K in [int(k) for k in a.Ks.split(",")]:
        iters = max(a.iter, a.ari_iter) if K == 10 else a.iter
        cfg = Class2DConfig(K=K, iters=iters, particle_diameter=0.8 * a.box * d.angpix, ctf=True,
                            psi_step=a.psi_step, offset_range=a.offset_range, offset_step=a.offset_step,
                            oversampling=1, random_seed=1)
        m = Class2D(ps, cfg, comm, log=lambda *x: None)
        m.prepare()
        m.initialise()
        times, score = [], float("nan")
        for it in range(iters):
            st = iterate(m)
            times.append(st["t_iter"])
            say("K=%d it %d: %.1f s (E-step %.1f s), r_cur %d, nsig %.0f" % (
                K, it + 1, st["t_iter"], st["t_estep"], st["r_cur"], st["mean_nsig"]), flush=True)
            if K == 10 and it + 1 == a.ari_iter:
                score = ari(m.state()["results"]["class"], d.classes)
        gf, M = kernel_gflops(m, r_cur=a.box // 4)
        rows.append((K, np.mean(times[:a.iter]), np.mean(times[1:a.iter]) if a.iter > 1 else times[0], gf, M,
                     score))

    say("\n%5s %12s %16s %14s %6s %10s %8s" % ("K", "s/iter", "s/iter (it>=2)", "diff2 GFLOP/s", "M",
                                                "of SGEMM", "ARI"))
    for K, tm, tm2, gf, M, score in rows:
        say("%5d %12.1f %16.1f %14.1f %6d %9.0f%% %8s" % (K, tm, tm2, gf, M, 100 * gf / sg,
                                                        "%.3f" % score if np.isfinite(score) else "-"))
    k10 = [r for r in rows if r[0] == 10]
    if k10:
        say("headline: K=10 %.1f s/iteration (RELION 5 CPU reference: ~200 s), ARI %.3f, kernel at %.0f%% of SGEMM"
              % (k10[0][1], k10[0][5], 100 * k10[0][3] / sg))


if __name__ == "__main__":
    main()
