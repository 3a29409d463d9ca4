"""hpcem rank_classes (issue 14, part 1): the class ranker on an hpcem class2d job of a simulated
set of known composition never used in training (other map, other SNR), RELION's Select outputs,
the selection rules, the weights file's safety, numpy against torch, and training.

The issue's numbers (AUC >= 0.95; at --min_score 0.15 purity >= 0.95 and recall >= 0.9) are
asserted with HPCEM_FULL_TESTS=1 on unseen sets in realistic boxes (64 px and 128 px); on the 32-36 px
splits (12 small sets, 3 large ones), where no class selection reaches them, AUC >= 0.95 as stated and
purity and recall within ORACLE_MARGIN of the perfect ranker's (bench/bench_ranker.py prints them too)."""
import os
import pickle

import numpy as np
import pytest

from hpcem.errors import InputError
from hpcem.ml import net
from hpcem.ml.select import UNSCORED, select_classes

FULL = os.environ.get("HPCEM_FULL_TESTS") == "1"


# ---------------------------------------------------------------- weights files
class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))       # would create the marker file if ever unpickled


def test_hostile_weights_are_refused(tmp_path, run_hpcem):
    """An .npz holding an object array (a pickle) is refused with one line, and never unpickled."""
    marker = str(tmp_path / "pwned")
    w = dict(net.load_weights())
    w["fc1_w"] = np.array([_Evil(marker)], dtype=object)
    bad = str(tmp_path / "evil.npz")
    np.savez(bad, format=np.asarray(net.FORMAT), feature_names=np.asarray(net.NAMES), **w)
    with pytest.raises(InputError, match="refused"):
        net.load_weights(bad)
    p = run_hpcem(["rank_classes", "--i", str(tmp_path), "--o", str(tmp_path / "Select"), "--model", bad],
                  check=False)
    assert p.returncode == 2
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and "refused" in err[0] and "evil.npz" in err[0]
    assert not os.path.exists(marker)
    pickle.dumps(_Evil(marker))      # the payload is a real pickle (the test can fail)


def test_weights_are_checked(tmp_path):
    w = net.load_weights()
    path = str(tmp_path / "w.npz")
    net.save_weights(path, w)
    assert all(np.array_equal(net.load_weights(path)[k], w[k]) for k in w)
    bad = dict(w, fc1_w=w["fc1_w"][:, :-1])
    np.savez(path, format=np.asarray(net.FORMAT), feature_names=np.asarray(net.NAMES), **bad)
    with pytest.raises(InputError, match="fc1_w"):
        net.load_weights(path)
    np.savez(path, format=np.asarray("something-else"), feature_names=np.asarray(net.NAMES), **w)
    with pytest.raises(InputError, match="format"):
        net.load_weights(path)
    with pytest.raises(InputError, match="not found"):
        net.load_weights(str(tmp_path / "missing.npz"))


# ---------------------------------------------------------------- network and training
def _toy_examples(n=48, seed=0):
    """Discs (target 1) and noise (target 0) with features that carry half the answer."""
    rng = np.random.default_rng(seed)
    c = np.arange(64) - 32
    disc = (np.hypot(c[:, None], c[None, :]) < 14).astype(np.float32)
    y = (np.arange(n) % 2).astype(np.float32)
    imgs = rng.standard_normal((n, 64, 64)).astype(np.float32) + 2.0 * y[:, None, None] * disc
    feats = rng.standard_normal((n, len(net.NAMES))) + 0.5 * y[:, None]
    return imgs, feats, y


def test_numpy_inference_equals_torch():
    torch = pytest.importorskip("torch")
    from hpcem.ml.train import build_model, load_into

    imgs, feats, _ = _toy_examples(8)
    w = net.load_weights()
    model = build_model(torch)
    load_into(model, w, torch)
    z = net.standardise(feats, w)
    with torch.no_grad():
        ref = model(torch.from_numpy(imgs[:, None]), torch.from_numpy(z)).numpy()
    assert np.abs(net.forward(imgs, z, w) - ref).max() < 1e-5


def test_training_is_reproducible_and_learns():
    pytest.importorskip("torch")
    from hpcem.ml.train import fit

    imgs, feats, y = _toy_examples(32)
    w1, h1 = fit(imgs, feats, y, epochs=8, lr=3e-3, batch=16, seed=3, log=None)
    w2, h2 = fit(imgs, feats, y, epochs=8, lr=3e-3, batch=16, seed=3, log=None)
    assert h1 == h2 and all(np.array_equal(w1[k], w2[k]) for k in w1)
    assert h1[-1] < 0.7 * h1[0]
    w3, _ = fit(imgs, feats, y, epochs=1, seed=4, log=None)
    assert not np.array_equal(w1["conv0_w"], w3["conv0_w"])


