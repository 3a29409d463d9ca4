"""Benchmark of `hpcem refine3d` on simulated particles (pseudo-atomic map, CTF, SNR 0.05, C1, 30 A low-passed truth
as the reference): seconds per iteration (from the run's log), the coarse marginalisation kernel's
GFLOP/s against numpy's SGEMM on this machine, and 1 -> 2 rank efficiency (one rank per half).

    python bench/bench_refine3d.py [--n 10000] [--box 64] [--iter 0] [--ranks 1 2]

--iter 0 runs to convergence; a positive value caps the iterations before the final one.
The last line is the headline: 2-rank efficiency and kernel/SGEMM ratio."""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np


def sgemm_gflops(m=2048, k=2048, n=2048, reps=3):
    a = np.random.default_rng(0).standard_normal((m, k)).astype(np.float32)
    b = np.random.default_rng(1).standard_normal((k, n)).astype(np.float32)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2.0 * m * k * n * reps / (time.perf_counter() - t) / 1e9


def kernel_gflops(B=128, T=13, J=4608, M=600):
    from hpcem import kernels as marg

    rng = np.random.default_rng(0)
    X = (rng.standard_normal((B, M)) + 1j * rng.standard_normal((B, M))).astype(np.complex64)
    c = rng.standard_normal((B, M)).astype(np.float32)
    s = np.abs(rng.standard_normal((B, M))).astype(np.float32)
    ph = np.exp(1j * rng.uniform(0, 6.28, (T, M))).astype(np.complex64)
    R = (rng.standard_normal((J, M)) + 1j * rng.standard_normal((J, M))).astype(np.complex64)
    marg.coarse_diff2(X, c, s, ph, R)
    t = time.perf_counter()
    marg.coarse_diff2(X, c, s, ph, R)
    return marg.coarse_flops(B, T, J, M) / (time.perf_counter() - t) / 1e9


def pose_errors(data_star, sim):
    """Median orientation error (deg) and shift error (px) of a run against the simulated truth."""
    from hpcem.core.euler import angular_distance, euler_to_matrix
    from hpcem.io.star import read_star

    p = read_star(data_star)["particles"]
    A = euler_to_matrix(p["rlnAngleRot"].to_numpy(), p["rlnAngleTilt"].to_numpy(), p["rlnAnglePsi"].to_numpy())
    ang = angular_distance(A, euler_to_matrix(sim.rot, sim.tilt, sim.psi))
    o = np.stack([p["rlnOriginXAngst"].to_numpy(), p["rlnOriginYAngst"].to_numpy()], 1)
    return float(np.median(ang)), float(np.median(np.hypot(*(o - sim.origins_A).T)) / sim.angpix)


def hpcem_cmd():
    import shutil
    exe = shutil.which("hpcem", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    return [exe] if exe else [sys.executable, "-m", "hpcem.cli.main"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--iter", type=int, default=0)
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--healpix_order", type=int, default=2)
    ap.add_argument("--auto_local", type=int, default=4)
    ap.add_argument("--offset_range", type=float, default=5)
    ap.add_argument("--particle_diameter", type=float, default=120)
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    from hpcem.core.filters import lowpass
    from hpcem.io.mrc import write_mrc
    from hpcem.simulate.particles import simulate_dataset
    from hpcem.simulate.write import write_dataset

    d = a.dir or tempfile.mkdtemp(prefix="bench_r3d_")
    sim = simulate_dataset(n=a.box, n_particles=a.n, snr=0.05, ctf=True, seed=21, model="atoms")
    star = write_dataset(sim, d)["particles"]
    ref = os.path.join(d, "ref.mrc")
    write_mrc(ref, lowpass(np.asarray(sim.volumes[0], np.float64), 30.0, sim.angpix, dims=3).astype(np.float32),
              sim.angpix)
    sg = sgemm_gflops()
    kg = kernel_gflops()
    print("numpy SGEMM %.1f GFLOP/s; coarse_diff2 kernel %.1f GFLOP/s (%.2f of SGEMM)" % (sg, kg, kg / sg))
    rows = {}
    for nr in a.ranks:
        out = os.path.join(d, "R%d" % nr)
        cmd = hpcem_cmd() + ["refine3d", "--i", star, "--ref", ref, "--o", out, "--ctf", "--ini_high", "30",
                             "--healpix_order", str(a.healpix_order), "--auto_local_healpix_order", str(a.auto_local),
                             "--offset_range", str(a.offset_range), "--offset_step", "1",
                             "--particle_diameter", str(a.particle_diameter)]
        if a.iter:
            cmd += ["--iter", str(a.iter)]
        env = dict(os.environ)
        if nr > 1:
            cmd = ["mpiexec", "-n", str(nr)] + cmd
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // nr))
        t = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t
        if p.returncode:
            print(p.stdout[-2000:], p.stderr[-2000:])
            sys.exit(1)
        its = [float(x) for x in re.findall(r"\((\d+\.\d+) s, E-step", p.stdout)]
        fin = re.findall(r"final: resolution (\S+) A", p.stdout)
        rows[nr] = (wall, len(its), np.mean(its) if its else np.nan, fin[0] if fin else "?")
        ang, sh = pose_errors(os.path.join(out, "run_data.star"), sim)
        print("%d rank(s): %.1f s total, %d iterations + final, %.1f s per iteration, resolution %s A; "
              "median orientation error %.2f deg, shift error %.2f px" % ((nr,) + rows[nr] + (ang, sh)))
    if 1 in rows and 2 in rows:
        eff = rows[1][0] / (2 * rows[2][0])
        print("headline: 1->2 rank efficiency %.2f; kernel %.2f of SGEMM" % (eff, kg / sg))


if __name__ == "__main__":
    main()
