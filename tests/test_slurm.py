"""hpcem as SLURM users run it, on the private single-node SLURM that .ci/slurm_up.sh starts
(.ci/run does; HPCEM_TEST_SLURM=1 and SLURM_CONF name it).  Without it every test here skips.

* the installed CPU template submitted with sbatch on 2 tasks gives the maps / classes of
  `mpiexec -n 2` (reconstruct, class2d);
* the job-array template runs one task per input;
* `srun --mpi=none -n 2 hpcem reconstruct` stops with one line, status 2 and no output;
* a killed rank ends the job (FAILED, with the template's message) instead of hanging it;
* the GPU template asks one rank per GPU and passes --gpu (stand-in GPUs of the test cluster).
"""
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from hpcem.io.mrc import read_mrc
from hpcem.io.star import read_star
from hpcem.runtime import slurm

pytestmark = pytest.mark.slurm
TIMEOUT = 240   # seconds a test job may take before it counts as hung (cancelled)


def _slurm_env():
    if os.environ.get("HPCEM_TEST_SLURM") != "1" or not os.environ.get("SLURM_CONF"):
        pytest.skip("no test SLURM: .ci/run starts one (.ci/slurm_up.sh: root and apt-get needed)")
    if shutil.which("sbatch") is None:
        pytest.skip("no sbatch on PATH")
    p = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    if p.returncode != 0 or not {"idle", "mix", "alloc"} & set(p.stdout.split()):
        pytest.skip("test SLURM not answering: %s" % (p.stderr.strip() or p.stdout.strip()))
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]   # the hpcem under test
    return env


@pytest.fixture(scope="module")
def env():
    return _slurm_env()


@pytest.fixture(scope="module")
def data(env, tmp_path_factory):
    """A 3D set (known poses) and a 2D set (projection classes), small enough for seconds."""
    from hpcem.cli.main import run_job

    d = tmp_path_factory.mktemp("slurm")
    run_job("simulate", {"o": str(d / "sim3d"), "n": 300, "box": 32, "snr": 0.5, "seed": 3})
    run_job("simulate", {"o": str(d / "sim2d"), "mode": "2d", "n": 300, "box": 32, "views": 6,
                         "volumes": 2, "snr": 0.5, "seed": 4})
    return d


C2D = ["--K", 3, "--particle_diameter", 80, "--ctf", "--psi_step", 15, "--offset_range", 2,
       "--offset_step", 1, "--random_seed", 3]


def _submit(env, d, kind, job_args, name, ntasks=2, extra=()):
    job_args = [str(a) for a in job_args]
    extra = ["--output=%s" % (d / (name + ".out")), "--job-name=%s" % name] + list(extra)
    return slurm.submit(kind, job_args, ntasks=ntasks, cpus_per_task=1, extra_sbatch=extra, chdir=str(d), env=env)


def _log(d, name):
    path = d / (name + ".out")
    return path.read_text() if path.exists() else ""


@pytest.fixture(scope="module")
def jobs(env, data):
    """The reconstruct and class2d jobs, submitted together (they queue on the 2-core node)."""
    d = data
    rec = _submit(env, d, "cpu", ["reconstruct", "--i", d / "sim3d/particles.star", "--o", d / "rec_slurm.mrc",
                                  "--ctf"], "rec")
    c2d = _submit(env, d, "cpu", ["class2d", "--i", d / "sim2d/particles.star", "--o", d / "c2d_slurm/run",
                                  "--iter", 3] + C2D, "c2d")
    return {"rec": rec, "c2d": c2d}


def _ended(job, d, name):
    r = slurm.wait(job, poll_s=0.5, timeout_s=TIMEOUT)
    print(_log(d, name))
    print("SLURM job %s: %s, exit code %s" % (job, r.state, r.exit_code))
    return r


