"""Marginalisation kernels of the MAP-EM E-step (RELION's exact posterior over
class x orientation x translation), CPU production path in ``hpcem._core``
(csrc/marginalise.cpp, csrc/posteriors.cpp; CUDA twins in cuda/marginalise.cu).

Notation (hpcem's Fourier conventions, ``hpcem.core.fourier``): every particle is a
half transform gathered to the ``M`` coefficients inside the current resolution limit.

* ``X``      complex64 ``(B, M)``  particle coefficients
* ``ctf``    float32   ``(B, M)``  CTF values ``c_ik``
* ``s``      float32   ``(B, M)``  ``s_ik = h_k / sigma2_ik`` with ``h`` the hermitian weight
  (0.5 on the kx = 0 column and the even-n Nyquist column, else 1)
* ``phases`` complex64 ``(T, M)``  translation phase factors ``ph_tk``; ``X conj(ph_t)``
  shifts the particle back by translation ``t``
* ``refs``   complex64 ``(J, M)``  reference hypotheses ``R_j`` (class x rotation slices,
  already projected)

The kernels compute::

    diff2(i,t,j)   = sum_k s_ik |X_ik conj(ph_tk) - c_ik R_jk|^2
    log post(i,t,j) = -diff2(i,t,j) + logprior_t(i,t) + logprior_j(j) - logZ_i
    logZ_i          = log sum_{t,j} exp(-diff2 + logprior_t + logprior_j)

``logZ_i`` is the particle's log-likelihood contribution (``rlnLogLikeliContribution`` up
to constants), the largest posterior is ``rlnMaxValueProbDistribution`` and the size of the
smallest set of hypotheses whose probabilities sum to ``frac`` is
``rlnNrOfSignificantSamples``.

The coarse pass expands ``diff2 = A_i + Q_ij - 2 Cross_itj`` with ``A_i = sum s|X|^2``,
``Q = (s c^2) @ |R|^2`` and ``Cross = Re[(s c X conj(ph_t)) @ conj(R)^T]``; the cross term
is one real SGEMM of shape ``(B*T) x 2M x J`` (OpenBLAS's, through scipy).

Read-only array inputs must have exactly the documented dtype; a strided one is copied to
C order.  Accumulators are never copied: they must be C-contiguous (and writeable).

GPU: when the array inputs are cupy arrays (all of them; mixing raises), :func:`coarse_diff2`,
:func:`pair_diff2`, :func:`accumulate` and :func:`posteriors` run on the device (CUDA twins in
``hpcem._cuda``, ``cuda/marginalise.cu``, on cupy's current stream) and return / update
cupy arrays.  :func:`segment_posteriors` copies its inputs to the host, runs the CPU code
and returns its results as cupy arrays.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from . import _backend

__all__ = [
    "Posteriors",
    "SegmentPosteriors",
    "coarse_diff2",
    "posteriors",
    "pair_diff2",
    "segment_posteriors",
    "accumulate",
    "coarse_flops",
]


# ----------------------------------------------------------------------------- results
@dataclass(frozen=True)
class Posteriors:
    """Per-particle posterior summary over the full (T, J) grid.

    ``logZ`` float64 (B,), ``pmax`` float64 (B,), ``argmax_t``/``argmax_j`` int64 (B,),
    ``nsig`` int64 (B,); the significant set in CSR form: particle ``i`` owns entries
    ``offsets[i]:offsets[i+1]`` of ``t_idx``/``j_idx`` (int32) and ``weight`` (float32,
    the posterior probability, not renormalised over the set), in (t, j) order."""

    logZ: np.ndarray
    pmax: np.ndarray
    argmax_t: np.ndarray
    argmax_j: np.ndarray
    nsig: np.ndarray
    offsets: np.ndarray
    t_idx: np.ndarray
    j_idx: np.ndarray
    weight: np.ndarray

    @property
    def pair_i(self) -> np.ndarray:
        """Particle index of every significant entry (int64, length offsets[-1]); a cupy
        array when the fields are (GPU inputs), computed on the device."""
        xp = _backend.array_namespace(self.offsets)
        if xp is np:  # np.repeat is ~4x faster than the search; cupy.repeat takes no array counts
            return np.repeat(np.arange(len(self.nsig), dtype=np.int64), self.nsig)
        entries = xp.arange(self.weight.shape[0], dtype=np.int64)
        return xp.searchsorted(self.offsets, entries, side="right").astype(np.int64) - 1


@dataclass(frozen=True)
class SegmentPosteriors:
    """Posteriors over variable-length per-particle segments of explicit pairs.

    ``weight`` float32 (P,) posterior probability of every pair within its particle;
    ``significant`` bool (P,) marks the smallest set per particle reaching ``frac``;
    ``logZ``, ``pmax`` float64 (B,), ``argmax`` int64 (B,) global pair index (-1 for an
    empty segment), ``nsig`` int64 (B,)."""

    weight: np.ndarray
    logZ: np.ndarray
    pmax: np.ndarray
    argmax: np.ndarray
    nsig: np.ndarray
    significant: np.ndarray


def _to_device(obj):
    """A Posteriors / SegmentPosteriors with every field moved to the GPU (cupy)."""
    return type(obj)(*(_backend.to_device(getattr(obj, f.name)) for f in fields(obj)))


# ----------------------------------------------------------------------------- checks
def _common(c, X, ctf, s, phases, refs):
    """The five model inputs, checked (strided ones copied); B, M from X."""
    X = c.array(X, "X", np.complex64, ndim=2, strided="copy")
    B, M = X.shape
    ctf = c.array(ctf, "ctf", np.float32, shape=(B, M), strided="copy")
    s = c.array(s, "s", np.float32, shape=(B, M), strided="copy")
    phases = c.array(phases, "phases", np.complex64, ndim=2, strided="copy")
    if phases.shape[1] != M:
        c.fail(f"phases: shape must be (T, {M}), got {tuple(phases.shape)}")
    refs = c.array(refs, "refs", np.complex64, ndim=2, strided="copy")
    if refs.shape[1] != M:
        c.fail(f"refs: shape must be (J, {M}), got {tuple(refs.shape)}")
    return X, ctf, s, phases, refs


def _pairs(c, pair_i, pair_t, pair_j, B, T, J):
    pi = c.index(pair_i, "pair_i", bound=B)
    pt = c.index(pair_t, "pair_t", bound=T)
    pj = c.index(pair_j, "pair_j", bound=J)
    if not (pi.shape == pt.shape == pj.shape):
        c.fail("pair_i, pair_t, pair_j: must have the same length, got "
               f"{pi.shape[0]}, {pt.shape[0]}, {pj.shape[0]}")
    return pi, pt, pj


# ----------------------------------------------------------------------------- diff2
def coarse_diff2(X, ctf, s, phases, refs, *, block_particles: int = 0,
                 mode: int = -1) -> np.ndarray:
    """``diff2[i, t, j] = sum_k s_ik |X_ik conj(ph_tk) - c_ik R_jk|^2`` as float32 (B, T, J).

    Computed as ``A_i + Q_ij - 2 Cross_itj`` with SGEMMs (see the module docstring);
    float32 throughout except ``A_i`` (float64 sum), so the absolute error is about
    ``1e-7 * (A_i + Q_ij)``, not relative to ``diff2``.

    ``block_particles`` particles form one GEMM operand (0: about 1280 rows).  ``mode``:
    1 = OpenMP threads (``hpcem._core.set_threads``) each run single-threaded SGEMMs on
    their own particle blocks (OpenBLAS is set to 1 thread during the call, process-wide,
    and restored); 0 = one block at a time, OpenBLAS threads each SGEMM; -1 = 1 where
    OpenBLAS's thread control is found (scipy's wheels), else 0.

    cupy inputs: the CUDA kernel (register-tiled GEMM, same expansion, float32 accumulation)
    returns a cupy array; ``block_particles`` and ``mode`` are ignored."""
    c = _backend.args_for("coarse_diff2", X=X, ctf=ctf, s=s, phases=phases, refs=refs)
    X, ctf, s, phases, refs = _common(c, X, ctf, s, phases, refs)
    if mode not in (-1, 0, 1):
        c.fail(f"mode: must be -1, 0 or 1, got {mode!r}")
    if not c.gpu:
        return _backend.core("marg_coarse_diff2", X, ctf, s, phases, refs,
                             c.count(block_particles, "block_particles"), int(mode))
    (B, M), T, J = X.shape, phases.shape[0], refs.shape[0]
    out = c.xp.empty((B, T, J), dtype=np.float32)
    _backend.cuda("marg_coarse_diff2", X, ctf, s, phases, refs, B, T, J, M, out)
    return out


def coarse_flops(B: int, T: int, J: int, M: int) -> int:
    """Floating-point operations counted for one ``coarse_diff2`` call (both GEMMs)."""
    return 2 * (B * T) * (2 * M) * J + 2 * B * M * J


def pair_diff2(X, ctf, s, phases, refs, pair_i, pair_t, pair_j) -> np.ndarray:
    """``diff2[p] = sum_k s_ik |X_ik conj(ph_tk) - c_ik R_jk|^2`` for the triples
    ``(i, t, j) = (pair_i[p], pair_t[p], pair_j[p])`` as float32 (P,): the fine pass of
    adaptive oversampling, where ``phases``/``refs`` are the fine translations/references.
    Computed directly (no expansion), float32 lanes summed in float64.

    cupy inputs (the pair indices may be cupy or host arrays): one warp per pair on the GPU
    (float32 accumulation), cupy result."""
    c = _backend.args_for("pair_diff2", X=X, ctf=ctf, s=s, phases=phases, refs=refs)
    X, ctf, s, phases, refs = _common(c, X, ctf, s, phases, refs)
    pi, pt, pj = _pairs(c, pair_i, pair_t, pair_j, X.shape[0], phases.shape[0], refs.shape[0])
    if not c.gpu:
        return _backend.core("marg_pair_diff2", X, ctf, s, phases, refs, pi, pt, pj)
    out = c.xp.empty(pi.shape[0], dtype=np.float32)
    _backend.cuda("marg_pair_diff2", X, ctf, s, phases, refs, X.shape[1], pi, pt, pj, pi.shape[0], out)
    return out


# ----------------------------------------------------------------------------- posteriors
def posteriors(diff2, logprior_t, logprior_j, frac: float = 0.999) -> Posteriors:
    """Normalised posteriors over all (t, j) per particle.

    ``log p(t, j | i) = -diff2[i,t,j] + logprior_t[i,t] + logprior_j[j] - logZ_i`` with the
    log-sum-exp in float64.  The significant set is the smallest set of hypotheses whose
    probabilities (taken in descending order) sum to at least ``frac``; it is *returned in
    hypothesis order* ((t, j) row-major per particle), not sorted by weight, so a caller
    that keeps only part of it must select by weight itself.  Ties at the smallest chosen
    probability are taken in hypothesis order; probabilities below ``exp(-50)`` of the
    largest count as 0 and are never significant, except with ``frac = 1``, which keeps every
    hypothesis of a particle with a finite maximum (exhaustive: a coarse hypothesis whose
    probability underflowed may still have probable fine children).

    cupy ``diff2`` (the priors may be cupy or host arrays): everything runs on the device
    (the log-sum-exp kernel, then the selection with cupy sorts and prefix sums); only the
    sizes of the CSR arrays come back to the host, and every field is a cupy array.  logZ
    and the probabilities may differ from the CPU's in the last bits (summation order), and
    so, with ``frac = 1``, may the tail of the set (hypotheses holding together ~1e-14 of
    the mass, which the rounding of the running sum decides on either side)."""
    c = _backend.args_for("posteriors", diff2=diff2)
    d = c.array(diff2, "diff2", np.float32, ndim=3, strided="copy")
    B, T, J = d.shape
    lt = c.array(logprior_t, "logprior_t", np.float32, shape=(B, T), strided="copy", convert=True)
    lj = c.array(logprior_j, "logprior_j", np.float32, shape=(J,), strided="copy", convert=True)
    frac = c.fraction(frac)
    if not c.gpu:
        return Posteriors(*_backend.core("marg_posteriors", d, lt, lj, frac))

    def lse(i0, i1, logZ, pmax, arg, prob):
        _backend.cuda("marg_logsumexp", d[i0:i1], lt[i0:i1], lj, i1 - i0, T, J, logZ, pmax, arg, prob)

    return _dense_posteriors(c.xp, B, T, J, frac, lse)


def _dense_posteriors(xp, B, T, J, frac, lse, chunk_bytes=256 << 20) -> Posteriors:
    """Posteriors from a dense-probability step, in particle chunks of about ``chunk_bytes``
    of float64 probabilities.  ``lse(i0, i1, logZ, pmax, arg, prob)`` fills, for particles
    i0:i1, logZ/pmax (float64), the flat argmax (int64, -1 if none) and prob (i1-i0, T*J)
    float64 as csrc/posteriors.cpp summarise() does (0 below exp(-50) of the maximum; all 0,
    logZ = -inf, pmax = 0 for a particle without a finite maximum)."""
    n = T * J
    logZ = xp.empty(B, dtype=np.float64)
    pmax = xp.empty(B, dtype=np.float64)
    arg = xp.empty(B, dtype=np.int64)
    nsig = xp.zeros(B, dtype=np.int64)
    t_parts, j_parts, w_parts = [], [], []
    rows = max(1, chunk_bytes // (8 * max(n, 1)))
    for i0 in range(0, B, rows):
        i1 = min(B, i0 + rows)
        prob = xp.empty((i1 - i0, n), dtype=np.float64)
        lse(i0, i1, logZ[i0:i1], pmax[i0:i1], arg[i0:i1], prob)
        sig = _significant_mask(xp, prob, frac, arg[i0:i1] >= 0)
        nsig[i0:i1] = xp.count_nonzero(sig, axis=1)
        r, q = xp.nonzero(sig)  # row-major: particle, then hypothesis (t, j) order
        t_parts.append((q // max(J, 1)).astype(np.int32))
        j_parts.append((q % max(J, 1)).astype(np.int32))
        w_parts.append(prob[r, q].astype(np.float32))
    offsets = xp.zeros(B + 1, dtype=np.int64)
    offsets[1:] = xp.cumsum(nsig)
    cat = (lambda parts, dt: xp.concatenate(parts) if parts else xp.zeros(0, dtype=dt))
    at = xp.where(arg >= 0, arg // max(J, 1), -1)
    aj = xp.where(arg >= 0, arg % max(J, 1), -1)
    return Posteriors(logZ, pmax, at, aj, nsig, offsets, cat(t_parts, np.int32),
                      cat(j_parts, np.int32), cat(w_parts, np.float32))


def _significant_mask(xp, prob, frac, valid, n_row=None):
    """Boolean mask of each row's significant set: the smallest set whose probabilities, in
    descending order, sum to >= ``frac``, ties at the smallest chosen probability taken in
    index order, never a zero probability; as csrc/posteriors.cpp (whose candidates are the
    p > 0 with p >= (1 - frac) / n: no member of the minimal set is smaller).  Works on
    numpy and cupy arrays alike, with no host round trip.  ``frac >= 1``: every hypothesis of
    the ``valid`` rows (a finite maximum), zeros included, as the CPU's exhaustive case.
    ``n_row``: each row's number of hypotheses (padded rows), else the row length."""
    R, n = prob.shape
    if R == 0 or n == 0:
        return xp.zeros((R, n), dtype=bool)
    if frac >= 1.0:
        return xp.repeat(valid[:, None], n, axis=1)
    eps = (1.0 - frac) / (n if n_row is None else n_row[:, None].astype(np.float64))
    ncand = xp.count_nonzero((prob > 0) & (prob >= eps), axis=1)
    desc = xp.sort(prob, axis=1)[:, ::-1]
    # set size: 1 + how many times the mass still needed stays > 0, taking the largest first;
    # all candidates if it never reaches 0 (frac = 1 with a sum rounded below 1). The need is
    # (frac - p_0) - cumsum(p_1..): exact first step, then small terms summed among
    # themselves, as accurate as the CPU's sequential need -= p (a cumsum near 1 would round
    # a tail of 1e-16 probabilities away)
    need0 = frac - desc[:, :1]
    still = (need0[:, 0] > 0) + xp.count_nonzero(need0 - xp.cumsum(desc[:, 1:], axis=1) > 0, axis=1)
    k = xp.minimum(still + 1, ncand)
    pk = desc[xp.arange(R), xp.maximum(k - 1, 0)][:, None]  # smallest chosen probability
    above = prob > pk
    ties = (k - xp.count_nonzero(above, axis=1))[:, None]  # how many p == pk to take
    at_pk = prob == pk
    return above | (at_pk & (xp.cumsum(at_pk, axis=1, dtype=np.int64) <= ties))


