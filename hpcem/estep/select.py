"""Which coarse hypotheses are oversampled: the significant set, capped at the most probable.

The significant set of a particle is the smallest set of hypotheses holding ``frac`` of its
posterior mass (RELION's adaptive oversampling).  At low resolution it can hold thousands of
hypotheses; only the ``maxsig`` most probable are oversampled.  Two forms, one rule:

* :func:`most_probable_dense` for the full coarse grid (``diff2`` of shape (B, T, J)), the cap
  applied per group of hypotheses (e.g. per class: a particle's class posterior is a sum over
  the class's hypotheses, so a cap over all of them would keep the class holding the single best
  hypotheses and drop the others' mass), or over all hypotheses (``groups=1``);
* :func:`top_per_segment` for explicit per-particle candidate lists (local searches).
"""
from __future__ import annotations

from .xp import argsort_stable, lexsort, namespace, repeat


def top_per_segment(score, offsets, keep):
    """Indices (sorted by segment, then descending score) of the ``keep[s]`` highest scores of
    each segment ``offsets[s]:offsets[s+1]``; returns (index, new_offsets)."""
    xp = namespace(score, offsets)
    offsets = xp.asarray(offsets, dtype=xp.int64)
    cnt = xp.diff(offsets)
    seg = repeat(xp, xp.arange(cnt.size), cnt)
    order = lexsort(xp, (-xp.asarray(score, dtype=xp.float64), seg))
    rank = xp.arange(order.size) - repeat(xp, offsets[:-1], cnt)
    k = xp.minimum(xp.asarray(keep, dtype=xp.int64), cnt)
    sel = rank < repeat(xp, k, cnt)
    return order[sel], xp.concatenate([xp.zeros(1, dtype=xp.int64), xp.cumsum(k)])


def most_probable_dense(d2, lpt, lpj, nsig, maxsig: int, groups: int = 1):
    """The ``min(nsig, maxsig)`` most probable coarse hypotheses of every particle and group.

    ``d2`` (B, T, J) float32, ``lpt`` (B, T), ``lpj`` (J,) log priors, ``nsig`` (B,) size of
    each particle's significant set.  The J hypotheses form ``groups`` equal consecutive groups
    (classes), the cap applying to each (``groups`` must divide J, else one group is used).
    Returns ``(pair_i, pair_t, pair_j)`` int64, grouped by particle, descending probability
    within each (particle, group)."""
    xp = namespace(d2)
    B, T, J = d2.shape
    G = int(groups) if groups and J % int(groups) == 0 else 1
    Jg = J // G
    lp = (xp.asarray(lpt, dtype=xp.float32)[:, :, None] + xp.asarray(lpj, dtype=xp.float32)[None, None, :] - d2)
    lp = lp.reshape(B, T, G, Jg).transpose(0, 2, 1, 3).reshape(B * G, T * Jg)
    m = min(int(maxsig), T * Jg)
    top = xp.argpartition(lp, T * Jg - m, axis=1)[:, T * Jg - m:]                # unordered
    order = argsort_stable(xp, -xp.take_along_axis(lp, top, axis=1), axis=1)
    top = xp.take_along_axis(top, order, axis=1)
    keep = xp.minimum(xp.repeat(xp.asarray(nsig, dtype=xp.int64), G), m)
    flat = top[xp.arange(m)[None, :] < keep[:, None]]                             # row-major
    row = repeat(xp, xp.arange(B * G, dtype=xp.int64), keep)
    return row // G, flat // Jg, (row % G) * Jg + flat % Jg
