"""Automated 2D class selection (RELION-4's relion_class_ranker, seed 000 section 3.2): score every
class of a finished 2D classification (hpcem class2d, EM or VDAM, or RELION's) with a small CNN on
the class average combined with RELION's per-class features, and write RELION's Select outputs:
particles.star of the selected classes, class_averages.star with rlnClassScore, rank_model.star,
backup_selection.star and a montage PNG ordered by score.

  hpcem rank_classes --i Class2D/job002/run_it200_optimiser.star --o Select/job005/ --min_score 0.15

Scoring runs in numpy from weights shipped with hpcem (trained on hpcem classifications of
simulated data, see DESIGN_NOTES) or given with --model.  A facility can retrain them on its own
past selections (needs PyTorch, the [ml] extra):

  hpcem rank_classes --train --i Class2D/job002/ Class2D/job007/ --labels Select/job003/class_averages.star \\
      Select/job009/particles.star --o my_ranker.npz

--labels are RELION Select jobs' class_averages.star (the selected classes) or particles.star (a
class is selected when at least half of its particles are); a class's label is whether it was
selected.  Training fine-tunes --model (the shipped weights by default); --from_scratch starts anew.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import InputError
from ..runtime.params import AT_LEAST_1, NON_NEGATIVE, POSITIVE, Params as Base, param
from .common import set_threads, stamp


@dataclass(frozen=True)
class Params(Base):
    i: tuple[str, ...] = param(None, "the classification: its run_itNNN_optimiser.star or folder (--train: one "
                               "or more)", nargs="+", type=str, metavar="RUN", group="I/O")
    o: str = param(None, "output folder (RELION's Select/jobNNN/); --train: the weights file (.npz)", group="I/O")
    min_score: float = param(0.15, "select the classes scoring at least this", group="selection")
    select_min_nr_particles: int = param(-1, "then select the best other classes until this many particles "
                                         "(negative: off)", group="selection")
    select_min_nr_classes: int = param(-1, "or until this many classes (negative: off)", group="selection")
    model: str = param("", "ranker weights (.npz; default: the shipped ones)", group="I/O")
    train: bool = param(False, "train the ranker on past selections (--i jobs, --labels) into --o",
                        action="store_true", group="training")
    labels: tuple[str, ...] = param(None, "--train: Select jobs' class_averages.star or particles.star",
                                    nargs="+", type=str, metavar="STAR", group="training")
    from_scratch: bool = param(False, "--train: new weights instead of fine-tuning --model", action="store_true",
                               group="training")
    epochs: int = param(60, "--train: passes over the classes", check=AT_LEAST_1, group="training")
    lr: float = param(3e-4, "--train: Adam's learning rate", check=POSITIVE, group="training")
    seed: int = param(0, "--train: random seed (initial weights, batches, augmentation)", group="training")
    j: int = param(1, "threads", check=NON_NEGATIVE, group="compute")


def _inputs(p):
    if not p.i:
        raise InputError("required", field="--i")
    return [p.i] if isinstance(p.i, str) else list(p.i)


def _record(ctx, p):
    from .. import __version__

    return {"job": ctx.name, "params": p.to_dict(), "argv": ctx.argv, "hpcem_version": __version__}


def run(p: Params, ctx):
    from ..ml import net

    inputs = _inputs(p)
    if not p.o:
        raise InputError("required", field="--o")
    if ctx.comm.rank != 0:
        return 0
    set_threads(p.j, ctx.comm)
    if p.train:
        return _train(p, ctx, inputs)
    if len(inputs) != 1:
        raise InputError("ranks one classification (several only with --train)", field="--i")
    weights = net.load_weights(p.model or None)
    from ..ml.select import rank_classes

    rank_classes(inputs[0], p.o, weights, p.min_score, p.select_min_nr_particles, p.select_min_nr_classes, ctx.log)
    stamp(os.path.join(p.o, "job.json"), _record(ctx, p))
    return 0


def _train(p, ctx, inputs):
    import numpy as np

    from ..ml import net
    from ..ml.train import fit, require_torch
    from ..plots import line_plot
    from ..ml.trainset import labelled_examples

    if not p.labels:
        raise InputError("required with --train", field="--labels")
    if not p.o.endswith(".npz"):
        raise InputError("--train writes a weights file: give it a .npz name", field="--o")
    require_torch()
    init = None if p.from_scratch else net.load_weights(p.model or None)
    labels = [p.labels] if isinstance(p.labels, str) else list(p.labels)
    ex = labelled_examples(inputs, labels, ctx.log)
    ctx.log("hpcem rank_classes --train: %d classes (%d selected) from %d jobs, %s" % (
        len(ex["targets"]), int(ex["targets"].sum()), len(inputs), "from scratch" if init is None else
        "fine-tuning %s" % (p.model or "the shipped weights")))
    weights, history = fit(ex["images"], ex["feats"], ex["targets"], init=init, epochs=p.epochs, lr=p.lr,
                           seed=p.seed, threads=max(p.j, 1), log=ctx.log)
    net.save_weights(p.o, weights, trained_on=np.asarray([os.path.abspath(x) for x in inputs]),
                     final_loss=np.float64(history[-1]))
    line_plot(os.path.splitext(p.o)[0] + "_loss.png", history, "epoch", "mean-square error", logy=True)
    ctx.log("wrote %s (final loss %.5f)" % (p.o, history[-1]))
    return 0
