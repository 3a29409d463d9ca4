"""Importance-sampling kernels of the quadrature over poses (seed 003, eqs 10-23; csrc/importance.cpp,
CUDA twin cuda/importance.cu).

A *segment* is one particle (or one (particle, class) pair); a pose *dimension* is the viewing
directions (unit vectors, kind 0), the in-plane angles (unit 2-vectors, kind 0) or the
translations (pixel offsets, kind 1) of the current quadrature, each a grid ``(M, D)`` float64.

* :func:`is_draw`: per segment, the importance distribution of eq 20 over one dimension's grid,
  ``q = (1 - alpha) Z^-1 sum_i val_i^(1/T) K(prev_i, g) + alpha / M`` with the kernels of eqs 21-23
  (``exp(kappa (x.y - 1))`` for kind 0, ``exp(-kappa |x - y|^2)`` for kind 1), ``N = ceil(s0
  ESS(q))`` draws, systematic (draw k at ``(k + u0) / N`` of the cumulative distribution, one
  uniform ``u0`` per segment from a counter-based generator keyed by ``keys[s]``: each draw
  marginally from q, a point drawn floor or ceil of ``N q`` times, the same draws on any thread or
  rank count), and for the distinct drawn points ``log(m / (N q))`` (m the times drawn): the
  properly weighted factors of eq 13 (``E[m] = N q``).  A segment with no previous marginal
  (all ``val`` 0) draws from the uniform distribution.
* :func:`is_candidates`: the product of a segment's three drawn sets as the E-step's explicit
  candidates (CSR over particles, ``K`` segments per particle): translation ``t``, hypothesis
  ``j = cls * Jc1 + d * npsi + p`` and the summed log factors (the candidate's extra log prior).

numpy inputs run on ``hpcem._core`` (OpenMP over segments); cupy inputs on ``hpcem._cuda``
(one block per segment).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _backend

__all__ = ["Draws", "is_draw", "is_candidates"]


@dataclass(frozen=True)
class Draws:
    """Drawn points of one dimension, CSR over segments: segment ``s`` drew the grid points
    ``idx[offsets[s]:offsets[s+1]]`` (ascending) with log factors ``lw``; ``n`` (S,) draws and
    ``ess`` (S,) effective sample size of each segment's distribution."""

    offsets: np.ndarray
    idx: np.ndarray
    lw: np.ndarray
    n: np.ndarray
    ess: np.ndarray


def is_draw(prev, val, grid, kind: int, kappa, inv_T, alpha, s0: float, keys,
            max_draws: int = 1 << 20) -> Draws:
    """Draws of every segment over one dimension (see the module docstring).

    ``prev`` (S, C, D) float64 previous points (in the grid's frame), ``val`` (S, C) float64 their
    marginal values (0: unused slot), ``grid`` (M, D) float64, ``inv_T`` / ``alpha`` (S,) float64
    the annealing exponent 1/T (0: every previous point weighs the same) and the uniform mixing
    proportion, ``keys`` (S,) uint64 random streams."""
    c = _backend.args_for("is_draw", prev=prev, val=val, grid=grid)
    prev = c.array(prev, "prev", np.float64, ndim=3, strided="copy", convert=True)
    S, C, D = prev.shape
    val = c.array(val, "val", np.float64, shape=(S, C), strided="copy", convert=True)
    grid = c.array(grid, "grid", np.float64, ndim=2, strided="copy", convert=True)
    if grid.shape[1] != D or grid.shape[0] == 0:
        c.fail(f"grid: shape must be (M > 0, {D}), got {tuple(grid.shape)}")
    if kind not in (0, 1):
        c.fail(f"kind: must be 0 (unit vectors) or 1 (points), got {kind!r}")
    inv_T = c.cast(inv_T, "inv_T", np.float64, shape=(S,))
    alpha = c.cast(alpha, "alpha", np.float64, shape=(S,))
    keys = c.cast(keys, "keys", np.uint64, shape=(S,))
    kappa = c.cast(np.full(S, float(kappa)) if np.ndim(kappa) == 0 else kappa, "kappa", np.float64, shape=(S,))
    if not bool((kappa >= 0).all()):
        c.fail("kappa: must be >= 0")
    s0 = c.number(s0, "s0", positive=True)
    max_draws = c.count(max_draws, "max_draws", minimum=1)
    if not c.gpu:
        return Draws(*_backend.core("is_draw", prev, val, grid, int(kind), kappa, inv_T, alpha, s0, keys, max_draws))
    xp, M = c.xp, grid.shape[0]
    q = xp.empty((S, M), dtype=np.float64)
    cnt = xp.empty((S, M), dtype=np.int32)
    nuniq, n, ess = xp.empty(S, np.int64), xp.empty(S, np.int64), xp.empty(S, np.float64)
    _backend.cuda("is_draw_count", prev, val, grid, S, C, D, M, int(kind), kappa, inv_T, alpha, s0, keys,
                  max_draws, q, cnt, nuniq, n, ess)
    off = xp.zeros(S + 1, np.int64)
    off[1:] = xp.cumsum(nuniq)
    U = int(off[-1])
    idx, lw = xp.empty(U, np.int32), xp.empty(U, np.float64)
    _backend.cuda("is_draw_emit", q, cnt, S, M, off, n, idx, lw)
    return Draws(off, idx, lw, n, ess)


def is_candidates(d: Draws, p: Draws, t: Draws, cls, K: int, npsi: int, Jc1: int):
    """``(offsets (B+1,), t (P,), j (P,), extra (P,))``: the product of the directions ``d``,
    in-plane angles ``p`` and translations ``t`` drawn for each of the S = B K segments, segment s
    of particle ``s // K`` in class ``cls[s]``."""
    c = _backend.args_for("is_candidates", od=d.offsets, op=p.offsets, ot=t.offsets)
    S = int(d.offsets.shape[0]) - 1
    K = c.count(K, "K", minimum=1)
    if S % K or p.offsets.shape[0] != S + 1 or t.offsets.shape[0] != S + 1:
        c.fail("the three draws must have the same segments, K per particle")
    cls = c.index(cls, "cls", size=S)
    npsi, Jc1 = c.count(npsi, "npsi", minimum=1), c.count(Jc1, "Jc1", minimum=1)
    args = [c.index(x.offsets, "offsets") for x in (d, p, t)]
    idx = [c.cast(x.idx, "idx", np.int32) for x in (d, p, t)]
    lws = [c.cast(x.lw, "lw", np.float64) for x in (d, p, t)]
    if not c.gpu:
        return _backend.core("is_candidates", args[0], idx[0], lws[0], args[1], idx[1], lws[1], args[2], idx[2],
                             lws[2], cls, K, npsi, Jc1)
    xp = c.xp
    cnt = xp.diff(args[0]) * xp.diff(args[1]) * xp.diff(args[2])
    start = xp.zeros(S + 1, np.int64)
    start[1:] = xp.cumsum(cnt)
    P = int(start[-1])
    tout, jout, eout = xp.empty(P, np.int64), xp.empty(P, np.int64), xp.empty(P, np.float64)
    _backend.cuda("is_candidates", args[0], idx[0], lws[0], args[1], idx[1], lws[1], args[2], idx[2], lws[2],
                  cls, start, S, K, npsi, Jc1, tout, jout, eout)
    return start[::K].copy(), tout, jout, eout