def test_reconstruct_sbatch_equals_mpiexec(env, data, jobs, run_hpcem):
    d = data
    run_hpcem(["reconstruct", "--i", d / "sim3d/particles.star", "--o", d / "rec_mpi.mrc", "--ctf"], n_ranks=2)
    r = _ended(jobs["rec"], d, "rec")
    assert r.ok
    assert "2 rank(s)" in _log(d, "rec")
    a, _ = read_mrc(d / "rec_mpi.mrc")
    b, _ = read_mrc(d / "rec_slurm.mrc")
    rel = np.linalg.norm(a - b) / np.linalg.norm(a)
    print("reconstruct: sbatch 2 tasks vs mpiexec -n 2, relative difference %.2e" % rel)
    assert rel < 1e-5


def test_class2d_sbatch_equals_mpiexec(env, data, jobs, run_hpcem):
    d = data
    run_hpcem(["class2d", "--i", d / "sim2d/particles.star", "--o", d / "c2d_mpi/run", "--iter", 3] + C2D,
              n_ranks=2)
    r = _ended(jobs["c2d"], d, "c2d")
    assert r.ok
    assert "2 rank(s)" in _log(d, "c2d")
    ra, _ = read_mrc(d / "c2d_mpi/run_it003_classes.mrcs")
    rb, _ = read_mrc(d / "c2d_slurm/run_it003_classes.mrcs")
    ca = read_star(d / "c2d_mpi/run_it003_data.star")["particles"]["rlnClassNumber"].to_numpy()
    cb = read_star(d / "c2d_slurm/run_it003_data.star")["particles"]["rlnClassNumber"].to_numpy()
    rel = np.linalg.norm(ra - rb) / np.linalg.norm(ra)
    print("class2d: sbatch 2 tasks vs mpiexec -n 2, relative difference of class averages %.2e, "
          "%d of %d assignments differ" % (rel, int((ca != cb).sum()), len(ca)))
    assert rel < 1e-5
    assert np.array_equal(ca, cb)


def test_job_array_runs_one_task_per_input(env, data):
    """Three particle sets, one array task each: each output is the reconstruction of its input."""
    from hpcem.cli.main import run_job
    from hpcem.io.particles import ParticleSet

    d = data
    ps = ParticleSet.read(str(d / "sim3d/particles.star"))
    inputs = []
    for k in range(3):
        path = d / "sim3d" / ("part %d.star" % k)   # beside the stack; a space: arguments, never a shell
        ps.subset(np.arange(k, ps.n, 3)).write(str(path))
        inputs.append(str(path))
    (d / "inputs.txt").write_text("\n".join(inputs) + "\n")
    (d / "arr").mkdir()
    job = slurm.submit("array", [d / "inputs.txt", "reconstruct", "--i", "{}", "--o", str(d / "arr/{name}.mrc")],
                       ntasks=1, cpus_per_task=1, chdir=str(d), env=env,
                       extra_sbatch=["--array=1-3", "--output=%s" % (d / "arr/task-%a.out")])
    r = slurm.wait(job, poll_s=0.5, timeout_s=TIMEOUT)
    for k in range(3):
        print((d / ("arr/task-%d.out" % (k + 1))).read_text())
    print("array job %s: %s, tasks %s" % (job, r.state, r.tasks))
    assert r.ok and sorted(r.tasks) == ["%s_%d" % (job, k) for k in (1, 2, 3)]
    assert set(r.tasks.values()) == {"COMPLETED"}
    for k in range(3):
        assert "input %s" % inputs[k] in (d / ("arr/task-%d.out" % (k + 1))).read_text()
        run_job("reconstruct", {"i": inputs[k], "o": str(d / ("direct%d.mrc" % k)), "j": 1})
        a, _ = read_mrc(d / ("direct%d.mrc" % k))
        b, _ = read_mrc(d / ("arr/part %d.mrc" % k))
        rel = np.linalg.norm(a - b) / np.linalg.norm(a)
        print("array task %d: relative difference to a direct run %.2e" % (k + 1, rel))
        assert rel < 1e-5


