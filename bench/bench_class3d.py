"""3D classification of two conformations at low SNR (issue 10, part 5): hpcem class3d against the
maximum-likelihood assignment with the true maps and poses (the information in the data), and
optionally relion_refine on the same particles from the same low-passed start.

    python bench/bench_class3d.py --dir /tmp/c3d                       # the issue's data set
    python bench/bench_class3d.py --dir /tmp/c3d --flags "--iter 25"   # extra hpcem class3d flags
    python bench/bench_class3d.py --dir /tmp/c3d --relion              # also relion_refine (slow)
    python bench/bench_class3d.py --dir /tmp/c3d --name plain --flags "--no-cross_halves"  # RELION's plain EM

Data: a pseudo-atomic map whose domain of 40% of the atoms is rotated by 20 degrees about its
hinge (map correlation 0.72, 0.96 at 30 A), 4,000 particles at 64 px, 3 A/px, CTF, SNR 0.05, 50/50.  The
reference is the mean of the two maps low-passed to 30 A.  Prints the ARI of every iteration.
"""
from __future__ import annotations

import argparse
import glob
import os
import shlex
import subprocess
import sys
import time

import numpy as np


def make_data(d, n, N, snr, seed):
    from hpcem.core.filters import lowpass
    from hpcem.io.mrc import write_mrc
    from hpcem.simulate.particles import simulate_dataset
    from hpcem.simulate.volumes import pseudo_atomic_conformations
    from hpcem.simulate.write import write_dataset

    star = os.path.join(d, "particles.star")
    if os.path.exists(star):
        return star
    apix = 192.0 / n     # the same 192 A box at any size (3 A/px at 64 px)
    vols = pseudo_atomic_conformations(n, 2, apix, seed=seed, domain_fraction=0.4, max_angle=20.0)
    sim = simulate_dataset(n=n, n_particles=N, snr=snr, ctf=True, seed=seed, volumes=vols, model="atoms",
                           angpix=apix)
    write_dataset(sim, d)
    ref = lowpass(np.mean([np.asarray(v, np.float64) for v in vols], 0), 30.0, apix, dims=3)
    write_mrc(os.path.join(d, "ref.mrc"), ref.astype(np.float32), apix)
    np.save(os.path.join(d, "noise_sigma.npy"), np.array([sim.noise_sigma]))
    return star


def oracle_ari(d):
    """ARI of the maximum-likelihood class given the true maps, poses, CTFs and white noise."""
    from hpcem.core.euler import euler_to_matrix
    from hpcem.io.mrc import read_mrc
    from hpcem.io.star import read_star
    from hpcem.metrics import adjusted_rand_index
    from hpcem.simulate.particles import simulate_projections

    t = read_star(os.path.join(d, "particles.star"))["particles"]
    truth = read_star(os.path.join(d, "truth.star"))["particles"]["rlnClassNumber"].to_numpy()
    imgs, apix = read_mrc(os.path.join(d, "particles.mrcs"))
    vols = [read_mrc(p)[0] for p in sorted(glob.glob(os.path.join(d, "truth_class*.mrc")))]
    A = euler_to_matrix(t["rlnAngleRot"].to_numpy(), t["rlnAngleTilt"].to_numpy(), t["rlnAnglePsi"].to_numpy())
    o = np.stack([t["rlnOriginXAngst"].to_numpy(), t["rlnOriginYAngst"].to_numpy()], 1) / apix
    ctf = {k: t[c].to_numpy() for k, c in (("defocus_u", "rlnDefocusU"), ("defocus_v", "rlnDefocusV"),
                                           ("defocus_angle", "rlnDefocusAngle"), ("phase_shift", "rlnPhaseShift"))}
    N = len(t)
    ctf.update(voltage=np.full(N, 300.0), cs=np.full(N, 2.7), amp_contrast=np.full(N, 0.1))
    d2 = [((np.asarray(imgs) - simulate_projections([v], A, np.zeros(N, np.int64), o, ctf, apix)) ** 2).sum((1, 2))
          for v in vols]
    return adjusted_rand_index(np.argmin(np.stack(d2), 0) + 1, truth)


def aris(out, truth):
    from hpcem.io.star import read_star
    from hpcem.metrics import adjusted_rand_index

    rows = []
    for p in sorted(glob.glob(os.path.join(out, "run_it*_data.star"))):
        it = int(os.path.basename(p)[6:9])
        c = read_star(p)["particles"]["rlnClassNumber"].to_numpy()
        rows.append((it, adjusted_rand_index(c, truth), np.bincount(c, minlength=3)[1:3].tolist()))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--N", type=int, default=4000)
    ap.add_argument("--snr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=4)
    ap.add_argument("--iter", type=int, default=20)
    ap.add_argument("--flags", default="", help="extra hpcem class3d flags")
    ap.add_argument("--name", default="hpcem", help="output folder name under --dir")
    ap.add_argument("--relion", action="store_true")
    ap.add_argument("--j", type=int, default=2)
    a = ap.parse_args(argv)
    from hpcem.io.star import read_star

    os.makedirs(a.dir, exist_ok=True)
    make_data(a.dir, a.n, a.N, a.snr, a.seed)
    truth = read_star(os.path.join(a.dir, "truth.star"))["particles"]["rlnClassNumber"].to_numpy()
    print("data: %d particles, %d px, SNR %g; ML assignment with the true maps and poses: ARI %.3f" % (
        a.N, a.n, a.snr, oracle_ari(a.dir)), flush=True)
    common = ["--i", "particles.star", "--ref", "ref.mrc", "--K", 2, "--ctf", "--ini_high", 30, "--iter", a.iter,
              "--particle_diameter", 150, "--offset_range", 3, "--offset_step", 1, "--healpix_order", 2,
              "--tau2_fudge", 4, "--zero_mask", "--flatten_solvent", "--j", a.j]
    runs = [(a.name, [sys.executable, "-m", "hpcem.cli.main", "class3d"] + common + shlex.split(a.flags))]
    if a.relion:
        runs.append(("relion", ["relion_refine"] + common + ["--dont_combine_weights_via_disc", "--pool", 30]))
    for name, cmd in runs:
        out = os.path.join(a.dir, name)
        os.makedirs(out, exist_ok=True)
        t0 = time.perf_counter()
        p = subprocess.run([str(c) for c in cmd] + ["--o", name + "/run"], cwd=a.dir, capture_output=True, text=True)
        if p.returncode:
            sys.exit(p.stdout[-3000:] + p.stderr[-3000:])
        dt = time.perf_counter() - t0
        rows = aris(out, truth)
        print("%s class3d (%s): %.1f s per iteration" % (name, " ".join(map(str, cmd[3:])), dt / max(len(rows), 1)))
        for it, ari, sizes in rows:
            print("   it %3d  ARI %.3f  sizes %s" % (it, ari, sizes))
        print("headline: %s class3d ARI %.3f after %d iterations" % (name, rows[-1][1], rows[-1][0]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
