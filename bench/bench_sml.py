"""Benchmark of the GTM (ROME SML) classifier: wall time per iteration against K, the
per-pixel solve kernel's throughput, and GFLOP/s against a measured SGEMM/DGEMM rate.

    python bench/bench_sml.py                       # 20,000 particles, 64 px, K = 100, 300, 1000
    python bench/bench_sml.py --n 4000 --K 100,300  # reduced
    mpiexec -n 2 python bench/bench_sml.py --n 4000 # pixel split over 2 ranks (rank 0 prints)
    python bench/bench_sml.py --n 2000 --class2d    # + class2d at K = 100, 300 (K = 1000 extrapolated)
    python bench/bench_sml.py --K 100,300,1000 --class2d --class2d_iters 2 --class2d_offset_range 3
                                                    # the issue's comparison on the same 20,000 particles

Prints one table; its last line is the headline: growth of the iteration time from the
smallest to the largest K (exponent of a power-law fit).
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np


def gemm_rate(dtype, size=2048, reps=3) -> float:
    """GFLOP/s of scipy's BLAS (the library the kernels call) on a size^3 product."""
    from scipy.linalg import blas

    a = np.asfortranarray(np.random.default_rng(0).random((size, size)).astype(dtype))
    f = blas.sgemm if dtype == np.float32 else blas.dgemm
    f(1.0, a, a)
    t = time.perf_counter()
    for _ in range(reps):
        f(1.0, a, a)
    return 2.0 * size ** 3 * reps / (time.perf_counter() - t) / 1e9


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20000, help="particles")
    p.add_argument("--box", type=int, default=64)
    p.add_argument("--K", default="100,300,1000", help="comma-separated class counts")
    p.add_argument("--iters", type=int, default=2, help="timed iterations per K")
    p.add_argument("--j", type=int, default=0, help="OpenMP threads")
    p.add_argument("--scaling", action="store_true",
                   help="run this benchmark (GTM part) on 1 rank and under mpiexec -n 2, one OpenMP thread "
                        "per rank, and print the 1 -> 2 rank efficiency per K")
    add_class2d_flags(p)
    args = p.parse_args(argv)
    if args.scaling:
        return scaling(args)

    from hpcem import kernels
    from hpcem.algorithms.rome.gtm import GTM, GTMConfig, GTMState
    from hpcem.kernels import gtm_accumulate, gtm_solve, gtm_solve_flops
    from hpcem.io.particles import ParticleSet
    from hpcem.parallel import get_comm
    from hpcem.simulate import simulate_dataset

    comm = get_comm()
    if args.j > 0:
        kernels.set_threads(args.j)
    say = (lambda *m: print(*m, flush=True)) if comm.rank == 0 else (lambda *m: None)
    Ks = [int(k) for k in args.K.split(",")]
    t = time.perf_counter()
    sim = simulate_dataset(n=args.box, n_particles=args.n, mode="2d", n_views=30, n_volumes=3, snr=0.05,
                           ctf=True, seed=7)
    ps = ParticleSet.from_arrays(sim.images, sim.angpix, defocus_u=sim.ctf["defocus_u"],
                                 defocus_v=sim.ctf["defocus_v"], defocus_angle=sim.ctf["defocus_angle"],
                                 rot=sim.rot, tilt=sim.tilt, psi=sim.psi, origins=sim.origins_A)
    say("simulated %d particles at %d px in %.1f s; %d rank(s), %d OpenMP threads" % (
        args.n, args.box, time.perf_counter() - t, comm.size, kernels.max_threads()))
    sg, dg = gemm_rate(np.float32), gemm_rate(np.float64)
    say("BLAS (scipy) SGEMM %.1f GFLOP/s, DGEMM %.1f GFLOP/s (2048^3)" % (sg, dg))

    rows = []
    loaded = None
    for K in Ks:
        cfg = GTMConfig(K=K, iters=args.iters, ctf=True)
        model = GTM(ps, comm, cfg)
        if loaded is None:
            t = time.perf_counter()
            model.load()
            t_load = time.perf_counter() - t
            loaded = (model.Z, model.a, model.scale)
            say("aligned + transformed + CTF'd (this rank's %d of %d coefficients) in %.1f s" % (
                model.d1 - model.d0, model.D, t_load))
        model.Z, model.a, model.scale = loaded
        st = model.initialise()
        Dl = model.d1 - model.d0
        times = {"E GEMM+allreduce+resp": 0.0, "M R^T Z": 0.0, "M solve": 0.0}
        t_it = time.perf_counter()
        for _ in range(args.iters):
            t = time.perf_counter()
            R, logZ, rdelta, kmax, rmax, ll = model.e_step(st)
            times["E GEMM+allreduce+resp"] += time.perf_counter() - t
            # the M-step of GTM.m_step, timed in its two parts
            t = time.perf_counter()
            beta = ps.n * model.D_eff / float(rdelta.sum())
            RZ = gtm_accumulate(R, model.Z)
            times["M R^T Z"] += time.perf_counter() - t
            t = time.perf_counter()
            H = (RZ[:, 0:2 * Dl:2] + 1j * RZ[:, 1:2 * Dl:2]) / model.h
            G = RZ[:, 2 * Dl:] / model.h
            W = gtm_solve(model.Phi, np.ascontiguousarray(G, dtype=np.float32),
                          np.ascontiguousarray(H, dtype=np.complex64), cfg.alpha / beta)
            st = GTMState(W=W, beta=beta, iteration=st.iteration + 1)
            times["M solve"] += time.perf_counter() - t
        per_it = (time.perf_counter() - t_it) / args.iters
        t_acc = times["M R^T Z"] / args.iters
        t_solve = times["M solve"] / args.iters
        e_flops = 2.0 * ps.n * K * 3 * Dl
        rows.append((K, model.M, per_it, times["E GEMM+allreduce+resp"] / args.iters, t_acc, t_solve,
                     e_flops / (times["E GEMM+allreduce+resp"] / args.iters) / 1e9))
        # solve kernel alone
        rng = np.random.default_rng(0)
        G = rng.random((K, Dl)).astype(np.float32)
        H = (rng.normal(size=(K, Dl)) + 1j * rng.normal(size=(K, Dl))).astype(np.complex64)
        gtm_solve(model.Phi, G, H, 0.1)
        t = time.perf_counter()
        gtm_solve(model.Phi, G, H, 0.1)
        ts = time.perf_counter() - t
        rows[-1] += (Dl / ts, gtm_solve_flops(K, model.M, Dl) / ts / 1e9)

    say("")
    say("%6s %4s %10s %12s %10s %10s %9s %12s %10s" % (
        "K", "M", "s/iter", "E-step s", "R^TZ s", "solve s", "E GF/s", "solves/s", "solve GF/s"))
    for K, M, it, te, ta, ts, egf, sps, sgf in rows:
        say("%6d %4d %10.3f %12.3f %10.3f %10.3f %9.1f %12.3g %10.1f" % (K, M, it, te, ta, ts, egf, sps, sgf))
    say("reference: SGEMM %.1f GFLOP/s, DGEMM %.1f GFLOP/s (E-step runs in float32, solve in float64)" % (sg, dg))
    if len(rows) > 1:
        k0, k1 = rows[0][0], rows[-1][0]
        ratio = rows[-1][2] / rows[0][2]
        say("headline: time per iteration grows %.2fx from K=%d to K=%d (exponent %.2f)" % (
            ratio, k0, k1, math.log(ratio) / math.log(k1 / k0)))
    if args.class2d:
        class2d_comparison(args, ps, sim, comm, say, {r[0]: r[2] for r in rows})
    return 0



