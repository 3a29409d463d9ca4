"""The 3D parts of bench_vs_relion.py: RELION reads what hpcem writes, and refine3d side by side.

  files     hpcem refine3d (a RELION command line, run through hpcem) on simulated particles, then
            relion_reconstruct from hpcem's run_data.star against hpcem reconstruct from the same
            file (FSC between the two maps up to Nyquist), relion_star_handler and starfile reading
            every STAR file hpcem wrote, and the MRC headers of hpcem's maps beside RELION's;
  refine3d  the time of the first iteration of relion_refine --auto_refine against hpcem refine3d
            with the same command line on the same particles (RELION stopped after iteration 1).
"""
from __future__ import annotations

import glob
import os
import subprocess
import time

import numpy as np

REFINE_FLAGS = ["--ctf", "--particle_diameter", 150, "--flatten_solvent", "--zero_mask", "--oversampling", 1,
                "--healpix_order", 2, "--auto_local_healpix_order", 4, "--offset_range", 5, "--offset_step", 2,
                "--sym", "C1", "--ini_high", 30, "--low_resol_join_halves", 40, "--dont_combine_weights_via_disc", "--pool", 30, "--pad", 2,
                "--j", 2]


def simulate_refine_set(tmp, run, hpcem_cmd, n_particles):
    from hpcem.core.filters import lowpass
    from hpcem.io.mrc import read_mrc, write_mrc

    d = os.path.join(tmp, "r3d")
    if not os.path.exists(os.path.join(d, "ref.mrc")):
        run(hpcem_cmd() + ["simulate", "--o", d, "--n", n_particles, "--box", 64, "--snr", 0.1, "--model", "atoms",
                           "--seed", 21], tmp)
        truth, apix = read_mrc(os.path.join(d, "truth_class001.mrc"))
        write_mrc(os.path.join(d, "ref.mrc"), lowpass(np.asarray(truth, np.float64), 30.0, apix, dims=3)
                  .astype(np.float32), apix)
    return d


def _star_handler_reads(path, cwd):
    """relion_star_handler reads a STAR file (particles: with its optics; others: as plain tables)."""
    import starfile

    blocks = starfile.read(os.path.join(cwd, path), always_dict=True)
    if "particles" in blocks:
        args = ["--i", path, "--o", path + ".relion.star"]
    else:
        args = ["--i", path, "--o", path + ".relion.star", "--ignore_optics", "--i_tablename", list(blocks)[0]]
    p = subprocess.run(["relion_star_handler"] + args, cwd=cwd, capture_output=True, text=True)
    ok = p.returncode == 0 and os.path.exists(os.path.join(cwd, path + ".relion.star"))
    return ok, len(blocks), (p.stderr or p.stdout).strip().splitlines()[-1:] if not ok else []


def _header(path):
    import mrcfile

    with mrcfile.open(path, permissive=True, header_only=True) as m:
        h = m.header
        return (float(m.voxel_size.x), (float(h.origin.x), float(h.origin.y), float(h.origin.z)),
                (int(h.nxstart), int(h.nystart), int(h.nzstart)), (int(h.mapc), int(h.mapr), int(h.maps)),
                int(h.ispg), int(h.mode))


