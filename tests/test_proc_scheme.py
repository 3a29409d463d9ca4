"""The proc scheme shipped with hpcem (jobs/schemes/proc): particles -> class2d --grad ->
rank_classes -> loop until enough particles are selected -> initial_model -> refine3d, with a fork
that skips the initial model when a reference is given.

* control flow, on a test-only copy whose rank_classes node is a stand-in external job (it keeps
  every particle of the last class2d iteration): too few particles -> the loop waits for more
  input (the schemer stops at exit_maxtime and is started again after the input grew), then
  initial_model -> refine3d; with a reference: refine3d straight after the fork;
* end to end with hpcem's rank_classes on simulated particles of a pseudo-atomic map, reporting
  the refined map's FSC to the truth (after superposition: the initial model's frame is its own);
  skipped until hpcem.cli.job_rank_classes exists.
"""
import importlib.util
import os
import shutil
import sys

import numpy as np
import pytest

import hpcem
from hpcem.cli.main import run_job
from hpcem.io.mrc import read_mrc, write_mrc
from hpcem.io.star import read_star, write_star
from hpcem.workflow.jobstar import JobSpec, read_job_star, write_job_star
from hpcem.workflow.scheme import Scheme

PROC = os.path.join(os.path.dirname(hpcem.__file__), "jobs", "schemes", "proc")
HAS_RANKER = importlib.util.find_spec("hpcem.cli.job_rank_classes") is not None
STANDIN = '''import os, shutil, sys
optimiser, out = sys.argv[1], sys.argv[2]
shutil.copy(optimiser.replace("_optimiser.star", "_data.star"), os.path.join(out, "particles.star"))
print("stand-in ranker: kept every particle of", optimiser)
'''


def _project(tmp, n_particles, box, snr, seed):
    from hpcem.simulate.particles import simulate_dataset
    from hpcem.simulate.write import write_dataset

    d = simulate_dataset(n=box, n_particles=n_particles, angpix=3.0, snr=snr, ctf=True, seed=seed, model="atoms")
    write_dataset(d, os.path.join(tmp, "data"))
    shutil.copytree(PROC, os.path.join(tmp, "Schemes", "proc"))
    return d


def _options(tmp, job, **options):
    path = os.path.join(tmp, "Schemes", "proc", job, "job.star")
    spec = read_job_star(path)
    spec.options.update({k: str(v) for k, v in options.items()})
    write_job_star(path, spec)


def _input(tmp, n):
    """input.star: the first n particles of the simulated set (the input growing on the fly)."""
    b = read_star(os.path.join(tmp, "data", "particles.star"))
    p = b["particles"].iloc[:n].copy()
    p["rlnImageName"] = [s.split("@")[0] + "@data/" + s.split("@")[1] for s in p["rlnImageName"]]
    write_star(os.path.join(tmp, "input.star"), {"optics": b["optics"], "particles": p})


def _schemer(tmp, **values):
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        return run_job("schemer", dict(values, scheme="Schemes/proc", quiet=True))
    finally:
        os.chdir(cwd)


def _folders(tmp):
    return sorted(os.path.join(k, j) for k in ("Class2D", "Select", "External", "InitialModel", "Refine3D")
                  if os.path.isdir(os.path.join(tmp, k)) for j in os.listdir(os.path.join(tmp, k)))


SMALL = dict(class2d=dict(psi_step=30, offset_range=2, offset_step=2, grad_write_iter=100),
             initial_model=dict(offset_range=2, offset_step=2),
             refine3d=dict(iter=2, healpix_order=1, auto_local_healpix_order=2, offset_range=2, offset_step=2))


