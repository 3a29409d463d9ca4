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
