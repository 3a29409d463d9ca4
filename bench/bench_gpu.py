"""GPU against CPU (issue 16): class2d, refine3d and sml seconds per iteration on one CUDA device
and on this machine's CPU cores, in one run, and each kernel's achieved rate against the device's
measured SGEMM rate and copy bandwidth.

Needs cupy, hpcem._cuda (built where nvcc was found at install time) and a CUDA device.  Without
them the script says which is missing and exits 0 having measured nothing.  ``--emulate`` runs the
same code on the emulated GPU of hpcem.kernels.emulated (the CPU kernels behind the device code
path: a check of this script, its timings say nothing about a GPU).

Defaults follow the issue: class2d 10,000 particles at 64 px, K = 10/50/100 (psi_step 10,
offset_range 5, step 1, oversampling 1); refine3d the first 3 iterations; sml K = 1000.  Targets:
class2d K = 100 at least 10x faster on the GPU than on the CPU cores; coarse_diff2 (the
marginalisation's GEMMs) at >= 50% of the device's SGEMM rate.

    python bench/bench_gpu.py                                   # the device machine
    python bench/bench_gpu.py --emulate --n 300 --box 32 --Ks 4 --gtm_K 16 --iter 1   # a check here
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import sgemm_gflops  # noqa: E402


def sync(dev):
    if dev.gpu and hasattr(dev.xp, "cuda"):
        dev.xp.cuda.Device().synchronize()


def timed(dev, fn, reps=3) -> float:
    fn()
    sync(dev)
    best = np.inf
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync(dev)
        best = min(best, time.perf_counter() - t)
    return best


def device_rates(dev, m=4096) -> dict:
    """The device's SGEMM GFLOP/s and device copy / host->device GB/s (the ceilings)."""
    xp = dev.xp
    a = xp.asarray(np.random.default_rng(0).standard_normal((m, m), dtype=np.float32))
    sg = 2.0 * m ** 3 / timed(dev, lambda: a @ a) / 1e9
    big = xp.zeros(64 << 20, dtype=np.float32)          # 256 MiB
    copy = 2 * big.nbytes / timed(dev, lambda: big.copy()) / 1e9
    host = np.ones(64 << 20, np.float32)
    h2d = host.nbytes / timed(dev, lambda: xp.asarray(host)) / 1e9
    return {"sgemm": sg, "copy": copy, "h2d": h2d}