def test_fine_tuning_with_slower_convolution_layers():
    """fit(conv_lr_scale=...) (ship.py --conv_lr_scale, issue 14 stop 38 retrain): the convolution layers
    learn at that multiple of lr; at 0 they stay the given weights' while the head moves."""
    pytest.importorskip("torch")
    from hpcem.ml.train import fit

    imgs, feats, y = _toy_examples(16)
    start = net.load_weights()
    w, _ = fit(imgs, feats, y, init=start, epochs=2, lr=1e-3, batch=8, seed=1, conv_lr_scale=0.0, log=None)
    assert all(np.array_equal(w[k], start[k]) for k in w if k.startswith("conv"))
    assert not np.allclose(w["fc1_w"], start["fc1_w"])
    w, _ = fit(imgs, feats, y, init=start, epochs=2, lr=1e-3, batch=8, seed=1, log=None)
    assert not np.array_equal(w["conv0_w"], start["conv0_w"])


# ---------------------------------------------------------------- selection rules (RELION's)
def test_selection_rules():
    scores = np.array([0.9, 0.1, 0.5, UNSCORED, 0.12, 0.05])
    counts = np.array([100, 300, 50, 5, 80, 400])
    assert select_classes(scores, counts, 0.15).tolist() == [1, 0, 1, 0, 0, 0]
    # at least 250 particles: add the best of the rest (0.12: 80, then 0.1: 300) until reached
    assert select_classes(scores, counts, 0.15, min_particles=250).tolist() == [1, 1, 1, 0, 1, 0]
    assert select_classes(scores, counts, 0.15, min_classes=3).tolist() == [1, 0, 1, 0, 1, 0]
    assert select_classes(scores, counts, 0.95, min_classes=10).tolist() == [1, 1, 1, 0, 1, 1]


def test_reclassify_links_what_it_does_not_rerun(tmp_path):
    """datagen --reclassify: VDAM sets and EM sets not named are linked as they are (their
    classification unchanged); a set that is already done is not run again."""
    import json

    from hpcem.ml.datagen import reclassify

    src, out = tmp_path / "src", tmp_path / "out"
    for name, grad in (("set000", True), ("set001", False)):
        (src / name).mkdir(parents=True)
        (src / name / "done.json").write_text(json.dumps({"grad": grad}))
    (src / "set002").mkdir()                                    # unfinished: no done.json
    done = reclassify(str(src), str(out), names=("set009",), log=None)
    assert [os.path.basename(d) for d in done] == ["set000", "set001"]
    assert all(os.path.islink(d) and os.path.samefile(d, src / os.path.basename(d)) for d in done)
    assert not os.path.exists(out / "set002")


def test_generate_only_named_sets(tmp_path):
    """generate(names=...) returns (or makes) only the named sets: the large splits' EM sets are left
    out this way (all three are marked finished here, so that nothing is simulated either way)."""
    from hpcem.ml.datagen import generate

    for name in ("set000", "set001", "set002"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "done.json").write_text("{}")
    done = generate(str(tmp_path), "test_large64", 3, names=("set000", "set002"), log=None)
    assert [os.path.basename(d) for d in done] == ["set000", "set002"]