def _nyquist_circle_weights(d, data, k=6):
    """Per particle (the first ``k`` of ``data``, no CTF): the weight hpcem's and relion_reconstruct's
    accumulators hold within 2 padded voxels of the rim (padded radius pad n/2 +- 2), from one
    particle at a time (RELION's from --write_debug_output).  hpcem inserts the two image pixels on
    the Nyquist circle, (n/2, 0) and (0, n/2), in every image; RELION keeps or drops each by rounding."""
    import mrcfile
    import starfile

    from hpcem.io.particles import ParticleSet
    from hpcem.recon.projector import BackProjector, _padded_radius2
    from hpcem.recon.reconstruct import backproject_particles

    cwd = os.getcwd()
    os.chdir(d)
    try:
        ps, blocks = ParticleSet.read(data), starfile.read(data, always_dict=True)
        P = 2 * ps.box
        f = np.fft.fftfreq(P, 1.0 / P).astype(int)
        r = np.sqrt(_padded_radius2(P))
        rim = (r >= P / 2 - 2) & (r < P / 2 + 2)
        out = []
        for i in range(k):
            starfile.write(dict(blocks, particles=blocks["particles"].iloc[i:i + 1]), "one.star", overwrite=True)
            subprocess.run(["relion_reconstruct", "--i", "one.star", "--o", "one.mrc", "--write_debug_output"],
                           capture_output=True, check=True)
            with mrcfile.open("one_weight.mrc") as m:
                rw = m.data.astype(np.float64)
            h = rw.shape[0] // 2
            bp = BackProjector(ps.box, pad=2)
            backproject_particles(ps, np.array([i]), bp, ctf=False)
            out.append((float(bp.completed()[1][rim].sum()), float(rw[np.ix_(f + h, f + h, np.arange(P // 2 + 1))][rim].sum())))
        return out
    finally:
        os.chdir(cwd)


def part_files(tmp, quick, run, hpcem_cmd):
    from hpcem.core.fsc import fsc
    from hpcem.io.mrc import read_mrc

    d = simulate_refine_set(tmp, run, hpcem_cmd, 1000 if quick else 2000)
    out = os.path.join(d, "Refine3D", "job001")
    os.makedirs(out, exist_ok=True)
    data = "Refine3D/job001/run_data.star"
    if not os.path.exists(os.path.join(d, data)):
        run(hpcem_cmd() + ["refine3d", "--i", "particles.star", "--ref", "ref.mrc", "--o", "Refine3D/job001/run",
                           "--auto_refine", "--split_random_halves", "--iter", 2, "--norm", "--scale"] + REFINE_FLAGS, d)
    t_h = run(hpcem_cmd() + ["reconstruct", "--i", data, "--o", "hpcem_from_run_data.mrc", "--ctf"], d)
    t_r = run(["relion_reconstruct", "--i", data, "--o", "relion_from_run_data.mrc", "--ctf"], d)
    a, apix = read_mrc(os.path.join(d, "hpcem_from_run_data.mrc"))
    b, _ = read_mrc(os.path.join(d, "relion_from_run_data.mrc"))
    _, c = fsc(a, b)
    truth, _ = read_mrc(os.path.join(d, "truth_class001.mrc"))
    shells = [s for s in (10, 20, 28, 30, 31, 32) if s < c.size]
    print("\nRELION reads hpcem's files (refine3d run on %s)" % d)
    print("relion_reconstruct --i run_data.star vs hpcem reconstruct (same file): FSC min to Nyquist %.4f, "
          "at Nyquist %.4f (%.1f s vs %.1f s)" % (c[1:].min(), c[-1], t_r, t_h))
    print("   FSC at shells %s: hpcem vs RELION %s" % (shells, " ".join("%.4f" % c[s] for s in shells)))
    for name, v in (("hpcem", a), ("RELION", b)):
        ct = fsc(v, truth)[1]
        print("   %-6s vs the true map: %s" % (name, " ".join("%.4f" % ct[s] for s in shells)))
    rim = _nyquist_circle_weights(d, data)
    print("   one particle at a time, weight within 2 padded voxels of the rim, hpcem - RELION: %s"
          % " ".join("%+.2f" % (h - r) for h, r in rim))
    stars = sorted(f for f in glob.glob(os.path.join(out, "run*.star")) if not f.endswith(".relion.star"))
    bad = []
    for s in stars:
        ok, nb, why = _star_handler_reads(os.path.relpath(s, d), d)
        if not ok:
            bad.append((os.path.basename(s), why))
    print("relion_star_handler + starfile read %d of %d STAR files hpcem wrote%s" % (
        len(stars) - len(bad), len(stars), "".join("\n   refused: %s %s" % b for b in bad)))
    print("MRC headers (voxel size, origin, nxyzstart, mapc/r/s, ispg, mode):")
    for f in ("Refine3D/job001/run_class001.mrc", "Refine3D/job001/run_half1_class001_unfil.mrc",
              "hpcem_from_run_data.mrc", "relion_from_run_data.mrc"):
        print("   %-46s %s" % (f, _header(os.path.join(d, f))))
    print("headline: relion_reconstruct on hpcem's run_data.star vs hpcem: min FSC %.4f (> 0.99 wanted); "
          "%d STAR files refused" % (c[1:].min(), len(bad)))


def _first_iteration_time(cmd, cwd, marker, limit_s):
    """Seconds until ``marker`` appears (the run is then stopped)."""
    t0 = time.perf_counter()
    with open(os.path.join(cwd, "relion_refine.log"), "w") as log:
        p = subprocess.Popen([str(c) for c in cmd], cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        try:
            while time.perf_counter() - t0 < limit_s:
                if glob.glob(os.path.join(cwd, marker)):
                    return time.perf_counter() - t0
                if p.poll() is not None:
                    break
                time.sleep(2)
        finally:
            if p.poll() is None:
                p.kill()
    return float("nan")


RELION_LIMIT_S = 1800   # relion_refine is stopped after this long without finishing iteration 1


def part_refine3d(tmp, quick, run, hpcem_cmd):
    d = simulate_refine_set(tmp, run, hpcem_cmd, 1000 if quick else 2000)
    for prog in ("hpcem_t", "relion_t"):
        os.makedirs(os.path.join(d, prog), exist_ok=True)
    common = ["--i", "particles.star", "--ref", "ref.mrc", "--auto_refine", "--split_random_halves"] + REFINE_FLAGS
    if not os.path.exists(os.path.join(d, "hpcem_t", "run_class001.mrc")):
        t_h = run(hpcem_cmd() + ["refine3d", "--o", "hpcem_t/run", "--iter", 1] + common, d)
    else:
        t_h = float(open(os.path.join(d, "hpcem_t", "seconds")).read())
    with open(os.path.join(d, "hpcem_t", "seconds"), "w") as f:
        f.write("%.3f" % t_h)
    # auto-refine needs relion_refine_mpi (a master and one rank per half): 3 ranks x 1 thread
    # (RELION's Open MPI launcher, not the mpich one of hpcem's environment)
    mpi = ["/usr/bin/mpirun" if os.path.exists("/usr/bin/mpirun") else "mpirun", "--allow-run-as-root", "--oversubscribe", "-n", 3, "relion_refine_mpi"]
    relion_common = [("1" if c == 2 and common[i - 1] == "--j" else c) for i, c in enumerate(common)]
    t_r = _first_iteration_time(mpi + ["--o", "relion_t/run"] + relion_common, d,
                                "relion_t/run_it001_half1_model.star", RELION_LIMIT_S)
    print("\nrefine3d first iteration, same command line, %s particles, 64 px, order 2, 2 cores (hpcem: 1 rank x 2 "
          "threads; RELION: relion_refine_mpi, 2 worker ranks x 1 thread)" % (
        "1000" if quick else "2000"))
    print("   hpcem refine3d (iteration 1 + the final iteration): %.1f s; relion_refine iteration 1: %.1f s"
          % (t_h, t_r))
    if not np.isfinite(t_r):
        print("headline: relion_refine did not finish iteration 1 in %d s; hpcem took %.1f s (> %.1f x)"
              % (RELION_LIMIT_S, t_h, RELION_LIMIT_S / t_h))
        return
    print("headline: refine3d first iteration RELION/hpcem %.1f x (hpcem's time includes its final iteration)"
          % (t_r / t_h))
