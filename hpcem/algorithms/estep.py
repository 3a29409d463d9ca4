"""Particle- and hypothesis-agnostic E-step of MAP-EM with adaptive oversampling.

One call, :func:`estep_batch`, handles a batch of ``B`` particles (coefficients gathered to
the ``M`` inside the current resolution limit, see ``hpcem.marginalise_api``):

1. coarse pass, either
   * dense: every (translation t, hypothesis j) on the coarse grid through the SGEMM kernel
     (``coarse_diff2``) with log priors ``lpt_c[i, t] + lpj_c[j] + extra_c[i, j]``, or
   * sparse (local searches): explicit per-particle candidates ``(t, j)`` (CSR over particles)
     evaluated exactly (``pair_diff2``) with log priors ``lpt_c[i, t] + lpj_c[j] + extra``;
2. the significant set per particle: the smallest set holding ``frac`` of the posterior mass,
   capped at the ``maxsig`` most probable (top by score);
3. children of every significant coarse hypothesis: the product of ``children_t.expand(t)``
   and ``children_j.expand(j)`` (any object with ``expand(idx) -> (counts, flat)``), each
   inheriting its parent's particle-specific prior ``extra``;
4. fine pass: exact diff2 of the children, posteriors over each particle's children
   (``segment_posteriors``), and the M-step sums (``accumulate``) of every fine hypothesis used
   in the batch, compacted to ``uniq_j``.

References are given as arrays ``(J, M)`` or as callables ``refs(idx) -> (len(idx), M)``
complex64 (project on demand: only the fine hypotheses a batch needs are projected).
Nothing here loops over particles or hypotheses in Python.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import marginalise_api as marg

BIG = np.float32(1e30)   # diff2 of an excluded hypothesis (prior -inf)


# ----------------------------------------------------------------------------- children maps
class RegularChildren:
    """Coarse index ``c`` has the ``m`` fine children ``table[c, :]`` (``table`` (n_coarse, m))."""

    def __init__(self, table):
        self.table = np.ascontiguousarray(np.asarray(table, np.int64))

    def expand(self, idx):
        idx = np.asarray(idx, np.int64)
        m = self.table.shape[1]
        return np.full(idx.size, m, np.int64), self.table[idx].reshape(-1)


class CSRChildren:
    """Coarse index ``c`` has fine children ``index[offsets[c]:offsets[c+1]]``."""

    def __init__(self, offsets, index):
        self.offsets = np.asarray(offsets, np.int64)
        self.index = np.asarray(index, np.int64)

    def expand(self, idx):
        idx = np.asarray(idx, np.int64)
        lo, hi = self.offsets[idx], self.offsets[idx + 1]
        cnt = hi - lo
        return cnt, self.index[ragged_arange(lo, cnt)]


def ragged_arange(starts, counts):
    """Concatenation of ``arange(s, s + c)`` over pairs (vectorised)."""
    counts = np.asarray(counts, np.int64)
    tot = int(counts.sum())
    if tot == 0:
        return np.zeros(0, np.int64)
    ends = np.cumsum(counts)
    seg_start = np.repeat(ends - counts, counts)
    return np.repeat(np.asarray(starts, np.int64), counts) + (np.arange(tot) - seg_start)


def product_children(pair_i, pair_t, pair_j, children_t, children_j, extra=None):
    """Children pairs of coarse pairs (i, t, j), grouped by parent (so by particle when the
    parents are).  Returns ``(pi, pt, pj, parent)`` with ``parent`` the coarse pair index."""
    ct, ft = children_t.expand(pair_t)
    cj, fj = children_j.expand(pair_j)
    P = len(pair_i)
    nchild = ct * cj
    parent = np.repeat(np.arange(P, dtype=np.int64), nchild)
    # within a parent: child index q -> (q // cj) translation child, (q % cj) hypothesis child
    q = np.arange(parent.size, dtype=np.int64) - np.repeat(np.cumsum(nchild) - nchild, nchild)
    cjp = cj[parent]
    offt = np.cumsum(ct) - ct
    offj = np.cumsum(cj) - cj
    pt = ft[offt[parent] + q // np.maximum(cjp, 1)]
    pj = fj[offj[parent] + q % np.maximum(cjp, 1)]
    return np.asarray(pair_i, np.int64)[parent], pt, pj, parent


# ----------------------------------------------------------------------------- helpers
def top_per_segment(score, offsets, keep):
    """Indices (sorted by segment, then descending score) of the ``keep[s]`` highest scores of
    each segment ``offsets[s]:offsets[s+1]``; returns (index, new_offsets)."""
    offsets = np.asarray(offsets, np.int64)
    cnt = np.diff(offsets)
    seg = np.repeat(np.arange(cnt.size), cnt)
    order = np.lexsort((-np.asarray(score, np.float64), seg))
    rank = np.arange(order.size) - np.repeat(offsets[:-1], cnt)
    k = np.minimum(np.asarray(keep, np.int64), cnt)
    sel = rank < np.repeat(k, cnt)
    return order[sel], np.concatenate([[0], np.cumsum(k)])


def _rows(refs, idx):
    if callable(refs):
        return np.ascontiguousarray(refs(idx), np.complex64)
    return np.ascontiguousarray(np.asarray(refs)[idx], np.complex64)


@dataclass
class EStepResult:
    """Fine pairs and their posteriors; per-particle summaries; compacted M-step sums."""

    pair_i: np.ndarray      # (P,) particle of each fine pair
    pair_t: np.ndarray      # (P,) fine translation index
    pair_j: np.ndarray      # (P,) fine hypothesis index (global)
    weight: np.ndarray      # (P,) float32 posterior probability
    logZ: np.ndarray        # (B,) log-likelihood contribution
    pmax: np.ndarray        # (B,) largest fine posterior
    best_t: np.ndarray      # (B,) fine translation of the largest posterior
    best_j: np.ndarray      # (B,) fine hypothesis of the largest posterior
    nsig: np.ndarray        # (B,) significant coarse hypotheses (before the cap)
    uniq_j: np.ndarray      # (U,) fine hypotheses with sums
    data: np.ndarray        # (U, M) complex: sum w c X conj(ph) / sigma2
    wsum: np.ndarray        # (U, M) float: sum w c^2 / sigma2
    noise: np.ndarray       # (B, M) float32: sum w |X conj(ph) - c R|^2


def estep_batch(X, ctf, s_e, s_a, *, phases_c, phases_f, refs_c, refs_f, children_t, children_j,
                lpt_c, lpt_f, lpj_c, lpj_f, extra_c=None, candidates=None, frac=0.999, maxsig=200,
                remap_j=None, acc_dtype=np.complex64, groups=1, mc=None) -> EStepResult:
    """E-step of one batch (see the module docstring).

    ``X`` complex64 (B, M), ``ctf`` float32 (B, M), ``s_e`` float32 (B, M) likelihood weights
    (hermitian weight / (2 sigma2)), ``s_a`` float32 (B, M) accumulation weights (1/sigma2);
    ``phases_c`` (T, M) / ``phases_f`` (Tf, M) complex64; ``lpt_c`` (B, T), ``lpt_f`` (B, Tf),
    ``lpj_c`` (Jc,), ``lpj_f`` (Jf,) log priors; ``extra_c`` (B, Jc) optional (dense mode);
    ``candidates`` = (offsets (B+1,), t_idx, j_idx, extra) switches to sparse mode;
    ``remap_j(pair_i, pair_j) -> pair_j`` optionally redirects the accumulation (e.g. to the
    particle's initial random class) after the posteriors are computed; ``groups`` (dense mode)
    splits the hypotheses into that many equal consecutive groups (classes), ``maxsig`` applying
    to each.  ``mc``: the coarse pass uses only the first ``mc`` coefficients (the caller orders
    them by resolution shell): beyond the frequency where the coarse angular step moves the
    particle's edge by more than about a resolution element, the coarse hypotheses nearest the
    true pose decorrelate from the data and those coefficients only add noise to the coarse
    scores (RELION's coarse image size); ``refs_c`` / ``phases_c`` may hold just ``mc`` columns."""
    B, M = X.shape
    lpt_c = np.asarray(lpt_c)
    mc = M if mc is None else int(min(max(mc, 1), M))
    if mc < M:
        Xc = np.ascontiguousarray(X[:, :mc])
        ctfc = np.ascontiguousarray(ctf[:, :mc])
        s_ec = np.ascontiguousarray(s_e[:, :mc])
        phc = np.ascontiguousarray(np.asarray(phases_c)[:, :mc])
    else:
        Xc, ctfc, s_ec, phc = X, ctf, s_e, phases_c

    def coarse_rows(idx):
        R = _rows(refs_c, idx)
        return np.ascontiguousarray(R[:, :mc]) if R.shape[1] > mc else R
    if candidates is None:                                   # ---- dense coarse pass
        Rc = coarse_rows(slice(None)) if not callable(refs_c) else coarse_rows(np.arange(len(lpj_c)))
        d2 = marg.coarse_diff2(Xc, ctfc, s_ec, phc, Rc)
        del Rc
        if extra_c is not None:
            d2 -= np.asarray(extra_c, np.float32)[:, None, :]
            np.minimum(d2, BIG, out=d2)
        lt = np.ascontiguousarray(lpt_c, np.float32)
        lj = np.ascontiguousarray(lpj_c, np.float32)
        post = marg.posteriors(d2, lt, lj, frac)
        nsig = np.asarray(post.nsig, np.int64)
        T, J = d2.shape[1], d2.shape[2]
        if maxsig > 0 and nsig.max(initial=0) > maxsig:
            # the cap applies per group of hypotheses (e.g. per class): a particle's posterior over
            # groups is a sum over each group's hypotheses, and a cap over all of them would keep
            # the group holding the single best hypotheses and drop the others' mass
            G = int(groups) if groups and J % int(groups) == 0 else 1
            Jg = J // G
            lp = (lt[:, :, None] + lj[None, None, :] - d2).reshape(B, T, G, Jg).transpose(0, 2, 1, 3)
            lp = lp.reshape(B * G, T * Jg)
            m = min(maxsig, T * Jg)
            top = np.argpartition(lp, T * Jg - m, axis=1)[:, T * Jg - m:]
            order = np.argsort(-np.take_along_axis(lp, top, axis=1), axis=1, kind="stable")
            top = np.take_along_axis(top, order, axis=1)
            keep = np.minimum(np.repeat(nsig, G), m)
            sel = np.arange(m)[None, :] < keep[:, None]
            flat = top[sel]
            row = np.repeat(np.arange(B * G, dtype=np.int64), keep)
            ci = row // G
            ct, cj = flat // Jg, (row % G) * Jg + flat % Jg
        else:
            ci = post.pair_i
            ct, cj = post.t_idx.astype(np.int64), post.j_idx.astype(np.int64)
        del d2
        cextra = (np.asarray(extra_c, np.float64)[ci, cj] if extra_c is not None else np.zeros(ci.size))
    else:                                                    # ---- sparse coarse pass
        off, t_idx, j_idx, extra = candidates
        off = np.asarray(off, np.int64)
        t_idx, j_idx = np.asarray(t_idx, np.int64), np.asarray(j_idx, np.int64)
        extra = np.zeros(t_idx.size) if extra is None else np.asarray(extra, np.float64)
        pi0 = np.repeat(np.arange(B, dtype=np.int64), np.diff(off))
        uj, inv = np.unique(j_idx, return_inverse=True)
        Rc = coarse_rows(uj)
        d2 = marg.pair_diff2(Xc, ctfc, s_ec, phc, Rc, pi0, t_idx, inv.astype(np.int64))
        del Rc
        mlp = d2.astype(np.float64) - lpt_c[pi0, t_idx] - np.asarray(lpj_c, np.float64)[j_idx] - extra
        sp = marg.segment_posteriors(mlp, off, frac)
        nsig = np.asarray(sp.nsig, np.int64)
        keep = np.minimum(nsig, maxsig) if maxsig > 0 else nsig
        sel, _ = top_per_segment(sp.weight, off, keep)
        ci, ct, cj, cextra = pi0[sel], t_idx[sel], j_idx[sel], extra[sel]
    # ---- children and the fine pass
    pi, pt, pj, parent = product_children(ci, ct, cj, children_t, children_j)
    uniq_all, inv = np.unique(pj, return_inverse=True)
    inv = inv.astype(np.int64)
    Rf = _rows(refs_f, uniq_all)
    phf = np.ascontiguousarray(phases_f, np.complex64)
    d2f = marg.pair_diff2(X, ctf, s_e, phf, Rf, pi, pt, inv)
    mlp = (d2f.astype(np.float64) - np.asarray(lpt_f)[pi, pt] - np.asarray(lpj_f, np.float64)[pj]
           - cextra[parent])
    foff = np.concatenate([[0], np.cumsum(np.bincount(pi, minlength=B))]).astype(np.int64)
    sp = marg.segment_posteriors(mlp, foff, frac)
    w = np.asarray(sp.weight, np.float32)
    arg = np.asarray(sp.argmax, np.int64)
    ok = arg >= 0
    best_t = np.where(ok, pt[np.maximum(arg, 0)], 0)
    best_j = np.where(ok, pj[np.maximum(arg, 0)], 0)
    # ---- accumulation over the fine pairs holding ``frac`` of each particle's posterior
    # (the rest carries < 1 - frac of the mass), on the possibly remapped hypotheses
    keep = np.flatnonzero(np.asarray(sp.significant, bool) & (w > 0))
    pi, pt, pj, w = pi[keep], pt[keep], pj[keep], w[keep]
    uniq, inv = np.unique(pj, return_inverse=True)
    inv = inv.astype(np.int64)
    if uniq.size < Rf.shape[0]:
        Rf = np.ascontiguousarray(Rf[np.searchsorted(uniq_all, uniq)])
    noise = np.zeros((B, M), np.float32)
    wdt = np.float32 if acc_dtype == np.complex64 else np.float64
    if remap_j is not None:
        # sums go to the remapped hypothesis; the noise uses the evaluated reference: bucket the
        # pairs by (target, evaluated reference) and fold the buckets into their targets
        tgt = np.asarray(remap_j(pi, pj), np.int64)
        utgt, tinv = np.unique(tgt, return_inverse=True)
        key = tinv.astype(np.int64) * uniq.size + inv
        ukey, kinv = np.unique(key, return_inverse=True)
        Rk = np.ascontiguousarray(Rf[ukey % uniq.size])
        dk = np.zeros((ukey.size, M), acc_dtype)
        wk = np.zeros((ukey.size, M), wdt)
        marg.accumulate(X, ctf, s_a, phf, Rk, pi, pt, kinv.astype(np.int64), w, dk, wk, noise)
        data = np.zeros((utgt.size, M), acc_dtype)
        wsum = np.zeros((utgt.size, M), wdt)
        np.add.at(data, ukey // uniq.size, dk)
        np.add.at(wsum, ukey // uniq.size, wk)
        uniq = utgt
    else:
        data = np.zeros((uniq.size, M), acc_dtype)
        wsum = np.zeros((uniq.size, M), wdt)
        marg.accumulate(X, ctf, s_a, phf, Rf, pi, pt, inv, w, data, wsum, noise)
    return EStepResult(pair_i=pi, pair_t=pt, pair_j=pj, weight=w, logZ=np.asarray(sp.logZ),
                       pmax=np.asarray(sp.pmax), best_t=best_t, best_j=best_j, nsig=nsig,
                       uniq_j=uniq, data=data, wsum=wsum, noise=noise)
