"""Schemes (seed 000 section 3.3; hpcem.workflow): a RELION-format scheme.star written here
(tests/fixtures/schemes/toy) parses, round-trips and runs its forks and loop; external jobs get
hostile values as whole arguments (no shell); a job type hpcem does not run is one clear message;
the launchers' command lines (mpiexec, srun, the sbatch seam); a job cannot write outside its
folder; --abort stops a running scheme and the lock refuses a second schemer meanwhile."""
import json
import os
import subprocess
import time

import pytest
from scheme_helpers import copy_fixture, make_scheme, py_command

from hpcem.cli.main import run_job
from hpcem.errors import InputError
from hpcem.io.star_text import read_star_text
from hpcem.workflow.jobstar import read_job_star
from hpcem.workflow.launch import ABORTED, Launch, cli_arguments, command_argv, launch_of, run_sbatch
from hpcem.workflow.scheme import Scheme


def _schemer(project, *args):
    cwd = os.getcwd()
    os.chdir(str(project))
    try:
        return run_job("schemer", dict(args))
    finally:
        os.chdir(cwd)


def test_fixture_parses_round_trips_and_prints(tmp_path, capsys):
    folder = copy_fixture("toy", tmp_path)
    s = Scheme.read(folder)
    assert s.name == "Schemes/toy/" and s.current == "count"
    assert [(v.name, v.kind, v.value) for v in s.variables.values()] == [
        ("counter", "float", 0.0), ("limit", "float", 3.0), ("late", "float", 2.0), ("is_late", "bool", False),
        ("finished", "bool", False), ("trace", "string", "trace.txt"), ("note", "string", "a b; c")]
    assert list(s.operators) == ["INC", "CHECK_late", "CHECK_done", "EXIT"]
    assert [(j.name, j.mode, j.started) for j in s.jobs.values()] == [
        ("count", "continue", False), ("early", "new", False), ("late", "new", False)]
    assert [(e.input, e.output, e.is_fork, e.output_if_true, e.bool_var) for e in s.edges][2] == (
        "CHECK_late", "early", True, "late", "is_late")
    s.write()                                                   # RELION's layout back
    again = Scheme.read(folder)
    assert again.blocks() == s.blocks()
    raw = read_star_text(os.path.join(folder, "scheme.star"))
    assert raw["scheme_strings"].records()[1]["rlnSchemeStringVariableValue"] == "a b; c"
    assert raw["scheme_general"].loop is False and raw["scheme_edges"].labels[-1] == "rlnSchemeEdgeBooleanVariable"
    _schemer(tmp_path, ("scheme", "Schemes/toy"), ("status", True))
    out = capsys.readouterr().out
    for text in ("current node: count", "bool   is_late", "CHECK_done", "bool=ge", "count", "external",
                 "mode continue", "CHECK_late -> late if is_late, else early", "count -> INC"):
        assert text in out, text


def test_toy_scheme_forks_and_loops(tmp_path, capsys):
    copy_fixture("toy", tmp_path)
    assert _schemer(tmp_path, ("scheme", "Schemes/toy"), ("run", True)) == 0
    trace = (tmp_path / "trace.txt").read_text().split("\n")[:-1]
    assert trace == ["count 0", "early 1", "count 1", "late 2", "count 2", "late 3"]
    s = Scheme.read(str(tmp_path / "Schemes" / "toy"))
    assert s.current == "EXIT" and s.value("counter") == 3.0 and s.value("finished") is True
    assert s.jobs["count"].folder == "External/job005/" and s.jobs["late"].folder == "External/job006/"
    assert sorted(os.listdir(tmp_path / "External")) == ["job%03d" % i for i in range(1, 7)]
    assert os.path.exists(tmp_path / "External" / "job006" / "RELION_JOB_EXIT_SUCCESS")
    capsys.readouterr()
    assert _schemer(tmp_path, ("scheme", "Schemes/toy"), ("run", True)) == 0      # at its exit: nothing runs
    assert "is at its exit" in capsys.readouterr().out and len(os.listdir(tmp_path / "External")) == 6
    _schemer(tmp_path, ("scheme", "Schemes/toy"), ("reset", True), ("set", ["limit=1"]))
    s = Scheme.read(str(tmp_path / "Schemes" / "toy"))
    assert s.current == "count" and s.value("counter") == 0.0 and s.variables["limit"].reset == 1.0
    assert not any(j.started for j in s.jobs.values())
    with pytest.raises(InputError, match="no such variable"):
        _schemer(tmp_path, ("scheme", "Schemes/toy"), ("set", ["nope=1"]))


