"""A Scheme's state across runs (seed 000 section 3.3: "re-start from the point where it was
previously aborted ... If any job parameters were changed, relion_schemer will re-execute those
jobs from scratch, whereas jobs that are unaffected will continue"):

* the schemer killed (SIGKILL) during an hpcem job and started again goes on from that job, which
  continues from its checkpoint in the same folder; the job before it does not run again;
* after a parameter change, only that job and the jobs that read its outputs run again (new
  folders); the job before it keeps its folder and files;
* a job with nr_mpi 2 runs under mpiexec and gives the map of the in-process run.
"""
import os
import re
import signal
import subprocess
import time

import numpy as np
import pytest
from scheme_helpers import TRACE, make_scheme, py_command

from hpcem.cli.main import run_job
from hpcem.io.mrc import read_mrc
from hpcem.workflow.jobstar import read_job_star, write_job_star
from hpcem.workflow.launch import hpcem_command
from hpcem.workflow.scheme import Scheme

EXIT = ("EXIT", "exit", "undefined", "undefined", "undefined")


def _schemer(project, **values):
    cwd = os.getcwd()
    os.chdir(str(project))
    try:
        return run_job("schemer", values)
    finally:
        os.chdir(cwd)


@pytest.mark.mpi
def test_killed_schemer_restarts_where_it_stopped(tmp_path):
    from hpcem.simulate.particles import simulate_dataset
    from hpcem.simulate.write import write_dataset

    d = simulate_dataset(n=32, n_particles=300, mode="2d", n_views=3, n_volumes=1, snr=1.0, ctf=False, seed=4)
    write_dataset(d, str(tmp_path / "data"))
    make_scheme(tmp_path, "k", variables=[("trace", "string", "trace.txt")], operators=[EXIT],
                jobs=[("A", "continue", "external", {"command": py_command(TRACE, "$$trace", "A")}),
                      ("B", "continue", "hpcem.class2d",
                       {"i": "data/particles.star", "K": "3", "iter": "6", "particle_diameter": "80",
                        "psi_step": "30", "offset_range": "2", "offset_step": "2", "j": "1", "nr_mpi": "1"}),
                      ("C", "continue", "external", {"command": py_command(TRACE, "$$trace", "C", "Schemes/k/B/")})],
                edges=[("A", "B"), ("B", "C"), ("C", "EXIT")])
    cmd = hpcem_command() + ["schemer", "--scheme", "Schemes/k", "--run"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.Popen(cmd, cwd=str(tmp_path), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck = tmp_path / "Class2D" / "job002" / "run_it002_optimiser.star"
    t0 = time.time()
    while not ck.exists() and p.poll() is None and time.time() - t0 < 120:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert ck.exists() and not (tmp_path / "Class2D" / "job002" / "RELION_JOB_EXIT_SUCCESS").exists()
    assert (tmp_path / ".relion_lock_scheme_k").exists()                      # left by the killed schemer
    assert Scheme.read(str(tmp_path / "Schemes" / "k")).current == "B"
    r = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "taking over the lock" in r.stdout and "B: resuming job Class2D/job002/" in r.stdout
    assert (tmp_path / "trace.txt").read_text() == "A\nC Class2D/job002/\n"      # A ran once, C once
    assert sorted(os.listdir(tmp_path / "Class2D")) == ["job002"]
    note = (tmp_path / "Class2D" / "job002" / "note.txt").read_text()
    assert note.count("Executing") == 2 and "--continue" in note.split("Executing continued job")[1]
    assert (tmp_path / "Class2D" / "job002" / "run_it006_classes.mrcs").exists()
    assert re.search(r"continuing from iteration [2-5]\b", (tmp_path / "Class2D" / "job002" / "run.out").read_text())


def _chain(tmp_path, nr_mpi="1"):
    make_scheme(tmp_path, "c", operators=[EXIT],
                jobs=[("sim", "continue", "hpcem.simulate", {"n": "400", "box": "24", "snr": "0", "no_ctf": "Yes",
                                                             "seed": "3"}),
                      ("rec", "continue", "hpcem.reconstruct", {"i": "Schemes/c/sim/particles.star", "o": "rec.mrc",
                                                                "sym": "C1", "nr_mpi": nr_mpi, "j": "1"}),
                      ("fsc", "continue", "hpcem.fsc", {"map1": "Schemes/c/rec/rec.mrc",
                                                        "map2": "Schemes/c/sim/truth_class001.mrc", "o": "fsc.png"})],
                edges=[("sim", "rec"), ("rec", "fsc"), ("fsc", "EXIT")])


def test_parameter_change_reruns_that_job_and_what_follows(tmp_path, capsys):
    _chain(tmp_path)
    assert _schemer(tmp_path, scheme="Schemes/c", run=True) == 0
    sim_files = {f: os.path.getmtime(tmp_path / "Simulate" / "job001" / f) for f in os.listdir(tmp_path / "Simulate" / "job001")}
    star = tmp_path / "Schemes" / "c" / "rec" / "job.star"
    spec = read_job_star(str(star))
    spec.options["sym"] = "C2"
    write_job_star(str(star), spec)
    capsys.readouterr()
    assert _schemer(tmp_path, scheme="Schemes/c", set_current_node="sim", run=True) == 0
    out = capsys.readouterr().out
    assert "sim: Simulate/job001/ finished and its parameters are unchanged" in out
    assert "rec: parameters changed since Reconstruct/job002/ ran (sym)" in out
    assert "fsc: parameters changed since PostProcess/job003/ ran (map1)" in out
    s = Scheme.read(str(tmp_path / "Schemes" / "c"))
    assert (s.jobs["sim"].folder, s.jobs["rec"].folder, s.jobs["fsc"].folder) == (
        "Simulate/job001/", "Reconstruct/job004/", "PostProcess/job005/")
    assert {f: os.path.getmtime(tmp_path / "Simulate" / "job001" / f) for f in sim_files} == sim_files
    assert read_job_star(str(tmp_path / "PostProcess" / "job005" / "job.star")).options["map1"] == \
        "Reconstruct/job004/rec.mrc"
    assert (tmp_path / "PostProcess" / "job005" / "fsc.png").exists()
    assert "sym C2" in (tmp_path / "Reconstruct" / "job004" / "run.out").read_text()
    capsys.readouterr()                                    # nothing changed: nothing runs again
    assert _schemer(tmp_path, scheme="Schemes/c", set_current_node="sim", run=True) == 0
    assert capsys.readouterr().out.count("nothing to continue") == 3
    assert len(os.listdir(tmp_path / "Reconstruct")) == 2


@pytest.mark.mpi
def test_mpiexec_job_matches_in_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    for folder, n in ((one, "1"), (two, "2")):
        folder.mkdir()
        _chain(folder, nr_mpi=n)
        assert _schemer(folder, scheme="Schemes/c", run=True) == 0
    assert "mpiexec" in (two / "Reconstruct" / "job002" / "note.txt").read_text()
    a, b = (read_mrc(str(f / "Reconstruct" / "job002" / "rec.mrc"))[0] for f in (one, two))
    rel = np.linalg.norm(a - b) / np.linalg.norm(a)
    print("1 rank in-process vs mpiexec -n 2: relative difference %.2e" % rel)
    assert rel < 1e-5
