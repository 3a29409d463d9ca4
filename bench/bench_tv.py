"""Benchmark of the sparsity + total-variation regularised M-step (seed 002, `--tv`).

1. refine3d with and without --tv --tv_auto on the same simulated particles (pseudo-atomic map, CTF,
   SNR 0.05, C1, from the truth low-passed to 30 A): FSC-0.5 to the truth, gold-standard resolution,
   median orientation error and wall time side by side.
2. Per box (64, 128, 256): one refine3d --tv iteration of local searches (order 4, --sigma_ang 1.4;
   at 256 px order 3 with --sigma_ang 2.8 and --batch 8, as refine3d's memory plan, made for global
   searches, exceeds a small machine otherwise; the E-step limit at 0.8 Nyquist) on a few particles gives the E-step's time per particle and the
   regularised M-step's time (both halves, --tv_iters iterations; its data term's gridding estimate
   included, the solver's own time parsed apart) from the run's log; the E-step is
   scaled to --per_half particles per half.  The M-step's fraction of an iteration is printed, and
   its memory traffic per solver iteration (the bytes its kernels and FFTs must move, a lower bound)
   in GB/s against this machine's copy bandwidth.

    python bench/bench_tv.py [--n 4000] [--boxes 64 128 256] [--per_half 5000] [--skip_refine]
    python bench/bench_tv.py --solver_only [--boxes 128 256] [--iters 12]   (3. only)

3. --solver_only: the solver alone on synthetic sums of each box (no E-step; minutes at 256 px where
   step 2's refine3d iteration takes longer than a shared machine allows): ms and GB/s per iteration.
4. --mstep_only: the whole regularised M-step (gridding estimate + solver) on real sums of simulated
   particles at their true poses, one half timed and doubled, against an E-step scaled from box 128:

    python bench/bench_tv.py --mstep_only --boxes 256 --particles 200 --iters 30 --full_iters 150

The last line is the headline: the M-step's fraction of an iteration at box 128 (target < 0.2).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
from bench_kernels import stream_gbs
from bench_refine3d import hpcem_cmd, pose_errors

BYTES_PER_VOXEL = 112   # prox 28, penalties 16, extrapolation 16 + 26 (half grid), data value 10, 2 FFTs 16


def dataset(d, box, n, seed):
    from hpcem.core.filters import lowpass
    from hpcem.io.mrc import write_mrc
    from hpcem.simulate.particles import simulate_dataset
    from hpcem.simulate.write import write_dataset

    sim = simulate_dataset(n=box, n_particles=n, snr=0.05, ctf=True, seed=seed, model="atoms")
    star = write_dataset(sim, d)["particles"]
    ref = os.path.join(d, "ref.mrc")
    write_mrc(ref, lowpass(np.asarray(sim.volumes[0], np.float64), 30.0, sim.angpix, dims=3).astype(np.float32),
              sim.angpix)
    return sim, star, ref


def run(cmd, until=None):
    """(stdout, seconds) of a command; ``until``: a regular expression of stdout after whose line the
    command is stopped (the rest of the run is not needed)."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, matched = [], False
    for line in p.stdout:
        out.append(line)
        if until is not None and re.search(until, line):
            matched = True
            p.terminate()
            break
    err = p.stderr.read()
    if p.wait() and not matched:
        print("".join(out)[-3000:], err[-3000:])
        sys.exit(1)
    return "".join(out), time.perf_counter() - t


def compare_refine(d, n):
    from hpcem.core.fsc import fsc, resolution_at
    from hpcem.io.mrc import read_mrc

    sim, star, ref = dataset(d, 64, n, seed=11)
    print("refine3d on %d particles, 64 px, SNR 0.05 (2 threads; other load on the machine adds noise)" % n)
    for name, extra in (("plain", []), ("--tv --tv_auto", ["--tv", "--tv_auto"])):
        out = os.path.join(d, "R_tv" if extra else "R_plain")
        log, wall = run(hpcem_cmd() + ["refine3d", "--i", star, "--ref", ref, "--o", out, "--ctf", "--ini_high",
                                       "30", "--sym", "C1", "--offset_range", "2", "--offset_step", "1",
                                       "--random_seed", "1", "--particle_diameter", "120"] + extra)
        c = fsc(read_mrc(os.path.join(out, "run_class001.mrc"))[0], sim.volumes[0])[1]
        gold = float(re.findall(r"final: resolution (\S+) A", log)[0])
        its = re.findall(r"\((\d+\.\d+) s, E-step (\d+\.\d+) s(?:, TV M-step (\d+\.\d+) s)?\)", log)
        ang, _ = pose_errors(os.path.join(out, "run_data.star"), sim)
        tv = sum(float(t[2] or 0) for t in its)
        print("  %-15s FSC 0.5 to the truth %.2f A, gold-standard %.2f A, median orientation error %.2f deg, "
              "%d iterations, %.0f s wall (E-step %.0f s, TV M-step %.0f s)" % (
                  name, resolution_at(c, 0.5, 64, sim.angpix), gold, ang, len(its), wall,
                  sum(float(t[1]) for t in its), tv))


