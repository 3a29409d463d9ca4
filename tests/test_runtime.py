"""The runtime shared by every job: output rootnames, the one checkpoint schema, the one meaning of
--continue, the memory planner (ranks per node, cgroup limits), validated parameters that a
workflow can build without argparse."""
import os
import subprocess
import sys

import numpy as np
import pytest

from hpcem.errors import InputError
from hpcem.runtime import memory
from hpcem.runtime.checkpoint import load_checkpoint, save_checkpoint, write_optimiser
from hpcem.runtime.output import OutputRoot
from hpcem.runtime.resume import newest_checkpoint, resolve_checkpoint


# ----------------------------------------------------------------------------- --o
@pytest.mark.parametrize("o, folder, prefix", [
    ("Class2D/job001", "Class2D/job001", "run"),           # hpcem's folder form
    ("Class2D/job001/", "Class2D/job001", "run"),
    ("Class2D/job001/run", "Class2D/job001", "run"),       # RELION's rootname
    ("Class2D/job001/run_ct5", "Class2D/job001", "run_ct5"),
    ("run", ".", "run"),
    ("Class2D/job001/runs", "Class2D/job001/runs", "run"),  # not a rootname: a folder
])
def test_output_root_parse(tmp_path, monkeypatch, o, folder, prefix):
    monkeypatch.chdir(tmp_path)
    r = OutputRoot.parse(o)
    assert (r.folder, r.prefix) == (folder, prefix)
    assert r.iteration(3, "data.star") == os.path.join(folder, prefix + "_it003_data.star")
    assert r.path("class001.mrc") == os.path.join(folder, prefix + "_class001.mrc")


def test_existing_folder_named_run_is_a_folder(tmp_path):
    (tmp_path / "run").mkdir()
    r = OutputRoot.parse(str(tmp_path / "run"))
    assert (r.folder, r.prefix) == (str(tmp_path / "run"), "run")
    assert OutputRoot.of_file(str(tmp_path / "run_ct2_it007_optimiser.star")).prefix == "run_ct2"


# ----------------------------------------------------------------------------- checkpoints
def _state(it):
    return {"iteration": it, "refs": np.arange(24, dtype=np.float32).reshape(2, 3, 4), "sigma_offset": 1.5,
            "name": "x", "results": {"class": np.array([1, 2, 2]), "psi": np.array([0.5, -3.0, 90.0])}}


def test_checkpoint_schema_round_trip_and_refusals(tmp_path):
    p = str(tmp_path / "run_it002_checkpoint.h5")
    save_checkpoint(p, "class2d", _state(2), {"K": 2}, {"job": "class2d", "params": {"K": 2}})
    ck = load_checkpoint(p, "class2d")
    assert ck.iteration == 2 and ck.kind == "class2d" and ck.config == {"K": 2} and ck.job["params"]["K"] == 2
    assert np.array_equal(ck.state["refs"], _state(2)["refs"]) and ck.state["sigma_offset"] == 1.5
    assert ck.state["name"] == "x" and np.array_equal(ck.state["results"]["psi"], [0.5, -3.0, 90.0])
    with pytest.raises(InputError, match="kind"):
        load_checkpoint(p, "refine3d")
    with open(tmp_path / "bad.h5", "wb") as f:
        f.write(b"not hdf5")
    with pytest.raises(InputError, match="bad.h5"):
        load_checkpoint(str(tmp_path / "bad.h5"))


def test_continue_resolves_optimiser_checkpoint_rootname_and_folder(tmp_path):
    root = OutputRoot(str(tmp_path / "Class2D" / "job001"), "run")
    root.makedirs()
    for it in (1, 2, 3):
        ck = root.iteration(it, "checkpoint.h5")
        save_checkpoint(ck, "class2d", _state(it), {}, {})
        write_optimiser(root, it, 5, ck)
    assert newest_checkpoint(root).endswith("run_it003_checkpoint.h5")
    forms = [root.iteration(2, "optimiser.star"), root.iteration(2, "checkpoint.h5")]
    for target, it in zip(forms + [root.rootname, root.folder], (2, 2, 3, 3)):
        r, ck = resolve_checkpoint(target, None, "class2d")
        assert ck.iteration == it and (r.folder, r.prefix) == (root.folder, "run"), target
    r, ck = resolve_checkpoint("", root.rootname, "class2d")          # a bare --continue takes --o
    assert ck.iteration == 3
    r, ck = resolve_checkpoint(forms[0], root.rootname + "_ct2", "class2d")   # RELION: a new rootname
    assert ck.iteration == 2 and r.prefix == "run_ct2"
    with pytest.raises(InputError, match="--continue"):
        resolve_checkpoint(str(tmp_path / "nothing"), None, "class2d")


