"""Two rounds of class2d -> rank_classes (issue 14, stop 31): the shipped scheme
jobs/schemes/clean2d (Class2D -> Select -> Class2D -> Select) runs on a small simulated set with
junk, and each round's selection is a subset of the round before; hpcem.ml.rounds counts a round's
selection against the set's original particles.

The issue's target on the two-round selection over the six 64 px test_large64 sets (purity >= 0.95,
recall >= 0.9 of all true particles) is asserted with HPCEM_FULL_TESTS=1 on rounds made before by
bench/bench_ranker_rounds.py (HPCEM_RANKER_ROUNDS_DIR, with HPCEM_RANKER_LARGE64_DIR the sets)."""
import os
import shutil
from dataclasses import replace

import numpy as np
import pytest

import hpcem
from hpcem.cli.main import run_job
from hpcem.io.star import read_star
from hpcem.workflow.jobstar import read_job_star, write_job_star
from hpcem.workflow.scheme import Scheme

FULL = os.environ.get("HPCEM_FULL_TESTS") == "1"
CLEAN2D = os.path.join(os.path.dirname(hpcem.__file__), "jobs", "schemes", "clean2d")
LARGE64 = ("set000", "set001", "set002", "set004", "set005", "set006")


def _picked(star):
    """The particles of a STAR file, as their indices in the set's one stack."""
    from hpcem.ml.rounds import image_index

    p = read_star(star)["particles"]
    assert p["rlnImageName"].astype(str).str.endswith("particles.mrcs").all()
    return image_index(p)


def _run_clean2d(tmp, *settings):
    """The shipped clean2d scheme on 300 particles (32 px, 30% junk), K 6 then 4, 12 mini-batches."""
    from hpcem.ml.datagen import make_particles, plan
    spec = replace(plan("test", 1, seed=7)[0], n_particles=300, box=32, snr=0.2, junk_fraction=0.3,
                   junk_weights={"noise": 0.4, "contaminant": 0.3, "carbon": 0.3}, diameter=80.0, angpix=3.0,
                   radius_frac=0.28)
    os.makedirs(os.path.join(tmp, "data"))
    make_particles(spec, os.path.join(tmp, "data"))
    shutil.copytree(CLEAN2D, os.path.join(tmp, "Schemes", "clean2d"))
    for job in ("class2d_1", "class2d_2"):
        path = os.path.join(tmp, "Schemes", "clean2d", job, "job.star")
        s = read_job_star(path)
        s.options.update(psi_step="30", offset_range="2", offset_step="2", grad_write_iter="100")
        write_job_star(path, s)
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        assert run_job("schemer", dict(scheme="Schemes/clean2d", quiet=True, run=True, set=[
            "input_particles=data/particles.star", "class2d_K=6", "class2d_K2=4", "class2d_iter=12",
            "particle_diameter=80", "threads=2"] + list(settings))) == 0
    finally:
        os.chdir(cwd)
    return Scheme.read(os.path.join(tmp, "Schemes", "clean2d"))


def test_clean2d_scheme_stops_when_round_one_selects_too_few(tmp_path):
    """No class scores above --min_score 1.01: the scheme logs the count and exits before round 2."""
    s = _run_clean2d(str(tmp_path), "min_score=1.01")
    assert s.current == "EXIT" and s.value("nr_selected_1") == 0 and not s.value("enough_selected_1")
    assert not s.jobs["class2d_2"].started and not s.jobs["select_2"].started and s.jobs["select_1"].started


def test_clean2d_scheme_two_rounds(tmp_path):
    tmp = str(tmp_path)
    s = _run_clean2d(tmp)
    assert s.current == "EXIT" and s.value("enough_selected_1")
    n1, n2 = s.value("nr_selected_1"), s.value("nr_selected_2")
    sel1 = _picked(os.path.join(tmp, s.jobs["select_1"].folder, "particles.star"))
    sel2 = _picked(os.path.join(tmp, s.jobs["select_2"].folder, "particles.star"))
    print("clean2d: 300 particles -> %d -> %d selected" % (n1, n2))
    assert s.value("nr_input") == 300 and sel1.size == n1 and sel2.size == n2
    assert np.isin(sel2, sel1).all() and np.unique(sel1).size == n1 and sel1.max() < 300
    assert 0 < n2 <= n1 < 300      # the junk (30%) is not all kept
    opt2 = s.value("class2d_2_optimiser")
    assert opt2.startswith(s.jobs["class2d_2"].folder) and read_job_star(
        os.path.join(tmp, s.jobs["class2d_2"].folder, "job.star")).options["i"] == \
        os.path.join(s.jobs["select_1"].folder, "particles.star")
    kind = np.load(os.path.join(tmp, "data", "truth.npz"))["kind"]
    picked = sel2
    good = (kind == 0).sum()
    print("round 2: purity %.3f recall %.3f" % ((kind[picked] == 0).mean(), (kind[picked] == 0).sum() / good))
    assert (kind[picked] == 0).sum() >= 0.8 * good     # the particles of the map are kept


@pytest.mark.skipif(not FULL, reason="rounds of the six 64 px sets (~1 h to make): HPCEM_FULL_TESTS=1")
def test_two_rounds_on_large64_unseen_sets(tmp_path):
    """The issue's target (AUC >= 0.95; at --min_score 0.15 purity >= 0.95 and recall >= 0.9 of all
    true particles) on the second round's selection over the six VDAM test_large64 sets."""
    from hpcem.ml import net
    from hpcem.ml.rounds import evaluate_round, pooled, run_rounds

    sets = os.environ.get("HPCEM_RANKER_LARGE64_DIR")
    if not sets:
        pytest.skip("HPCEM_RANKER_LARGE64_DIR: the test_large64 sets (bench/bench_ranker.py --split test_large64)")
    out = os.environ.get("HPCEM_RANKER_ROUNDS_DIR") or str(tmp_path)
    weights = net.load_weights()
    rows = []
    for name in LARGE64:
        opts = run_rounds(os.path.join(sets, name), os.path.join(out, name), weights, 2)
        kind = np.load(os.path.join(sets, name, "truth.npz"))["kind"]
        r1, r2 = (evaluate_round(o, kind, weights) for o in opts)
        assert np.isin(r2["selected_idx"], r1["selected_idx"]).all()
        rows.append(dict(r2, good_total=int((kind == 0).sum())))
        print("%s round 2: purity %.3f recall %.3f" % (name, r2["selected_good"] / max(r2["selected"], 1),
                                                        r2["selected_good"] / rows[-1]["good_total"]))
    s = pooled(rows)
    print("two rounds, six sets: AUC %.3f purity %.3f recall %.3f (perfect ranker: %.3f %.3f)" % (
        s["auc"], s["purity"], s["recall"], s["ideal_purity"], s["ideal_recall"]))
    assert s["auc"] >= 0.95
    assert s["purity"] >= 0.95 and s["recall"] >= 0.9
