"""Issue 3: a MAP-EM run killed (SIGKILL) mid-iteration and resumed with ``--continue`` reaches the
same final result as an uninterrupted run, and no half-written file is ever left.

For class2d (1 rank) and refine3d (``mpiexec -n 2``):

* the run is started as a real process (the installed ``hpcem`` entry point, in its own session),
  the output folder is polled until iteration 1's checkpoint (``run_it001_optimiser.star``, written
  last of the iteration's data files) exists, then the whole process group gets SIGKILL while a
  later iteration runs; the test asserts the run really died before its last iteration and that
  no process of the group (mpiexec, its proxy, the ranks) survives;
* every file left under the output folder parses completely: STAR files (data.star with all
  particles), MRC files (mrcfile, header + full data size), HDF5 checkpoints (every dataset
  readable), PNGs (signature and IEND chunk), job.json; a leftover temporary file must be a hidden
  ``.<name>.tmp-<pid>`` (atomic_write's name, never an output name);
* ``--continue`` from the last complete iteration (highest run_itNNN_optimiser.star) removes the
  killed run's temporary files (a planted stale one too, but not one of a live process) and
  reaches the uninterrupted run's class averages / assignments (class2d) or half maps, final map
  and poses (refine3d) to float tolerance.
"""
import json
import os
import re
import signal
import subprocess
import time

import h5py
import mrcfile
import numpy as np
import pytest
from conftest import hpcem_cli

from hpcem.io.mrc import read_mrc
from hpcem.io.star import read_star

TEMP = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>[0-9]+)$")
TIMEOUT = 300.0           # generous: the CI machine may be shared
PNG_END = b"IEND\xaeB`\x82"


# --------------------------------------------------------------------------- helpers
def _start(args, n_ranks, cwd, log):
    """Start `hpcem ARGS` (under `mpiexec -n N` when N > 1) in a new session (its own process group)."""
    cmd, env = hpcem_cli(args, n_ranks)
    f = open(log, "w")
    try:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    finally:
        f.close()


def _session_pids(sid):
    """Live (non-zombie) processes of session ``sid`` on this host."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid and fields[0] not in ("Z", "X"):   # fields: state ppid pgrp session
            out.append(int(d))
    return out


def _kill_mid_run(proc, outdir, log, after, last_marker, delay=0.3):
    """Wait for ``outdir/after`` (a complete iteration), then SIGKILL the whole process group while
    a later iteration runs. Asserts it was still running and had not written ``last_marker``."""
    t0 = time.time()
    target = os.path.join(outdir, after)
    while not os.path.exists(target):
        if proc.poll() is not None:
            pytest.fail("the run ended (rc %s) before %s appeared:\n%s" % (proc.returncode, after, open(log).read()[-3000:]))
        if time.time() - t0 > TIMEOUT:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("%s did not appear within %.0f s" % (after, TIMEOUT))
        time.sleep(0.02)
    time.sleep(delay)                       # into the next iteration
    assert proc.poll() is None, "the run finished before it could be killed:\n" + open(log).read()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    t1 = time.time()
    while _session_pids(proc.pid) and time.time() - t1 < 30:   # ranks die a moment after mpiexec
        time.sleep(0.05)
    assert _session_pids(proc.pid) == [], "processes of the killed run survive"
    assert not os.path.exists(os.path.join(outdir, last_marker)), "the run was not killed before its last iteration"
    return open(log).read()


def _check_files_complete(outdir, n_particles):
    """Every file under outdir parses completely; returns the leftover temporary files' names."""
    temps = []
    for name in sorted(os.listdir(outdir)):
        path = os.path.join(outdir, name)
        assert os.path.isfile(path), path
        if name.startswith("."):
            assert TEMP.match(name), "hidden file that is not an atomic_write temporary: %s" % name
            temps.append(name)
            continue
        ext = name.rsplit(".", 1)[-1]
        if ext == "star":
            blocks = read_star(path)
            assert len(blocks) > 0, name
            if name.endswith("data.star"):
                assert len(blocks["particles"]) == n_particles, name
        elif ext in ("mrc", "mrcs"):
            with mrcfile.open(path, permissive=False) as m:
                data = np.asarray(m.data)
                expected = 1024 + int(m.header.nsymbt) + data.nbytes
                assert data.size == int(m.header.nx) * int(m.header.ny) * int(m.header.nz), name
            assert os.path.getsize(path) == expected, name
            assert np.isfinite(data).all(), name
        elif ext == "h5":
            with h5py.File(path, "r") as f:
                f.visititems(lambda k, v: v[()] if isinstance(v, h5py.Dataset) else None)
        elif ext == "png":
            with open(path, "rb") as f:
                b = f.read()
            assert b.startswith(b"\x89PNG\r\n\x1a\n") and PNG_END in b[-12:], name
        elif ext == "json":
            with open(path) as f:
                json.load(f)
        else:
            pytest.fail("unexpected file in the output folder: %s" % name)
    return temps


