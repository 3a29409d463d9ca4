"""Per-class posteriors in the E-step (``estep_batch(class_segments=K)``).

By default a particle's posterior runs over all its (class, pose) hypotheses at once, and the
significant set keeps the hypotheses of the probable classes only.  With class segments the
posterior over poses is normalised within each (particle, class) *segment*: every class keeps the
poses holding ``frac`` of its own posterior, however improbable the class, and the class
posteriors ``r_ik = exp(logZ_ik - logZ_i)`` combine them (``logZ_ik`` the class's log-likelihood
with its prior, ``logZ_i`` their log-sum-exp, the particle's log-likelihood as before).  This is
what SAGD's class similarity (the class posteriors mixed with the uniform distribution, so that
every class draws from every particle early on) and the per-class importance distributions of
the importance sampler need: a class's pose posterior also where the class is improbable.

The hypotheses j of a space with K classes are class-major (``j = k J1 + j1``) and the class prior
``lpj`` is constant within a class (as the spaces build it).
"""
from __future__ import annotations

from .xp import argsort_stable, repeat

W_MIN = 1e-12   # joint posteriors below this are not accumulated (kept for the per-class marginals)


def segment_rows(xp, d2, lt, lj, K: int):
    """The dense coarse diff2 (B, T, K J1) as (B K, T, J1) rows, one per (particle, class), with
    the class priors folded in (their log prior ``lj`` is constant within a class)."""
    B, T, J = d2.shape
    J1 = J // K
    lj = xp.asarray(lj, dtype=xp.float32).reshape(K, J1)
    rows = (d2.reshape(B, T, K, J1) - lj[None, None]).transpose(0, 2, 1, 3)
    rows = xp.ascontiguousarray(rows).reshape(B * K, T, J1)
    return rows, xp.ascontiguousarray(xp.repeat(lt, K, axis=0)), xp.zeros(J1, dtype=xp.float32)


def rows_to_pairs(ci, cj, K: int, J1: int):
    """(particle, hypothesis) of pairs given by segment row ``ci`` and in-class hypothesis ``cj``."""
    return ci // K, (ci % K) * J1 + cj


def segment_order(xp, pi, pj, K: int, J1: int, B: int):
    """(order, offsets) grouping pairs by (particle, class) segment (stable), CSR over B K segments."""
    key = pi * K + pj // J1
    order = argsort_stable(xp, key)
    cnt = xp.bincount(key, minlength=B * K)
    off = xp.concatenate([xp.zeros(1, dtype=xp.int64), xp.cumsum(cnt)])
    return order, off


def combine(xp, sp, seg, B: int, K: int, class_mix=None):
    """Joint weights of pairs from per-segment posteriors ``sp`` (a SegmentPosteriors over the B K
    segments; ``seg`` (P,) the segment of every pair): ``(weight, logZ, pmax, argmax, class_post)``
    with ``class_post`` (B, K) the class posteriors after ``class_mix`` (B, K) -> (B, K)."""
    lz = xp.asarray(sp.logZ, dtype=xp.float64).reshape(B, K)
    top = lz.max(axis=1)
    finite = xp.isfinite(top)
    safe = xp.where(finite, top, 0.0)
    e = xp.where(xp.isfinite(lz), xp.exp(lz - safe[:, None]), 0.0)
    tot = e.sum(axis=1)
    logZ = xp.where(finite, safe + xp.log(xp.maximum(tot, 1e-300)), -xp.inf)
    r = e / xp.maximum(tot, 1e-300)[:, None]
    rm = xp.asarray(class_mix(r), dtype=xp.float64) if class_mix is not None else r
    w = xp.asarray(sp.weight, dtype=xp.float64) * rm.reshape(-1)[seg]
    pm = xp.asarray(sp.pmax, dtype=xp.float64).reshape(B, K) * rm
    kbest = xp.argmax(pm, axis=1)
    arg = xp.asarray(sp.argmax, dtype=xp.int64).reshape(B, K)[xp.arange(B), kbest]
    return w.astype(xp.float32), logZ, pm.max(axis=1), arg, rm


def per_particle_nsig(xp, nsig_seg, B: int, K: int):
    return xp.asarray(nsig_seg, dtype=xp.int64).reshape(B, K).sum(axis=1)


def sort_candidates(xp, off, t_idx, j_idx, extra, K: int, J1: int, B: int):
    """Explicit candidates (CSR over particles) regrouped by (particle, class) segment."""
    pi0 = repeat(xp, xp.arange(B, dtype=xp.int64), xp.diff(off))
    order, seg_off = segment_order(xp, pi0, j_idx, K, J1, B)
    return pi0[order], t_idx[order], j_idx[order], extra[order], seg_off

