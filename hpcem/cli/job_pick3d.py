"""Cryo-ET particle picking with a 3D U-Net (DeepFinder's shape), trained as RobPicker (seed 004:
label correction + data reweighting tuned on a clean meta set by bi-level optimisation) or as
the plain supervised baseline; needs the [ml] extra (torch, scikit-learn).

  hpcem pick3d train --i tomograms.star --labels labels.star --meta_set clean.star
                     --diameters 240,120,130,50 --o Pick/job001 [--method robpicker|supervised]
  hpcem pick3d predict --model Pick/job001/model.pt --i tomograms.star --o Pick/job002
  hpcem pick3d evaluate --picks Pick/job002/particles.star --truth truth.star --diameters ...

Under mpiexec, predict splits the tomograms across ranks (training runs on rank 0)."""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import InputError
from ..runtime.params import AT_LEAST_1, NON_NEGATIVE, POSITIVE, Params as Base, param
from .common import job_record, set_threads, stamp

ACTIONS = ("train", "predict", "evaluate")
METHODS = ("robpicker", "supervised", "dr_only", "lc_only")


@dataclass(frozen=True)
class Params(Base):
    action: str = param(None, "train | predict | evaluate", positional=True, choices=ACTIONS)
    i: str = param(None, "RELION-5 tomogram table (tomograms.star)", group="I/O")
    o: str = param(None, "output folder", group="I/O")
    labels: str = param(None, "train: particle table of the training annotations (noisy)", group="I/O")
    meta_set: str = param(None, "train: particle table of the clean meta set (its tomograms)", group="I/O")
    diameters: str = param(None, "species diameters in A, comma-separated (species 1..S)", group="I/O")
    model: str = param(None, "predict: model.pt written by train", group="I/O")
    picks: str = param(None, "evaluate: picked particles (STAR)", group="I/O")
    truth: str = param(None, "evaluate: true particles (STAR)", group="I/O")
    continue_: str = param(None, "train: resume the run in this folder (alone: --o)", flag="--continue", nargs="?",
                           const="", metavar="RUN", group="I/O")
    method: str = param("robpicker", "train: robpicker, supervised (DeepFinder-style), dr_only, lc_only",
                        choices=METHODS, group="model")
    steps: int = param(2000, "train: segmentation-network steps", check=AT_LEAST_1, group="model")
    batch: int = param(4, "train: patches per step", check=AT_LEAST_1, group="model")
    meta_batch: int = param(4, "train: clean meta patches per upper-level step", check=AT_LEAST_1, group="model")
    patch: int = param(32, "patch edge in voxels (multiple of 16)", check=(lambda v: v >= 16 and v % 16 == 0,
                                                                       "a multiple of 16"), group="model")
    widths: str = param("8,16,24,32", "U-Net channel widths of the 4 down-blocks", group="model")
    bottleneck: int = param(48, "U-Net bottleneck channels", check=AT_LEAST_1, group="model")
    lr: float = param(1e-3, "segmentation network learning rate", check=POSITIVE, group="model")
    meta_lr: float = param(1e-3, "label-correction / reweighting learning rate", check=POSITIVE, group="model")
    meta_every: int = param(1, "upper-level step every N lower-level steps", check=AT_LEAST_1, group="model")
    warmup: float = param(0.2, "fraction of the steps trained on the given labels before the meta-learning starts",
                          check=(lambda v: 0 <= v < 1, "in [0, 1)"), group="model")
    lc_alpha: float = param(0.018, "train: the label correction's mixing alpha at the start (robpicker, lc_only)",
                            check=(lambda v: 0 < v < 1, "in (0, 1)"), group="model")
    lc_lr: float = param(0.0, "train: the label correction's learning rate (0: --meta_lr)", check=NON_NEGATIVE,
                         group="model")
    lr_decay: float = param(0.0, "train: fraction of the final steps over which the learning rate falls to 0 "
                            "(half cosine; 0: constant)", check=(lambda v: 0 <= v <= 1, "in [0, 1]"), group="model")
    average: float = param(0.0, "train: save the mean of the weights over this fraction of the final steps "
                           "(0: the last step's)", check=(lambda v: 0 <= v <= 1, "in [0, 1]"), group="model")
    absent_dice: bool = param(False, "train (experimental): count in the Dice loss the species absent from a "
                              "patch's labels (their voxels above --absent_above), smoothed by one particle's "
                              "sphere volume; see DESIGN_NOTES (issue 15)", action="store_true", group="model")
    absent_above: float = param(0.5, "train: with --absent_dice, count only the voxels whose probability of the "
                                "absent species is above this (0: all of its mass, which lost two species on "
                                "the s1 bench)", check=(lambda v: 0 <= v < 1, "in [0, 1)"), group="model")
    balanced: bool = param(False, "train: draw training patches class-balanced (a species uniformly, then one of "
                           "its annotations; DeepFinder's bootstrap), every method alike", action="store_true",
                           group="model")
    optimizer: str = param("adam", "segmentation optimiser", choices=("adam", "sgd"), group="model")
    seed: int = param(0, "random seed", group="model")
    save_every: int = param(200, "train: checkpoint every N steps", check=AT_LEAST_1, group="model")
    overlap: int = param(8, "predict: overlap of neighbouring patches in voxels", check=NON_NEGATIVE, group="picking")
    min_fraction: float = param(0.1, "predict: smallest cluster kept, as a fraction of the species' sphere volume",
                                check=NON_NEGATIVE, group="picking")
    tolerance: float = param(0.0, "evaluate: match distance in voxels (0: each species' radius)", check=NON_NEGATIVE,
                             group="picking")
    angpix: float = param(0.0, "evaluate: voxel size in A (0: from --i)", check=NON_NEGATIVE, group="picking")
    device: str = param("auto", "torch device: auto (cuda when present), cpu, cuda", choices=("auto", "cpu", "cuda"),
                        group="compute")
    j: int = param(0, "threads per rank (0: $OMP_NUM_THREADS, or the cores over the ranks on the node)",
                   check=NON_NEGATIVE, group="compute")


