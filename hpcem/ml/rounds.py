"""Rounds of 2D classification and selection, as facilities clean a data set (issue 14, stop 31):
the particles the ranker selects from one class2d job are classified again (same flags and K) and
ranked again; junk that sat inside good classes in the first classification (empty picks,
off-centre and cut particles at low SNR, DESIGN_NOTES stops 29-30) can form classes of its own in
the second, where it is a larger share of the input.

On a :mod:`.datagen` set folder ``S`` the rounds live in ``OUT/S.name/``:

  round1/Select/              rank_classes of the set's own classification
  round2/particles.star       the particles round 1 selected (the input of round 2's class2d)
  round2/Class2D/run_it*      class2d of them (datagen's flags; K as given)
  round2/Select/              rank_classes of that classification
  ...

Purity and recall of every round count the particles by their image (``NNNNNN@stack``), against
the set's ORIGINAL good particles: recall is the share of all of the set's true particles that a
round keeps.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import fields, replace

import numpy as np

from ..metrics import roc_auc
from .classjob import ClassJob
from .evaluate import ORACLE_SHARE
from .select import UNSCORED, rank_classes
from .trainset import good_share


def image_index(particles) -> np.ndarray:
    """0-based index of each particle row in its stack, from ``rlnImageName`` (``NNNNNN@stack``)."""
    names = particles["rlnImageName"].astype(str)
    return names.str.split("@", n=1).str[0].astype(np.int64).to_numpy() - 1


def _spec(setdir: str):
    from .datagen import SetSpec

    with open(os.path.join(setdir, "done.json")) as f:
        info = json.load(f)
    return SetSpec(**{k.name: info[k.name] for k in fields(SetSpec)}), os.path.join(setdir, info["optimiser"])


def run_rounds(setdir: str, outdir: str, weights: dict, rounds: int = 2, min_score: float = 0.15, K: int = 0,
               threads: int = 1, log=print) -> list:
    """Make (or reuse) ``rounds`` rounds of one set in ``outdir``; returns each round's optimiser STAR.
    ``K`` <= 0: the set's own class count (datagen's rule)."""
    from .datagen import classify

    spec, optimiser = _spec(setdir)
    spec = replace(spec, K=K if K > 0 else spec.K)
    for r in range(1, rounds + 1):
        rdir = os.path.join(outdir, "round%d" % r)
        done = os.path.join(rdir, "done.json")
        if r > 1 and not os.path.isfile(done):
            os.makedirs(rdir, exist_ok=True)
            star = os.path.join(rdir, "particles.star")
            shutil.copy(os.path.join(outdir, "round%d" % (r - 1), "Select", "particles.star"), star)
            opt = classify(spec, rdir, star, threads)
            with open(done, "w") as f:
                json.dump({"optimiser": os.path.relpath(opt, rdir), "K": spec.K}, f)
        optimiser = stored_optimisers(setdir, outdir, r)[-1]
        sel = os.path.join(rdir, "Select")
        if not os.path.isfile(os.path.join(sel, "particles.star")):
            rank_classes(optimiser, sel, weights, min_score, log=lambda *a, **k: None)
        log("%s round %d: %s" % (os.path.basename(setdir), r, optimiser))
    return stored_optimisers(setdir, outdir, rounds)


def stored_optimisers(setdir: str, outdir: str, rounds: int = 2) -> list:
    """The optimiser STAR of each of ``rounds`` rounds already made in ``outdir`` (round 1: the set's)."""
    from ..errors import InputError

    optimisers = [_spec(setdir)[1]]
    for r in range(2, rounds + 1):
        done = os.path.join(outdir, "round%d" % r, "done.json")
        if not os.path.isfile(done):
            raise InputError("round %d was not made (run bench/bench_ranker_rounds.py)" % r, file=done,
                             field="optimiser")
        with open(done) as f:
            optimisers.append(os.path.join(os.path.dirname(done), json.load(f)["optimiser"]))
    return optimisers


def evaluate_round(optimiser: str, kind: np.ndarray, weights: dict, min_score: float = 0.15) -> dict:
    """One round's classification scored and selected as rank_classes does, counted against the set's
    truth ``kind`` (per particle of the set's stack): the selected particles' indices, good counts,
    the classes' AUC, and the perfect ranker's selection (classes >= 74% good) on this round."""
    from .select import score_job, select_classes

    job = ClassJob.read(optimiser)
    idx = image_index(job.particles)
    k_rows = np.asarray(kind)[idx]
    scores = score_job(job, weights)
    p = good_share(job, k_rows)
    live = scores > UNSCORED
    sel = select_classes(scores, job.counts, min_score)
    cls = job.particles["rlnClassNumber"].to_numpy(np.int64) - 1
    ideal = live & (p >= ORACLE_SHARE)
    picked = idx[sel[cls]]
    return {"K": job.K, "input": int(idx.size), "selected_idx": picked,
            "selected": int(picked.size), "selected_good": int((np.asarray(kind)[picked] == 0).sum()),
            "ideal": int(ideal[cls].sum()), "ideal_good": int((ideal[cls] & (k_rows == 0)).sum()),
            "scores": scores[live], "good_class": p[live] >= 0.5,
            "auc": roc_auc(scores[live], p[live] >= 0.5) if live.any() else float("nan")}


def pooled(rows) -> dict:
    """Purity / recall of the selections and of the perfect ranker, pooled over rows of
    :func:`evaluate_round` (each with ``good_total``, the set's true particles), and the AUC."""
    tot = sum(r["good_total"] for r in rows)
    sg, s = sum(r["selected_good"] for r in rows), sum(r["selected"] for r in rows)
    ig, i = sum(r["ideal_good"] for r in rows), sum(r["ideal"] for r in rows)
    return {"purity": sg / max(s, 1), "recall": sg / max(tot, 1), "ideal_purity": ig / max(i, 1),
            "ideal_recall": ig / max(tot, 1),
            "auc": roc_auc(np.concatenate([r["scores"] for r in rows]),
                           np.concatenate([r["good_class"] for r in rows]))}