def segment_posteriors(minus_logp, offsets, frac: float = 0.999) -> SegmentPosteriors:
    """Posteriors over per-particle segments: particle ``i`` owns pairs
    ``offsets[i]:offsets[i+1]`` with unnormalised log posterior ``-minus_logp[p]``
    (e.g. ``diff2 - logprior``).  ``weight[p] = exp(-minus_logp[p] - logZ_i)``.

    Device ``minus_logp`` (cupy; ``offsets`` cupy or host): computed there (:func:`_segments_xp`,
    the segments padded into rows), every field a device array; only the longest segment's
    length comes to the host.  Probabilities may differ from the CPU's in the last bits."""
    xp = _backend.array_namespace(minus_logp)
    if xp is not np:
        if not 0.0 < float(frac) <= 1.0:
            raise _backend.KernelArgumentError("segment_posteriors: frac must be in (0, 1], got %r" % (frac,))
        return _segments_xp(xp, xp.asarray(minus_logp, dtype=np.float64), xp.asarray(offsets, dtype=np.int64),
                            float(frac))
    c = _backend.args_for("segment_posteriors", minus_logp=minus_logp)
    m = c.array(minus_logp, "minus_logp", (np.float32, np.float64), ndim=1, strided="copy", convert=True)
    o = c.index(offsets, "offsets")
    if not (o.size >= 1 and o[0] == 0 and o[-1] == m.size and not np.any(np.diff(o) < 0)):
        c.fail("offsets: must start at 0, be non-decreasing and end at len(minus_logp)")
    return SegmentPosteriors(*_backend.core("marg_segment_posteriors", np.ascontiguousarray(m, dtype=np.float64),
                                            o, c.fraction(frac)))


