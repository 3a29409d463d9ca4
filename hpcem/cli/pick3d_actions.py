"""The three actions of ``hpcem pick3d`` (see hpcem/cli/job_pick3d.py): reading and checking the
inputs, calling the picker library (hpcem.ml.picker, torch imported there) and reporting."""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from ..errors import InputError
from ..io.atomic import atomic_write
from .common import CONTINUABLE, continued

# flags a continued training run may change
TRAIN_CONTINUABLE = CONTINUABLE | {"steps", "device", "save_every"}


def _config(p, n_species: int):
    from ..ml.picker.train import TrainConfig

    try:
        widths = tuple(int(w) for w in p.widths.split(","))
    except ValueError:
        raise InputError("%r is not a comma-separated list of integers" % p.widths, field="--widths") from None
    if len(widths) != 4 or min(widths) < 1:
        raise InputError("needs 4 positive widths (one per down-block)", field="--widths")
    return TrainConfig(n_classes=n_species + 1, method=p.method, widths=widths, bottleneck=p.bottleneck,
                       patch=p.patch, batch=p.batch, meta_batch=p.meta_batch, steps=p.steps, lr=p.lr,
                       meta_lr=p.meta_lr, meta_every=p.meta_every, warmup=p.warmup, optimizer=p.optimizer,
                       seed=p.seed, lc_alpha=p.lc_alpha, lc_lr=p.lc_lr,
                       lr_decay=p.lr_decay, average=p.average, absent_above=p.absent_above)


def _restart(p, ctx):
    """(parameters, checkpoint or None) of a fresh or continued training run."""
    from ..ml.picker.training import KIND, newest_checkpoint
    from ..runtime.checkpoint import load_checkpoint

    if p.continue_ is None:
        return p, None
    folder = p.continue_ or p.o
    if not folder:
        raise InputError("needs the run's folder (or --o)", field="--continue")
    path = newest_checkpoint(folder)
    if path is None:
        raise InputError("no run_it*_checkpoint.h5 to continue from", file=folder, field="--continue")
    ck = load_checkpoint(path, KIND)
    q = continued(p, ck.job.get("params", {}), ctx.given, ctx.log, may_change=TRAIN_CONTINUABLE)
    return q.replace(o=q.o if "o" in ctx.given else folder, continue_=p.continue_), ck


def train(p, ctx, device: str) -> int:
    from ..cli.job_pick3d import _diameters, record
    from ..ml.picker.data import PatchSampler, sphere_voxels
    from ..ml.picker.model_io import save_model
    from ..ml.picker.nets import count_parameters
    from ..ml.picker.train import PickerTrainer
    from ..ml.picker.training import plot_history, prepare, train_loop

    q, ck = _restart(p, ctx)
    diam = _diameters(q)
    cfg = _config(q, len(diam))
    if ctx.comm.rank != 0:
        return 0
    if ctx.comm.size > 1:
        ctx.log("pick3d train: runs on rank 0; the other %d rank(s) have nothing to do" % (ctx.comm.size - 1))
    if cfg.method != "supervised" and not q.meta_set:
        raise InputError("--method %s needs a clean meta set" % cfg.method, field="--meta_set")
    meta_path = q.meta_set if cfg.method != "supervised" else None
    if q.meta_set and not meta_path:
        ctx.log("pick3d train: --method supervised trains on --labels only; the meta set is not used")
    os.makedirs(q.o, exist_ok=True)
    train_set, meta_set, angpix = prepare(q.i, q.labels, meta_path, diam, cfg.patch, ctx.comm, ctx.log)
    if q.absent_dice:
        cfg = dataclasses.replace(cfg, absent_volumes=tuple(float(v) for v in sphere_voxels(diam, angpix)))
    trainer = PickerTrainer(cfg, PatchSampler(train_set, cfg.patch, balanced=q.balanced),
                            PatchSampler(meta_set, cfg.patch, balanced=True) if meta_set else None, device)
    ctx.log("pick3d train (%s): %d training tomograms (%d annotations), %d meta; U-Net %d parameters%s%s on %s" % (
        cfg.method, len(train_set), sum(len(t.coords) for t in train_set), len(meta_set or []),
        count_parameters(trainer.seg),
        ", label correction %d" % count_parameters(trainer.lc) if trainer.lc else "",
        ", reweighting %d" % count_parameters(trainer.dr) if trainer.dr else "", device))
    job = {"params": q.to_dict(), "argv": ctx.argv}
    if ck is not None:
        trainer.restore(ck.state)
        job["_history"] = np.asarray(ck.state.get("history", np.zeros((0, 3)))).tolist()
        ctx.log("pick3d train: continuing from step %d" % trainer.steps_done)
    history = train_loop(trainer, q.o, q.save_every, job, ctx.log)
    settings = {"network": cfg.network(), "diameters": diam, "angpix": angpix, "patch": cfg.patch,
                "method": cfg.method, "steps": cfg.steps, "seed": cfg.seed, "balanced": q.balanced,
                "lr_decay": cfg.lr_decay, "average": cfg.average, "absent_dice": bool(q.absent_dice),
                "absent_above": cfg.absent_above,
                "trained_on": [t.name for t in train_set], "meta_set": [t.name for t in meta_set or []]}
    save_model(os.path.join(q.o, "model.pt"), trainer.network(), settings)
    plot_history(os.path.join(q.o, "loss.png"), history)
    record(ctx, q, q.o)
    ctx.log("pick3d train: wrote %s and model.json" % os.path.join(q.o, "model.pt"))
    return 0


