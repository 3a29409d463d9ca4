"""M-step pieces shared by the likelihood methods (seed 000, section 3.1.1, eqs 4-6).

The E-step (:mod:`hpcem.estep`) leaves, per rank, data sums ``sum w c X / sigma2`` and weight
sums ``sum w c^2 / sigma2`` (in back-projectors for 3D, per class and in-plane angle for 2D),
the posterior-weighted residual power per optics group and shell, the posterior mass per class
and the offsets' power.  After one Allreduce of each, the M-step is:

* references: ``V = data / (weight + 1 / (T tau2))`` (eq 5) by a *reconstructor*
  (:class:`WienerMAP` here; seed 002's sparsity + TV regularised reconstruction,
  :class:`hpcem.recon.tv.TVReconstructor`, is another with the same ``reconstruct`` call;
  :func:`reconstructor_for` picks one from a job's settings; a gradient method (VDAM, seed 000
  eqs 7-15) replaces the whole update with a step along these same sums);
* the noise spectra (eq 6), class priors and the offsets' prior width (:func:`sigma2_update`,
  :func:`class_priors`, :func:`sigma_offset`);
* the prior power ``tau2`` and the next resolution limit: from the reference power and the
  data-vs-prior SSNR (2D, class3d; :func:`resolution_shell`, :func:`tau2_from_unfiltered`) or
  from the gold-standard FSC (refine3d; :func:`tau2_from_ssnr` with
  :func:`hpcem.core.fsc.fsc_to_ssnr`).
"""
from __future__ import annotations

import numpy as np

from .projector import GRIDDING_ITERS


class WienerMAP:
    """The MAP reconstruction of RELION's M-step: ``data / (weight + 1/(fudge tau2))`` per
    voxel (``tau2`` None: lightly regularised, RELION's unfiltered half maps), symmetrised by
    ``ops`` (more than one operator), gridding-corrected (:class:`hpcem.recon.projector.BackProjector`)."""

    name = "map"
    uses_tau2 = True
    last = None

    def __init__(self, gridding_iters: int = GRIDDING_ITERS):
        self.gridding_iters = int(gridding_iters)

    def reconstruct(self, bp, tau2=None, fudge: float = 1.0, ops=None, prev=None) -> np.ndarray:
        """``prev`` (the previous map) is not used by the Wiener prior."""
        sym = ops if ops is not None and len(ops) > 1 else None
        g = self.gridding_iters
        if tau2 is None:
            return bp.reconstruct(symmetry_ops=sym, gridding_iters=g).astype(np.float32)
        return bp.reconstruct(tau2=tau2, tau2_fudge=fudge, symmetry_ops=sym, gridding_iters=g).astype(np.float32)


def reconstructor_for(cfg, gridding_iters: int = GRIDDING_ITERS):
    """The M-step reconstructor of a job's settings: :class:`hpcem.recon.tv.TVReconstructor` with
    ``--tv`` (TVOptions), else :class:`WienerMAP`."""
    if getattr(cfg, "tv", False):
        from .tv import TVReconstructor, TVSettings

        return TVReconstructor(TVSettings.from_options(cfg), gridding_iters)
    return WienerMAP(gridding_iters)


def shell_counts(shell, nsh: int) -> np.ndarray:
    """Number of half-grid coefficients per shell 0..nsh-1 (float64)."""
    s = np.asarray(shell).ravel()
    return np.bincount(s[s < nsh], minlength=nsh).astype(np.float64)


def sigma2_update(img_power, noise, counts, group_counts, r_cur: int) -> np.ndarray:
    """Noise power per optics group and shell (eq 6): the posterior-weighted residual power per
    coefficient for shells <= r_cur (where positive), the images' power beyond.  ``noise`` (G,
    nsh) residual sums, ``counts`` (nsh,) coefficients per shell, ``group_counts`` (G,)."""
    s2 = np.array(img_power, np.float64, copy=True)
    ng = np.maximum(np.asarray(group_counts, np.float64), 1.0)[:, None]
    upd = np.arange(s2.shape[1]) <= r_cur
    est = np.asarray(noise) / (np.asarray(counts)[None, :] * ng)
    s2[:, upd] = np.where(est[:, upd] > 0, est[:, upd], s2[:, upd])
    return s2


def class_priors(class_weight) -> np.ndarray:
    w = np.asarray(class_weight, np.float64)
    return w / max(float(w.sum()), 1e-300)


def sigma_offset(offset2, n_particles: int) -> float:
    """Width (A) of the Gaussian prior on the origins: RMS over x and y of the new origins."""
    return float(np.sqrt(max(float(np.ravel(offset2)[0]), 1e-12) / (2.0 * max(int(n_particles), 1))))


def resolution_shell(ssnr) -> int:
    """Highest shell up to which every shell from 1 has SSNR >= 1, the largest over classes
    (``ssnr`` (K, nsh))."""
    best = 0
    for row in np.atleast_2d(ssnr):   # classes
        below = np.flatnonzero(row[1:] < 1.0)
        best = max(best, int(below[0] if below.size else row.size - 1))
    return best


def next_r_cur(res_shell: float, margin: int, n: int) -> int:
    """The E-step's next resolution limit: the resolution shell plus a margin, within [3, n/2]."""
    return int(min(n // 2, max(3, int(res_shell) + margin)))


def tau2_from_ssnr(ssnr, mean_weight) -> np.ndarray:
    """Prior power per shell from an SSNR estimate and the mean back-projected weight (the noise
    power of the reconstruction per voxel is 1 / <W>)."""
    W = np.maximum(np.asarray(mean_weight, np.float64), 1e-30)
    s = np.asarray(ssnr, np.float64)
    return np.where(s > 0, s / W, 0.0)


def tau2_from_unfiltered(power, mean_weight, mask_msq: float, r_limit: int) -> np.ndarray:
    """Prior power per shell from an unregularised (masked) reconstruction: its power less its
    noise power (``mask_msq / <W>`` per voxel), zero beyond the E-step's limit ``r_limit`` (no data
    were inserted there: the power of an older map is no estimate)."""
    W = np.asarray(mean_weight, np.float64)
    t2 = np.where(W > 0, np.maximum(np.asarray(power) - mask_msq / np.maximum(W, 1e-300), 0.0), 0.0)
    t2[int(r_limit) + 1:] = 0.0
    return t2
