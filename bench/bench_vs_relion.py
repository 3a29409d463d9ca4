"""hpcem side by side with RELION (3.1.3 from Debian: `apt-get install relion`) on the same particles.

    python bench/bench_vs_relion.py                     # all parts
    python bench/bench_vs_relion.py --parts reconstruct # one part
    python bench/bench_vs_relion.py --quick             # smaller data sets

Parts (each prints one table):
  reconstruct  `hpcem reconstruct --ctf` against `relion_reconstruct --ctf` from the true poses on
               several simulated sets (noiseless and SNR 0.05-0.1, two defocus ranges, box 64
               and 128, a set projected by `relion_project --ctf`): FSC-0.5 and FSC-0.143
               resolution against the true map, FSC at chosen shells, the lowest noiseless FSC
               up to 0.9 x Nyquist, and wall time;
  class2d      `hpcem class2d` against `relion_refine` (2D, no reference) with the same flags:
               seconds per iteration and the adjusted Rand index against the true classes;
  files        RELION reads what hpcem writes (vs_relion_3d.py): relion_reconstruct from hpcem
               refine3d's run_data.star vs hpcem's map, relion_star_handler on every STAR file,
               the MRC headers;
  refine3d     relion_refine --auto_refine and hpcem refine3d with the same command line: the
               first iteration's time (vs_relion_3d.py);
  class3d      hpcem class3d and relion_refine (3D, K = 2) from the same 30 A low-passed start on two
               conformations at SNR 0.05 (bench_class3d.py): the ARI of every iteration of both.
               hpcem runs with --auto_sampling --tv --tv_auto (45 iterations), RELION with the same
               command otherwise.  RELION 3.1.3 takes about 40 min per iteration at the full size
               (4,000 particles, 64 px) on one thread; --quick is 1,500 particles at 40 px (its first
               iteration was estimated at 1.4 h on the shared 2-core machine).
Without RELION on the PATH the script says so and exits 0 (nothing else depends on RELION).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np


def hpcem_cmd():
    exe = shutil.which("hpcem", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    return [exe] if exe else [sys.executable, "-m", "hpcem.cli.main"]


def run(cmd, cwd, quiet=True):
    t = time.perf_counter()
    p = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=quiet, text=True)
    if p.returncode:
        sys.exit("failed: %s\n%s" % (" ".join(map(str, cmd)), (p.stdout or "")[-2000:] + (p.stderr or "")[-2000:]))
    return time.perf_counter() - t


def fsc_row(vol, truth, angpix, shells, noiseless):
    from hpcem.core.fsc import fsc, resolution_at

    _, c = fsc(vol, truth)
    n = truth.shape[0]
    low = float(c[1:int(0.9 * (n // 2)) + 1].min())
    return (resolution_at(c, 0.5, n, angpix), resolution_at(c, 0.143, n, angpix),
            [float(c[s]) for s in shells if s < c.size], low if noiseless else None)


DATASETS = [  # name, simulate flags, noiseless, project with relion_project
    ("noiseless, 64 px, defocus 0.5-2.5 um", ["--n", 3000, "--box", 64, "--snr", 0], True, False),
    ("noiseless, relion_project --ctf, atoms, 64 px", ["--n", 3000, "--box", 64, "--snr", 0, "--model", "atoms"], True, True),
    ("SNR 0.05, 64 px, defocus 0.5-2.5 um", ["--n", 5000, "--box", 64, "--snr", 0.05], False, False),
    ("SNR 0.1, 64 px, defocus 1.5-4 um", ["--n", 5000, "--box", 64, "--snr", 0.1, "--defocus", 15000, 40000], False, False),
    ("SNR 0.05, atoms, 128 px, 1.5 A/px", ["--n", 5000, "--box", 128, "--snr", 0.05, "--model", "atoms",
                                           "--angpix", 1.5], False, False),
]


def part_reconstruct(tmp, quick):
    from hpcem.io.mrc import read_mrc

    rows = []
    for i, (name, flags, noiseless, relproj) in enumerate(DATASETS):
        if quick and i >= 3:
            break
        d = os.path.join(tmp, "rec%d" % i)
        run(hpcem_cmd() + ["simulate", "--o", d, "--seed", 10 + i] + flags, tmp)
        star = "particles.star"
        truth, angpix = read_mrc(os.path.join(d, "truth_class001.mrc"))
        if relproj:
            run(["relion_project", "--i", "truth_class001.mrc", "--o", "proj", "--ang", star, "--ctf",
                 "--angpix", angpix], d)
            star = "proj.star"
        n = truth.shape[0]
        shells = [int(n * f) for f in (0.1875, 0.25, 0.375, 0.4375)]
        t_h = run(hpcem_cmd() + ["reconstruct", "--i", star, "--o", "hpcem.mrc", "--ctf"], d)
        t_r = run(["relion_reconstruct", "--i", star, "--o", "relion.mrc", "--ctf"], d)
        for prog, t in (("hpcem", t_h), ("relion", t_r)):
            vol, _ = read_mrc(os.path.join(d, prog + ".mrc"))
            rows.append((name, prog, t) + fsc_row(vol, truth, angpix, shells, noiseless) + (shells,))
        print("  %s: done" % name, flush=True)
    print("\nreconstruction from the true poses, FSC against the true map")
    print("%-46s %-7s %8s %9s %9s  %-30s %9s" % ("data", "program", "time s", "FSC0.5 A", "FSC.143 A",
                                                   "FSC at shells", "min FSC"))
    worst = 0.0
    for name, prog, t, r5, r1, at, low, shells in rows:
        print("%-46s %-7s %8.1f %9.2f %9.2f  %-30s %9s" % (
            name, prog, t, r5, r1, " ".join("%d:%.3f" % (s, v) for s, v in zip(shells, at)),
            "%.3f" % low if low is not None else "-"))
    for k in range(0, len(rows), 2):
        h, r = rows[k], rows[k + 1]
        worst = max(worst, h[3] / r[3], h[4] / r[4])
    print("headline: worst hpcem/RELION resolution ratio over the sets %.3f (<= 1: hpcem equal or better)" % worst)


def part_class2d(tmp, quick):
    from hpcem.io.star import read_star
    from hpcem.metrics import adjusted_rand_index

    N, iters, K = (1000, 3, 10) if quick else (3000, 4, 10)
    d = os.path.join(tmp, "c2d")
    run(hpcem_cmd() + ["simulate", "--o", d, "--mode", "2d", "--n", N, "--box", 64, "--snr", 0.05, "--views", K,
                       "--seed", 3], tmp)
    truth = read_star(os.path.join(d, "truth.star"))["particles"]["rlnClassNumber"].to_numpy()
    common = ["--i", "particles.star", "--K", K, "--iter", iters, "--tau2_fudge", 2, "--particle_diameter", 150,
              "--ctf", "--psi_step", 10, "--offset_range", 5, "--offset_step", 1, "--oversampling", 1]
    for prog in ("hpcem", "relion"):
        os.makedirs(os.path.join(d, prog), exist_ok=True)
    t_h = run(hpcem_cmd() + ["class2d", "--o", "hpcem/run", "--j", 2] + common, d)
    t_r = run(["relion_refine", "--o", "relion/run", "--j", 2, "--dont_combine_weights_via_disc", "--pool", 30,
               "--zero_mask", "--norm", "--scale"] + common, d)
    print("\nclass2d: %d particles, 64 px, SNR 0.05, K = %d, %d iterations, 2 threads" % (N, K, iters))
    print("%-8s %12s %8s" % ("program", "s/iter", "ARI"))
    out = {}
    for prog, t in (("hpcem", t_h), ("relion", t_r)):
        cls = read_star(os.path.join(d, prog, "run_it%03d_data.star" % iters))["particles"]["rlnClassNumber"].to_numpy()
        out[prog] = (t / iters, adjusted_rand_index(cls, truth))
        print("%-8s %12.1f %8.3f" % ((prog,) + out[prog]))
    print("headline: class2d RELION/hpcem time per iteration %.1f x; ARI %.3f vs %.3f" % (
        out["relion"][0] / out["hpcem"][0], out["hpcem"][1], out["relion"][1]))


def part_class3d(tmp, quick):
    from bench_class3d import main as bench_class3d

    size = ["--N", 1500, "--n", 40, "--iter", 10] if quick else ["--N", 4000, "--n", 64, "--iter", 45]
    # hpcem with the low-SNR settings the README gives; RELION with the same command otherwise
    bench_class3d([str(v) for v in ["--dir", os.path.join(tmp, "c3d"), "--relion",
                                    "--flags=--auto_sampling --tv --tv_auto"] + size])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="reconstruct,class2d,files,refine3d,class3d")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    a = ap.parse_args(argv)
    if shutil.which("relion_reconstruct") is None:
        print("RELION is not installed (apt-get install relion gives 3.1.3); nothing to compare, skipping.")
        return 0
    tmp = a.dir or tempfile.mkdtemp(prefix="hpcem_vs_relion_")
    os.makedirs(tmp, exist_ok=True)
    from vs_relion_3d import part_files, part_refine3d

    parts = {"reconstruct": part_reconstruct, "class2d": part_class2d,
             "files": lambda t, q: part_files(t, q, run, hpcem_cmd),
             "refine3d": lambda t, q: part_refine3d(t, q, run, hpcem_cmd), "class3d": part_class3d}
    for name in a.parts.split(","):
        parts[name.strip()](tmp, a.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