def test_external_jobs_get_hostile_values_as_whole_arguments(tmp_path):
    hostile = ["; touch PWNED1", "$(touch PWNED2)", "`touch PWNED3`", "a b  c", "| touch PWNED4", "it's", 'say "hi"',
               "$HOME", "--o /etc"]
    dump = "import json, sys; json.dump(sys.argv[1:], open(sys.argv[1], chr(119)))"
    make_scheme(tmp_path, "ext",
                variables=[("v%d" % i, "string", h) for i, h in enumerate(hostile)] + [("n", "float", 2.0)],
                operators=[("EXIT", "exit", "undefined", "undefined", "undefined")],
                jobs=[("dump", "new", "external", {"command": py_command(dump, "args.json", *(
                    "$$v%d" % i for i in range(len(hostile)))) + " --n=$$n ${v3}x"}),
                      ("relion_ext", "new", "relion.external",
                       {"fn_exe": py_command(dump, "rargs.json"), "in_mic": "$$v0", "param1_label": "angpix",
                        "param1_value": "$$v1", "nr_threads": "1"})],
                edges=[("dump", "relion_ext"), ("relion_ext", "EXIT")])
    assert _schemer(tmp_path, ("scheme", "Schemes/ext"), ("run", True)) == 0
    got = json.loads((tmp_path / "args.json").read_text())
    assert got == ["args.json"] + hostile + ["--n=2", "a b  cx"]
    rgot = json.loads((tmp_path / "rargs.json").read_text())
    assert rgot == ["rargs.json", "--o", "External/job002/", "--in_mics", hostile[0], "--angpix", hostile[1]]
    assert not any(p.name.startswith("PWNED") for p in tmp_path.rglob("*"))


def test_unimplemented_job_type_is_one_clear_message(tmp_path):
    make_scheme(tmp_path, "prep", jobs=[("motioncorr", "continue", "relion.motioncorr.own", {"fn_in": "x"}),
                                        ("cls", "new", "relion.class2d", {})],
                edges=[("motioncorr", "cls")])
    with pytest.raises(InputError, match="job motioncorr has type relion.motioncorr.own, which hpcem does not "
                                         "implement"):
        _schemer(tmp_path, ("scheme", "Schemes/prep"), ("run", True))
    assert not (tmp_path / "External").exists() and not (tmp_path / "MotionCorr").exists()
    make_scheme(tmp_path, "two", jobs=[("cls", "new", "relion.class2d", {})], edges=[("cls", "cls")])
    with pytest.raises(InputError, match="hpcem's own is hpcem.class2d"):
        _schemer(tmp_path, ("scheme", "Schemes/two"), ("run", True))
    make_scheme(tmp_path, "bad", jobs=[("c", "new", "hpcem.class2d", {"no_such_flag": "1"})], edges=[("c", "c")])
    with pytest.raises(InputError, match="unknown option"):
        _schemer(tmp_path, ("scheme", "Schemes/bad"), ("run", True))


def test_job_output_stays_in_its_folder(tmp_path):
    make_scheme(tmp_path, "esc", jobs=[("sim", "new", "hpcem.simulate", {"o": "../../escape", "n": "10", "box": "16"})],
                edges=[("sim", "sim")])
    with pytest.raises(InputError, match="leaves the job folder"):
        _schemer(tmp_path, ("scheme", "Schemes/esc"), ("run", True))
    assert not (tmp_path.parent / "escape").exists()


def test_launchers(tmp_path):
    assert launch_of({}, "j") == Launch("inprocess", 1, 0, "")
    assert launch_of({"nr_mpi": "2"}, "j").kind == "mpiexec"
    assert launch_of({"nr_mpi": "4", "do_queue": "Yes", "qsubscript": "t.sh", "nr_threads": "8"}, "j") == \
        Launch("sbatch", 4, 8, "t.sh")
    with pytest.raises(InputError, match="cannot run in the schemer"):
        launch_of({"nr_mpi": "2", "launcher": "inprocess"}, "j")
    args = cli_arguments("class2d", {"i": "p.star", "grad": "Yes", "K": "5", "zero_mask": "No", "continue": ""})
    assert args[:2] == ["--i", "p.star"] and "--grad" in args and "--no-zero_mask" in args
    assert args[args.index("--K") + 1] == "5" and "--continue" in args
    assert cli_arguments("fsc", {"map1": "a.mrc", "map2": "b.mrc", "o": "x.png"}) == ["a.mrc", "b.mrc", "--o", "x.png"]
    prog = ["/bin/hpcem", "class2d", "--i", "p.star"]
    assert command_argv(Launch("srun", 4, 2), prog, "C/job001/") == ["srun", "--ntasks=4", "--cpus-per-task=2"] + prog
    assert command_argv(Launch("mpiexec", 2), prog, "C/")[1:3] == ["-n", "2"]