def _last_complete(outdir):
    its = [int(m.group(1)) for m in (re.match(r"^run_it(\d{3})_optimiser\.star$", n) for n in os.listdir(outdir)) if m]
    assert its, "no complete iteration before the kill"
    return max(its)


def _plant_temps(outdir, dead_pid):
    """A stale temporary of a dead writer (must be removed by --continue) and one of a live process
    (this one: must be kept)."""
    stale = os.path.join(outdir, ".run_it001_data.star.tmp-%d" % dead_pid)
    live = os.path.join(outdir, ".run_it001_data.star.tmp-%d" % os.getpid())
    for p in (stale, live):
        with open(p, "w") as f:
            f.write("half a file")
    return stale, live


def _dead_pid():
    """A pid that runs no process now (a reaped child's)."""
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


# --------------------------------------------------------------------------- class2d
C2D = ["--K", 6, "--particle_diameter", 120, "--ctf", "--psi_step", 10, "--offset_range", 3, "--offset_step", 1,
       "--random_seed", 3]
C2D_ITERS, C2D_N = 6, 1200


@pytest.fixture(scope="module")
def c2d_data(tmp_path_factory):
    from test_class2d import _write   # the class2d tests' data set (10 projection classes, CTF)

    tmp = str(tmp_path_factory.mktemp("kill_c2d"))
    _, star = _write(tmp, 48, C2D_N, seed=5)
    return tmp, star