def kernel_rates(dev, rng, B=512, T=25, J=2000, M=1200, N=20000, K=1000, D=6000, n=128, S=2000) -> list:
    """(kernel, achieved rate, unit) of the hot kernels on device arrays of realistic shapes."""
    from hpcem import kernels

    put = dev.put
    cplx = lambda *s: (rng.standard_normal(s) + 1j * rng.standard_normal(s)).astype(np.complex64)  # noqa: E731
    X, R, ph = put(cplx(B, M)), put(cplx(J, M)), put(cplx(T, M))
    c, s = put(np.ones((B, M), np.float32)), put(np.ones((B, M), np.float32))
    t = timed(dev, lambda: kernels.coarse_diff2(X, c, s, ph, R))
    out = [("coarse_diff2 (marginalisation GEMMs)", kernels.coarse_flops(B, T, J, M) / t / 1e9, "GFLOP/s")]
    Z = put(rng.standard_normal((N, 3 * D // 10)).astype(np.float32))
    Y = put(rng.standard_normal((K, 3 * D // 10)).astype(np.float32))
    t = timed(dev, lambda: kernels.gtm_distances(Z, Y))
    out.append(("gtm_distances (N x K x D GEMM)", 2.0 * N * K * Z.shape[1] / t / 1e9, "GFLOP/s"))
    from hpcem.core.euler import random_rotations

    vol = put(cplx(2 * n, 2 * n, n + 1))
    A = random_rotations(S, rng).astype(np.float32)
    t = timed(dev, lambda: kernels.project3d(vol, A, n, n / 2, 2))
    out.append(("project3d (%d slices of %d px)" % (S, n), S * n * (n // 2 + 1) * 8 * 9 / t / 1e9,
                "GB/s (8 reads+1 write/px)"))
    return out


def simulate(a, mode):
    from hpcem.io.particles import ParticleSet
    from hpcem.simulate.particles import simulate_dataset

    if mode == "2d":
        d = simulate_dataset(n=a.box, n_particles=a.n, mode="2d", n_views=10, n_volumes=3, snr=0.05, ctf=True, seed=7)
    else:
        d = simulate_dataset(n=a.box, n_particles=a.n3d, snr=0.05, ctf=True, seed=21)
    c = d.ctf
    one = lambda v: float(np.atleast_1d(v)[0])  # noqa: E731
    ps = ParticleSet.from_arrays(d.images, d.angpix, defocus_u=c["defocus_u"], defocus_v=c["defocus_v"],
                                 defocus_angle=c["defocus_angle"], voltage=one(c["voltage"]), cs=one(c["cs"]),
                                 amp_contrast=one(c["amp_contrast"]))
    return d, ps


def iterations(algo, dev, iters: int) -> list:
    """Seconds of each of ``iters`` iterations (E-step, reduction, M-step), the device synchronised."""
    algo.prepare()
    algo.initialise()
    out = []
    for _ in range(iters):
        t = time.perf_counter()
        acc = algo.e_step()
        algo.reduce(acc)
        algo.m_step(acc)
        sync(dev)
        out.append(time.perf_counter() - t)
    return out


def jobs(a, dev, comm, quiet):
    """{(job, setting): [s per iteration]} on ``dev``."""
    from hpcem.algorithms.map_em.class2d import Class2D, Class2DConfig
    from hpcem.algorithms.map_em.config3d import Refine3DConfig
    from hpcem.algorithms.map_em.refine3d import Refine3D
    from hpcem.algorithms.rome.gtm import GTMConfig
    from hpcem.algorithms.rome.sml import SML
    from hpcem.core.filters import lowpass

    out = {}
    d2, ps2 = a.data2d
    for K in (int(k) for k in a.Ks.split(",")):
        cfg = Class2DConfig(K=K, iters=a.iter, particle_diameter=0.8 * a.box * d2.angpix, ctf=True, psi_step=10.0,
                            offset_range=5.0, offset_step=1.0, oversampling=1, random_seed=1)
        out[("class2d", "K=%d" % K)] = iterations(Class2D(ps2, cfg, comm, quiet, device=dev), dev, a.iter)
    d3, ps3 = a.data3d
    ref = lowpass(np.asarray(d3.volumes[0], np.float64), 30.0, d3.angpix, dims=3).astype(np.float32)
    cfg = Refine3DConfig(iters=3, ini_high=30.0, particle_diameter=0.8 * a.box * d3.angpix, ctf=True, random_seed=1)
    out[("refine3d", "first 3")] = iterations(Refine3D(ps3, ref, cfg, comm, quiet, device=dev), dev, 3)
    g = SML(ps2, GTMConfig(K=a.gtm_K, iters=a.iter, ctf=True, seed=1), comm, quiet, device=dev)
    out[("sml", "K=%d" % a.gtm_K)] = iterations(g, dev, a.iter)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10000, help="class2d / sml particles")
    p.add_argument("--n3d", type=int, default=5000, help="refine3d particles")
    p.add_argument("--box", type=int, default=64)
    p.add_argument("--Ks", default="10,50,100")
    p.add_argument("--gtm_K", type=int, default=1000)
    p.add_argument("--iter", type=int, default=2, help="timed iterations (class2d, sml)")
    p.add_argument("--j", type=int, default=0, help="CPU threads (0: every core)")
    p.add_argument("--emulate", action="store_true", help="the emulated GPU (checks the script, times nothing real)")
    p.add_argument("--skip_cpu", action="store_true")
    a = p.parse_args(argv)

    from hpcem import kernels
    from hpcem.parallel import get_comm
    from hpcem.runtime.device import HOST, emulated_device, select_device, why_no_gpu

    if a.emulate:
        dev = emulated_device()
        print("bench_gpu: the EMULATED GPU (CPU kernels through the device code path): its timings are not a GPU's")
    else:
        reason = why_no_gpu()
        if reason:
            print("bench_gpu: no GPU measured here: %s.  Nothing to compare; run it on a CUDA node." % reason)
            return 0
        dev = select_device("0")
    comm = get_comm()
    cores = a.j or os.cpu_count() or 1
    kernels.set_threads(cores)
    quiet = lambda *m, **k: None  # noqa: E731
    rng = np.random.default_rng(0)
    rates = device_rates(dev, m=512 if a.emulate else 4096)
    cpu_sgemm = sgemm_gflops()
    print("%s: SGEMM %.0f GFLOP/s, device copy %.0f GB/s, host->device %.1f GB/s; CPU (%d threads) SGEMM %.0f GFLOP/s"
          % (dev.label, rates["sgemm"], rates["copy"], rates["h2d"], cores, cpu_sgemm))
    shapes = dict(B=64, T=9, J=200, M=300, N=2000, K=100, D=600, n=24, S=50) if a.emulate else {}
    for name, rate, unit in kernel_rates(dev, rng, **shapes):
        ceil = rates["sgemm"] if unit == "GFLOP/s" else rates["copy"]
        print("  %-40s %9.1f %-18s %5.0f%% of the device's %s" % (name, rate, unit, 100 * rate / ceil,
                                                                 "SGEMM" if unit == "GFLOP/s" else "copy rate"))
    t = time.time()
    a.data2d, a.data3d = simulate(a, "2d"), simulate(a, "3d")
    print("simulated %d + %d particles at %d px in %.0f s" % (a.n, a.n3d, a.box, time.time() - t), flush=True)
    gpu = jobs(a, dev, comm, quiet)
    cpu = {} if a.skip_cpu else jobs(a, HOST, comm, quiet)
    print("\n%-10s %-9s %14s %14s %9s" % ("job", "setting", "GPU s/iter", "CPU s/iter", "speed-up"))
    for key, tg in gpu.items():
        g = float(np.mean(tg[1:] if len(tg) > 1 else tg))
        c = float(np.mean(cpu[key][1:] if len(cpu[key]) > 1 else cpu[key])) if key in cpu else float("nan")
        print("%-10s %-9s %14.2f %14.2f %8.1fx" % (key[0], key[1], g, c, c / g))
    print("(GPU: %s; CPU: %d threads of this machine; iterations after the first averaged)" % (dev.label, cores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