def _fake_slurm_tools(tmp_path, monkeypatch, scripts):
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    for name, body in scripts.items():
        (bindir / name).write_text("#!/bin/bash\n" + body)
        (bindir / name).chmod(0o755)
    monkeypatch.setenv("PATH", "%s:%s" % (bindir, os.environ["PATH"]))


def test_sbatch_jobs_are_submitted_waited_for_and_cancelled_on_abort(tmp_path, monkeypatch):
    args, cancelled, tmpl = tmp_path / "args", tmp_path / "cancelled", tmp_path / "t.sbatch"
    tmpl.write_text("#!/bin/bash\n")
    job_dir = tmp_path / "C" / "job001"
    job_dir.mkdir(parents=True)
    _fake_slurm_tools(tmp_path, monkeypatch, {
        "sbatch": 'printf "%%s\\n" "$@" > %s; echo 4242\n' % args,
        "scontrol": 'echo "JobId=4242 JobState=$(cat %s 2>/dev/null || echo RUNNING) ExitCode=0:0"\n' % (tmp_path / "state"),
        "squeue": "true\n", "scancel": 'echo "$@" > %s\n' % cancelled})
    launch = Launch("sbatch", 8, 4, str(tmpl))
    (tmp_path / "state").write_text("COMPLETED")
    rc = run_sbatch(launch, ["class2d", "--i", "p.star"], str(tmp_path), str(job_dir), lambda: False, poll_s=0.01)
    sent = args.read_text().split("\n")
    assert rc == 0 and sent[1:3] == ["--ntasks=8", "--cpus-per-task=4"]
    assert sent[-4:-1] == ["class2d", "--i", "p.star"] and "--output=%s/run.out" % job_dir in sent
    assert "submitted SLURM job 4242" in (job_dir / "run.out").read_text()
    (tmp_path / "state").write_text("RUNNING")          # still running when the schemer is aborted
    rc = run_sbatch(launch, ["class2d"], str(tmp_path), str(job_dir), lambda: True, poll_s=0.01)
    assert rc == ABORTED and cancelled.read_text().strip() == "4242"
    (tmp_path / "state").write_text("FAILED")
    assert run_sbatch(launch, ["class2d"], str(tmp_path), str(job_dir), lambda: False, poll_s=0.01) == 1


def test_abort_and_lock(tmp_path):
    make_scheme(tmp_path, "slow", jobs=[("sleep", "new", "external",
                                         {"command": py_command("import time; time.sleep(60)")})],
                operators=[("EXIT", "exit", "undefined", "undefined", "undefined")],
                edges=[("sleep", "EXIT")])
    from hpcem.workflow.launch import hpcem_command
    p = subprocess.Popen(hpcem_command() + ["schemer", "--scheme", "Schemes/slow", "--run"], cwd=str(tmp_path),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        run_out = tmp_path / "External" / "job001" / "run.out"
        t0 = time.time()
        while not (run_out.exists() and run_out.read_text()) and time.time() - t0 < 60:
            time.sleep(0.1)
        with pytest.raises(InputError, match="is running"):
            _schemer(tmp_path, ("scheme", "Schemes/slow"), ("reset", True))
        assert _schemer(tmp_path, ("scheme", "Schemes/slow"), ("abort", True)) == 0
        rc = p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    out = p.stdout.read()
    assert rc == 3, out
    assert (tmp_path / "External" / "job001" / "RELION_JOB_EXIT_ABORTED").exists()
    s = Scheme.read(str(tmp_path / "Schemes" / "slow"))
    assert s.current == "sleep" and s.jobs["sleep"].started
    assert not (tmp_path / ".relion_lock_scheme_slow").exists()
    assert "aborted at sleep" in (tmp_path / "Schemes" / "slow" / "schemer.log").read_text()


def test_resolved_job_star_in_the_job_folder(tmp_path):
    copy_fixture("toy", tmp_path)
    _schemer(tmp_path, ("scheme", "Schemes/toy"), ("run", True), ("set", ["limit=1"]))
    spec = read_job_star(str(tmp_path / "External" / "job001" / "job.star"))
    assert spec.type == "external" and json.loads(spec.options["command"])[-3:] == ["trace.txt", "count", "0"]
    note = (tmp_path / "External" / "job001" / "note.txt").read_text()
    assert "Executing new job" in note and "python3 -c" in note and "trace.txt count 0" in note
