"""Children of coarse hypotheses (adaptive oversampling) and ragged-index helpers.

A *children map* is any object with ``expand(idx) -> (counts, flat)``: coarse index ``idx[q]``
has the ``counts[q]`` fine children ``flat[sum(counts[:q]) : sum(counts[:q+1])]``.  The E-step
(:mod:`hpcem.estep.batch`) takes one for translations and one for orientations and evaluates the
product of both for every significant coarse hypothesis.
"""
from __future__ import annotations

import numpy as np

from .xp import namespace, repeat


class RegularChildren:
    """Coarse index ``c`` has the ``m`` fine children ``table[c, :]`` (``table`` (n_coarse, m))."""

    def __init__(self, table):
        self.table = np.ascontiguousarray(np.asarray(table, np.int64))
        self._dev = {}

    def _on(self, xp):
        if xp is np:
            return self.table
        if xp not in self._dev:     # a device copy, made once
            self._dev[xp] = xp.asarray(self.table)
        return self._dev[xp]

    def expand(self, idx):
        xp = namespace(idx)
        idx = xp.asarray(idx, dtype=xp.int64)
        table = self._on(xp)
        m = table.shape[1]
        return xp.full(idx.size, m, dtype=xp.int64), table[idx].reshape(-1)


def ragged_arange(starts, counts):
    """Concatenation of ``arange(s, s + c)`` over pairs (vectorised)."""
    xp = namespace(starts, counts)
    counts = xp.asarray(counts, dtype=xp.int64)
    tot = int(counts.sum())
    if tot == 0:
        return xp.zeros(0, dtype=xp.int64)
    ends = xp.cumsum(counts)
    seg_start = repeat(xp, ends - counts, counts)
    return repeat(xp, xp.asarray(starts, dtype=xp.int64), counts) + (xp.arange(tot) - seg_start)


def segment_offsets(counts):
    """CSR offsets ``[0, c0, c0 + c1, ...]`` (int64) of per-segment counts."""
    xp = namespace(counts)
    c = xp.cumsum(xp.asarray(counts, dtype=xp.int64))
    return xp.concatenate([xp.zeros(1, dtype=xp.int64), c])


def product_children(pair_i, pair_t, pair_j, children_t, children_j):
    """Children pairs of coarse pairs (i, t, j), grouped by parent (so by particle when the
    parents are).  Returns ``(pi, pt, pj, parent)`` with ``parent`` the coarse pair index."""
    xp = namespace(pair_i, pair_t, pair_j)
    ct, ft = children_t.expand(pair_t)
    cj, fj = children_j.expand(pair_j)
    P = len(pair_i)
    nchild = ct * cj
    parent = repeat(xp, xp.arange(P, dtype=xp.int64), nchild)
    # within a parent: child index q -> (q // cj) translation child, (q % cj) hypothesis child
    q = xp.arange(parent.size, dtype=xp.int64) - repeat(xp, xp.cumsum(nchild) - nchild, nchild)
    cjp = xp.maximum(cj[parent], 1)
    offt = xp.cumsum(ct) - ct
    offj = xp.cumsum(cj) - cj
    pt = ft[offt[parent] + q // cjp]
    pj = fj[offj[parent] + q % cjp]
    return xp.asarray(pair_i, dtype=xp.int64)[parent], pt, pj, parent