def mstep_vs_estep(d, box, n, per_half, iters, full_iters):
    sim, star, ref = dataset(os.path.join(d, "box%d" % box), box, n, seed=5)
    ini = box * sim.angpix / (0.8 * box / 2)          # E-step limit at 0.8 Nyquist
    order = 4 if box <= 128 else 3                     # refine3d's memory plan assumes a global search: order 4
    sigma = 1.4 * 2 ** (4 - order)                     # at 256 px asks for 63 GB; same sigma / step at order 3
    log, _ = run(hpcem_cmd() + ["refine3d", "--i", star, "--ref", ref, "--o", os.path.join(d, "box%d" % box, "R"),
                                "--ctf", "--ini_high", "%.3f" % ini, "--iter", "1", "--healpix_order", str(order),
                                "--auto_local_healpix_order", str(order), "--sigma_ang", str(sigma),
                                "--offset_range", "2",
                                "--particle_diameter", "%.1f" % (0.75 * box * sim.angpix), "--tv", "--tv_auto",
                                "--tv_iters", str(iters)] + (["--batch", "8"] if box > 128 else []),
                 until=r"^\s+TV 2: ")   # iteration 1, not the final one
    it = re.findall(r"\((\d+\.\d+) s, E-step (\d+\.\d+) s, TV M-step (\d+\.\d+) s\)", log)[0]
    t_particle = float(it[1]) / n
    t_e = t_particle * 2 * per_half
    t_m = float(it[2])
    solver = [float(s) for s in re.findall(r"TV [12]: .* it \S+ s \(solver (\S+) s\)", log)[:2]]
    per_it = sum(solver) / (2 * iters)
    t_m += 2 * (full_iters - iters) * per_it          # run with fewer solver iterations: the rest at the same rate
    gbs = BYTES_PER_VOXEL * box ** 3 / per_it / 1e9
    return t_e, t_m, per_it, gbs, int(np.ceil(4.0 * t_m / (2 * t_particle)))


