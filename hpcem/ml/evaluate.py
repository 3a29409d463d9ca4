"""How well the ranker selects on simulated classifications of known composition (:mod:`.datagen`
folders): per set and pooled over the sets,

* ROC AUC of the class scores for good classes (at least half of the members good particles)
  against junk classes, over the scored classes (ten particles or more);
* at ``min_score``: purity, the share of good particles among the selected particles, and recall,
  the share of all the set's good particles that are selected (good particles that the
  classification put into junk classes count as lost);
* the same for the classes a perfect ranker would select at 0.15 (those of at least 74% good
  particles, the composition whose target score is 0.15): what the classification allows.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np

from ..metrics import roc_auc
from .classjob import ClassJob
from .select import UNSCORED, score_job, select_classes
from .trainset import good_share

ORACLE_SHARE = 0.74


def evaluate_set(setdir: str, weights: dict, min_score: float = 0.15) -> dict:
    with open(os.path.join(setdir, "done.json")) as f:
        info = json.load(f)
    job = ClassJob.read(os.path.join(setdir, info["optimiser"]))
    kind = np.load(os.path.join(setdir, "truth.npz"))["kind"]
    t0 = time.perf_counter()
    scores = score_job(job, weights)
    secs = time.perf_counter() - t0
    p = good_share(job, kind)
    live = scores > UNSCORED
    sel = select_classes(scores, job.counts, min_score)
    good_per_class = p * job.counts
    ideal = live & (p >= ORACLE_SHARE)
    return {"set": os.path.basename(setdir), "snr": info["snr"], "vdam": info["grad"], "K": job.K,
            "box": info.get("box", 0), "N": int(kind.size),
            "n_scored": int(live.sum()), "scores": scores[live], "good_class": p[live] >= 0.5,
            "selected_good": float(good_per_class[sel].sum()), "selected": float(job.counts[sel].sum()),
            "ideal_good": float(good_per_class[ideal].sum()), "ideal": float(job.counts[ideal].sum()),
            "good_total": float((kind == 0).sum()), "seconds": secs,
            "p_good": p[live], "counts": job.counts[live].astype(float)}


def summarise(rows) -> dict:
    """Pooled AUC, purity, recall and scoring speed of :func:`evaluate_set` rows."""
    scores = np.concatenate([r["scores"] for r in rows])
    good = np.concatenate([r["good_class"] for r in rows])
    sel_good = sum(r["selected_good"] for r in rows)
    sel = sum(r["selected"] for r in rows)
    total = sum(r["good_total"] for r in rows)
    ideal_good, ideal = sum(r["ideal_good"] for r in rows), sum(r["ideal"] for r in rows)
    return {"auc": roc_auc(scores, good), "purity": sel_good / max(sel, 1.0), "recall": sel_good / max(total, 1.0),
            "ideal_purity": ideal_good / max(ideal, 1.0), "ideal_recall": ideal_good / max(total, 1.0),
            "classes": int(len(scores)), "good_classes": int(good.sum()),
            "classes_per_s": len(scores) / max(sum(r["seconds"] for r in rows), 1e-9)}


def perfect_ranker_curve(rows, shares=(0.5, 0.6, 0.7, ORACLE_SHARE, 0.8, 0.85, 0.88, 0.9, 0.95)) -> list:
    """(share, purity, recall) of a perfect ranker that selects the scored classes of at least
    ``share`` good particles, pooled over the rows: the best purity any class selection can reach
    at each recall on these classifications."""
    p = np.concatenate([r["p_good"] for r in rows])
    n = np.concatenate([r["counts"] for r in rows])
    total = sum(r["good_total"] for r in rows)
    out = []
    for t in shares:
        sel = p >= t
        good = float((p * n)[sel].sum())
        out.append((t, good / max(float(n[sel].sum()), 1.0), good / max(total, 1.0)))
    return out


def row_line(r) -> str:
    auc = roc_auc(r["scores"], r["good_class"])
    return ("%-8s SNR %.3f %-4s box %3d N %5d K %3d scored %3d good %3d  AUC %5.3f  purity %5.3f  recall %5.3f "
            "(perfect ranker: %5.3f %5.3f)" % (
                r["set"], r["snr"], "VDAM" if r["vdam"] else "EM", r["box"], r["N"], r["K"], r["n_scored"],
                int(r["good_class"].sum()),
                auc, r["selected_good"] / max(r["selected"], 1.0), r["selected_good"] / max(r["good_total"], 1.0),
                r["ideal_good"] / max(r["ideal"], 1.0), r["ideal_good"] / max(r["good_total"], 1.0)))
