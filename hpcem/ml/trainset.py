"""Training examples of the class ranker: per class, the network's image (:func:`net.cnn_input`),
the feature vector (:func:`features.class_features`) and a target score.

* Simulated sets (:mod:`.datagen`): the target follows the class's known composition, the share
  ``p`` of good particles among its members: ``clip((p - 0.7) / 0.25, 0, 1)``, times
  ``0.75 + 0.25 q`` with ``q = (d_best / d)^2`` the class's resolution against the best of the
  job's pure classes (RELION's weight of the resolution within a job).  A class of good particles
  only scores 0.75-1, one with a fifth of junk about 0.3, one with 30% junk or more 0.
* A facility's own selections (``--train --labels``): the target is 1 for a selected class and 0
  for the others.  A label file is either a Select job's ``class_averages.star`` (the selected
  classes by rlnReferenceImage: ``NNNNNN@`` and the classes stack, matched by the stack's file name
  and its folder) or its ``particles.star`` (a class is selected when at least half of its
  particles, by rlnImageName, are in it).  Several files may be given (one per job or several
  jobs' selections in one file).
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import InputError
from ..io.star import read_star
from . import net
from .classjob import ClassJob
from .features import class_features

PURE = 0.9


def composition_targets(p_good, resolution) -> np.ndarray:
    """Target scores of a job's classes from their share of good particles ``p_good`` and their
    resolution (A)."""
    p = np.asarray(p_good, np.float64)
    d = np.asarray(resolution, np.float64)
    pure = p >= PURE
    best = d[pure].min() if pure.any() else d.min()
    q = np.clip((best / d) ** 2, 0.0, 1.0)
    return np.clip((p - 0.7) / 0.25, 0.0, 1.0) * (0.75 + 0.25 * q)


def job_examples(job: ClassJob):
    """(live class indices, network images, features) of a classification."""
    live = job.live()
    return live, net.cnn_input(job.images[live], job.angpix, job.diameter), class_features(job, live)


def good_share(job: ClassJob, kind) -> np.ndarray:
    """(K,) share of good particles (``kind == 0``) among each class's members."""
    cls = job.particles["rlnClassNumber"].to_numpy(np.int64) - 1
    ok = (cls >= 0) & (cls < job.K)
    good = np.bincount(cls[ok], weights=(np.asarray(kind)[ok] == 0).astype(float), minlength=job.K)
    return good / np.maximum(job.counts, 1)


def simulated_examples(setdirs, log=print) -> dict:
    """Examples of simulated sets (folders written by :mod:`.datagen`)."""
    import json

    parts = {k: [] for k in ("images", "feats", "targets", "p_good", "counts", "set")}
    for i, d in enumerate(setdirs):
        with open(os.path.join(d, "done.json")) as f:
            info = json.load(f)
        job = ClassJob.read(os.path.join(d, info["optimiser"]))
        live, imgs, feats = job_examples(job)
        p = good_share(job, np.load(os.path.join(d, "truth.npz"))["kind"])[live]
        for k, v in (("images", imgs), ("feats", feats), ("targets", composition_targets(p, job.resolution[live])),
                     ("p_good", p), ("counts", job.counts[live]), ("set", np.full(live.size, i))):
            parts[k].append(v)
    return {k: np.concatenate(v) for k, v in parts.items()}


# ---------------------------------------------------------------- a facility's selections
def _stack_key(path: str) -> tuple:
    p = os.path.normpath(os.path.abspath(path))
    return os.path.basename(os.path.dirname(p)), os.path.basename(p)


def read_labels(paths) -> dict:
    """{'classes': set of (folder, stack file, index)} and/or {'images': set of rlnImageName}."""
    out = {"classes": set(), "images": set()}
    for path in paths:
        try:
            blocks = read_star(path)
        except InputError as err:
            raise InputError(err.message, file=path, field="--labels") from None
        table = blocks["particles"] if "particles" in blocks else next(iter(blocks.values()))
        if "rlnReferenceImage" in table.columns:
            for nm in table["rlnReferenceImage"].astype(str):
                idx, _, stack = nm.partition("@")
                if not (idx.strip().isdigit() and stack):
                    raise InputError("rlnReferenceImage %r is not NNNNNN@classes.mrcs" % nm, file=path,
                                     field="--labels")
                out["classes"].add(_stack_key(stack) + (int(idx),))
        elif "rlnImageName" in table.columns:
            out["images"].update(table["rlnImageName"].astype(str))
        else:
            raise InputError("neither rlnReferenceImage (class_averages.star) nor rlnImageName (particles.star)",
                             file=path, field="--labels")
    return out


def selection_targets(job: ClassJob, labels: dict) -> np.ndarray:
    """(K,) 1 for the classes the labels select, 0 otherwise."""
    key = _stack_key(job.stack)
    sel = np.array([key + (int(nm.split("@", 1)[0]),) in labels["classes"] for nm in job.names], float)
    if labels["images"] and "rlnImageName" in job.particles.columns:
        cls = job.particles["rlnClassNumber"].to_numpy(np.int64) - 1
        inside = job.particles["rlnImageName"].astype(str).isin(labels["images"]).to_numpy(float)
        ok = (cls >= 0) & (cls < job.K)
        share = np.bincount(cls[ok], weights=inside[ok], minlength=job.K) / np.maximum(job.counts, 1)
        sel = np.maximum(sel, (share >= 0.5).astype(float))
    return sel


def labelled_examples(inputs, label_files, log=print) -> dict:
    """Examples of a facility's classifications ``inputs`` labelled by its selections."""
    labels = read_labels(label_files)
    parts = {k: [] for k in ("images", "feats", "targets", "set")}
    for i, path in enumerate(inputs):
        job = ClassJob.read(path)
        live, imgs, feats = job_examples(job)
        t = selection_targets(job, labels)[live]
        log("%s: %d classes, %d selected" % (job.optimiser, live.size, int(t.sum())))
        for k, v in (("images", imgs), ("feats", feats), ("targets", t), ("set", np.full(live.size, i))):
            parts[k].append(v)
    out = {k: np.concatenate(v) for k, v in parts.items()}
    if out["targets"].sum() == 0:
        raise InputError("no class of the inputs is selected by the labels (are they the same jobs?)",
                         file=", ".join(label_files), field="--labels")
    return out