def test_proc_scheme_control_flow(tmp_path):
    tmp = str(tmp_path)
    d = _project(tmp, 400, 24, 1.0, seed=2)
    for job, opts in SMALL.items():
        _options(tmp, job, **opts)
    with open(os.path.join(tmp, "standin.py"), "w") as f:
        f.write(STANDIN)
    write_job_star(os.path.join(tmp, "Schemes", "proc", "rank_classes", "job.star"), JobSpec("external", {
        "command": "%s standin.py $$class2d_optimiser $$job_dir" % sys.executable}))
    _input(tmp, 200)
    sets = ["input_particles=input.star", "min_nr_parts_3d=300", "wait_sec=0.1", "maxtime_hr=0.0003",
            "class2d_K=3", "class2d_iter=6", "particle_diameter=60", "inimodel_iter=6", "ini_high=20", "threads=2"]
    assert _schemer(tmp, set=sets, run=True) == 0
    s = Scheme.read(os.path.join(tmp, "Schemes", "proc"))
    assert s.current == "EXIT_maxtime" and s.value("current_nr_parts") == 200 and s.value("do_3d") is False
    assert _folders(tmp) == ["Class2D/job001", "External/job002"]
    _input(tmp, 400)                                  # more particles arrive: the loop goes on
    assert _schemer(tmp, run=True) == 0
    s = Scheme.read(os.path.join(tmp, "Schemes", "proc"))
    assert s.current == "EXIT" and s.value("current_nr_parts") == 400 and s.value("has_iniref") is False
    assert _folders(tmp) == ["Class2D/job001", "Class2D/job003", "External/job002", "External/job004",
                             "InitialModel/job005", "Refine3D/job006"]
    assert s.value("class2d_optimiser") == "Class2D/job003/run_it006_optimiser.star"
    assert read_job_star(os.path.join(tmp, "Refine3D", "job006", "job.star")).options["ref"] == \
        "InitialModel/job005/initial_model.mrc"
    assert os.path.exists(os.path.join(tmp, "Refine3D", "job006", "run_class001.mrc"))
    # with a reference the fork skips the initial model
    truth = np.asarray(d.volumes[0], np.float32)
    write_mrc(os.path.join(tmp, "ref.mrc"), truth, 3.0)
    assert _schemer(tmp, set=["iniref=ref.mrc"], set_current_node="CHECK_iniref", run=True) == 0
    assert _folders(tmp)[-2:] == ["Refine3D/job006", "Refine3D/job007"] and "InitialModel/job007" not in _folders(tmp)
    assert read_job_star(os.path.join(tmp, "Refine3D", "job007", "job.star")).options["ref"] == "ref.mrc"
    assert os.path.exists(os.path.join(tmp, "Refine3D", "job007", "run_class001.mrc"))


@pytest.mark.skipif(not HAS_RANKER, reason="hpcem rank_classes (issue 14 part 1) is not in this build yet: "
                                           "hpcem.cli.job_rank_classes does not exist")
def test_proc_scheme_end_to_end(tmp_path):
    from hpcem.core.align3d import aligned_resolution

    tmp = str(tmp_path)
    d = _project(tmp, 600, 32, 0.3, seed=5)
    for job, opts in E2E.items():
        _options(tmp, job, **opts)
    _input(tmp, 600)
    sets = ["input_particles=input.star", "min_nr_parts_3d=300", "wait_sec=0.1", "maxtime_hr=0.01",
            "class2d_K=6", "class2d_iter=20", "particle_diameter=90", "inimodel_iter=30", "ini_high=30",
            "threads=2"]
    assert _schemer(tmp, set=sets, run=True) == 0
    s = Scheme.read(os.path.join(tmp, "Schemes", "proc"))
    assert s.current == "EXIT", "the scheme did not reach refine3d: %d particles selected" % s.value("current_nr_parts")
    refined = read_mrc(os.path.join(tmp, s.jobs["refine3d"].folder, "run_class001.mrc"))[0]
    truth = np.asarray(d.volumes[0], np.float64)
    res, _, al = aligned_resolution(truth, refined, 3.0)
    print("proc scheme: %d of 600 particles selected, refined map FSC 0.5 to the truth at %.2f A (hand flipped: %s)"
          % (s.value("current_nr_parts"), res, al.flipped))
    assert s.value("current_nr_parts") >= 540     # simulated particles of one map: (nearly) all good
    assert res < 4 * 3.0                          # with every particle kept (stand-in ranker): 6.67 A


E2E = dict(class2d=dict(psi_step=15, offset_range=2, offset_step=1),
           initial_model=dict(offset_range=2, offset_step=1),
           refine3d=dict(iter=4, healpix_order=1, auto_local_healpix_order=3, offset_range=2, offset_step=1))