# ----------------------------------------------------------------------------- memory
def test_memory_available_from_meminfo_and_cgroup(tmp_path):
    mi = tmp_path / "meminfo"
    mi.write_text("MemTotal: 100 kB\nMemAvailable:   8000000 kB\n")
    lim, use = tmp_path / "memory.max", tmp_path / "memory.current"
    lim.write_text("max\n")
    use.write_text("0\n")
    files = ((str(lim), str(use)),)
    assert memory.node_available(str(mi), files) == 8000000 * 1024          # no cgroup limit
    lim.write_text(str(3 << 30))
    use.write_text(str(1 << 30))
    assert memory.node_available(str(mi), files) == 2 << 30                 # the job's allocation is smaller
    v1 = ((str(tmp_path / "absent"), str(use)), (str(lim), str(use)))
    assert memory.cgroup_available(v1) == 2 << 30                          # v1 layout after a missing v2


def test_memory_plan_divides_by_ranks_per_node_and_refuses(monkeypatch):
    from hpcem.parallel.comm import SerialComm

    class TwoPerNode(SerialComm):
        def node_size(self):
            return 2
    monkeypatch.setattr(memory, "node_available", lambda **kw: 10 << 30)
    assert memory.rank_available(TwoPerNode()) == 5 << 30
    logs = []
    plan = memory.MemoryPlan({"a": 2 << 30, "b": 1 << 30}, hint="lower --K")
    assert plan.check(TwoPerNode(), logs.append) == 3 << 30 and "5.00 GiB available" in logs[0]
    big = memory.MemoryPlan({"a": 5 << 30}, hint=lambda have: "at most %.0f GiB" % (have / 2 ** 30))
    with pytest.raises(InputError, match="memory.*GiB.*at most 5 GiB"):
        big.check(TwoPerNode(), logs.append)


@pytest.mark.mpi
def test_ranks_per_node_under_mpiexec(tmp_path):
    from conftest import mpiexec_path

    script = tmp_path / "n.py"
    script.write_text("from hpcem.parallel.comm import get_comm\nc = get_comm()\n"
                      "rows = c.gather((c.rank, c.size, c.node_size()))\nif c.rank == 0:\n    print(repr(rows))\n")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([mpiexec_path(), "-n", "2", sys.executable, str(script)], capture_output=True, text=True,
                       env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert eval(p.stdout.strip()) == [(0, 2, 2), (1, 2, 2)]


# ----------------------------------------------------------------------------- parameters
def test_params_validate_and_build_from_a_dictionary():
    from hpcem.cli.job_class2d import Params

    p = Params.from_dict({"i": "p.star", "o": "Class2D/job001/run", "K": "50", "iter": 7, "--ctf": "yes"})
    assert (p.K, p.iters, p.ctf, p.psi_step) == (50, 7, True, 10.0)
    with pytest.raises(InputError, match="--K"):
        Params.from_dict({"K": 0})
    with pytest.raises(InputError, match="--oversampling"):
        Params(oversampling=3)
    with pytest.raises(InputError, match="nonsense"):
        Params.from_dict({"nonsense": 1})
    with pytest.raises(InputError, match="--psi_step"):
        Params.from_dict({"psi_step": "ten"})


def test_a_job_runs_from_a_dictionary_without_argparse(tmp_path):
    """What a Schemes workflow does: hpcem.cli.main.run_job(name, parameters)."""
    from hpcem.cli.main import run_job
    from hpcem.io.star import read_star

    assert run_job("simulate", {"o": str(tmp_path / "sim"), "n": 60, "box": 16, "mode": "2d", "views": 3}) == 0
    out = tmp_path / "Class2D" / "job001" / "run"
    assert run_job("class2d", {"i": str(tmp_path / "sim" / "particles.star"), "o": str(out), "K": 2, "iter": 2,
                               "psi_step": 30, "offset_range": 1, "ctf": True}) == 0
    assert (tmp_path / "Class2D" / "job001" / "run_it002_classes.mrcs").exists()
    assert len(read_star(str(out) + "_it002_data.star")["particles"]) == 60
    # RELION-style continue into a new rootname
    assert run_job("class2d", {"continue": str(out) + "_it002_optimiser.star", "o": str(out) + "_ct2", "iter": 3}) == 0
    assert (tmp_path / "Class2D" / "job001" / "run_ct2_it003_classes.mrcs").exists()