def _segments_xp(xp, m, off, frac) -> SegmentPosteriors:
    """:func:`segment_posteriors` with array operations (numpy or cupy): the segments padded
    into (B, longest) rows of log posteriors (-inf beyond each segment), then what
    csrc/posteriors.cpp summarise() does per row (0 below exp(-50) of the maximum, the
    significant set of :func:`_significant_mask` with each segment's own length)."""
    B, P = off.size - 1, m.size
    cnt = off[1:] - off[:-1]
    width = max(int(cnt.max()) if B else 0, 1)
    seg = xp.searchsorted(off[1:], xp.arange(P, dtype=np.int64), side="right")
    col = xp.arange(P, dtype=np.int64) - off[:-1][seg]
    lp = xp.full((B, width), -np.inf, dtype=np.float64)
    lp[seg, col] = -m
    am = xp.argmax(lp, axis=1)
    mx = lp[xp.arange(B), am]
    valid = xp.isfinite(mx)
    d = lp - xp.where(valid, mx, 0.0)[:, None]
    e = xp.where(valid[:, None] & (d > -50.0), xp.exp(xp.minimum(d, 0.0)), 0.0)
    total = e.sum(axis=1)
    inv = 1.0 / xp.where(valid, total, 1.0)
    prob = e * inv[:, None]
    inside = xp.arange(width)[None, :] < cnt[:, None]
    sig = _significant_mask(xp, prob, frac, valid, n_row=xp.maximum(cnt, 1)) & inside
    logZ = xp.where(valid, mx + xp.log(xp.where(valid, total, 1.0)), -np.inf)
    return SegmentPosteriors(prob[seg, col].astype(np.float32), logZ, xp.where(valid, inv, 0.0),
                             xp.where(valid, off[:-1] + am, -1), xp.count_nonzero(sig, axis=1).astype(np.int64),
                             sig[seg, col])


