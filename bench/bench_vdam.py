"""VDAM (class2d --grad) against EM class2d on the same simulated particles: wall time, ARI and
purity against the true projection classes, side by side in one run (issue 11).

    python bench/bench_vdam.py --dir /tmp/bvdam --n 10000 --Ks 50,100           # the issue's sizes
    python bench/bench_vdam.py --dir /tmp/bvdam --n 5000 --Ks 10 --batches 100,200

Data: ``hpcem simulate --mode 2d`` (10 projection classes of 3 volumes, 64 px, SNR 0.05, CTF).
RELION's search: --psi_step 12 --offset_range 5 --offset_step 2.  Prints per K: EM (25 iterations)
and VDAM (each --batches count) seconds, ARI, purity, and the time ratio EM / VDAM.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np


def scores(data_star, truth):
    from hpcem.io.star import read_star
    from hpcem.metrics import adjusted_rand_index

    c = read_star(data_star)["particles"]["rlnClassNumber"].to_numpy()
    purity = sum(np.bincount(truth[c == k]).max() for k in np.unique(c)) / len(c)
    return adjusted_rand_index(c, truth), purity


def run(args, cwd):
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "hpcem.cli.main"] + [str(a) for a in args], cwd=cwd,
                       capture_output=True, text=True)
    if p.returncode:
        sys.exit(p.stdout[-3000:] + p.stderr[-3000:])
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--Ks", default="50,100")
    ap.add_argument("--batches", default="100,200")
    ap.add_argument("--em_iter", type=int, default=25)
    ap.add_argument("--j", type=int, default=2)
    ap.add_argument("--flags", default="", help="extra flags for the VDAM runs")
    a = ap.parse_args(argv)
    from hpcem.io.star import read_star

    os.makedirs(a.dir, exist_ok=True)
    star = os.path.join(a.dir, "particles.star")
    if not os.path.exists(star):
        run(["simulate", "--o", a.dir, "--mode", "2d", "--n", a.n, "--box", 64, "--snr", 0.05, "--views", 10,
             "--seed", 3], a.dir)
    truth = read_star(os.path.join(a.dir, "truth.star"))["particles"]["rlnClassNumber"].to_numpy()
    common = ["class2d", "--i", "particles.star", "--ctf", "--particle_diameter", 150, "--psi_step", 12,
              "--offset_range", 5, "--offset_step", 2, "--j", a.j]
    print("%d particles, 64 px, SNR 0.05, 10 true classes" % a.n)
    print("%5s %-14s %9s %7s %7s %9s" % ("K", "method", "seconds", "ARI", "purity", "EM/this"))
    for K in (int(k) for k in a.Ks.split(",")):
        out = "EM_K%d" % K
        t_em = run(common + ["--K", K, "--iter", a.em_iter, "--o", out + "/run"], a.dir)
        ari, pur = scores(os.path.join(a.dir, out, "run_it%03d_data.star" % a.em_iter), truth)
        print("%5d %-14s %9.1f %7.3f %7.3f %9s" % (K, "EM %d it" % a.em_iter, t_em, ari, pur, "1.00"), flush=True)
        for b in (int(x) for x in a.batches.split(",")):
            out = "VDAM_K%d_b%d" % (K, b)
            t = run(common + ["--grad", "--K", K, "--iter", b, "--grad_write_iter", b, "--o", out + "/run"]
                    + a.flags.split(), a.dir)
            ari, pur = scores(os.path.join(a.dir, out, "run_it%03d_data.star" % b), truth)
            print("%5d %-14s %9.1f %7.3f %7.3f %9.2f" % (K, "VDAM %d" % b, t, ari, pur, t_em / t), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