def predict(p, ctx, device: str) -> int:
    from ..cli.job_pick3d import record
    from ..ml.picker.picking import predict_files

    res = predict_files(p.model, p.i, p.o, ctx.comm, ctx.log, p.overlap, p.min_fraction, batch=4, device=device)
    if ctx.comm.rank == 0:
        record(ctx, p, p.o)
        ctx.log("pick3d predict: %d picks in %s; segmentation %.1f s, %.3g voxels/s over %d rank(s)" % (
            res["n_picks"], res["star"], res["seconds"], res["voxels"] / max(res["seconds"], 1e-9), ctx.comm.size))
    return 0


def _tolerances(p, diam, tomos) -> dict:
    if p.tolerance > 0:
        return {s + 1: float(p.tolerance) for s in range(len(diam))}
    apix = p.angpix or (next(iter(tomos.values())).angpix if tomos else 0.0)
    if not apix > 0:
        raise InputError("needs --angpix or --i (tomograms) to turn --diameters into voxels, or --tolerance",
                         field="--angpix")
    return {s + 1: d / 2.0 / apix for s, d in enumerate(diam)}


def evaluate(p, ctx, diam) -> int:
    from ..io.tomo_star import read_particles, read_tomograms
    from ..metrics import pick_scores

    if not p.picks or not p.truth:
        raise InputError("required by pick3d evaluate", field="--picks" if not p.picks else "--truth")
    tomos = {e.name: e for e in read_tomograms(p.i)} if p.i else None
    picks, truth = read_particles(p.picks, tomos, others="skip"), read_particles(p.truth, tomos, others="skip")
    names = set(tomos) if tomos else set(picks.coords)
    scores = pick_scores({n: (picks.coords[n], picks.classes[n]) for n in picks.coords if n in names},
                         {n: (truth.coords[n], truth.classes[n]) for n in truth.coords if n in names},
                         _tolerances(p, diam, tomos))
    if ctx.comm.rank != 0:
        return 0
    ctx.log("%-8s %6s %6s %6s %9s %7s %6s" % ("species", "true", "picks", "tp", "precision", "recall", "F1"))
    for s, r in scores.items():
        ctx.log("%-8d %6d %6d %6d %9.3f %7.3f %6.3f" % (s, r["gt"], r["pred"], r["tp"], r["precision"],
                                                          r["recall"], r["f1"]))
    mean_f1 = float(np.mean([r["f1"] for r in scores.values()]))
    ctx.log("mean F1 over species: %.3f (%d tomograms)" % (mean_f1, len(names)))
    if p.o:
        os.makedirs(p.o, exist_ok=True)
        with atomic_write(os.path.join(p.o, "scores.json")) as tmp:
            with open(tmp, "w") as f:
                json.dump({"species": {str(k): v for k, v in scores.items()}, "mean_f1": mean_f1,
                           "tomograms": sorted(names)}, f, indent=1)
    return 0