# ----------------------------------------------------------------------------- M-step sums
def accumulate(X, ctf, s, phases, refs, pair_i, pair_t, pair_j, weight,
               data_acc, weight_acc, noise_acc) -> None:
    """M-step sums over weighted pairs ``p = (i, t, j)`` with weight ``w_p``, in place::

        data_acc[j]   += w_p * c_i * s_i * X_i * conj(ph_t)
        weight_acc[j] += w_p * c_i^2 * s_i
        noise_acc[i]  += w_p * |X_i conj(ph_t) - c_i R_j|^2     (not weighted by s)

    ``data_acc`` (J, M) complex64 or complex128, ``weight_acc`` (J, M) float32 or float64,
    ``noise_acc`` (B, M) float32; all C-contiguous and writeable (they are updated in
    place, never copied).  ``s`` holds 1/sigma2, so the M-step is data / (weight + 1/tau2).
    Pairs with zero weight are skipped; no races (pairs are bucketed by j, then by i).  Each
    pair's terms are computed in float32 and summed per hypothesis in the accumulators'
    precision, so double accumulators hold the same sums (to double rounding) however the pairs
    are split over calls (batches, ranks).

    cupy inputs (accumulators included; ``weight`` and the pair indices may also be host
    arrays): the CUDA kernel adds with atomics (one block per pair), so the summation order,
    and the last bits of float32 sums, vary from run to run."""
    c = _backend.args_for("accumulate", X=X, ctf=ctf, s=s, phases=phases, refs=refs,
                          data_acc=data_acc, weight_acc=weight_acc, noise_acc=noise_acc)
    X, ctf, s, phases, refs = _common(c, X, ctf, s, phases, refs)
    (B, M), J = X.shape, refs.shape[0]
    pi, pt, pj = _pairs(c, pair_i, pair_t, pair_j, B, phases.shape[0], J)
    w = c.array(weight, "weight", np.float32, shape=pi.shape, strided="copy", convert=True)
    c.array(data_acc, "data_acc", (np.complex64, np.complex128), shape=(J, M), writeable=True)
    c.array(weight_acc, "weight_acc", (np.float32, np.float64), shape=(J, M), writeable=True)
    c.array(noise_acc, "noise_acc", np.float32, shape=(B, M), writeable=True)
    if not c.gpu:
        _backend.core("marg_accumulate", X, ctf, s, phases, refs, pi, pt, pj, w, data_acc, weight_acc, noise_acc)
        return
    _backend.cuda("marg_accumulate", X, ctf, s, phases, refs, M, pi, pt, pj, w, pi.shape[0],
                  data_acc, bool(data_acc.dtype == np.complex128), weight_acc,
                  bool(weight_acc.dtype == np.float64), noise_acc)
