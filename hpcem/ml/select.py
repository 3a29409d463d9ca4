"""Scoring the classes of a 2D classification and RELION's Select outputs (relion_class_ranker
--auto_select).

Every class with at least ten particles gets a score in [0, 1] from the network (:mod:`.net`);
the others -999, as RELION's.  A class is selected when its score is at least ``min_score``; then,
going down from the best of the classes left out, more are taken until at least
``min_particles`` particles or ``min_classes`` classes are selected (RELION's
--select_min_nr_particles / --select_min_nr_classes; negative: off).

Outputs (in the Select job's folder):

* ``particles.star``: the particles of the selected classes, in their input order, with the data
  STAR's optics block and columns; image names made to resolve from the working directory;
* ``class_averages.star``: the selected classes as RELION writes them (rlnReferenceImage
  ``NNNNNN@<classes stack>``, rlnClassScore, rlnClassDistribution, rlnNrOfParticles,
  rlnAccuracyRotations, rlnAccuracyTranslationsAngst, rlnEstimatedResolution), in class order;
* ``rank_model.star``: every class with its score (data_model_classes), and
  ``backup_selection.star`` (rlnSelected per class), as relion_class_ranker writes them;
* ``class_averages.png``: the class averages ordered by score, each labelled with its class
  number and score (``*`` marks the selected ones).
"""
from __future__ import annotations

import os
import time

import numpy as np
import pandas as pd

from ..io.star import write_star
from . import net
from .classjob import ClassJob
from .features import class_features

UNSCORED = -999.0


def score_job(job: ClassJob, weights: dict) -> np.ndarray:
    """(K,) scores of every class (``UNSCORED`` for classes under ten particles)."""
    scores = np.full(job.K, UNSCORED)
    live = job.live()
    if live.size:
        feats = class_features(job, live)
        imgs = net.cnn_input(job.images[live], job.angpix, job.diameter)
        scores[live] = net.score(imgs, feats, weights)
    return scores


def select_classes(scores, counts, min_score: float, min_particles: int = -1, min_classes: int = -1) -> np.ndarray:
    """(K,) bool: classes scoring at least ``min_score``, then the best of the rest until
    ``min_particles`` particles or ``min_classes`` classes are reached."""
    scores, counts = np.asarray(scores, np.float64), np.asarray(counts, np.int64)
    sel = (scores >= min_score) & (scores > UNSCORED)
    for k in np.argsort(-scores, kind="stable"):
        if sel[k] or scores[k] <= UNSCORED:
            continue
        if min_particles > 0 and counts[sel].sum() < min_particles:
            sel[k] = True
        elif min_classes > 0 and sel.sum() < min_classes:
            sel[k] = True
        else:
            break
    return sel


def _project_path(path: str) -> str:
    """``path`` relative to the working directory when inside it, else absolute."""
    a = os.path.abspath(path)
    rel = os.path.relpath(a, os.getcwd())
    return a if rel.startswith("..") else rel


def _image_names(job: ClassJob, names: pd.Series) -> pd.Series:
    """rlnImageName with each stack made to resolve from the working directory: looked up as
    given, beside the data STAR and beside the classification's input STAR."""
    from .classjob import _find

    bases = [os.path.dirname(os.path.abspath(job.data_path))]
    if job.input_star:
        bases.append(os.path.dirname(os.path.abspath(job.input_star)))
    split = names.astype(str).str.split("@", n=1, expand=True)
    if split.shape[1] < 2:
        return names
    fixed = {}
    for stack in split[1].dropna().unique():
        found = _find(stack, bases)
        fixed[stack] = _project_path(found) if found else stack
    return split[0] + "@" + split[1].map(fixed)


def write_selection(job: ClassJob, scores, selected, outdir: str) -> dict:
    """RELION's Select outputs (see the module docstring) into ``outdir``; returns their paths."""
    os.makedirs(outdir, exist_ok=True)
    ref_names = ["%06d@%s" % (int(nm.split("@", 1)[0]), _project_path(job.stack)) for nm in job.names]
    table = pd.DataFrame({
        "rlnReferenceImage": ref_names, "rlnClassScore": np.asarray(scores, np.float64),
        "rlnClassDistribution": job.distribution, "rlnNrOfParticles": job.counts,
        "rlnAccuracyRotations": job.acc_rot, "rlnAccuracyTranslationsAngst": job.acc_trans,
        "rlnEstimatedResolution": job.resolution})
    out = {k: os.path.join(outdir, f) for k, f in (
        ("particles", "particles.star"), ("class_averages", "class_averages.star"),
        ("rank_model", "rank_model.star"), ("backup", "backup_selection.star"), ("png", "class_averages.png"))}
    parts = job.particles
    keep = np.isin(parts["rlnClassNumber"].to_numpy(np.int64), np.flatnonzero(selected) + 1)
    sub = parts[keep].copy()
    if "rlnImageName" in sub.columns:
        sub["rlnImageName"] = _image_names(job, sub["rlnImageName"]).to_numpy()
    blocks = {"optics": job.optics, "particles": sub} if job.optics is not None else {"particles": sub}
    write_star(out["particles"], blocks)
    write_star(out["class_averages"], {"": table[np.asarray(selected, bool)]})
    write_star(out["rank_model"], {"model_classes": table})
    write_star(out["backup"], {"": pd.DataFrame({"rlnSelected": np.asarray(selected, np.int64)})})
    _montage(out["png"], job, scores, selected)
    return out


def _montage(path, job, scores, selected):
    from ..plots import montage

    order = np.argsort(-np.asarray(scores), kind="stable")
    labels = ["%d: %s%s" % (k + 1, "-" if scores[k] <= UNSCORED else "%.2f" % scores[k], " *" if selected[k] else "")
              for k in order]
    montage(path, job.images[order], labels=labels)


def rank_classes(path: str, outdir: str, weights: dict, min_score: float = 0.15, min_particles: int = -1,
                 min_classes: int = -1, log=print) -> dict:
    """Read a finished classification, score its classes, select, write; returns a summary."""
    t0 = time.time()
    job = ClassJob.read(path)
    scores = score_job(job, weights)
    t_score = time.time() - t0
    selected = select_classes(scores, job.counts, min_score, min_particles, min_classes)
    files = write_selection(job, scores, selected, outdir)
    n_live = int((scores > UNSCORED).sum())
    log("hpcem rank_classes: %s: %d classes scored (%.1f classes/s), %d selected with %d of %d particles "
        "(min_score %.3g)" % (job.optimiser, n_live, n_live / max(t_score, 1e-9), int(selected.sum()),
                              int(job.counts[selected].sum()), len(job.particles), min_score))
    for k in np.argsort(-scores, kind="stable")[:min(10, job.K)]:
        log("  class %3d  score %6.3f  %5d particles  %5.1f A%s" % (
            k + 1, scores[k], job.counts[k], job.resolution[k], "  selected" if selected[k] else ""))
    return {"scores": scores, "selected": selected, "files": files, "job": job, "seconds": time.time() - t0}