def test_large_split_plan():
    """datagen --split test_large: sets of realistic size (15,000-30,000 particles, K 50-100) on maps
    no other split uses, every SNR of the test split within four sets, VDAM with RELION's 200
    mini-batches and every fourth set EM; --split test_large64 the same in 64 px boxes on maps of
    its own, SNR 0.035 first; the other splits' plans are unchanged by them."""
    from hpcem.ml.datagen import SNR, plan

    large = plan("test_large", 8)
    assert all(15_000 <= s.n_particles <= 30_000 and 50 <= s.K <= 100 and s.box in (32, 36) for s in large)
    assert sorted(s.snr for s in large[:4]) == sorted(SNR["test"])
    assert [s.grad for s in large] == [True, True, True, False] * 2
    assert {s.iters for s in large if s.grad} == {200}
    others = {s.map_seed for split in ("train", "test", "test64") for s in plan(split, 60)}
    assert not others & {s.map_seed for s in large}
    assert (large[0].n_particles, large[0].K, large[0].snr) == (20899, 80, 0.07)   # stop 28's stored set000
    large64 = plan("test_large64", 8)      # the same recipe in 64 px boxes, the hardest SNRs first
    assert all(15_000 <= s.n_particles <= 30_000 and 50 <= s.K <= 100 and s.box == 64 for s in large64)
    assert [s.snr for s in large64[:4]] == [0.035, 0.07, 0.14, 0.28]
    assert [s.grad for s in large64] == [True, True, True, False] * 2
    assert {s.iters for s in large64 if s.grad} == {200}
    assert not (others | {s.map_seed for s in plan("test_large", 60)}) & {s.map_seed for s in plan("test_large64", 60)}
    assert [(s.n_particles, s.K) for s in large64[:7] if s.grad] == [       # stop 30's six VDAM sets
        (17404, 64), (21070, 64), (15378, 80), (27047, 50), (22884, 80), (17315, 64)]
    large128 = plan("test_large128", 8)    # the 64 px recipe's particles sampled twice as finely (stop 35)
    assert all(10_000 <= s.n_particles <= 20_000 and s.K in (50, 64) and s.box == 128 for s in large128)
    assert all(1.3 <= s.angpix <= 1.8 and (s.shift_px, s.offset_step) == (4.0, 2.0) for s in large128)
    assert [s.snr for s in large128[:4]] == [0.035, 0.07, 0.14, 0.28]
    assert [s.grad for s in large128] == [True, True, True, False] * 2
    seen = others | {s.map_seed for split in ("test_large", "test_large64") for s in plan(split, 60)}
    assert not seen & {s.map_seed for s in plan("test_large128", 60)}
    assert [(s.n_particles, s.K) for s in large128[:3]] == [(14705, 50), (15633, 64), (16399, 64)]
    assert {(s.shift_px, s.offset_step) for s in large64} == {(2.0, 1.0)}     # the other splits unchanged
    first = plan("test", 1)[0]      # as before the split was added (the stored test sets, stops 26-27)
    assert (first.n_particles, first.K, first.snr) == (1083, 16, 0.035)
    t128 = plan("train128", 12)     # training sets at test_large128's sampling (stop 36)
    assert all(6_000 <= s.n_particles <= 9_000 and s.K == 50 and s.box == 128 and s.grad for s in t128)
    assert all(1.3 <= s.angpix <= 1.8 and (s.shift_px, s.offset_step) == (4.0, 2.0) for s in t128)
    assert [s.snr for s in t128[:4]] == list(SNR["train"])
    assert all("noise" in s.junk_weights and "carbon" not in s.junk_weights for s in t128)
    assert all(np.isclose(sum(s.junk_weights.values()), 1.0) for s in t128)
    tests = seen | {s.map_seed for s in plan("test_large128", 60)}
    assert not (tests | {s.map_seed for s in plan("train", 60)}) & {s.map_seed for s in plan("train128", 60)}
    t32 = plan("train_large32", 12)   # 32-36 px low-SNR training sets at K 100 (stop 38 retrain)
    assert all(10_000 <= s.n_particles <= 14_000 and s.K == 100 and s.box in (32, 36) and s.grad for s in t32)
    assert [s.snr for s in t32[:4]] == [0.02, 0.05, 0.02, 0.05] and all("carbon" in s.junk_weights for s in t32)
    assert {(s.shift_px, s.offset_step, s.iters) for s in t32} == {(2.0, 1.0, 200)}
    others = tests | {s.map_seed for split in ("train", "train128") for s in plan(split, 60)}
    assert not others & {s.map_seed for s in plan("train_large32", 60)}
    assert (t32[0].n_particles, t32[0].box, t32[4].box) == (12613, 36, 32)    # the sets made at that stop


def test_perfect_ranker_curve():
    """Hand-computed: classes of 100 (90% good), 50 (60% good) and 200 (0% good) particles, 150
    good particles in the set (30 of them in no scored class)."""
    from hpcem.ml.evaluate import perfect_ranker_curve

    rows = [{"p_good": np.array([0.9, 0.6]), "counts": np.array([100.0, 50.0]), "good_total": 100.0},
            {"p_good": np.array([0.0]), "counts": np.array([200.0]), "good_total": 50.0}]
    (s1, pur1, rec1), (s2, pur2, rec2) = perfect_ranker_curve(rows, shares=(0.5, 0.8))
    assert (s1, s2) == (0.5, 0.8)
    assert np.isclose(pur1, 120 / 150) and np.isclose(rec1, 120 / 150)
    assert np.isclose(pur2, 0.9) and np.isclose(rec2, 90 / 150)


# ---------------------------------------------------------------- a classification of known composition
@pytest.fixture(scope="module")
def classified(tmp_path_factory):
    """A test-split set (a map and an SNR not in training) with 35% junk of four kinds, classified
    by 8 EM iterations of hpcem class2d (K = 10, 800 particles, 32 px)."""
    from dataclasses import replace

    from hpcem.ml.datagen import classify, make_particles, plan

    d = str(tmp_path_factory.mktemp("ranker_set"))
    spec = replace(plan("test", 1, seed=7)[0], n_particles=800, box=32, K=10, grad=False, iters=8, snr=0.14,
                   junk_fraction=0.35, junk_weights={"noise": 0.3, "contaminant": 0.25, "carbon": 0.2,
                                                     "aggregate": 0.25}, diameter=80.0, angpix=3.0, radius_frac=0.28)
    star = make_particles(spec, d)
    return d, classify(spec, d, star, threads=2)