def test_srun_without_pmi_stops_with_one_line(env, data):
    d = data
    out = d / "rec_none.mrc"
    cmd = ["srun", "--mpi=none", "-n", "2", "hpcem", "reconstruct", "--i", str(d / "sim3d/particles.star"),
           "--o", str(out), "--ctf"]
    p = subprocess.run(cmd, env=env, cwd=str(d), capture_output=True, text=True, timeout=TIMEOUT)
    print(" ".join(cmd), "->", p.returncode)
    print(p.stderr)
    assert p.returncode == 2
    ours = [ln for ln in p.stderr.splitlines() if ln.startswith("hpcem")]
    assert len(ours) == 1
    assert ours[0].startswith("hpcem: error: launched as 2 tasks (srun: SLURM_STEP_NUM_TASKS=2) but MPI "
                              "sees a world of 1 rank")
    assert "srun --mpi=pmi2" in ours[0] and "pip install --no-binary mpi4py mpi4py" in ours[0]
    assert not out.exists()


def _task_pids(job):
    """{global task id: pid} of the job's first srun step on this node (scontrol listpids)."""
    p = subprocess.run(["scontrol", "listpids", str(job)], capture_output=True, text=True)
    pids = {}
    for line in p.stdout.splitlines()[1:]:
        f = line.split()
        if len(f) >= 5 and f[2] == "0" and f[4].isdigit():
            pids[int(f[4])] = int(f[0])
    return pids


def test_killed_rank_ends_the_job(env, data):
    """Rank 1 killed (as the OOM killer would) while rank 0 works: the job ends FAILED with the
    template's message within the timeout, and no final output is written."""
    d = data
    job = _submit(env, d, "cpu", ["class2d", "--i", d / "sim2d/particles.star", "--o", d / "c2d_kill/run",
                                  "--iter", 200] + C2D, "kill")
    t0 = time.monotonic()
    while "it   1" not in _log(d, "kill") and time.monotonic() - t0 < TIMEOUT:
        assert slurm.state(job).state in slurm.ACTIVE, _log(d, "kill")
        time.sleep(0.2)
    pids = _task_pids(job)
    assert 1 in pids, "no task 1 in scontrol listpids: %s" % pids
    os.kill(pids[1], 9)
    t_kill = time.monotonic()
    r = _ended(job, d, "kill")
    print("rank 1 (pid %d) killed: the job left the queue %.1f s later" % (pids[1], time.monotonic() - t_kill))
    log = _log(d, "kill")
    assert r.state == "FAILED" and r.exit_code not in (0, None)
    assert "hpcem: job step ended with status" in log and "a rank failed or was killed" in log
    assert not (d / "c2d_kill/run_it200_classes.mrcs").exists()


def test_gpu_template_one_rank_per_gpu(env, data):
    """The test cluster's node has two stand-in GPUs: the template gets both, starts one rank per
    GPU, and class2d gets RELION's --gpu (a note, as hpcem picks its kernels itself)."""
    d = data
    job = _submit(env, d, "gpu", ["class2d", "--i", d / "sim2d/particles.star", "--o", d / "c2d_gpu/run",
                                  "--iter", 1] + C2D, "gpu", extra=["--ntasks-per-node=2", "--gres=gpu:2"])
    r = _ended(job, d, "gpu")
    log = _log(d, "gpu")
    assert r.ok
    assert "2 rank(s), 2 GPU(s) per node" in log and "--gpus-per-task=1" in log
    assert "--gpu: ignored" in log and "warning" not in log
    assert (d / "c2d_gpu/run_it001_classes.mrcs").exists()


def test_old_template_path_still_runs(env, data):
    """hpcem.sbatch (the former CPU template) hands over to hpcem_cpu.sbatch."""
    d = data
    alias = os.path.join(os.path.dirname(slurm.template_path("cpu")), "hpcem.sbatch")
    job = _submit(env, d, alias, [], "alias", ntasks=1)
    r = _ended(job, d, "alias")
    assert r.state == "FAILED" and r.exit_code == 2
    assert "usage: sbatch" in _log(d, "alias") and "hpcem_cpu.sbatch" in _log(d, "alias")
