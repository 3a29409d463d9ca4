"""The launcher/MPI mismatch check with faked launcher environments (no SLURM needed), the CLI's
one-line refusal, the SLURM templates as installed, and submit/wait against stand-in SLURM commands.
The same against a real SLURM: tests/test_slurm.py."""
import os
import subprocess
import sys

import pytest

from hpcem.parallel.launch import launch_mismatch, launched_by_mpi, launched_tasks, reports, slurm_task
from hpcem.runtime import slurm

BATCH_SHELL = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2", "SLURM_NPROCS": "2", "SLURM_PROCID": "0",
               "SLURM_LOCALID": "0", "SLURM_TASKS_PER_NODE": "2"}


def srun_task(n, rank, **extra):
    """The environment of task ``rank`` of ``srun -n n`` (no PMI: --mpi=none)."""
    env = dict(BATCH_SHELL, SLURM_STEP_ID="0", SLURM_STEPID="0", SLURM_STEP_NUM_TASKS=str(n),
               SLURM_NTASKS=str(n), SLURM_NPROCS=str(n), SLURM_PROCID=str(rank))
    env.update(extra)
    return env


def test_plain_process_and_batch_shell_are_not_launched():
    assert launched_tasks({}) is None and not launched_by_mpi({})
    # sbatch --ntasks=2: the batch script has SLURM_NTASKS=2 but is one process, not a task
    assert launched_tasks(BATCH_SHELL) is None and not launched_by_mpi(BATCH_SHELL)
    assert launch_mismatch(1, BATCH_SHELL) is None
    assert slurm_task(BATCH_SHELL) is None


def test_srun_without_pmi_is_refused_with_the_fix():
    env = srun_task(2, 1)
    msg = launch_mismatch(1, env)
    print(msg)
    assert msg and "\n" not in msg
    assert "launched as 2 tasks" in msg and "SLURM_STEP_NUM_TASKS=2" in msg and "world of 1" in msg
    assert "srun --mpi=pmi2" in msg and "pmix" in msg
    assert "MPICC=mpicc pip install --no-binary mpi4py mpi4py" in msg
    assert launched_by_mpi(env)
    assert not reports(env) and reports(srun_task(2, 0))  # one line per job: the launcher's rank 0
    legacy = {k: v for k, v in env.items() if k not in ("SLURM_STEP_ID", "SLURM_STEP_NUM_TASKS")}
    assert "SLURM_NTASKS=2" in launch_mismatch(1, legacy)  # older srun: SLURM_STEPID and SLURM_NTASKS
    assert launch_mismatch(1, srun_task(1, 0)) is None
    assert launch_mismatch(1, dict(env, HPCEM_SKIP_LAUNCH_CHECK="1")) is None