def test_ranker_separates_good_from_junk_classes(classified):
    """The shipped weights, in numpy, on an unseen classification: good classes (at least half good
    particles) rank above junk classes (AUC), --min_score 0.15 keeps nearly every good particle,
    and at 0.5 the selection is as pure as a perfect ranker's (the classes of at least 74% good
    particles) and keeps as many good particles.  The issue's purity target at 0.15 (>= 0.95) is
    not met on this set (0.83, mixed classes selected; see DESIGN_NOTES): the gated 12-set test
    asserts it."""
    from hpcem.metrics import roc_auc
    from hpcem.ml.classjob import ClassJob
    from hpcem.ml.evaluate import ORACLE_SHARE
    from hpcem.ml.select import score_job
    from hpcem.ml.trainset import good_share

    d, opt = classified
    job = ClassJob.read(opt)
    kind = np.load(os.path.join(d, "truth.npz"))["kind"]
    scores = score_job(job, net.load_weights())
    p = good_share(job, kind)
    live = scores > UNSCORED

    def purity_recall(sel):
        good_sel = (p * job.counts)[sel].sum()
        return good_sel / job.counts[sel].sum(), good_sel / (kind == 0).sum()

    auc = roc_auc(scores[live], p[live] >= 0.5)
    purity, recall = purity_recall(select_classes(scores, job.counts, 0.15))
    purity_50, recall_50 = purity_recall(select_classes(scores, job.counts, 0.5))
    ideal_purity, ideal_recall = purity_recall(live & (p >= ORACLE_SHARE))
    print("AUC %.3f; min_score 0.15: purity %.3f recall %.3f; 0.5: purity %.3f recall %.3f; perfect ranker: "
          "purity %.3f recall %.3f\nscores %s\ngood share %s" % (auc, purity, recall, purity_50, recall_50,
                                                               ideal_purity, ideal_recall, np.round(scores, 2),
                                                               np.round(p, 2)))
    assert auc >= 0.95 and recall >= 0.9
    assert purity_50 >= ideal_purity - 0.01 and recall_50 >= ideal_recall - 0.05


def test_rank_classes_writes_relion_select_outputs(classified, tmp_path, monkeypatch):
    from hpcem.cli.main import run_job
    from hpcem.io.mrc import read_mrc
    from hpcem.io.particles import ParticleSet
    from hpcem.io.star import read_star

    d, opt = classified
    monkeypatch.chdir(tmp_path)                     # a project folder elsewhere: paths must still resolve
    run_job("rank_classes", {"i": opt, "o": "Select/job005/", "min_score": "0.15"})
    ranked = read_star("Select/job005/rank_model.star")["model_classes"]
    data = read_star(opt.replace("optimiser", "data"))["particles"]
    sel = ranked["rlnClassScore"].to_numpy() >= 0.15
    avgs = read_star("Select/job005/class_averages.star")[""]
    assert len(avgs) == sel.sum() and (avgs["rlnClassScore"] >= 0.15).all()
    for col in ("rlnReferenceImage", "rlnClassDistribution", "rlnAccuracyRotations",
                "rlnAccuracyTranslationsAngst", "rlnEstimatedResolution", "rlnNrOfParticles"):
        assert col in avgs.columns
    idx, stack = avgs["rlnReferenceImage"].iloc[0].split("@")
    assert read_mrc(stack)[0].shape[0] >= int(idx)
    parts = ParticleSet.read("Select/job005/particles.star")      # image stacks resolve from here
    assert parts.n == int(ranked["rlnNrOfParticles"][sel].sum())
    assert parts.n == int(np.isin(data["rlnClassNumber"], np.flatnonzero(sel) + 1).sum())
    assert parts.read_images([0]).shape == (1, 32, 32)
    assert os.path.getsize("Select/job005/class_averages.png") > 1000
    assert read_star("Select/job005/backup_selection.star")[""]["rlnSelected"].tolist() == sel.astype(int).tolist()
    # RELION's minimum-selection flags: everything scored once min particles exceeds the set
    run_job("rank_classes", {"i": opt, "o": "Select/job006/", "min_score": 0.99, "select_min_nr_particles": 10 ** 6})
    all_scored = read_star("Select/job006/rank_model.star")["model_classes"]["rlnClassScore"] > UNSCORED
    assert len(read_star("Select/job006/class_averages.star")[""]) == all_scored.sum()
    run_job("rank_classes", {"i": opt, "o": "Select/job007/", "min_score": 1.01, "select_min_nr_classes": 3})
    best3 = read_star("Select/job007/class_averages.star")[""]["rlnClassScore"].to_numpy()
    assert np.allclose(np.sort(best3)[::-1], np.sort(ranked["rlnClassScore"].to_numpy())[::-1][:3])


def test_montage_is_ordered_by_score_and_labelled(classified, tmp_path, monkeypatch):
    """class_averages.png (issue 14: "a montage PNG ordered by score with the scores printed on it"):
    the tiles handed to the plot are the class averages in descending score order, each labelled
    with its class number, its score to two decimals and a star when selected."""
    import hpcem.plots
    from hpcem.cli.main import run_job
    from hpcem.io.star import read_star
    from hpcem.ml.classjob import ClassJob

    d, opt = classified
    seen, real = {}, hpcem.plots.montage

    def spy(path, images, labels=None, **kw):
        seen.update(images=np.asarray(images), labels=list(labels))
        return real(path, images, labels=labels, **kw)
    monkeypatch.setattr(hpcem.plots, "montage", spy)
    out = str(tmp_path / "Select")
    run_job("rank_classes", {"i": opt, "o": out, "min_score": 0.15})
    scores = read_star(os.path.join(out, "rank_model.star"))["model_classes"]["rlnClassScore"].to_numpy()
    order = np.argsort(-scores, kind="stable")
    assert np.all(np.diff(scores[order]) <= 0) and len(seen["labels"]) == scores.size
    assert np.allclose(seen["images"], ClassJob.read(opt).images[order])
    for k, label in zip(order, seen["labels"]):
        number, rest = label.split(": ")
        assert int(number) == k + 1 and rest.endswith(" *") == (scores[k] >= 0.15)
        if scores[k] > UNSCORED:
            assert abs(float(rest.rstrip(" *")) - scores[k]) <= 0.005
    assert os.path.getsize(os.path.join(out, "class_averages.png")) > 1000


