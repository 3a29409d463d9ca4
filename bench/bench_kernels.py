"""Throughput of the projection / back-projection kernels (CPU, and CUDA where present).

Prints slices/s and effective GB/s (bytes the kernel actually touches: per pixel
inside r_max the 8 trilinear corners read (project) or read+written with their
weights (back-project), plus the slice read or written), at box 64, 128 and 256
with r_max = n/2, and numpy's SGEMM rate on this machine as the ceiling
reference.  The last line is the headline ratio.

    python bench/bench_kernels.py [--quick]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from common import best_time, sgemm_gflops

from hpcem import kernels
from hpcem.core.euler import random_rotations


def stream_gbs(mb=512):
    """Memory bandwidth ceiling: a large copy (read + write), numpy, this machine."""
    a = np.ones(mb * (1 << 20) // 4, dtype=np.float32)
    b = np.empty_like(a)
    t = best_time(lambda: np.copyto(b, a), 3)
    return 2 * a.nbytes / t / 1e9


def bench_reconstruct_mpi(n=128, N=10000, ranks=(1, 2)):
    """Wall time of `hpcem reconstruct --ctf` on N simulated particles, 1 and 2 MPI ranks
    (same 2 cores: 1 rank x 2 threads vs 2 ranks x 1 thread)."""
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    d = tempfile.mkdtemp(prefix="hpcem_bench_")
    try:
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
        hp = [shutil.which("hpcem", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])]
        subprocess.run(hp + ["simulate", "--o", d, "--n", str(N),
                        "--box", str(n), "--snr", "0.1", "--angpix", "1.5"], check=True, env=env,
                       capture_output=True)
        mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
        out = {}
        for r in ranks:
            cmd = hp + ["reconstruct", "--i", os.path.join(d, "particles.star"),
                   "--o", os.path.join(d, "rec%d.mrc" % r), "--ctf"]
            if r > 1:
                if mpiexec is None:
                    continue
                cmd = [mpiexec, "-n", str(r)] + cmd
            e = dict(env, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // r)))
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, env=e, capture_output=True)
            out[r] = time.perf_counter() - t0
        return out
    finally:
        shutil.rmtree(d, ignore_errors=True)


def pixels_inside(n, r_max):
    ky = np.fft.fftfreq(n, 1.0 / n)[:, None]
    kx = np.arange(n // 2 + 1)[None, :]
    return int(np.count_nonzero(kx ** 2 + ky ** 2 <= r_max ** 2))


def bench_box(n, B, xp=np, repeats=2, sync=lambda: None):
    P = 2 * n
    rng = np.random.default_rng(n)
    vol = xp.full((P, P, P // 2 + 1), 1 + 1j, dtype=np.complex64)
    A = xp.asarray(random_rotations(B, rng))
    r = n / 2
    npx = pixels_inside(n, r)
    slices = kernels.project3d(vol, A, n, r, 2)
    sync()

    def proj():
        kernels.project3d(vol, A, n, r, 2)
        sync()

    tp = best_time(proj, repeats)
    del vol
    D = xp.zeros((P, P, P // 2 + 1), np.complex128)
    W = xp.zeros((P, P, P // 2 + 1), np.float64)
    w = xp.ones((B, n, n // 2 + 1), np.float32)

    def back():
        kernels.backproject3d(slices, w, A, D, W, r, 2)
        sync()

    tb = best_time(back, repeats)
    # bytes touched: project reads 8 corners x 8 B per inside pixel, writes 8 B per output pixel;
    # back-project reads slice+weight (12 B) and read-modify-writes 8 corners x (16 + 8) B x 2
    bytes_p = B * (npx * 8 * 8 + n * (n // 2 + 1) * 8)
    bytes_b = B * npx * (12 + 8 * 24 * 2)
    return dict(n=n, B=B, proj_s=B / tp, proj_gbs=bytes_p / tp / 1e9, back_s=B / tb, back_gbs=bytes_b / tb / 1e9,
                flops_p=B * npx * 8 * 8 / tp / 1e9, flops_b=B * npx * 8 * 10 / tb / 1e9)


def table(rows, title):
    print(title)
    print(f"{'box':>5} {'batch':>6} {'proj slices/s':>14} {'proj GB/s':>10} {'back slices/s':>14} {'back GB/s':>10}")
    for r in rows:
        print(f"{r['n']:>5} {r['B']:>6} {r['proj_s']:>14.1f} {r['proj_gbs']:>10.2f} {r['back_s']:>14.1f} "
              f"{r['back_gbs']:>10.2f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller batches")
    ap.add_argument("--no_mpi", action="store_true", help="skip the 10,000-particle reconstruct timing")
    args = ap.parse_args()
    scale = 0.25 if args.quick else 1.0
    batches = {64: 5000, 128: 2000, 256: 500}
    print(f"hpcem kernels: CPU threads {kernels.max_threads()}")
    g = sgemm_gflops()
    print(f"numpy SGEMM 2048^3 float32: {g:.1f} GFLOP/s (reference ceiling)")
    bw = stream_gbs()
    print(f"memory bandwidth (numpy 512 MB copy, read+write): {bw:.1f} GB/s (bandwidth ceiling)")
    rows = [bench_box(n, max(8, int(B * scale))) for n, B in batches.items()]
    table(rows, "CPU (C++/OpenMP), r_max = n/2, pad 2, complex128 accumulators")
    gpu_rows = None
    if kernels.has_cuda():
        try:
            import cupy as cp

            sync = cp.cuda.get_current_stream().synchronize
            gpu_rows = [bench_box(n, 4 * max(8, int(B * scale)), cp, 3, sync) for n, B in batches.items()]
            table(gpu_rows, "CUDA, r_max = n/2, pad 2, complex128 accumulators")
        except ImportError:
            print("CUDA: hpcem._cuda present but cupy missing, skipped")
    for r in rows:
        print(f"box {r['n']}: projection at {100 * r['proj_gbs'] / bw:.0f}% and back-projection at "
              f"{100 * r['back_gbs'] / bw:.0f}% of the copy bandwidth")
    if not args.no_mpi:
        N = max(1000, int(10000 * scale))
        t = bench_reconstruct_mpi(128, N)
        print(f"hpcem reconstruct --ctf, {N} particles of 128 px (incl. start-up and I/O):")
        for r, s in t.items():
            print(f"  {r} rank(s): {s:.1f} s")
        if 1 in t and 2 in t:
            print(f"  speed-up 1 -> 2 ranks: {t[1] / t[2]:.2f} (efficiency {t[1] / t[2] / 2:.0%})")
    last = rows[-1]
    # interpolation arithmetic (~8 FMAs per corner complex) vs SGEMM: how far from the compute ceiling
    print(f"headline: box {last['n']} projection {last['proj_s']:.0f} slices/s, back-projection "
          f"{last['back_s']:.0f} slices/s; interpolation arithmetic at "
          f"{100 * last['flops_p'] / g:.1f}% / {100 * last['flops_b'] / g:.1f}% of SGEMM")


if __name__ == "__main__":
    main()
