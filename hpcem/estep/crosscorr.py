"""The cross-correlation pass of relion_refine's --firstiter_cc: the first iteration assigns each
particle to the pose (and class) of highest normalised cross-correlation with the reference, so
that a reference on another greyscale than the particles (another program's map, a PDB model)
gives a first reconstruction on the particles' own scale.

Through the ordinary E-step: every reference slice ``R_j`` is scaled to one norm ``rho`` (over the
coefficients it is scored on, weighted by their Hermitian multiplicity times the mean CTF^2 of the
particles, so that ``||c R_j||`` is nearly the same for all j), which makes
``||X - c R_j||^2 = ||X||^2 - 2 Re<X, c R_j> + const`` rank the hypotheses as the cross-correlation
``Re<X, c R_j> / ||c R_j||`` does; a white noise model a thousand times below the images' power
makes the posteriors one-hot (hard assignment, as RELION's CC iteration), and ``maxsig = 1`` keeps
one coarse hypothesis per particle.  ``rho`` is the particles' mean norm on those coefficients.
The back-projection weights are then white (the first map is the CTF-weighted average of the
assigned particles); the noise spectra and the --norm/--scale corrections are not updated from
this pass (its residuals are not on the noise model's scale).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from .xp import namespace

SHARPNESS = 1e-3   # white noise power of the pass, relative to the images' mean power


def normalise_rows(rows: np.ndarray, weight: np.ndarray, rho: float) -> None:
    """Scale every row (in place) to ``sqrt(sum weight |row|^2) = rho`` (``rows`` and ``weight``
    on one device)."""
    xp = namespace(rows)
    nrm = xp.sqrt((weight[None, :] * (rows.real ** 2 + rows.imag ** 2)).sum(axis=1))
    rows *= (rho / xp.maximum(nrm, 1e-30)).astype(np.float32)[:, None]


def setup(parts, r_cur: int, sigma2: np.ndarray, opts, comm):
    """(sigma2, E-step options, the space's row_norm) of a cross-correlation pass (collective)."""
    keep = parts.shell <= r_cur
    c2 = (parts.C.astype(np.float64) ** 2).sum(axis=0) if parts.C is not None else np.full(parts.shell.size,
                                                                                          float(parts.size))
    x2 = sum(float(((np.abs(parts.X[s:s + 1024][:, keep]).astype(np.float64) ** 2) @ parts.hw[keep]).sum())
             for s in range(0, parts.size, 1024))
    tot = np.concatenate([c2, [x2, float(parts.size)]])
    comm.allreduce_(tot)
    N = max(tot[-1], 1.0)
    weight = (parts.hw * tot[:-2] / N).astype(np.float64)
    rho = float(np.sqrt(tot[-2] / N))
    power = float(np.mean(np.asarray(sigma2)[:, :int(r_cur) + 1]))
    white = np.full_like(np.asarray(sigma2, np.float64), max(power, 1e-30) * SHARPNESS)
    return white, replace(opts, maxsig=1), (weight, rho)