def test_ranking_needs_no_torch(classified, tmp_path):
    """The installed hpcem's rank_classes in a fresh interpreter where `import torch` fails (a
    torch.py that raises, first on sys.path; checked, so the test can fail): scoring runs in numpy
    from the shipped weights, and the scores equal the in-process ones."""
    import subprocess
    import sys

    from hpcem.cli.main import run_job
    from hpcem.io.star import read_star

    d, opt = classified
    block = tmp_path / "block"
    block.mkdir()
    (block / "torch.py").write_text("raise ImportError('torch is blocked by this test')\n")
    code = ("import sys\ntry:\n    import torch\n    sys.exit(3)\nexcept ImportError:\n    pass\n"
            "from hpcem.cli.main import main\nsys.exit(main(sys.argv[1:]))")
    env = dict(os.environ, PYTHONPATH=str(block), OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-c", code, "rank_classes", "--i", opt, "--o", str(tmp_path / "numpy"),
                        "--min_score", "0.15"], cwd=str(tmp_path), env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    run_job("rank_classes", {"i": opt, "o": str(tmp_path / "here"), "min_score": 0.15})
    scores = [read_star(str(tmp_path / s / "rank_model.star"))["model_classes"]["rlnClassScore"].to_numpy()
              for s in ("numpy", "here")]
    assert np.allclose(scores[0], scores[1], atol=1e-6)
    assert os.path.getsize(str(tmp_path / "numpy" / "particles.star")) > 0


def test_ship_fine_tunes_the_given_weights(classified, tmp_path):
    """python -m hpcem.ml.ship --init W (issue 14, stop 36: the 128 px training sets on top of the
    shipped weights): training starts from W and keeps W's feature standardisation; without --init
    the standardisation is the data's own."""
    pytest.importorskip("torch")
    from hpcem.ml.ship import train_shipped

    d, opt = classified
    s = tmp_path / "data" / "set000"
    s.mkdir(parents=True)
    for f in ("truth.npz", "Class2D"):
        os.symlink(os.path.join(d, f), str(s / f))
    (s / "done.json").write_text('{"optimiser": "Class2D/%s"}' % os.path.basename(opt))
    shipped = net.load_weights()
    out = str(tmp_path / "tuned.npz")
    train_shipped([str(tmp_path / "data")], out, epochs=1, lr=1e-6, init=net.SHIPPED, log=None)
    tuned = net.load_weights(out)
    assert int(np.load(out)["fine_tuned"]) == 1
    assert np.array_equal(tuned["feat_mean"], shipped["feat_mean"])
    assert np.allclose(tuned["fc1_w"], shipped["fc1_w"], atol=1e-4)
    train_shipped(str(tmp_path / "data"), out, epochs=1, log=None)
    assert not np.allclose(net.load_weights(out)["feat_mean"], shipped["feat_mean"])


def test_train_on_own_selection(classified, tmp_path):
    """--train fine-tunes the shipped weights on a Select job's class_averages.star; the new
    weights load, and rank the classes it was taught in the taught order."""
    pytest.importorskip("torch")
    from hpcem.cli.main import run_job
    from hpcem.metrics import roc_auc
    from hpcem.ml.classjob import ClassJob
    from hpcem.ml.select import score_job
    from hpcem.ml.trainset import read_labels, selection_targets

    d, opt = classified
    sel_dir = str(tmp_path / "Select")
    run_job("rank_classes", {"i": opt, "o": sel_dir, "min_score": 0.5})
    out = str(tmp_path / "mine.npz")
    run_job("rank_classes", {"train": True, "i": [os.path.dirname(opt)], "labels": [sel_dir + "/class_averages.star"],
                             "o": out, "epochs": 3})
    job = ClassJob.read(opt)
    labels = selection_targets(job, read_labels([sel_dir + "/class_averages.star"]))
    s = score_job(job, net.load_weights(out))
    live = s > UNSCORED
    assert labels.sum() >= 1 and roc_auc(s[live], labels[live] > 0) > 0.9
    assert os.path.isfile(str(tmp_path / "mine_loss.png"))