# ----------------------------------------------------------------------------- rank scaling
def scaling(args) -> int:
    """GTM seconds per iteration on 1 rank and on 2 ranks (pixels split), 1 thread each."""
    import os
    import re
    import subprocess
    import sys

    base = [sys.executable, os.path.abspath(__file__), "--n", str(args.n), "--box", str(args.box), "--K", args.K,
            "--iters", str(args.iters), "--j", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    per = {}
    for nr in (1, 2):
        cmd = base if nr == 1 else ["mpiexec", "-n", "2"] + base
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if p.returncode:
            print(p.stdout[-2000:], p.stderr[-2000:])
            return 1
        per[nr] = {int(m.group(1)): float(m.group(2))
                   for m in re.finditer(r"^\s*(\d+)\s+\d+\s+([0-9.]+)\s", p.stdout, re.M)}
        print("%d rank(s), 1 thread each: %s" % (nr, ", ".join("K=%d %.3f s/iter" % kv for kv in sorted(per[nr].items()))),
              flush=True)
    for K in sorted(per[1]):
        if K in per[2]:
            print("headline: K=%d, 1 -> 2 ranks: %.3f -> %.3f s/iter, speed-up %.2f, efficiency %.2f" % (
                K, per[1][K], per[2][K], per[1][K] / per[2][K], per[1][K] / (2 * per[2][K])))
    return 0


# ----------------------------------------------------------------------------- class2d comparison
def add_class2d_flags(p) -> None:
    g = p.add_argument_group("comparison with class2d (MAP-EM) on the same particles")
    g.add_argument("--class2d", action="store_true", help="also time class2d and compare purity")
    g.add_argument("--class2d_K", default="100,300", help="class2d class counts (K = 1000 is extrapolated)")
    g.add_argument("--class2d_offset_range", type=float, default=5.0,
                   help="class2d translation search range in pixels (step 1; RELION's default 5)")
    g.add_argument("--class2d_iters", type=int, default=3,
                   help="class2d iterations per K; iteration 1 (all hypotheses significant) is not timed")
    g.add_argument("--purity_iters", type=int, default=15,
                   help="GTM iterations for the purity comparison (class2d purity is after --class2d_iters)")


def _powerlaw(xs, ys, x):
    """Least-squares power law through (xs, ys) evaluated at x; returns (value, exponent)."""
    lx, ly = np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float))
    if len(xs) < 2:
        return float(ys[-1]) * x / xs[-1], 1.0
    b, a = np.polyfit(lx, ly, 1)
    return float(np.exp(a + b * math.log(x))), float(b)


