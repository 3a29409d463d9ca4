"""VDAM (class2d --grad) against EM class2d on the same simulated particles: wall time, ARI and
purity against the true projection classes, side by side in one run (issue 11); with
--initial_model, the 3D initial model from blobs (pseudo-atomic map, 64 px, SNR 0.05, C1): wall
time and FSC 0.5 / 0.143 against the truth after superposition, per seed.

    python bench/bench_vdam.py --dir /tmp/bvdam --n 10000 --Ks 50,100           # the issue's sizes
    python bench/bench_vdam.py --dir /tmp/bvdam --n 5000 --Ks 10 --batches 100,200

    python bench/bench_vdam.py --dir /tmp/bim --initial_model --n 5000 --seeds 0,1,2  # 3D initial model

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


def initial_models(a):
    """hpcem initial_model per seed: seconds, FSC 0.5 / 0.143 to the truth after --align, hand."""
    from hpcem.core.align3d import aligned_resolution
    from hpcem.core.fsc import resolution_at
    from hpcem.io.mrc import read_mrc

    star = os.path.join(a.dir, "particles.star")
    if not os.path.exists(star):
        run(["simulate", "--o", a.dir, "--n", a.n, "--box", 64, "--snr", 0.05, "--model", "atoms", "--seed", 11],
            a.dir)
    truth = np.asarray(read_mrc(os.path.join(a.dir, "truth_class001.mrc"))[0], np.float64)
    print("%d particles, 64 px, 3 A/px, SNR 0.05, C1, %s mini-batches" % (a.n, a.batches.split(",")[0]))
    print("%5s %9s %9s %9s %8s" % ("seed", "seconds", "FSC0.5", "FSC0.143", "hand"))
    for seed in (int(x) for x in a.seeds.split(",")):
        out = "IM_s%d" % seed
        b = int(a.batches.split(",")[0])
        t = run(["initial_model", "--i", "particles.star", "--o", out + "/run", "--ctf", "--particle_diameter", 150,
                 "--iter", b, "--grad_write_iter", b, "--random_seed", seed, "--j", a.j] + a.flags.split(), a.dir)
        vol = np.asarray(read_mrc(os.path.join(a.dir, out, "initial_model.mrc"))[0], np.float64)
        _, curve, al = aligned_resolution(truth, vol, 3.0)
        print("%5d %9.1f %8.2fA %8.2fA %8s" % (seed, t, resolution_at(curve, 0.5, 64, 3.0),
                                               resolution_at(curve, 0.143, 64, 3.0),
                                               "flipped" if al.flipped else "right"), flush=True)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--Ks", default="50,100")
    ap.add_argument("--batches", default="100,200")
    ap.add_argument("--em_iter", type=int, default=25)
    ap.add_argument("--j", type=int, default=2)
    ap.add_argument("--flags", default="", help="extra flags for the VDAM runs")
    ap.add_argument("--initial_model", action="store_true", help="bench the 3D initial model instead")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--data_seed", type=int, default=3, help="hpcem simulate --seed of the 2D set")
    a = ap.parse_args(argv)
    if a.initial_model:
        os.makedirs(a.dir, exist_ok=True)
        return initial_models(a)
    from hpcem.io.star import read_star

    os.makedirs(a.dir, exist_ok=True)
    star = os.path.join(a.dir, "particles.star")
    if not os.path.exists(star):
        run(["simulate", "--o", a.dir, "--mode", "2d", "--n", a.n, "--box", 64, "--snr", 0.05, "--views", 10,
             "--seed", a.data_seed], a.dir)
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