def _tiny_class2d(folder):
    """A second, tiny classification (300 particles, 35% junk, K 6, 3 EM iterations; ~4 s) in
    ``folder/Class2D/job007/``, RELION's layout (a Select job names its classes by folder and file)."""
    from dataclasses import replace

    from hpcem.cli.main import run_job
    from hpcem.ml.datagen import make_particles, plan

    spec = replace(plan("test", 1, seed=7)[0], n_particles=300, box=32, K=6, grad=False, iters=3, snr=0.14, seed=11,
                   junk_fraction=0.35, junk_weights={"noise": 0.5, "carbon": 0.5}, diameter=80.0, angpix=3.0,
                   radius_frac=0.28)
    os.makedirs(folder)
    star = make_particles(spec, folder)
    run_job("class2d", {"i": star, "o": os.path.join(folder, "Class2D", "job007", "run"), "K": 6, "iters": 3,
                        "particle_diameter": 80.0, "ctf": True, "psi_step": 15.0, "offset_range": spec.shift_px,
                        "offset_step": spec.offset_step, "random_seed": 3, "j": 1})
    return os.path.join(folder, "Class2D", "job007", "run_it003_optimiser.star")


def test_train_on_two_jobs_and_use_the_model(classified, tmp_path, monkeypatch, capsys):
    """--train with two class2d jobs in one call, each labelled by its own Select job (one by its
    class_averages.star, one by its particles.star): both jobs' labels are read (the per-job and total counts in the log), the
    weights record both jobs, and --model ranks with them.  A bad label file is one InputError
    naming the file and --labels (missing, no class column, a malformed rlnReferenceImage), raised
    before any training."""
    pytest.importorskip("torch")
    from hpcem.cli.main import run_job
    from hpcem.io.star import read_star
    from hpcem.ml.classjob import ClassJob
    from hpcem.ml.select import score_job

    opt_a = classified[1]
    monkeypatch.chdir(tmp_path)
    opt_b = _tiny_class2d(str(tmp_path / "b"))
    run_job("rank_classes", {"i": opt_a, "o": "Select/job010", "min_score": 0.5})
    run_job("rank_classes", {"i": opt_b, "o": "Select/job011", "min_score": 1.01, "select_min_nr_classes": 2})
    n_a, n_b = (len(read_star("Select/%s/class_averages.star" % j)[""]) for j in ("job010", "job011"))
    labels = ["Select/job010/class_averages.star", "Select/job011/particles.star"]     # both kinds of label file
    job_a, job_b = ClassJob.read(opt_a), ClassJob.read(opt_b)
    assert n_a >= 1 and n_b == 2
    capsys.readouterr()
    run_job("rank_classes", {"train": True, "i": [os.path.dirname(opt_a), os.path.dirname(opt_b)], "labels": labels,
                             "o": "mine.npz", "epochs": 2})
    log = capsys.readouterr().out
    assert "%s: %d classes, %d selected" % (job_a.optimiser, job_a.live().size, n_a) in log
    assert "%s: %d classes, %d selected" % (job_b.optimiser, job_b.live().size, n_b) in log
    assert "%d classes (%d selected) from 2 jobs" % (job_a.live().size + job_b.live().size, n_a + n_b) in log
    assert [os.path.basename(x) for x in np.load("mine.npz")["trained_on"]] == ["Class2D", "job007"]

    run_job("rank_classes", {"i": opt_b, "o": "Select/job012", "model": "mine.npz", "min_score": 0.0})
    ranked = read_star("Select/job012/class_averages.star")[""]
    k = ranked["rlnReferenceImage"].astype(str).str.split("@").str[0].astype(int).to_numpy() - 1
    mine, shipped = score_job(job_b, net.load_weights("mine.npz")), score_job(job_b, net.load_weights())
    assert np.allclose(ranked["rlnClassScore"].to_numpy(float), mine[k], atol=1e-5)
    assert not np.allclose(mine[k], shipped[k], atol=1e-3)

    with open("no_class.star", "w") as f:
        f.write("data_\nloop_\n_rlnClassNumber #1\n1\n2\n")
    with open("bad_ref.star", "w") as f:
        f.write("data_\nloop_\n_rlnReferenceImage #1\nrun_it003_classes.mrcs\n")
    for bad in ("missing.star", "no_class.star", "bad_ref.star"):
        with pytest.raises(InputError) as err:
            run_job("rank_classes", {"train": True, "i": [os.path.dirname(opt_b)], "labels": [labels[0], bad],
                                     "o": "bad.npz", "epochs": 1})
        assert err.value.file == bad and err.value.field == "--labels"
        assert str(err.value).startswith(bad + ": --labels: ")
    assert not os.path.exists("bad.npz")


# How far the ranker's purity and recall may fall below the perfect (oracle) ranker's on the same
# classifications of the 32-36 px splits, where no class selection reaches the issue's numbers.
ORACLE_MARGIN = 0.03


