"""Solvent flattening and the masked gold-standard FSC of the 3D jobs (relion_refine's
--flatten_solvent, --solvent_mask, --solvent_correct_fsc).

The references are multiplied every iteration by the solvent mask (a user's mask, else the soft
sphere of the particle diameter).  refine3d's half-map FSC is computed inside the same mask; with
``correct`` the mask's own correlation is removed as relion_postprocess does (Chen et al. 2013):
beyond the shell where the unmasked FSC falls below 0.8, the FSC of the phase-randomised half maps
``FSC_n`` (in the same mask) corrects the masked one, ``(FSC_t - FSC_n) / (1 - FSC_n)``.
"""
from __future__ import annotations

import numpy as np

from ...core.fsc import fsc, fsc_true, phase_randomise

RANDOMISE_BELOW = 0.8   # phases randomised from where the unmasked FSC drops below this


def particle_mask(cfg, sphere: np.ndarray) -> np.ndarray:
    """The particle's mask: --solvent_mask (read once), else the sphere of --particle_diameter;
    the references are flattened by it (unless --no-flatten_solvent) and refine3d's gold-standard
    FSC is computed in it."""
    if not cfg.solvent_mask:
        return sphere
    from ...io.mrc import read_mrc

    m, _ = read_mrc(cfg.solvent_mask)
    return np.clip(np.asarray(m, np.float32), 0.0, 1.0)


def randomisation_shell(curve_unmasked) -> int:
    """First shell (> 0) where the unmasked FSC falls below 0.8 (len(curve) when it never does)."""
    c = np.asarray(curve_unmasked)
    below = np.flatnonzero(c[1:] < RANDOMISE_BELOW)
    return int(below[0] + 1) if below.size else int(c.size)


def masked_fsc(h1, h2, mask, correct: bool, curve_unmasked=None, seed: int = 0) -> np.ndarray:
    """FSC of half maps ``h1``, ``h2`` inside ``mask``; phase-randomisation corrected with ``correct``."""
    _, curve = fsc(h1, h2, mask=mask)
    if not correct:
        return curve
    if curve_unmasked is None:
        _, curve_unmasked = fsc(h1, h2)
    k = randomisation_shell(curve_unmasked)
    if k >= curve.size - 1:
        return curve
    rng = np.random.default_rng(seed)
    _, rand = fsc(phase_randomise(h1, k, rng), phase_randomise(h2, k, rng), mask=mask)
    return fsc_true(curve, rand, k)