def solver_only(box, iters):
    """(ms, GB/s, CPU ms) per iteration of the regularised solver on random sums of the box (3 rounds);
    the CPU time (all threads) shows what a loaded machine's wall time hides."""
    from hpcem.recon.gridding import correction_profile
    from hpcem.recon.tv_solver import TVProblem, solve

    rng = np.random.default_rng(0)
    half = (box, box, box // 2 + 1)
    Zc = (rng.standard_normal(half) + 1j * rng.standard_normal(half)).astype(np.complex64)
    Wd = rng.uniform(0.5, 2.0, half).astype(np.float32)
    x0 = rng.standard_normal((box,) * 3).astype(np.float32)
    pb = TVProblem(Zc=Zc, Wd=Wd, g=correction_profile(box, 2 * box, "linear").astype(np.float32),
                   xp=np.zeros_like(x0), alpha=0.05, beta=0.05, gamma=0.1, eps=0.1, epsp=0.03, mu=0.03)
    cpu = time.process_time()
    r = solve(pb, x0, iters, 3)
    per_it = r.seconds / r.iterations
    return 1e3 * per_it, BYTES_PER_VOXEL * box ** 3 / per_it / 1e9, 1e3 * (time.process_time() - cpu) / r.iterations


def mstep_only(box, n, iters, full_iters):
    """The regularised M-step of one half on real sums, without an E-step (box 256, where one refine3d
    iteration needs ~12 GB and more time than a shared machine allows): ``n`` simulated particles
    back-projected at their true poses, then :class:`TVReconstructor` with ``iters`` solver
    iterations.  (gridding estimate s, solver ms per iteration, GB/s, M-step s of 2 halves x
    ``full_iters`` iterations: twice the half's, the missing iterations at the measured rate)."""
    from hpcem.core.euler import euler_to_matrix
    from hpcem.core.fourier import ft2, shift_phases
    from hpcem.recon.projector import BackProjector
    from hpcem.recon.tv import TVReconstructor, TVSettings
    from hpcem.simulate.particles import simulate_dataset

    sim = simulate_dataset(n=box, n_particles=n, snr=0.05, ctf=False, seed=5, model="atoms")
    A = euler_to_matrix(sim.rot, sim.tilt, sim.psi).astype(np.float32)
    bp = BackProjector(box, 2)
    bp.insert((ft2(sim.images) * shift_phases(box, sim.origins_A / sim.angpix)).astype(np.complex64), None, A)
    rec = TVReconstructor(TVSettings(iters=iters, auto=True))
    rec.reconstruct(bp)
    last = rec.last
    per_it = last["solve_seconds"] / last["iterations"]
    half = last["seconds"] + (full_iters - last["iterations"]) * per_it
    return last["seconds"] - last["solve_seconds"], 1e3 * per_it, BYTES_PER_VOXEL * box ** 3 / per_it / 1e9, 2 * half


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4000, help="particles of the refine3d comparison")
    ap.add_argument("--boxes", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--per_half", type=int, default=5000, help="particles per half the E-step is scaled to")
    ap.add_argument("--iters", type=int, default=150, help="--tv_iters")
    ap.add_argument("--full_iters", type=int, default=None,
                    help="solver iterations the M-step is quoted for (default --iters); with fewer --iters the "
                         "run's M-step time gets the missing iterations at its measured rate per iteration")
    ap.add_argument("--particles", type=int, default=None, help="particles of the per-box run (default: "
                    "400 at 64 px, scaled as 1/box^2, at least 40)")
    ap.add_argument("--skip_refine", action="store_true")
    ap.add_argument("--solver_only", action="store_true", help="only 3.: the solver on synthetic sums")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--mstep_only", action="store_true", help="only 4.: the M-step on real sums, no E-step")
    ap.add_argument("--estep_128", type=float, default=0.099,
                    help="--mstep_only: E-step s per particle at box 128 (step 2's, from DESIGN_NOTES), scaled "
                         "as box^2 to compare")
    a = ap.parse_args()
    if a.mstep_only:
        bw = stream_gbs()
        full = a.full_iters or a.iters
        for box in a.boxes:
            n = a.particles or 200
            grid, ms, gbs, t_m = mstep_only(box, n, a.iters, full)
            t_e = a.estep_128 * (box / 128.0) ** 2 * 2 * a.per_half
            print("box %3d: TV M-step %.1f s (2 halves x %d iterations; per half: gridding estimate %.1f s, solver "
                  "%.1f ms per iteration over %d run, %.2f GB/s = %.0f%% of copy %.1f GB/s); against an E-step of "
                  "%.0f s for 2 x %d particles (box-128 rate %.3f s/particle scaled as box^2, not measured): "
                  "%.2f of an iteration" % (box, t_m, full, grid, ms, a.iters, gbs, 100 * gbs / bw, bw, t_e,
                                             a.per_half, a.estep_128, t_m / (t_m + t_e)))
        return
    if a.solver_only:
        bw = stream_gbs()
        for box in a.boxes:
            ms, gbs, cpu = solver_only(box, a.iters)
            print("box %3d: solver %.1f ms per iteration (CPU %.1f ms; %d iterations), %.2f GB/s = %.0f%% of copy "
                  "(%.1f GB/s)" % (box, ms, cpu, a.iters, gbs, 100 * gbs / bw, bw))
        return
    d = a.dir or tempfile.mkdtemp(prefix="bench_tv_")
    if not a.skip_refine:
        compare_refine(d, a.n)
    bw = stream_gbs()
    print("copy bandwidth (numpy 512 MB copy, read + write): %.1f GB/s" % bw)
    frac = {}
    for box in a.boxes:
        n = a.particles or max(40, int(400 * (64 / box) ** 2))
        full = a.full_iters or a.iters
        t_e, t_m, per_it, gbs, even = mstep_vs_estep(d, box, n, a.per_half, a.iters, full)
        frac[box] = t_m / (t_m + t_e)
        print("box %3d: E-step %.1f s for 2 x %d particles (measured on %d), TV M-step %.1f s (2 halves x %d "
              "iterations%s, %.1f ms each, %.1f GB/s = %.0f%% of copy): %.2f of an iteration (1/5 at %d particles "
              "per half)" % (box, t_e, a.per_half, n, t_m, full,
                             "" if full == a.iters else ", %d run and the rest at their rate" % a.iters,
                             1e3 * per_it, gbs, 100 * gbs / bw, frac[box], even))
    if 128 in frac:
        print("headline: regularised M-step %.2f of an iteration at box 128 (target < 0.20)" % frac[128])


if __name__ == "__main__":
    main()