def class2d_comparison(args, ps, sim, comm, say, gtm_s_per_iter: dict) -> None:
    """class2d on the same particles (poses dropped: it aligns them itself) at --class2d_K:
    seconds per iteration, extrapolation to K = 1000, GTM/class2d ratio, purity of both
    against the simulated (volume, view) label."""
    import re
    import tempfile

    from hpcem.algorithms.map_em.class2d import Class2D, Class2DConfig
    from hpcem.algorithms.rome.gtm import GTMConfig
    from hpcem.algorithms.rome.sml import run_sml
    from hpcem.io.particles import ParticleSet
    from hpcem.metrics import purity
    from hpcem.runtime.driver import run_iterations
    from hpcem.runtime.output import OutputRoot

    label = np.asarray(sim.classes)
    raw = ParticleSet.from_arrays(sim.images, sim.angpix, defocus_u=sim.ctf["defocus_u"],
                                  defocus_v=sim.ctf["defocus_v"], defocus_angle=sim.ctf["defocus_angle"])
    gtm_shell = args.box / 4.0
    ini_high = args.box * sim.angpix / gtm_shell    # class2d starts at the GTM's resolution limit
    Kc = [int(k) for k in args.class2d_K.split(",")]
    rows = []
    for K in Kc:
        times = []

        def grab(*m):
            hit = re.search(r"\(([0-9.]+) s, E-step", " ".join(str(x) for x in m))
            if hit:
                times.append(float(hit.group(1)))

        cfg = Class2DConfig(K=K, iters=args.class2d_iters, ctf=True, psi_step=10.0,
                            offset_range=args.class2d_offset_range,
                            offset_step=1.0, ini_high=ini_high, particle_diameter=0.8 * args.box * sim.angpix)
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            model = run_iterations(Class2D(raw, cfg, comm, grab), OutputRoot(tmp), comm, grab)
            wall = time.perf_counter() - t
            res = model.state()["results"]
        timed = times[1:] if len(times) > 1 else times
        per_it = float(np.median(timed)) if timed else wall / max(args.class2d_iters, 1)
        p_c2d = purity(res["class"], label)
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            g = run_sml(ps, comm, GTMConfig(K=K, iters=args.purity_iters, ctf=True), OutputRoot(tmp),
                        log=lambda *m: None)
            t_g = time.perf_counter() - t
        p_gtm = purity(g["classes"], label)
        rows.append((K, per_it, p_c2d, p_gtm, t_g / max(args.purity_iters, 1)))
    say("")
    say("class2d on the same %d particles (%d px, poses dropped; psi 10 deg, offsets +/-%g px step 1, "
        "oversampling 1; resolution limit %.1f shells = the GTM's), purity against the %d (volume, view) labels"
        % (ps.n, args.box, args.class2d_offset_range, gtm_shell, len(np.unique(label))))
    say("%6s %14s %14s %10s %16s %12s" % ("K", "class2d s/it", "GTM s/it", "ratio", "class2d purity",
                                          "GTM purity"))
    for K, c, pc, pg, tg in rows:
        g = gtm_s_per_iter.get(K, tg)
        say("%6d %14.2f %14.3f %10.1f %16.3f %12.3f" % (K, c, g, c / g, pc, pg))
    say("(GTM on the simulated poses, i.e. aligned input; class2d aligns the particles itself; "
        "class2d purity after %d iterations, GTM purity after %d iterations from its PCA start; "
        "class2d time: median of iterations 2..%d)" % (args.class2d_iters, args.purity_iters, args.class2d_iters))
    K1 = 1000
    c1000, bc = _powerlaw([r[0] for r in rows], [r[1] for r in rows], K1)
    if K1 in gtm_s_per_iter:
        g1000, how = gtm_s_per_iter[K1], "measured"
    else:
        ks = sorted(gtm_s_per_iter)
        g1000, bg = _powerlaw(ks, [gtm_s_per_iter[k] for k in ks], K1)
        how = "EXTRAPOLATED (exponent %.2f)" % bg
    say("class2d at K=1000: %.1f s/iter EXTRAPOLATED from K=%s (power law, exponent %.2f), not measured"
        % (c1000, ",".join(str(r[0]) for r in rows), bc))
    say("GTM at K=1000: %.3f s/iter %s" % (g1000, how))
    say("headline: per iteration at K=1000, GTM is %.1fx faster than class2d (target >= 20x; class2d "
        "extrapolated)" % (c1000 / g1000))


if __name__ == "__main__":
    raise SystemExit(main())
