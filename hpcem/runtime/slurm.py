"""Submit hpcem jobs to SLURM through the installed templates and wait for them.

The templates (``jobs/slurm/`` in the source tree, ``hpcem/jobs/slurm/`` installed; ``hpcem
--slurm_template cpu|gpu|array`` prints a path) run any ``hpcem <job> [flags]`` given after the
script.  A workflow (the Schemes runner) does::

    from hpcem.runtime import slurm
    job = slurm.submit("cpu", ["class2d", "--i", "particles.star", "--o", "Class2D/job001/run"],
                       ntasks=4, cpus_per_task=8, extra_sbatch=["--partition=cpu", "--time=2:00:00"])
    result = slurm.wait(job, poll_s=30)        # JobResult(state="COMPLETED", exit_code=0, ...)
    if not result.ok: ...

Every value goes to ``sbatch`` as one element of an argument list (no shell), so file names with
spaces or quotes reach hpcem unchanged.  The end state comes from ``scontrol`` while the
controller still holds the job (``MinJobAge``), else from ``sacct`` (accounting).
"""
from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass, field

TEMPLATES = {"cpu": "hpcem_cpu.sbatch", "gpu": "hpcem_gpu.sbatch", "array": "hpcem_array.sbatch"}
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING",
          "STAGE_OUT", "SIGNALING", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "STOPPED"}


class SlurmError(RuntimeError):
    """sbatch/squeue/scontrol missing or refusing (one line: the command and its message)."""


@dataclass(frozen=True)
class JobResult:
    """How a SLURM job ended: its state (COMPLETED, FAILED, CANCELLED, TIMEOUT, OUT_OF_MEMORY,
    NODE_FAIL, ...; UNKNOWN when neither scontrol nor sacct knows it any more), the exit code of
    its batch script, and the state of every array task (``{"123_1": "COMPLETED", ...}``)."""

    job_id: str
    state: str
    exit_code: int | None = None
    tasks: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.state == "COMPLETED" and not self.exit_code


def template_path(kind: str) -> str:
    """The installed template ``kind`` (cpu, gpu, array), or a path given as is."""
    if kind not in TEMPLATES:
        if os.path.isfile(kind):
            return os.path.abspath(kind)
        raise SlurmError("unknown SLURM template %r: cpu, gpu, array or a file" % kind)
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for root in (os.path.join(pkg, "jobs"), os.path.join(os.path.dirname(pkg), "jobs")):  # installed, source
        path = os.path.join(root, "slurm", TEMPLATES[kind])
        if os.path.isfile(path):
            return path
    raise SlurmError("SLURM template %s not found beside %s (reinstall hpcem)" % (TEMPLATES[kind], pkg))


def _run(cmd, env=None, cwd=None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=120)
    except FileNotFoundError:
        raise SlurmError("%s: not found (no SLURM client on this machine)" % cmd[0]) from None


def submit(template: str, job_args, ntasks: int = 1, cpus_per_task: int = 1, extra_sbatch=(), *,
           chdir: str | None = None, env: dict | None = None) -> str:
    """Submit ``hpcem <job_args...>`` through ``template`` (cpu, gpu, array or a path) with
    ``sbatch``; ``ntasks`` MPI ranks of ``cpus_per_task`` threads each; ``extra_sbatch`` are sbatch
    flags (``--partition=p``, ``--time=1:00:00``, ``--array=1-10``, ``--output=...``), placed after
    and so overriding the template's ``#SBATCH`` lines.  Returns the job id; SlurmError when
    sbatch refuses."""
    cmd = ["sbatch", "--parsable", "--ntasks=%d" % int(ntasks), "--cpus-per-task=%d" % int(cpus_per_task)]
    cmd += [str(a) for a in extra_sbatch]
    if chdir:
        cmd.append("--chdir=%s" % chdir)
    cmd += [template_path(template)] + [str(a) for a in job_args]
    p = _run(cmd, env=env, cwd=chdir)
    job = p.stdout.strip().split(";")[0]
    if p.returncode != 0 or not job.isdigit():
        msg = (p.stderr.strip() or p.stdout.strip()).splitlines()
        raise SlurmError("sbatch refused the job: %s" % (msg[-1] if msg else "status %d" % p.returncode))
    return job