def _c2d_result(outdir, it):
    refs, _ = read_mrc(os.path.join(outdir, "run_it%03d_classes.mrcs" % it))
    p = read_star(os.path.join(outdir, "run_it%03d_data.star" % it))["particles"]
    return refs, {k: p[k].to_numpy() for k in ("rlnClassNumber", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst")}


@pytest.fixture(scope="module")
def c2d_straight(c2d_data):
    tmp, star = c2d_data
    out = os.path.join(tmp, "straight")
    cmd, env = hpcem_cli(["class2d", "--i", star, "--o", out, "--iter", C2D_ITERS] + C2D)
    p = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return out


# where the kill lands: 'compute': 0.3 s after iteration 1's last file (its montage), i.e. in
# iteration 2's E-step; 'writing': the moment iteration 2's first file appears, i.e. while that
# iteration's files are being written (a partial iteration without its optimiser.star).
KILL_POINTS = {"compute": ("run_it001_classes.png", 0.3), "writing": ("run_it002_classes.mrcs", 0.0)}


@pytest.mark.parametrize("where", sorted(KILL_POINTS))
def test_class2d_killed_mid_iteration_then_continue(c2d_data, c2d_straight, run_hpcem, where):
    tmp, star = c2d_data
    straight = c2d_straight
    out = os.path.join(tmp, "killed_" + where)
    log = os.path.join(tmp, "killed_%s.log" % where)
    proc = _start(["class2d", "--i", star, "--o", out, "--iter", C2D_ITERS] + C2D, 1, tmp, log)
    after, delay = KILL_POINTS[where]
    text = _kill_mid_run(proc, out, log, after, "run_it%03d_optimiser.star" % C2D_ITERS, delay=delay)
    last = _last_complete(out)
    temps = _check_files_complete(out, C2D_N)
    partial = sorted(n for n in os.listdir(out) if n.startswith("run_it%03d_" % (last + 1)))
    print("class2d killed (%s) after iteration %d, files of iteration %d: %s; temporary files left: %s; log ends %r"
          % (where, last, last + 1, partial, temps, text.strip().splitlines()[-1][:40]))
    assert 1 <= last < C2D_ITERS
    for suffix in ("classes.mrcs", "data.star", "model.star", "checkpoint.h5"):
        assert os.path.exists(os.path.join(out, "run_it%03d_%s" % (last, suffix))), suffix

    stale, live = _plant_temps(out, _dead_pid())
    run_hpcem(["class2d", "--continue", os.path.join(out, "run_it%03d_optimiser.star" % last), "--iter", C2D_ITERS],
              cwd=tmp)
    assert not os.path.exists(stale), "--continue left a stale temporary file"
    assert os.path.exists(live), "--continue removed a live process's temporary file"
    os.remove(live)
    assert _check_files_complete(out, C2D_N) == []

    r1, p1 = _c2d_result(straight, C2D_ITERS)
    r2, p2 = _c2d_result(out, C2D_ITERS)
    dref = np.abs(r1 - r2).max() / np.abs(r1).max()
    dpsi = np.abs((p1["rlnAnglePsi"] - p2["rlnAnglePsi"] + 180) % 360 - 180).max()
    doff = max(np.abs(p1[k] - p2[k]).max() for k in ("rlnOriginXAngst", "rlnOriginYAngst"))
    nclass = int((p1["rlnClassNumber"] != p2["rlnClassNumber"]).sum())
    print("class2d resumed from iteration %d vs uninterrupted: max |dref|/max|ref| %.2e, %d assignments differ, "
          "max dpsi %.2e deg, max doffset %.2e A" % (last, dref, nclass, dpsi, doff))
    assert nclass == 0
    assert dref <= 1e-5
    assert dpsi <= 1e-3 and doff <= 1e-3


# --------------------------------------------------------------------------- refine3d, 2 ranks
R3D_N = 1200
R3D_ITERS = 4


@pytest.fixture(scope="module")
def r3d_data(tmp_path_factory):
    from hpcem.core.filters import lowpass
    from hpcem.io.mrc import write_mrc
    from hpcem.simulate.particles import simulate_dataset
    from hpcem.simulate.write import write_dataset

    tmp = str(tmp_path_factory.mktemp("kill_r3d"))
    d = simulate_dataset(n=32, n_particles=R3D_N, snr=0.2, ctf=True, seed=3, model="blobs")
    paths = write_dataset(d, tmp)
    ref = lowpass(np.asarray(d.volumes[0], np.float64), 30.0, d.angpix, dims=3).astype(np.float32)
    write_mrc(os.path.join(tmp, "ref.mrc"), ref, d.angpix)
    return tmp, paths["particles"], os.path.join(tmp, "ref.mrc")


def _r3d_flags(star, ref, out):
    return ["refine3d", "--i", star, "--ref", ref, "--o", out, "--ctf", "--ini_high", 30, "--sym", "C1",
            "--healpix_order", 1, "--auto_local_healpix_order", 2, "--offset_range", 2, "--offset_step", 1,
            "--random_seed", 1, "--iter", R3D_ITERS, "--particle_diameter", 80]


@pytest.mark.mpi
def test_refine3d_two_ranks_killed_mid_iteration_then_continue(r3d_data, run_hpcem):
    from hpcem.core.euler import angular_distance, euler_to_matrix

    tmp, star, ref = r3d_data
    straight = os.path.join(tmp, "straight")
    run_hpcem(_r3d_flags(star, ref, straight), n_ranks=2, cwd=tmp)

    out = os.path.join(tmp, "killed")
    log = os.path.join(tmp, "killed.log")
    proc = _start(_r3d_flags(star, ref, out), 2, tmp, log)
    text = _kill_mid_run(proc, out, log, "run_it001_optimiser.star", "run_class001.mrc")
    last = _last_complete(out)
    temps = _check_files_complete(out, R3D_N)
    print("refine3d (2 ranks) killed after iteration %d (log ends %r); temporary files left: %s"
          % (last, text.strip().splitlines()[-1][:60], temps))
    for suffix in ("half1_class001.mrc", "half2_class001.mrc", "data.star", "checkpoint.h5"):
        assert os.path.exists(os.path.join(out, "run_it%03d_%s" % (last, suffix))), suffix
    for f in ("run_half1_class001_unfil.mrc", "run_half2_class001_unfil.mrc", "run_data.star", "run_model.star"):
        assert not os.path.exists(os.path.join(out, f)), f

    stale, live = _plant_temps(out, _dead_pid())
    run_hpcem(["refine3d", "--continue", os.path.join(out, "run_it%03d_optimiser.star" % last), "--iter", R3D_ITERS],
              n_ranks=2, cwd=tmp)
    assert not os.path.exists(stale), "--continue left a stale temporary file"
    assert os.path.exists(live), "--continue removed a live process's temporary file"
    os.remove(live)
    assert _check_files_complete(out, R3D_N) == []

    diffs = {}
    for f in ("run_class001.mrc", "run_half1_class001_unfil.mrc", "run_half2_class001_unfil.mrc"):
        a, _ = read_mrc(os.path.join(straight, f))
        b, _ = read_mrc(os.path.join(out, f))
        diffs[f] = float(np.abs(a - b).max() / np.abs(a).max())
    p1 = read_star(os.path.join(straight, "run_data.star"))["particles"]
    p2 = read_star(os.path.join(out, "run_data.star"))["particles"]
    A1 = euler_to_matrix(*(p1[k].to_numpy() for k in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")))
    A2 = euler_to_matrix(*(p2[k].to_numpy() for k in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")))
    dang = float(np.max(angular_distance(A1, A2)))
    doff = float(max(np.abs(p1[k].to_numpy() - p2[k].to_numpy()).max() for k in ("rlnOriginXAngst", "rlnOriginYAngst")))
    same_half = bool(np.array_equal(p1["rlnRandomSubset"].to_numpy(), p2["rlnRandomSubset"].to_numpy()))
    r1 = read_star(os.path.join(straight, "run_model.star"))["model_general"]["rlnFinalResolution"]
    r2 = read_star(os.path.join(out, "run_model.star"))["model_general"]["rlnFinalResolution"]
    r1, r2 = float(np.ravel(r1)[0]), float(np.ravel(r2)[0])
    print("refine3d resumed from iteration %d vs uninterrupted (2 ranks): max rel. map differences %s, "
          "max angular difference %.2e deg, max offset difference %.2e A, resolution %.4f vs %.4f A"
          % (last, {k: "%.1e" % v for k, v in diffs.items()}, dang, doff, r1, r2))
    assert same_half
    for f, v in diffs.items():
        assert v <= 1e-4, f
    assert dang <= 1e-2 and doff <= 1e-3
    assert r1 == pytest.approx(r2, rel=1e-6)