@pytest.mark.parametrize("env, what", [
    ({"PMI_SIZE": "2", "PMI_RANK": "0", "PMI_FD": "9", "MPI_LOCALNRANKS": "2"}, "mpiexec: PMI_SIZE=2"),
    (srun_task(2, 0, PMI_SIZE="2", PMI_RANK="0", PMI_FD="11"), "srun: PMI_SIZE=2"),
    ({"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "0"}, "Open MPI: OMPI_COMM_WORLD_SIZE=2"),
    (srun_task(2, 0, PMIX_RANK="0"), "PMIx: PMIX_RANK=0, SLURM_STEP_NUM_TASKS=2"),
    ({"PMIX_RANK": "0", "PMIX_SIZE": "2"}, "PMIx: PMIX_RANK=0, PMIX_SIZE=2"),
])
def test_every_launcher_against_the_world(env, what):
    assert launched_tasks(env).what == what
    assert launch_mismatch(2, env) is None
    msg = launch_mismatch(1, env)
    assert msg.startswith("launched as 2 tasks (%s) but MPI sees a world of 1 rank" % what)


def test_pmix_rank_above_zero_alone_is_a_mismatch():
    msg = launch_mismatch(1, {"PMIX_RANK": "3"})
    assert "task 3 of several" in msg
    assert launch_mismatch(1, {"PMIX_RANK": "0"}) is None


def test_mpiexec_inside_an_allocation_is_accepted():
    """Hydra in an sbatch job runs its ranks under an srun step of one proxy task per node: the
    innermost launcher (PMI_SIZE) counts, and the world holds every task of that step."""
    env = srun_task(1, 0, PMI_SIZE="2", PMI_RANK="1", PMI_FD="5", MPI_LOCALNRANKS="2",
                    SLURM_STEP_NUM_NODES="1")
    peers = [slurm_task(env), slurm_task(dict(env, PMI_RANK="0"))]
    assert launch_mismatch(2, env, peers) is None


def test_mpiexec_inside_srun_is_refused():
    """srun -n 2 mpiexec -n 2: two worlds of 2, each holding one task of the step."""
    env = srun_task(2, 1, PMI_SIZE="2", PMI_RANK="0", PMI_FD="5", MPI_LOCALNRANKS="2")
    peers = [slurm_task(env)] * 2
    msg = launch_mismatch(2, env, peers)
    assert "holds srun task(s) 1 of the 2 of its step" in msg and "mpiexec inside srun" in msg
    assert launch_mismatch(2, dict(env, HPCEM_SKIP_LAUNCH_CHECK="1"), peers) is None
    assert not reports(env)  # one world's rank 0, but not the step's task 0
    good = [slurm_task(srun_task(2, r, PMI_SIZE="2")) for r in (0, 1)]
    assert launch_mismatch(2, srun_task(2, 0, PMI_SIZE="2"), good) is None
    assert "launcher started 4 task(s)" in launch_mismatch(2, {"PMI_SIZE": "4"})


def test_cli_refuses_before_any_work(tmp_path):
    """`hpcem reconstruct` as task 0 of a faked `srun --mpi=none -n 2` step: one line, status 2,
    no output (MPI initialises alone and sees a world of 1)."""
    from conftest import hpcem_command

    out = tmp_path / "rec.mrc"
    cmd = hpcem_command() + ["reconstruct", "--i", str(tmp_path / "missing.star"), "--o", str(out)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PMI", "OMPI_", "HYDRA"))}
    p = subprocess.run(cmd, env=dict(env, **srun_task(2, 0)), capture_output=True, text=True, timeout=300)
    print(p.stderr)
    assert p.returncode == 2
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("hpcem: error: launched as 2 tasks")
    assert not out.exists()


def test_templates_are_installed(capsys):
    from hpcem.cli.main import main

    for kind in ("cpu", "gpu", "array"):
        assert main(["--slurm_template", kind]) == 0
        path = capsys.readouterr().out.strip()
        assert path == slurm.template_path(kind) and os.path.isfile(path)
        assert os.path.dirname(path).endswith(os.path.join("hpcem", "jobs", "slurm"))
        text = open(path).read()
        assert "OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS" in text
        assert subprocess.run(["bash", "-n", path]).returncode == 0
    alias = os.path.join(os.path.dirname(path), "hpcem.sbatch")
    assert "hpcem --slurm_template cpu" in open(alias).read()
    assert main(["--slurm_template", "tpu"]) == 2


def _fake_slurm(tmp_path, monkeypatch, scripts):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, body in scripts.items():
        (bindir / name).write_text("#!/bin/bash\n" + body)
        (bindir / name).chmod(0o755)
    monkeypatch.setenv("PATH", "%s%s%s" % (bindir, os.pathsep, os.environ["PATH"]))
    return bindir


def test_submit_passes_an_argument_list(tmp_path, monkeypatch):
    args = tmp_path / "args"
    _fake_slurm(tmp_path, monkeypatch, {"sbatch": 'printf "%%s\\n" "$@" > %s; echo "4242;cluster"\n' % args})
    job_args = ["reconstruct", "--i", "my data/particles 'A'.star", "--o", "out $(rm -rf x).mrc"]
    job = slurm.submit("cpu", job_args, ntasks=3, cpus_per_task=2, extra_sbatch=["--time=5"], chdir=str(tmp_path))
    assert job == "4242"
    got = args.read_text().splitlines()
    assert got == ["--parsable", "--ntasks=3", "--cpus-per-task=2", "--time=5", "--chdir=%s" % tmp_path,
                   slurm.template_path("cpu")] + job_args


def test_submit_refusal_is_one_error(tmp_path, monkeypatch):
    _fake_slurm(tmp_path, monkeypatch, {"sbatch": 'echo "sbatch: error: invalid partition specified: gpux" >&2; exit 1\n'})
    with pytest.raises(slurm.SlurmError, match="invalid partition specified: gpux"):
        slurm.submit("gpu", ["class2d"], extra_sbatch=["--partition=gpux"])


def test_wait_reads_the_end_state(tmp_path, monkeypatch):
    polls = tmp_path / "polls"
    _fake_slurm(tmp_path, monkeypatch, {
        # RUNNING for two polls, then gone from the queue
        "squeue": 'n=$(cat %s 2>/dev/null || echo 0); echo $((n+1)) > %s; [ $n -lt 2 ] && echo RUNNING; true\n'
                  % (polls, polls),
        "scontrol": 'echo "JobId=77 ArrayJobId=76 ArrayTaskId=1 JobState=COMPLETED ExitCode=0:0"\n'
                    'echo "JobId=78 ArrayJobId=76 ArrayTaskId=2 JobState=FAILED Reason=x ExitCode=2:0"\n',
        "sacct": "exit 1\n"})
    r = slurm.wait("76", poll_s=0.01)
    assert polls.read_text().strip() == "3"
    assert (r.state, r.exit_code, r.ok) == ("FAILED", 2, False)
    assert r.tasks == {"76_1": "COMPLETED", "76_2": "FAILED"}
    # purged from the controller: sacct answers; a signal is 128 + its number
    (tmp_path / "bin" / "scontrol").write_text("#!/bin/bash\necho 'slurm_load_jobs error: Invalid job id' >&2; exit 1\n")
    (tmp_path / "bin" / "sacct").write_text("#!/bin/bash\necho '76|CANCELLED by 0|0:9'\n")
    r = slurm.state("76")
    assert (r.state, r.exit_code) == ("CANCELLED", 137)


def test_wait_times_out_and_cancels(tmp_path, monkeypatch):
    cancelled = tmp_path / "cancelled"
    _fake_slurm(tmp_path, monkeypatch, {"squeue": "echo PENDING\n", "scancel": 'echo "$@" > %s\n' % cancelled})
    with pytest.raises(TimeoutError, match="still PENDING"):
        slurm.wait("99", poll_s=0.05, timeout_s=0.2)
    assert cancelled.read_text().strip() == "99"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