def _exit_code(text: str) -> int | None:
    m = re.match(r"(\d+):(\d+)", text or "")
    if not m:
        return None
    code, sig = int(m.group(1)), int(m.group(2))
    return code if code or not sig else 128 + sig


def _from_scontrol(job_id: str) -> dict:
    """{job or array task id: (state, exit code)} from scontrol, {} when it no longer knows the job."""
    p = _run(["scontrol", "show", "job", "-o", str(job_id)])
    out = {}
    for line in p.stdout.splitlines() if p.returncode == 0 else ():
        kv = dict(re.findall(r"(\w+)=(\S*)", line))
        tid = kv.get("JobId", job_id)
        if kv.get("ArrayTaskId"):
            tid = "%s_%s" % (kv.get("ArrayJobId", job_id), kv["ArrayTaskId"])
        out[tid] = (kv.get("JobState", "UNKNOWN"), _exit_code(kv.get("ExitCode")))
    return out


def _from_sacct(job_id: str) -> dict:
    p = _run(["sacct", "-n", "-P", "-X", "-j", str(job_id), "-o", "JobID,State,ExitCode"])
    out = {}
    for line in p.stdout.splitlines() if p.returncode == 0 else ():
        parts = line.split("|")
        if len(parts) == 3:
            out[parts[0]] = (parts[1].split()[0] if parts[1] else "UNKNOWN", _exit_code(parts[2]))
    return out


def state(job_id) -> JobResult:
    """The job's state now (an array: the first task that did not complete, else COMPLETED)."""
    job_id = str(job_id)
    tasks = _from_scontrol(job_id) or _from_sacct(job_id)
    if not tasks:
        return JobResult(job_id, "UNKNOWN")
    states = {t: s for t, (s, _) in tasks.items()}
    active = [t for t, s in states.items() if s in ACTIVE]
    bad = [t for t, (s, c) in tasks.items() if s != "COMPLETED" or c]
    pick = (active or bad or sorted(tasks))[0]
    s, c = tasks[pick]
    return JobResult(job_id, s, c, states if len(tasks) > 1 or "_" in pick else {})


def cancel(job_id) -> None:
    """Cancel job ``job_id`` (scancel; a job that has already ended is left as it is)."""
    _run(["scancel", str(job_id)])


def wait(job_id, poll_s: float = 10.0, timeout_s: float | None = None, cancel_on_timeout: bool = True) -> JobResult:
    """Wait until job ``job_id`` (an array: all its tasks) has left the queue; its end state.
    After ``timeout_s`` the job is cancelled (``scancel``) and TimeoutError raised."""
    job_id = str(job_id)
    t0 = time.monotonic()
    while True:
        q = _run(["squeue", "-h", "-j", job_id, "-o", "%T"])
        if q.returncode == 0 and not q.stdout.strip():
            break
        if q.returncode != 0 and "Invalid job id" not in q.stderr:
            raise SlurmError("squeue: %s" % q.stderr.strip())
        if q.returncode != 0:
            break
        if timeout_s is not None and time.monotonic() - t0 > timeout_s:
            if cancel_on_timeout:
                cancel(job_id)
            raise TimeoutError("SLURM job %s still %s after %.0f s%s" % (
                job_id, q.stdout.split()[0], timeout_s, " (cancelled)" if cancel_on_timeout else ""))
        time.sleep(poll_s)
    for _ in range(20):  # the controller may take a moment to record the end state
        r = state(job_id)
        if r.state not in ACTIVE:
            return r
        time.sleep(min(poll_s, 0.5))
    return r
