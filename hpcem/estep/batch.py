"""The E-step of one batch of particles, for 2D and 3D alike (MAP-EM with adaptive oversampling).

A batch is ``B`` particles gathered to the ``M`` Fourier coefficients inside the current
resolution limit (``X`` complex64 (B, M), CTF ``ctf`` (B, M), likelihood weights ``s_e`` =
hermitian weight / (2 sigma2) and accumulation weights ``s_a`` = 1 / sigma2).  A hypothesis is a
pair (translation t, reference j): j indexes class x orientation (2D: in-plane angle, 3D:
direction x in-plane angle), its reference ``R_j`` (M,) is the class rotated / projected to it.
:func:`estep_batch`:

1. coarse pass over the *candidates*, either
   * the full coarse grid (dense): every (t, j) through the SGEMM kernel
     (:func:`hpcem.kernels.coarse_diff2`), log prior ``lpt_c[i, t] + lpj_c[j] + extra_c[i, j]``;
   * explicit per-particle candidates (sparse, e.g. a local search around each particle's pose):
     ``candidates = (offsets (B+1,), t_idx, j_idx, extra)`` in CSR form over particles, evaluated
     exactly (:func:`hpcem.kernels.pair_diff2`), log prior ``lpt_c + lpj_c + extra``;
   only the first ``mc`` coefficients (ordered by shell by the caller) take part: the coarse grid
   cannot score finer detail (see DESIGN_NOTES, "coarse-pass resolution limit");
2. the significant set of every particle (``frac`` of its posterior mass), capped at the
   ``maxsig`` most probable (per group of ``groups`` equal hypothesis groups in the dense case,
   :mod:`hpcem.estep.select`);
3. the children of every kept coarse hypothesis: the product of ``children_t.expand(t)`` and
   ``children_j.expand(j)`` (:mod:`hpcem.estep.children`), each inheriting its parent's ``extra``;
4. fine pass: exact diff2 of the children with all M coefficients, posteriors over each
   particle's children, and the M-step sums of the fine pairs holding ``frac`` of each
   particle's posterior (the rest carries < 1 - frac of the mass)::

       data[j] += w c s_a X conj(ph_t),  wsum[j] += w c^2 s_a,  noise[i] += w |X conj(ph_t) - c R_j|^2

   either into caller-owned dense accumulators ``acc_into = (data (Jf, M), wsum (Jf, M))``
   (2D: all fine hypotheses fit in memory) or compacted to the fine hypotheses the batch used
   (``uniq_j``, 3D: the caller back-projects them); ``remap_j(pair_i, pair_j)`` optionally
   redirects the sums (e.g. to a particle's random initial class) after the posteriors.

References are arrays ``(J, M)`` or callables ``refs(idx) -> (len(idx), M)`` complex64 (project
on demand: only what a batch needs is projected).  No Python loop runs over particles or
hypotheses, and every array operation is spelled through the batch's array namespace, so a batch
given as cupy arrays stays on the GPU.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import kernels
from . import classes
from .children import product_children, segment_offsets
from .select import most_probable_dense, top_per_segment
from .xp import add_at, argsort_stable, namespace, repeat

BIG = np.float32(1e30)   # diff2 of an excluded hypothesis (prior -inf)


@dataclass
class EStepResult:
    """Fine pairs and their posteriors; per-particle summaries; the batch's M-step sums."""

    pair_i: object      # (P,) particle of each accumulated fine pair
    pair_t: object      # (P,) fine translation index
    pair_j: object      # (P,) fine hypothesis index (global, before remap_j)
    weight: object      # (P,) float32 posterior probability
    logZ: object        # (B,) log-likelihood contribution
    pmax: object        # (B,) largest fine posterior
    best_t: object      # (B,) fine translation of the largest posterior
    best_j: object      # (B,) fine hypothesis of the largest posterior
    nsig: object        # (B,) significant coarse hypotheses (before the cap)
    noise: object       # (B, M) float32: sum w |X conj(ph) - c R|^2
    fit: object = None  # with best_fit, (3, B) at the best pose: sum s_e Re(X conj(ph) conj(c R)), sum s_e |c R|^2,
    #                     sum s_e |X conj(ph) - c R|^2 (the scale and normalisation corrections)
    uniq_j: object = None   # (U,) fine hypotheses with sums (compacted mode; remapped)
    data: object = None     # (U, M) complex: sum w c X conj(ph) / sigma2
    wsum: object = None     # (U, M) float: sum w c^2 / sigma2
    class_post: object = None   # (B, K) class posteriors used (class segments only)
    evaluated: int = 0          # (t, j) pairs scored: coarse candidates plus fine children
    observe: object = None      # class segments: every significant fine pair with its posterior within its
    #                             class, (pair_i, pair_t, pair_j, weight) (the per-class pose marginals)


