"""Settings of 3D classification and 3D auto-refinement (RELION's flag names and defaults)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ...core.symmetry import symmetry_ops
from ...errors import InputError
from ...estep import EStepOptions
from ...runtime.params import AT_LEAST_1, NON_NEGATIVE, POSITIVE, param
from ..vdam.options import GradOptions
from .options import YES_NO, ImageOptions, TVOptions


def _known_symmetry(name) -> bool:
    try:
        symmetry_ops(name)
    except (InputError, ValueError):
        return False
    return True


@dataclass(frozen=True)
class Map3DConfig(ImageOptions):
    K: int = param(1, cli=False)
    iters: int = param(25, "iterations", flag="--iter", check=AT_LEAST_1, group="model")
    sym: str = param("C1", "point-group symmetry (Cn, Dn, T, O, I)", check=(_known_symmetry, "a point group"),
                     group="model")
    particle_diameter: float = param(0.0, "mask diameter in A (0: 80%% of the box)", check=NON_NEGATIVE,
                                     group="model")
    ctf: bool = param(False, "CTF-aware likelihood and reconstruction", action="store_true", group="model")
    ini_high: float = param(40.0, "low-pass (A) of the reference, first resolution limit", check=POSITIVE,
                            group="model")
    tau2_fudge: float = param(4.0, "regularisation parameter T", check=POSITIVE, group="model")
    random_seed: int = param(0, "seed (initial classes / half sets)", group="model")
    healpix_order: int = param(2, "HEALPix order of the (first) angular sampling",
                               check=(lambda v: 0 <= v <= 6, "in 0..6"), group="sampling")
    max_healpix_order: int = param(0, "finest HEALPix order of refine3d's and class3d --auto_sampling's schedules "
                                   "(0: from the Nyquist-limited accuracy)", check=NON_NEGATIVE, group="sampling")
    psi_step: float = param(0.0, cli=False)
    offset_range: float = param(5.0, "translation search range (pixels)", check=NON_NEGATIVE, group="sampling")
    offset_step: float = param(1.0, "translation step (pixels)", check=POSITIVE, group="sampling")
    oversampling: int = param(1, "adaptive oversampling order", choices=(0, 1), group="sampling")
    maxsig: int = param(30, "most significant coarse hypotheses oversampled per particle (0: all)",
                        check=NON_NEGATIVE, group="sampling")
    firstiter_cc: bool = param(False, "first iteration: each particle hard-assigned to the pose of highest "
                               "cross-correlation with the reference (for references not on the particles' greyscale)",
                               action="store_true", group="model")
    sigma_ang: float = param(0.0, "local angular searches from the start, this many degrees (1 sigma) around each "
                             "particle's input pose (0: global)", check=NON_NEGATIVE, group="sampling")
    solvent_mask: str = param(None, "mask (MRC) of the particle for solvent flattening (and the masked FSC of "
                              "refine3d) instead of the sphere of --particle_diameter", group="model")
    skip_gridding: bool = param(False, "M-step reconstruction without the gridding correction iterations",
                                action="store_true", group="compute")
    importance_sampling: bool = param(False, "E-step poses drawn from each particle's importance distribution of "
                                      "the previous iteration (cryoSPARC's, seed 003) instead of the full grid or "
                                      "the local search", action=YES_NO, group="sampling")
    s0: float = param(10.0, "importance samples per effective sample size (with --importance_sampling)",
                      check=POSITIVE, group="sampling")
    batch: int = param(0, "particles per kernel call (0: automatic)", check=NON_NEGATIVE, group="compute")
    frac: float = param(0.999, cli=False)
    margin_shells: int = param(4, cli=False)
    mask_width: float = param(5.0, cli=False)
    coarse_factor: float = param(1.2, cli=False)   # coarse pass up to (angular step arc at the radius)/factor

    def estep_options(self) -> EStepOptions:
        return EStepOptions(self.frac, self.maxsig, self.batch, self.coarse_factor, self.oversampling)


@dataclass(frozen=True)
class _Class3DBase(Map3DConfig):
    K: int = param(4, "number of classes", check=AT_LEAST_1, group="model")
    psi_step: float = param(0.0, "in-plane step (deg; 0: the HEALPix step)",
                            check=(lambda v: 0 <= v <= 180, "in [0, 180]"), group="sampling")
    cross_halves: bool = param(True, "score each random half's particles (rlnRandomSubset) against the class maps "
                               "of the other half, so that no particle is scored against its own contribution "
                               "(which freezes the random initial classes at low SNR); --no-cross_halves: RELION's "
                               "plain EM", action=YES_NO, group="model")
    cross_join: bool = param(False, "with cross halves: score each half against the other half's maps of the last "
                             "two iterations averaged, which joins the halves' two interleaved chains; turn it on "
                             "(--continue ... --cross_join) once the classes have begun to separate: from the start "
                             "it locks into a split by alignment quality", action=YES_NO, group="model")


@dataclass(frozen=True)
class Class3DConfig(_Class3DBase, TVOptions):
    auto_sampling: bool = param(False, "the searches follow the resolution: cross halves at --healpix_order, then "
                                "--cross_join once the resolution stalls, then (when it stalls again) the HEALPix "
                                "order the resolution supports with importance-sampled global searches; for low SNR, with --tv --tv_auto",
                                action=YES_NO, group="sampling")


@dataclass(frozen=True)
class Refine3DConfig(Map3DConfig, TVOptions):
    iters: int = param(50, "most iterations before the final one", flag="--iter", check=AT_LEAST_1, group="model")
    tau2_fudge: float = param(1.0, "regularisation parameter T", check=POSITIVE, group="model")
    auto_local_healpix_order: int = param(4, "local angular searches from this HEALPix order on",
                                          check=NON_NEGATIVE, group="sampling")
    low_resol_join_halves: float = param(0.0, "below this resolution (A) both halves' sums are averaged every "
                                         "iteration (RELION's GUI passes 40; 0: never)", check=NON_NEGATIVE,
                                         group="model")
    solvent_correct_fsc: bool = param(False, "gold-standard FSC in --solvent_mask corrected for the mask by phase "
                                      "randomisation beyond the unmasked FSC's 0.8 point (as relion_postprocess)",
                                      action="store_true", group="model")


@dataclass(frozen=True)
class InitialModelConfig(_Class3DBase, GradOptions, TVOptions):
    """relion_refine --grad --denovo_3dref (RELION-4's InitialModel job defaults); --tv: every class
    map after each VDAM step is the sparsity + TV penalised map nearest it (seed 002)."""
    K: int = param(1, "number of 3D classes", check=AT_LEAST_1, group="model")
    iters: int = param(200, "mini-batches", flag="--iter", check=AT_LEAST_1, group="model")
    sym: str = param("C1", "point group: the C1 map is aligned to its axes and symmetrised at the end",
                     check=(_known_symmetry, "a point group"), group="model")
    healpix_order: int = param(1, "HEALPix order of the angular sampling (1: 15 degrees)",
                               check=(lambda v: 0 <= v <= 6, "in 0..6"), group="sampling")
    offset_range: float = param(6.0, "translation search range (pixels)", check=NON_NEGATIVE, group="sampling")
    offset_step: float = param(2.0, "translation step (pixels)", check=POSITIVE, group="sampling")
    cross_halves: bool = param(False, cli=False)   # VDAM keeps its own half sets
    cross_join: bool = param(False, cli=False)
    importance_sampling: bool = param(False, cli=False)
    auto_sampling: bool = param(False, "HEALPix order raised with the resolution (the step at most twice the "
                                "angular accuracy it supports, core.sampling.order_for_resolution), from "
                                "--healpix_order up to --max_healpix_order", action=YES_NO, group="sampling")
    max_healpix_order: int = param(3, "finest HEALPix order of --auto_sampling",
                                   check=(lambda v: 0 <= v <= 6, "in 0..6"), group="sampling")
    final_healpix_order: int = param(-1, "HEALPix order of the final pass that assigns every particle's class and "
                                     "pose (-1: with K > 1 one order finer than the last mini-batch's, as far as "
                                     "the resolution reached supports it; with K = 1 the mini-batches' order)",
                                     check=(lambda v: -1 <= v <= 6, "in -1..6"), group="sampling")
    split_merge: bool = param(True, "K >= 3: when two classes share their particles while a third, larger "
                              "class may hold two structures, the smaller of the pair takes over the large "
                              "class's map (eq 15's replacement; before the final phase, at most K - 1 times)",
                              action=YES_NO, group="vdam")
    grad_em_iters: int = param(-1, "the last this many of --iter are EM iterations over all particles at the final "
                               "pass's order (each class map reconstructed from all its particles, instead of "
                               "a final pass against the last mini-batch's maps); -1: 4 with K > 1, 0 with K = 1",
                               check=(lambda v: v >= -1, ">= -1"), group="vdam")

    def em_iters(self) -> int:
        """``--grad_em_iters`` resolved: with K > 1 four EM iterations by default (issue 11, stop 34: K = 3
        at SNR 0.05 continued from 320 mini-batches, ARI 0.773 / 0.683 / 0.641 -> 0.865 / 0.837 / 0.730,
        every map of seeds 1-2 11-17 A -> 7.4-8.2 A; after 2 EM iterations 0.837 / 0.759 / 0.702)."""
        return self.grad_em_iters if self.grad_em_iters >= 0 else (min(4, self.iters - 1) if self.K > 1 else 0)

    def estep_options(self) -> EStepOptions:
        """The E-step also sums the classes' shared posterior mass for ``--split_merge``."""
        return dataclasses.replace(super().estep_options(), class_overlap=self.split_merge and self.K >= 3)