def _assert_issue_target(folder, split, count, names=(), select_dir=None, oracle_margin=None):
    """Make (or reuse) ``count`` sets of ``split`` in ``folder`` (only ``names`` of them if given),
    rank them with the shipped weights and assert the issue's target as the issue states it: AUC
    >= 0.95, and the particles selected at --min_score 0.15 >= 95% true particles while keeping
    >= 90% of them.  With ``oracle_margin`` (the 32-36 px splits) purity and recall must instead be
    within that margin of the perfect ranker's on the same classifications, or reach the issue's
    number if that is lower.  With ``select_dir`` each set is also ranked by ``hpcem rank_classes`` into
    ``select_dir/setNNN`` and its particles.star, counted against the truth, must hold the same
    particles as the evaluation's selection."""
    from hpcem.ml.datagen import generate
    from hpcem.ml.evaluate import evaluate_set, row_line, summarise

    rows = [evaluate_set(d, net.load_weights()) for d in generate(folder, split, count, names=names)]
    for r in rows:
        print(row_line(r))
        if select_dir:
            _check_rank_classes_selection(os.path.join(folder, r["set"]), os.path.join(select_dir, r["set"]), r)
    s = summarise(rows)
    print("AUC %.3f purity %.3f recall %.3f (perfect ranker: purity %.3f recall %.3f)" % (
        s["auc"], s["purity"], s["recall"], s["ideal_purity"], s["ideal_recall"]))
    assert s["auc"] >= 0.95
    purity, recall = 0.95, 0.9
    if oracle_margin is not None:
        purity = min(purity, s["ideal_purity"] - oracle_margin)
        recall = min(recall, s["ideal_recall"] - oracle_margin)
        print("asserted: purity >= %.3f recall >= %.3f (the perfect ranker's less %.2f, at most the issue's)" % (
            purity, recall, oracle_margin))
    assert s["purity"] >= purity and s["recall"] >= recall


def test_issue_target_against_the_oracle(monkeypatch):
    """The 32-36 px reading of the target, on made-up pooled numbers: the issue's own numbers where the
    perfect ranker exceeds them by the margin, the perfect ranker's less the margin where it does not."""
    import hpcem.ml.datagen as datagen
    import hpcem.ml.evaluate as evaluate

    summary = {}
    monkeypatch.setattr(datagen, "generate", lambda *a, **k: [])
    monkeypatch.setattr(evaluate, "summarise", lambda rows: dict(summary))
    def check(**kw):
        summary.clear()
        summary.update(kw)
        _assert_issue_target("unused", "test", 0, oracle_margin=ORACLE_MARGIN)
    check(auc=0.96, purity=0.90, recall=0.88, ideal_purity=0.926, ideal_recall=0.898)     # 0.896 / 0.868
    check(auc=0.96, purity=0.95, recall=0.90, ideal_purity=0.99, ideal_recall=0.99)       # the issue's
    for bad in (dict(purity=0.89, recall=0.95), dict(purity=0.93, recall=0.86)):
        with pytest.raises(AssertionError):
            check(auc=0.96, ideal_purity=0.926, ideal_recall=0.898, **bad)
    with pytest.raises(AssertionError):
        check(auc=0.94, purity=0.95, recall=0.95, ideal_purity=0.95, ideal_recall=0.95)
    with pytest.raises(AssertionError):
        check(auc=0.96, purity=0.945, recall=0.95, ideal_purity=0.99, ideal_recall=0.99)


# The 32-36 px splits (issue 14, stop 38, the lead's reading): the project's boxes are 64-256 px, where
# the issue's numbers are asserted as stated (the 64 px and 128 px tests below).  In 32-36 px boxes
# no class selection reaches purity 0.95 and recall 0.9 (stop 37: the perfect ranker, which selects
# every class of at least 74% true particles, gets 0.926 / 0.898 on the twelve sets, 0.951 / 0.956
# on the three large ones), so there the tests assert AUC >= 0.95 as stated and purity and recall
# within ORACLE_MARGIN of the perfect ranker's on the same classifications (or the issue's number if
# that is lower): the ranker must lose no more than 0.03 to what the classification allows.


@pytest.mark.skipif(not FULL, reason="12 unseen classifications (~20 min): HPCEM_FULL_TESTS=1")
def test_ranker_on_twelve_unseen_sets(tmp_path):
    """Twelve small 32-36 px sets (1,000-1,700 particles, K 12-20); AUC >= 0.95, purity and recall
    within ORACLE_MARGIN of the perfect ranker's (see above).  HPCEM_RANKER_TWELVE_DIR keeps the sets
    there or reuses sets made before (bench/bench_ranker.py --split test; deterministic)."""
    _assert_issue_target(os.environ.get("HPCEM_RANKER_TWELVE_DIR") or str(tmp_path), "test", 12,
                         oracle_margin=ORACLE_MARGIN)


@pytest.mark.skipif(not FULL, reason="3 unseen classifications of realistic size (~31 min): HPCEM_FULL_TESTS=1")
def test_ranker_on_large_unseen_sets(tmp_path):
    """The issue's target on classifications of the size users run (issue 14, stop 28): the first
    three ``--split test_large`` sets (18,000-22,000 particles, K 80-100, VDAM with 200
    mini-batches, SNR 0.07 / 0.035 / 0.14).  HPCEM_RANKER_LARGE_DIR reuses sets made before (by
    bench/bench_ranker.py --split test_large: the generation is deterministic).  32-36 px boxes: AUC
    >= 0.95, purity and recall within ORACLE_MARGIN of the perfect ranker's (see above)."""
    _assert_issue_target(os.environ.get("HPCEM_RANKER_LARGE_DIR") or str(tmp_path), "test_large", 3,
                         oracle_margin=ORACLE_MARGIN)