def _diameters(p: Params) -> list:
    if not p.diameters:
        raise InputError("required: each species' diameter in A", field="--diameters")
    try:
        d = [float(x) for x in p.diameters.split(",") if x.strip()]
    except ValueError:
        raise InputError("%r is not a comma-separated list of numbers" % p.diameters, field="--diameters") from None
    if not d or any(not v > 0 for v in d):
        raise InputError("diameters must be > 0", field="--diameters")
    return d


def _require(p: Params, *names):
    for n in names:
        if not getattr(p, n):
            raise InputError("required by pick3d %s" % p.action, field="--" + n.rstrip("_"))


def _torch_setup(p: Params, comm):
    from ..ml import require_sklearn, require_torch

    torch = require_torch()
    require_sklearn()
    torch.set_num_threads(set_threads(p.j, comm))
    if p.device == "cuda" and not torch.cuda.is_available():
        raise InputError("no CUDA device visible to torch", field="--device")
    return "cuda" if p.device == "cuda" or (p.device == "auto" and torch.cuda.is_available()) else "cpu"


def run(p: Params, ctx):
    if p.action not in ACTIONS:
        raise InputError("needs an action: %s" % ", ".join(ACTIONS), field="action")
    if p.action == "evaluate":
        from .pick3d_actions import evaluate
        return evaluate(p, ctx, _diameters(p))
    if p.action == "predict":
        _require(p, "model", "i", "o")
        from .pick3d_actions import predict
        return predict(p, ctx, _torch_setup(p, ctx.comm))
    if p.continue_ is None:
        _require(p, "i", "labels", "o")
    from .pick3d_actions import train
    return train(p, ctx, _torch_setup(p, ctx.comm))


def record(ctx, p, folder):
    stamp(os.path.join(folder, "job.json"), job_record(ctx.name, p, ctx.argv))
