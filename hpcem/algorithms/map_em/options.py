"""relion_refine's settings of the particle images and the references that MAP-EM jobs share
(RELION's flag names; the defaults are RELION's GUI defaults, see DESIGN_NOTES)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from ...runtime.params import Params, param

YES_NO = argparse.BooleanOptionalAction


@dataclass(frozen=True)
class ImageOptions(Params):
    zero_mask: bool = param(True, "particles are zero outside the mask (--no-zero_mask: filled with noise of "
                            "each image's background level, RELION's command-line default)", action=YES_NO,
                            group="model")
    flatten_solvent: bool = param(True, "references masked by the particle sphere (or --solvent_mask) every "
                                  "iteration; --no-flatten_solvent keeps them whole", action=YES_NO,
                                  group="model")
    ctf_intact_first_peak: bool = param(False, "CTF taken as 1 below its first peak", action="store_true",
                                        group="model")
    norm: bool = param(False, "per-particle normalisation correction (rlnNormCorrection)", action="store_true",
                       group="model")
    scale: bool = param(False, "per-optics-group intensity-scale correction (rlnGroupScaleCorrection)",
                        action="store_true", group="model")


@dataclass(frozen=True)
class TVOptions(Params):
    """OPUS-SSRI's regularised M-step (seed 002; the public implementation's flag names) and the
    back-projection kernel, shared by refine3d, class3d and reconstruct (:mod:`hpcem.recon.tv`)."""
    tv: bool = param(False, "sparsity + total-variation regularised reconstruction (OPUS-SSRI) instead of the "
                     "Wiener prior", action="store_true", group="regularisation")
    tv_alpha: float = param(None, "weight of the reweighted l1 term in units of RMS(A^H D y) x eps "
                            "(None: 0.5, seed 002)",
                            check=(lambda v: v >= 0, ">= 0"), group="regularisation")
    tv_beta: float = param(None, "weight of the reweighted TV term in units of RMS(A^H D y) x eps' "
                           "(None: 1.6, seed 002)",
                           check=(lambda v: v >= 0, ">= 0"), group="regularisation")
    tv_eps: float = param(None, "eps of the l1 weights 1/(|x| + eps), a density level of the map (map units; "
                          "--tv_auto: from the data)", check=(lambda v: v > 0, "> 0"), group="regularisation")
    tv_epsp: float = param(None, "eps' of the TV weights 1/(|grad x| + eps') (None: eps / 3)",
                           check=(lambda v: v > 0, "> 0"), group="regularisation")
    tv_weight: float = param(None, "gamma of the restraint to the previous map in units of the mean data weight "
                             "N(n) (None: 0.1, seed 002)", check=(lambda v: v >= 0, ">= 0"), group="regularisation")
    tv_lr: float = param(1.0, "step of the accelerated iterations in units of 1 / Lipschitz constant",
                         check=(lambda v: 0 < v <= 2, "in (0, 2]"), group="regularisation")
    tv_iters: int = param(150, "iterations of the regularised solver per reconstruction",
                          check=(lambda v: v >= 1, ">= 1"), group="regularisation")
    tv_auto: bool = param(False, "eps from the data (0.1 x the 99.9th percentile of |map|), the parameter scales "
                          "printed; explicit --tv_* flags override", action="store_true", group="regularisation")
    bp_kernel: str = param("linear", "back-projection kernel: trilinear, or seed 002's Gaussian kernel regression "
                           "over the 3 x 3 x 3 neighbours (exp(-d^2/2))", choices=("linear", "gauss"),
                           group="regularisation")