@pytest.mark.skipif(not FULL, reason="6 unseen classifications of realistic size, 64 px (~50 min): HPCEM_FULL_TESTS=1")
def test_ranker_on_large64_unseen_sets(tmp_path):
    """The same target on sets of realistic size and realistic box (issue 14, stop 30): the six VDAM
    sets among the first seven of ``--split test_large64`` (64 px, 15,000-27,000 particles, K 50-80,
    200 mini-batches, SNR 0.035 / 0.07 / 0.14 twice each; set003 is EM, left out for its time).  Six,
    not three: the first three alone pass by the draw (stop 30: 0.952) where the next three do not.
    Stop 37, from scratch with the stop-36 weights and the fixed carbon simulation: passes, 0.971 /
    0.997 (24 min at load ~4-5).  HPCEM_RANKER_LARGE64_DIR reuses sets made before (bench/bench_ranker.py
    --split test_large64)."""
    _assert_issue_target(os.environ.get("HPCEM_RANKER_LARGE64_DIR") or str(tmp_path), "test_large64", 7,
                         names=("set000", "set001", "set002", "set004", "set005", "set006"))


def _check_rank_classes_selection(setdir, out, row):
    """``hpcem rank_classes --min_score 0.15`` on a datagen set: its particles.star, counted against
    the set's truth, holds as many particles and true particles as :func:`evaluate_set` selected."""
    import json

    from hpcem.cli.main import run_job
    from hpcem.io.star import read_star
    from hpcem.ml.rounds import image_index

    with open(os.path.join(setdir, "done.json")) as f:
        opt = os.path.join(setdir, json.load(f)["optimiser"])
    run_job("rank_classes", {"i": opt, "o": out, "min_score": 0.15})
    picked = image_index(read_star(os.path.join(out, "particles.star"))["particles"])
    kind = np.load(os.path.join(setdir, "truth.npz"))["kind"]
    print("%s: rank_classes selected %d particles, %d of them true" % (row["set"], picked.size, (kind[picked] == 0).sum()))
    assert np.unique(picked).size == picked.size == row["selected"]
    assert (kind[picked] == 0).sum() == round(row["selected_good"])


@pytest.mark.skipif(not FULL, reason="4 unseen classifications in 128 px boxes (~38 min cold): HPCEM_FULL_TESTS=1")
def test_ranker_on_large128_unseen_sets(tmp_path):
    """The issue's target in 128 px boxes (issue 14, stops 35-37): the four VDAM sets among the first
    five of ``--split test_large128`` (10,000-20,000 particles at 1.3-1.8 A/px, K 50/64, 200
    mini-batches, SNR 0.035 / 0.07 / 0.14 / 0.035, empty / off-centre / cut picks, carbon, ice,
    contaminants, aggregates; set003 is EM, left out for its time), simulated and classified from
    scratch, then ranked with the shipped weights, in-process and by ``hpcem rank_classes``.  A cold
    run makes the four sets: 38 min on one core at load ~5 (stop 37: 425 / 772 / 575 / 476 s, class2d's
    200 mini-batches included; AUC 1.000, purity 0.978, recall 0.999).  HPCEM_RANKER_LARGE128_DIR keeps them there, or reuses sets
    made before (by this test or bench/bench_ranker.py --split test_large128; the generation is
    deterministic): then the test takes about a minute."""
    _assert_issue_target(os.environ.get("HPCEM_RANKER_LARGE128_DIR") or str(tmp_path / "sets"), "test_large128", 5,
                         names=("set000", "set001", "set002", "set004"), select_dir=str(tmp_path / "Select"))


def test_accuracies_recomputed_for_older_model_files(classified, tmp_path):
    """A model STAR without rlnAccuracyRotations/TranslationsAngst (hpcem before issue 14): the
    ranker computes them from the noise spectrum and the particles' CTFs, as class2d does."""
    import shutil

    from hpcem.io.star import read_star, write_star
    from hpcem.ml.classjob import ClassJob

    d, opt = classified
    run = os.path.dirname(opt)
    copy = str(tmp_path / "Class2D")
    shutil.copytree(run, copy)
    model = [f for f in os.listdir(copy) if f.endswith("_model.star")][0]
    blocks = read_star(os.path.join(copy, model))
    blocks["model_classes"] = blocks["model_classes"].drop(columns=["rlnAccuracyRotations",
                                                                    "rlnAccuracyTranslationsAngst"])
    write_star(os.path.join(copy, model), blocks)
    new, old = ClassJob.read(copy), ClassJob.read(opt)
    live = old.live()
    assert np.allclose(new.acc_rot[live], old.acc_rot[live], rtol=0.25)
    assert np.allclose(new.acc_trans[live], old.acc_trans[live], rtol=0.25)
