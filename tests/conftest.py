import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

# Keep the 2-core CI machine from oversubscribing: one BLAS thread per process.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def mpiexec_path():
    exe = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    return exe


def hpcem_command():
    """The installed `hpcem` entry point (never `python -m` from the source tree)."""
    exe = shutil.which("hpcem", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    return [exe] if exe else [sys.executable, "-m", "hpcem.cli.main"]


def hpcem_cli(args, n_ranks=1):
    """(command, environment) of `hpcem ARGS`, under `mpiexec -n N` when N > 1, with one OpenMP
    thread per rank under MPI (two on one rank) unless the caller's environment sets it."""
    cmd = hpcem_command() + [str(a) for a in args]
    if n_ranks > 1:
        exe = mpiexec_path()
        if exe is None:
            pytest.fail("mpiexec not found: install hpcem with the [mpich] extra")
        cmd = [exe, "-n", str(n_ranks)] + cmd
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1" if n_ranks > 1 else "2")
    return cmd, env


def _job_timeout():
    """20 minutes per job in the default run; none for the gated full-size tests (some run an hour)."""
    return None if os.environ.get("HPCEM_FULL_TESTS") == "1" else 1200


@pytest.fixture
def run_hpcem():
    """Run the real `hpcem` CLI (optionally under `mpiexec -n N`) and return the CompletedProcess."""
    def _run(args, n_ranks=1, cwd=None, check=True, env=None):
        cmd, e = hpcem_cli(args, n_ranks)
        if env:
            e.update(env)
        p = subprocess.run(cmd, cwd=cwd, env=e, capture_output=True, text=True, timeout=_job_timeout())
        if check and p.returncode != 0:
            raise AssertionError("command failed (%d): %s\nstdout:\n%s\nstderr:\n%s" % (
                p.returncode, " ".join(cmd), p.stdout[-4000:], p.stderr[-4000:]))
        return p
    return _run


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