def _rows(xp, refs, idx):
    R = refs(idx) if callable(refs) else xp.asarray(refs)[idx]
    return xp.ascontiguousarray(R, dtype=xp.complex64)


def _columns(xp, a, m):
    return a if a.shape[1] == m else xp.ascontiguousarray(a[:, :m])


def _dense_coarse(xp, Xc, ctfc, sec, phc, refs_c, lpt_c, lpj_c, extra_c, frac, maxsig, groups, K=1):
    """Coarse pass over the full grid; returns the kept coarse pairs and their extra prior.  With
    ``K`` > 1 class segments the significance and the cap apply per (particle, class)."""
    B, mc = Xc.shape
    J = len(lpj_c)
    Rc = _columns(xp, _rows(xp, refs_c, xp.arange(J) if callable(refs_c) else slice(None)), mc)
    d2 = kernels.coarse_diff2(Xc, ctfc, sec, phc, Rc)
    del Rc
    if extra_c is not None:
        d2 -= xp.asarray(extra_c, dtype=xp.float32)[:, None, :]
        xp.minimum(d2, BIG, out=d2)
    lt = xp.ascontiguousarray(lpt_c, dtype=xp.float32)
    lj = xp.ascontiguousarray(lpj_c, dtype=xp.float32)
    if K > 1:   # one row per (particle, class)
        d2, lt, lj = classes.segment_rows(xp, d2, lt, lj, K)
        groups = 1
    post = kernels.posteriors(d2, lt, lj, frac)
    nsig = xp.asarray(post.nsig, dtype=xp.int64)
    ci = repeat(xp, xp.arange(d2.shape[0], dtype=xp.int64), nsig)
    ct, cj = post.t_idx.astype(xp.int64), post.j_idx.astype(xp.int64)
    over = xp.flatnonzero(nsig > maxsig) if maxsig > 0 else xp.zeros(0, dtype=xp.int64)
    if over.size:
        # particles whose significant set is larger than the cap keep their most probable
        # hypotheses instead (per particle: the result must not depend on the batch's other particles)
        small = repeat(xp, nsig <= maxsig, nsig)
        oi, ot, oj = most_probable_dense(d2[over], lt[over], lj, nsig[over], maxsig, groups)
        ci = xp.concatenate([ci[small], over[oi]])
        ct, cj = xp.concatenate([ct[small], ot]), xp.concatenate([cj[small], oj])
        order = argsort_stable(xp, ci)
        ci, ct, cj = ci[order], ct[order], cj[order]
    del d2
    if K > 1:
        ci, cj = classes.rows_to_pairs(ci, cj, K, J // K)
        nsig = classes.per_particle_nsig(xp, nsig, B, K)
    cextra = (xp.asarray(extra_c, dtype=xp.float64)[ci, cj] if extra_c is not None
              else xp.zeros(ci.size, dtype=xp.float64))
    return ci, ct, cj, cextra, nsig


def _sparse_coarse(xp, Xc, ctfc, sec, phc, refs_c, lpt_c, lpj_c, candidates, frac, maxsig, K=1):
    """Coarse pass over explicit per-particle candidates (CSR over particles); with ``K`` > 1
    class segments the candidates are regrouped and their significance taken per (particle, class)."""
    off, t_idx, j_idx, extra = candidates
    off = xp.asarray(off, dtype=xp.int64)
    t_idx, j_idx = xp.asarray(t_idx, dtype=xp.int64), xp.asarray(j_idx, dtype=xp.int64)
    extra = xp.zeros(t_idx.size, dtype=xp.float64) if extra is None else xp.asarray(extra, dtype=xp.float64)
    B = Xc.shape[0]
    if K > 1:
        pi0, t_idx, j_idx, extra, off = classes.sort_candidates(xp, off, t_idx, j_idx, extra, K,
                                                                len(lpj_c) // K, B)
    else:
        pi0 = repeat(xp, xp.arange(B, dtype=xp.int64), xp.diff(off))
    uj, inv = xp.unique(j_idx, return_inverse=True)
    Rc = _columns(xp, _rows(xp, refs_c, uj), Xc.shape[1])
    d2 = kernels.pair_diff2(Xc, ctfc, sec, phc, Rc, pi0, t_idx, inv.astype(xp.int64).reshape(-1))
    del Rc
    mlp = (d2.astype(xp.float64) - xp.asarray(lpt_c, dtype=xp.float64)[pi0, t_idx]
           - xp.asarray(lpj_c, dtype=xp.float64)[j_idx] - extra)
    sp = kernels.segment_posteriors(mlp, off, frac)
    nsig = xp.asarray(sp.nsig, dtype=xp.int64)
    keep = xp.minimum(nsig, maxsig) if maxsig > 0 else nsig
    sel, _ = top_per_segment(sp.weight, off, keep)
    if K > 1:
        nsig = classes.per_particle_nsig(xp, nsig, B, K)
    return pi0[sel], t_idx[sel], j_idx[sel], extra[sel], nsig


def _fine_refs(xp, refs_f, pj):
    """The references the fine pairs need and each pair's row in them: a callable projects only
    the distinct hypotheses of the batch; an array (all Jf hypotheses precomputed) is used whole."""
    if callable(refs_f):
        uniq_all, inv = xp.unique(pj, return_inverse=True)
        return _rows(xp, refs_f, uniq_all), uniq_all, inv.astype(xp.int64).reshape(-1)
    return xp.ascontiguousarray(refs_f, dtype=xp.complex64), None, pj


def _fine_pass(xp, X, ctf, s_e, phf, refs_f, children_t, children_j, lpt_f, lpj_f,
               coarse, frac, best_fit=False, K=1, class_mix=None):
    """Children of the kept coarse pairs, their exact diff2 and posteriors per particle (with
    ``K`` > 1 class segments: per (particle, class), combined by :func:`classes.combine`)."""
    ci, ct, cj, cextra = coarse
    B = X.shape[0]
    pi, pt, pj, parent = product_children(ci, ct, cj, children_t, children_j)
    Rf, uniq_all, rows = _fine_refs(xp, refs_f, pj)
    d2f = kernels.pair_diff2(X, ctf, s_e, phf, Rf, pi, pt, rows)
    mlp = (d2f.astype(xp.float64) - xp.asarray(lpt_f, dtype=xp.float64)[pi, pt]
           - xp.asarray(lpj_f, dtype=xp.float64)[pj] - cextra[parent])
    observe = class_post = None
    if K > 1:   # children stay in their parent's segment: the pairs are grouped by segment already
        J1 = len(lpj_f) // K
        seg = pi * K + pj // J1
        foff = segment_offsets(xp.bincount(seg, minlength=B * K))
        sp = kernels.segment_posteriors(mlp, foff, frac)
        w, logZ, pmax, arg, class_post = classes.combine(xp, sp, seg, B, K, class_mix)
        sig = xp.asarray(sp.significant, dtype=bool)
        within = xp.flatnonzero(sig)
        observe = (pi[within], pt[within], pj[within], xp.asarray(sp.weight, dtype=xp.float32)[within])
        keep = xp.flatnonzero(sig & (w > classes.W_MIN))
    else:
        foff = segment_offsets(xp.bincount(pi, minlength=B))
        sp = kernels.segment_posteriors(mlp, foff, frac)
        w, logZ, pmax = xp.asarray(sp.weight, dtype=xp.float32), xp.asarray(sp.logZ), xp.asarray(sp.pmax)
        arg = xp.asarray(sp.argmax, dtype=xp.int64)
        keep = xp.flatnonzero(xp.asarray(sp.significant, dtype=bool) & (w > 0))
    ok = arg >= 0
    best_t = xp.where(ok, pt[xp.maximum(arg, 0)], 0)
    best_j = xp.where(ok, pj[xp.maximum(arg, 0)], 0)
    fit = None
    if best_fit:
        best_row = xp.where(ok, rows[xp.maximum(arg, 0)], 0) if rows.size else xp.zeros(B, dtype=xp.int64)
        fit = xp.where(ok[None], _best_fit(xp, X, ctf, s_e, phf, Rf, best_t, best_row), 0.0)
    return dict(pairs=(pi[keep], pt[keep], pj[keep], w[keep]), rows=rows[keep], Rf=Rf,
                uniq_all=uniq_all, logZ=logZ, pmax=pmax, best_t=best_t, best_j=best_j, fit=fit,
                observe=observe, class_post=class_post, n_fine=int(pi.size))


def _best_fit(xp, X, ctf, s_e, phf, Rf, best_t, best_row):
    """(3, B): cross term, prediction power and residual of each particle at its best pose,
    weighted by ``s_e`` (RELION's scale and normalisation corrections use the same sums)."""
    if Rf.shape[0] == 0:
        return xp.zeros((3, X.shape[0]))
    P = ctf * Rf[best_row]
    Xs = X * xp.conj(phf[best_t])
    w = s_e.astype(xp.float64)
    xa = (w * (Xs.real * P.real + Xs.imag * P.imag)).sum(axis=1)
    aa = (w * (P.real ** 2 + P.imag ** 2)).sum(axis=1)
    d = Xs - P
    rr = (w * (d.real ** 2 + d.imag ** 2)).sum(axis=1)
    return xp.stack([xa, aa, rr])


def _accumulate_compact(xp, X, ctf, s_a, phf, fine, remap_j, acc_dtype, noise, residual=False):
    """M-step sums of the accumulated pairs, compacted to the fine hypotheses they use; with
    ``residual`` the data sums less ``wsum R`` (the posterior-weighted residuals of SAGD's gradient)."""
    pi, pt, pj, w = fine["pairs"]
    M = X.shape[1]
    wdt = xp.float32 if acc_dtype == np.complex64 else xp.float64
    uniq, inv = xp.unique(pj, return_inverse=True)
    inv = inv.astype(xp.int64).reshape(-1)
    Rf, uniq_all = fine["Rf"], fine["uniq_all"]
    if uniq.size < Rf.shape[0]:
        Rf = xp.ascontiguousarray(Rf[uniq if uniq_all is None else xp.searchsorted(uniq_all, uniq)])
    if remap_j is None:
        data = xp.zeros((uniq.size, M), dtype=acc_dtype)
        wsum = xp.zeros((uniq.size, M), dtype=wdt)
        kernels.accumulate(X, ctf, s_a, phf, Rf, pi, pt, inv, w, data, wsum, noise)
        if residual:
            data -= wsum * Rf
        return uniq, data, wsum
    # sums go to the remapped hypothesis, the noise uses the evaluated reference: bucket the pairs
    # by (target, evaluated reference) and fold the buckets into their targets
    if residual:
        raise ValueError("estep_batch: residual sums cannot be remapped")
    tgt = xp.asarray(remap_j(pi, pj), dtype=xp.int64)
    utgt, tinv = xp.unique(tgt, return_inverse=True)
    key = tinv.astype(xp.int64).reshape(-1) * uniq.size + inv
    ukey, kinv = xp.unique(key, return_inverse=True)
    Rk = xp.ascontiguousarray(Rf[ukey % uniq.size])
    dk = xp.zeros((ukey.size, M), dtype=acc_dtype)
    wk = xp.zeros((ukey.size, M), dtype=wdt)
    kernels.accumulate(X, ctf, s_a, phf, Rk, pi, pt, kinv.astype(xp.int64).reshape(-1), w, dk, wk, noise)
    data = xp.zeros((utgt.size, M), dtype=acc_dtype)
    wsum = xp.zeros((utgt.size, M), dtype=wdt)
    add_at(xp, data, ukey // uniq.size, dk)
    add_at(xp, wsum, ukey // uniq.size, wk)
    return utgt, data, wsum


def _accumulate_dense(xp, X, ctf, s_a, phf, fine, acc_into, noise):
    """M-step sums added straight into the caller's (Jf, M) accumulators."""
    pi, pt, pj, w = fine["pairs"]
    data, wsum = acc_into
    if fine["uniq_all"] is None:            # all Jf references at hand: rows are hypotheses
        kernels.accumulate(X, ctf, s_a, phf, fine["Rf"], pi, pt, pj, w, data, wsum, noise)
        return
    U = fine["Rf"].shape[0]                 # projected on demand: sums per batch row, then added
    dsub = xp.zeros((U, X.shape[1]), dtype=data.dtype)
    wsub = xp.zeros((U, X.shape[1]), dtype=wsum.dtype)
    kernels.accumulate(X, ctf, s_a, phf, fine["Rf"], pi, pt, fine["rows"], w, dsub, wsub, noise)
    data[fine["uniq_all"]] += dsub
    wsum[fine["uniq_all"]] += wsub


def estep_batch(X, ctf, s_e, s_a, *, phases_c, phases_f, refs_c, refs_f, children_t, children_j,
                lpt_c, lpt_f, lpj_c, lpj_f, extra_c=None, candidates=None, frac=0.999, maxsig=200,
                groups=1, mc=None, remap_j=None, acc_into=None, acc_dtype=np.complex64,
                best_fit=False, class_segments=1, class_mix=None, accumulate=True,
                residual=False) -> EStepResult:
    """E-step of one batch (see the module docstring).

    ``X`` complex64 (B, M), ``ctf`` / ``s_e`` / ``s_a`` float32 (B, M); ``phases_c`` (T, >=mc) /
    ``phases_f`` (Tf, M) complex64 translation phases; ``lpt_c`` (B, T), ``lpt_f`` (B, Tf),
    ``lpj_c`` (Jc,), ``lpj_f`` (Jf,) log priors; ``extra_c`` (B, Jc) (dense mode) or the
    ``extra`` of ``candidates`` (sparse mode) particle-specific log priors inherited by the
    children; ``refs_c`` / ``phases_c`` may hold just ``mc`` columns; ``best_fit``: also the sums of
    ``EStepResult.fit`` (--norm / --scale); ``class_segments`` K > 1: posteriors per (particle, class)
    (:mod:`hpcem.estep.classes`), the class posteriors mixed by ``class_mix`` (B, K) -> (B, K) before
    the sums; ``accumulate`` False: posteriors and log-likelihoods only, no M-step sums; ``residual``
    (compacted sums only): data sums less ``wsum R``."""
    xp = namespace(X)
    B, M = X.shape
    mc = M if mc is None else int(min(max(mc, 1), M))
    Xc, ctfc, sec = (_columns(xp, a, mc) for a in (X, ctf, s_e))
    phc = _columns(xp, xp.asarray(phases_c), mc)
    n_coarse = B * len(lpj_c) * xp.asarray(phases_c).shape[0] if candidates is None else len(candidates[1])
    if candidates is None:
        *coarse, nsig = _dense_coarse(xp, Xc, ctfc, sec, phc, refs_c, lpt_c, lpj_c, extra_c, frac,
                                      maxsig, groups, class_segments)
    else:
        *coarse, nsig = _sparse_coarse(xp, Xc, ctfc, sec, phc, refs_c, lpt_c, lpj_c, candidates,
                                       frac, maxsig, class_segments)
    phf = xp.ascontiguousarray(phases_f, dtype=xp.complex64)
    fine = _fine_pass(xp, X, ctf, s_e, phf, refs_f, children_t, children_j, lpt_f, lpj_f, coarse, frac,
                      best_fit, class_segments, class_mix)
    noise = xp.zeros((B, M), dtype=xp.float32)
    res = EStepResult(*fine["pairs"], logZ=fine["logZ"], pmax=fine["pmax"], best_t=fine["best_t"],
                      best_j=fine["best_j"], nsig=nsig, noise=noise, fit=fine["fit"],
                      class_post=fine["class_post"], observe=fine["observe"],
                      evaluated=int(n_coarse) + fine["n_fine"])
    if not accumulate:
        return res
    if acc_into is not None:
        if remap_j is not None:
            raise ValueError("estep_batch: remap_j needs compacted sums (acc_into=None)")
        _accumulate_dense(xp, X, ctf, s_a, phf, fine, acc_into, noise)
    else:
        res.uniq_j, res.data, res.wsum = _accumulate_compact(xp, X, ctf, s_a, phf, fine, remap_j,
                                                             acc_dtype, noise, residual)
    return res
