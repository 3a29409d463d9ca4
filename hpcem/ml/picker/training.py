"""``hpcem pick3d train`` from files: the tomogram table, the (noisy) training annotations and the
clean meta set become normalised tomograms with sphere label maps (``--diameters``), the trainer
runs its steps with progress and checkpoints (``<o>/run_itNNNNNN_checkpoint.h5``, the last one
kept; ``--continue`` resumes it), and the model is written as ``<o>/model.pt`` (weights) +
``<o>/model.json`` (settings), with the loss curves in ``<o>/loss.png``.
"""
from __future__ import annotations

import glob
import os
import time

import numpy as np

from ...errors import InputError
from ...io.tomo_star import read_particles, read_tomograms
from ...runtime.checkpoint import save_checkpoint
from ...runtime.log import progress_printer
from ...runtime.memory import MemoryPlan
from ...runtime.output import OutputRoot
from .data import LabelledTomogram, load_tomogram, sphere_labels

KIND = "pick3d"


def _labelled(entries: dict, parts, diameters, patch: int) -> list:
    out = []
    for name in parts.coords:                          # a loop over tomograms
        e = entries[name]
        vol = load_tomogram(e, patch)
        lab = sphere_labels(vol.shape, e.angpix, parts.coords[name], parts.classes[name], diameters)
        out.append(LabelledTomogram(name, vol, lab, parts.coords[name], parts.classes[name]))
    return out


def _check_inputs(entries, labels, meta, diameters, labels_path, meta_path) -> float:
    S = len(diameters)
    for parts, path in ((labels, labels_path), (meta, meta_path)):
        if parts is None:
            continue
        top = max((int(c.max()) for c in parts.classes.values() if len(c)), default=0)
        if top > S:
            raise InputError("class %d but --diameters gives %d species" % (top, S), file=path,
                             field="rlnClassNumber")
    if meta is not None and set(meta.coords) & set(labels.coords):
        raise InputError("the meta set shares tomograms with the training labels", file=meta_path,
                         field="rlnTomoName")
    used = [entries[n] for n in list(labels.coords) + list(meta.coords if meta else [])]
    apix = np.array([e.angpix for e in used])
    if np.any(np.abs(apix / apix[0] - 1) > 0.01):
        raise InputError("tomograms of different voxel sizes (%s A)" % ", ".join("%.3g" % a for a in np.unique(apix)),
                         field="rlnTomoTiltSeriesPixelSize")
    return float(apix[0])


def prepare(tomograms: str, labels: str, meta_set: str | None, diameters, patch: int, comm, log):
    """(training tomograms, meta tomograms or None, voxel size) with their sphere label maps."""
    entries = {e.name: e for e in read_tomograms(tomograms)}
    lab = read_particles(labels, entries)
    meta = read_particles(meta_set, entries) if meta_set else None
    angpix = _check_inputs(entries, lab, meta, diameters, labels, meta_set)
    vox = sum(int(np.prod(entries[n].shape)) for n in list(lab.coords) + list(meta.coords if meta else []))
    MemoryPlan({"tomograms (float32) and label maps (int8)": 5.0 * vox}, "tomograms in memory").check(comm, log)
    train = _labelled(entries, lab, diameters, patch)
    return train, (_labelled(entries, meta, diameters, patch) if meta else None), angpix


def newest_checkpoint(out: str) -> str | None:
    found = sorted(glob.glob(os.path.join(glob.escape(out), "run_it*_checkpoint.h5")))
    return found[-1] if found else None


def train_loop(trainer, out: str, save_every: int, job: dict, log, verbose: bool = True) -> list:
    """Steps until the configured count, a checkpoint every ``save_every`` steps (and at the end),
    the stats history returned (and kept in the checkpoint)."""
    root = OutputRoot(out, "run")
    total = trainer.cfg.steps
    show = progress_printer("pick3d train (%s)" % trainer.cfg.method) if verbose else None
    history = list(job.pop("_history", []))
    t0 = time.time()
    while trainer.steps_done < total:
        stats = trainer.step()
        history.append([trainer.steps_done, stats["loss"], stats.get("meta_loss", np.nan)])
        if show:
            show(trainer.steps_done, total)
        if trainer.steps_done % save_every == 0 or trainer.steps_done == total:
            _checkpoint(trainer, root, history, job)
    log("pick3d train: %d steps in %.1f s" % (total, time.time() - t0))
    return history


def _checkpoint(trainer, root, history, job) -> None:
    old = newest_checkpoint(root.folder)
    path = root.iteration(trainer.steps_done, "checkpoint.h5")
    state = dict(trainer.state(), iteration=trainer.steps_done, history=np.asarray(history, np.float64))
    save_checkpoint(path, KIND, state, trainer.settings(), job)
    if old and os.path.abspath(old) != os.path.abspath(path):
        os.remove(old)


def plot_history(path: str, history) -> None:
    from ... import plots

    h = np.asarray(history, np.float64).reshape(-1, 3)
    if len(h) == 0:
        return
    fig, ax = plots.plt.subplots(figsize=(6, 4))
    k = max(1, len(h) // 50)
    smooth = np.convolve(h[:, 1], np.ones(k) / k, mode="valid")
    ax.plot(h[k - 1:, 0], smooth, label="training loss (eq 1)")
    m = np.isfinite(h[:, 2])
    if m.any():
        km = max(1, int(m.sum()) // 50)
        ax.plot(h[m, 0][km - 1:], np.convolve(h[m, 2], np.ones(km) / km, mode="valid"), label="clean meta loss")
    ax.set_xlabel("step")
    ax.set_ylabel("Dice loss")
    ax.legend()
    fig.tight_layout()
    plots._save(fig, path)
