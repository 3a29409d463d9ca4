"""``--reseed_from worst`` (K > 1): a re-seeded class (an emptied class, a split-merge move) starts from
the images the current maps fit worst instead of a copy of the largest class.

Every particle is scored once against the current maps (the full quadrature of the iteration, exact
class posteriors); its fit is its log-likelihood minus the median of the particles of its best class
(logliks of different classes' particles differ by their contrast, not by how well they fit); the
``WORST_SHARE / K`` of the set with the lowest fit are back-projected at their best poses (CTF x image,
CTF^2) into a Wiener-filtered map up to the iteration's shell, windowed, non-negative and scaled to
the largest class's standard deviation (issue 12, eleventh pass: a copy of the particles' map turns
the re-seeded class into a second particle class).
"""
from __future__ import annotations

import numpy as np

from ...core.euler import euler_to_matrix
from ...core.fourier import ft3, ift3, radius3
from ...estep import FullGrid
from ...recon.projector import BackProjector
from ...recon.reconstruct import insert_slices

WORST_SHARE = 0.5     # the re-seeded class's images: this times the mean class share (N / K)


def fit_all(m, V, r, quad):
    """Rank-local (class 1-based, loglik, poses) of every particle's best class and pose against ``V``,
    the particles' results left as they were (collective)."""
    keep = {k: v.copy() for k, v in m.res.items()}
    allp = np.arange(m.idx.size)
    m.e_step(V, r, quad, allp, m.sigma2(), FullGrid(), None, accumulate=False, record=True)
    fit = {k: v.copy() for k, v in m.res.items()}
    for k, v in keep.items():
        m.res[k][...] = v
    return fit


def worst_fit(comm, cls, loglik, n_total: int, K: int) -> np.ndarray:
    """Rank-local indices of the ``WORST_SHARE * n_total / K`` particles (all ranks together) whose
    log-likelihood lies furthest below the median of their class's (collective)."""
    parts = comm.allgather((np.asarray(cls, np.int64), np.asarray(loglik, np.float64)))
    c_all = np.concatenate([p[0] for p in parts])
    l_all = np.concatenate([p[1] for p in parts])
    med = np.zeros(K + 1)
    for k in np.unique(c_all):
        med[k] = np.median(l_all[c_all == k])
    d_all = l_all - med[c_all]
    m = max(1, int(round(WORST_SHARE * n_total / K)))
    chosen = np.zeros(d_all.size, bool)
    chosen[np.argsort(d_all, kind="stable")[:m]] = True
    start = sum(p[0].size for p in parts[:comm.rank])
    return np.flatnonzero(chosen[start:start + np.asarray(cls).size])


def map_from_images(m, comm, sel, fit, r: int, like) -> np.ndarray:
    """The map of the rank-local particles ``sel`` at their poses in ``fit`` (collective): Wiener
    constant the mean weight inside shell ``r``, low-passed to ``r``, windowed, non-negative, with
    ``like``'s standard deviation."""
    n, angpix = m.n, m.angpix
    pa = m.parts
    bp = BackProjector(n, pad=2)
    kidx = np.arange(n * (n // 2 + 1))
    for s in range(0, len(sel), 256):
        b = np.asarray(sel[s:s + 256], np.int64)
        o_px = np.stack([fit["ox"][b], fit["oy"][b]], 1) / angpix
        X, c = pa.batch(b, kidx, o_px)
        A = euler_to_matrix(fit["rot"][b], fit["tilt"][b], fit["psi"][b]).astype(np.float32)
        insert_slices(bp, np.asarray(X).reshape(len(b), n, -1), np.asarray(c).reshape(len(b), n, -1), A,
                      r_max=float(r))
    comm.allreduce_(bp.data)
    comm.allreduce_(bp.weight)
    sh = bp.shell_index()
    inside = sh <= r
    w = float(bp.weight[inside].mean()) if np.any(inside) else 1.0
    v = bp.reconstruct(wiener_const=max(w, 1e-30), gridding_iters=0, mask_outside=False).astype(np.float64)
    v = ift3(ft3(v) * (radius3(n) <= r), n)
    v = np.maximum(v, 0.0) * m.mask3
    return v * float(np.std(like)) / max(float(np.std(v)), 1e-30)
