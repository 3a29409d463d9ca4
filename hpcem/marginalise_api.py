"""Marginalisation kernels of the MAP-EM E-step (RELION's exact posterior over
class x orientation x translation), CPU production path in ``hpcem._core``.

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

GPU: when the array inputs are cupy arrays (all of them; mixing raises), :func:`coarse_diff2`,
:func:`pair_diff2` and :func:`accumulate` run the CUDA twins in ``hpcem._cuda``
(``cuda/marginalise.cu``) on cupy's current stream and return / update cupy arrays.
:func:`posteriors` and :func:`segment_posteriors` copy their inputs to the host, run the
CPU code and return their results as cupy arrays.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _core
from .kernels import (_cuda, check_exact as _arr, check_exact_gpu as _garr,  # noqa: F401
                      check_index as _idx, check_index_gpu as _gidx, cupy_stream as _stream, is_cupy,
                      on_gpu as _gpu)  # (_cuda: None without CUDA build)

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


# ----------------------------------------------------------------------------- checks
def _to_host(a):
    return a.get() if is_cupy(a) else a


def _to_device(obj):
    """A Posteriors / SegmentPosteriors with every field moved to the GPU (cupy)."""
    import cupy

    return type(obj)(*(cupy.asarray(getattr(obj, f)) for f in obj.__dataclass_fields__))


def _common(X, ctf, s, phases, refs, gpu: bool = False):
    chk = _garr if gpu else _arr
    X = chk(X, "X", np.complex64, 2)
    B, M = X.shape
    ctf = chk(ctf, "ctf", np.float32, 2)
    s = chk(s, "s", np.float32, 2)
    phases = chk(phases, "phases", np.complex64, 2)
    refs = chk(refs, "refs", np.complex64, 2)
    for name, a in (("ctf", ctf), ("s", s)):
        if a.shape != (B, M):
            raise ValueError(f"{name}: expected shape {(B, M)} like X, got {a.shape}")
    if phases.shape[1] != M:
        raise ValueError(f"phases: expected (T, {M}), got {phases.shape}")
    if refs.shape[1] != M:
        raise ValueError(f"refs: expected (J, {M}), got {refs.shape}")
    return X, ctf, s, phases, refs


def _pairs(pair_i, pair_t, pair_j, B, T, J, gpu: bool = False):
    ix = _gidx if gpu else _idx
    pi, pt, pj = ix(pair_i, "pair_i"), ix(pair_t, "pair_t"), ix(pair_j, "pair_j")
    if not (pi.shape == pt.shape == pj.shape):
        raise ValueError("pair_i, pair_t, pair_j must have the same length")
    for name, a, n in (("pair_i", pi, B), ("pair_t", pt, T), ("pair_j", pj, J)):
        if a.size and (int(a.min()) < 0 or int(a.max()) >= n):
            raise ValueError(f"{name}: indices must lie in [0, {n})")
    return pi, pt, pj


def _frac(frac: float) -> float:
    frac = float(frac)
    if not (0.0 < frac <= 1.0):
        raise ValueError(f"frac must be in (0, 1], got {frac}")
    return frac


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
        array when the fields are (GPU inputs)."""
        if is_cupy(self.nsig):
            import cupy

            n = self.nsig.get()
            return cupy.asarray(np.repeat(np.arange(len(n), dtype=np.int64), n))
        return np.repeat(np.arange(len(self.nsig), dtype=np.int64), self.nsig)


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


# ----------------------------------------------------------------------------- kernels
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
    gpu = _gpu(X, ctf, s, phases, refs)
    X, ctf, s, phases, refs = _common(X, ctf, s, phases, refs, gpu)
    if gpu:
        import cupy

        (B, M), T, J = X.shape, phases.shape[0], refs.shape[0]
        out = cupy.empty((B, T, J), dtype=cupy.float32)
        _cuda.marg_coarse_diff2(X.data.ptr, ctf.data.ptr, s.data.ptr, phases.data.ptr,
                                refs.data.ptr, B, T, J, M, out.data.ptr, _stream())
        return out
    return _core.marg_coarse_diff2(X, ctf, s, phases, refs, int(block_particles), int(mode))


def coarse_flops(B: int, T: int, J: int, M: int) -> int:
    """Floating-point operations counted for one ``coarse_diff2`` call (both GEMMs)."""
    return 2 * (B * T) * (2 * M) * J + 2 * B * M * J


def posteriors(diff2, logprior_t, logprior_j, frac: float = 0.999) -> Posteriors:
    """Normalised posteriors over all (t, j) per particle.

    ``log p(t, j | i) = -diff2[i,t,j] + logprior_t[i,t] + logprior_j[j] - logZ_i`` with the
    log-sum-exp in float64.  The significant set is the smallest set of hypotheses whose
    probabilities (taken in descending order) sum to at least ``frac``; it is *returned in
    hypothesis order* ((t, j) row-major per particle), not sorted by weight, so a caller
    that keeps only part of it must select by weight itself.

    cupy inputs: ``diff2`` and the priors are copied to the host, the CPU code runs there
    and every field of the result is returned as a cupy array."""
    if any(is_cupy(a) for a in (diff2, logprior_t, logprior_j)):
        return _to_device(posteriors(_to_host(diff2), _to_host(logprior_t), _to_host(logprior_j),
                                     frac))
    d = _arr(diff2, "diff2", np.float32, 3)
    B, T, J = d.shape
    lt = _arr(logprior_t, "logprior_t", np.float32, 2)
    lj = _arr(logprior_j, "logprior_j", np.float32, 1)
    if lt.shape != (B, T):
        raise ValueError(f"logprior_t: expected {(B, T)}, got {lt.shape}")
    if lj.shape != (J,):
        raise ValueError(f"logprior_j: expected {(J,)}, got {lj.shape}")
    return Posteriors(*_core.marg_posteriors(d, lt, lj, _frac(frac)))


def pair_diff2(X, ctf, s, phases, refs, pair_i, pair_t, pair_j) -> np.ndarray:
    """``diff2[p] = sum_k s_ik |X_ik conj(ph_tk) - c_ik R_jk|^2`` for the triples
    ``(i, t, j) = (pair_i[p], pair_t[p], pair_j[p])`` as float32 (P,): the fine pass of
    adaptive oversampling, where ``phases``/``refs`` are the fine translations/references.
    Computed directly (no expansion), float32 lanes summed in float64.

    cupy inputs (the pair indices may be cupy or host arrays): one warp per pair on the GPU
    (float32 accumulation), cupy result."""
    gpu = _gpu(X, ctf, s, phases, refs)
    X, ctf, s, phases, refs = _common(X, ctf, s, phases, refs, gpu)
    pi, pt, pj = _pairs(pair_i, pair_t, pair_j, X.shape[0], phases.shape[0], refs.shape[0], gpu)
    if gpu:
        import cupy

        P = pi.shape[0]
        out = cupy.empty(P, dtype=cupy.float32)
        _cuda.marg_pair_diff2(X.data.ptr, ctf.data.ptr, s.data.ptr, phases.data.ptr, refs.data.ptr,
                              X.shape[1], pi.data.ptr, pt.data.ptr, pj.data.ptr, P, out.data.ptr,
                              _stream())
        return out
    return _core.marg_pair_diff2(X, ctf, s, phases, refs, pi, pt, pj)


def segment_posteriors(minus_logp, offsets, frac: float = 0.999) -> SegmentPosteriors:
    """Posteriors over per-particle segments: particle ``i`` owns pairs
    ``offsets[i]:offsets[i+1]`` with unnormalised log posterior ``-minus_logp[p]``
    (e.g. ``diff2 - logprior``).  ``weight[p] = exp(-minus_logp[p] - logZ_i)``.

    cupy inputs: copied to the host, the CPU code runs there, every field of the result is
    returned as a cupy array."""
    if is_cupy(minus_logp) or is_cupy(offsets):
        return _to_device(segment_posteriors(_to_host(minus_logp), _to_host(offsets), frac))
    m = np.asarray(minus_logp)
    if m.ndim != 1 or m.dtype not in (np.float32, np.float64):
        raise TypeError(f"minus_logp: expected 1-D float32/float64, got {m.dtype} {m.shape}")
    o = _idx(offsets, "offsets")
    if o.size < 1 or o[0] != 0 or o[-1] != m.size or np.any(np.diff(o) < 0):
        raise ValueError("offsets: must start at 0, be non-decreasing and end at len(minus_logp)")
    return SegmentPosteriors(*_core.marg_segment_posteriors(
        np.ascontiguousarray(m, dtype=np.float64), o, _frac(frac)))


def accumulate(X, ctf, s, phases, refs, pair_i, pair_t, pair_j, weight,
               data_acc, weight_acc, noise_acc) -> None:
    """M-step sums over weighted pairs ``p = (i, t, j)`` with weight ``w_p``, in place::

        data_acc[j]   += w_p * c_i * s_i * X_i * conj(ph_t)
        weight_acc[j] += w_p * c_i^2 * s_i
        noise_acc[i]  += w_p * |X_i conj(ph_t) - c_i R_j|^2     (not weighted by s)

    ``data_acc`` (J, M) complex64 or complex128, ``weight_acc`` (J, M) float32 or float64,
    ``noise_acc`` (B, M) float32; all C-contiguous and writeable (they are updated in
    place, never copied).  ``s`` holds 1/sigma2, so the M-step is data / (weight + 1/tau2).
    Pairs with zero weight are skipped; no races (pairs are bucketed by j, then by i).

    cupy inputs (accumulators included; ``weight`` and the pair indices may also be host
    arrays): the CUDA kernel adds with atomics (one block per pair), so the summation order,
    and the last bits of float32 sums, vary from run to run."""
    gpu = _gpu(X, ctf, s, phases, refs, data_acc, weight_acc, noise_acc)
    if gpu:
        _accumulate_gpu(X, ctf, s, phases, refs, pair_i, pair_t, pair_j, weight,
                        data_acc, weight_acc, noise_acc)
        return
    X, ctf, s, phases, refs = _common(X, ctf, s, phases, refs)
    B, M = X.shape
    J = refs.shape[0]
    pi, pt, pj = _pairs(pair_i, pair_t, pair_j, B, phases.shape[0], J)
    w = _arr(np.asarray(weight), "weight", np.float32, 1)
    if w.shape != pi.shape:
        raise ValueError(f"weight: expected {pi.shape}, got {w.shape}")
    for name, a, dts, shape in (("data_acc", data_acc, (np.complex64, np.complex128), (J, M)),
                                ("weight_acc", weight_acc, (np.float32, np.float64), (J, M)),
                                ("noise_acc", noise_acc, (np.float32,), (B, M))):
        if not isinstance(a, np.ndarray) or a.dtype not in dts:
            raise TypeError(f"{name}: expected a numpy array of dtype {' or '.join(map(str, dts))}")
        if a.shape != shape:
            raise ValueError(f"{name}: expected shape {shape}, got {a.shape}")
        if not a.flags.c_contiguous or not a.flags.writeable:
            raise ValueError(f"{name}: must be C-contiguous and writeable (updated in place)")
    _core.marg_accumulate(X, ctf, s, phases, refs, pi, pt, pj, w,
                          data_acc, weight_acc, noise_acc)


def _accumulate_gpu(X, ctf, s, phases, refs, pair_i, pair_t, pair_j, weight,
                    data_acc, weight_acc, noise_acc) -> None:
    import cupy

    X, ctf, s, phases, refs = _common(X, ctf, s, phases, refs, True)
    B, M = X.shape
    J = refs.shape[0]
    pi, pt, pj = _pairs(pair_i, pair_t, pair_j, B, phases.shape[0], J, True)
    w = _garr(cupy.asarray(weight), "weight", np.float32, 1)
    if w.shape != pi.shape:
        raise ValueError(f"weight: expected {pi.shape}, got {w.shape}")
    for name, a, dts, shape in (("data_acc", data_acc, (np.complex64, np.complex128), (J, M)),
                                ("weight_acc", weight_acc, (np.float32, np.float64), (J, M)),
                                ("noise_acc", noise_acc, (np.float32,), (B, M))):
        if not is_cupy(a) or a.dtype not in dts:
            raise TypeError(f"{name}: expected a cupy array of dtype {' or '.join(map(str, dts))}")
        if a.shape != shape:
            raise ValueError(f"{name}: expected shape {shape}, got {a.shape}")
        if not a.flags.c_contiguous:
            raise ValueError(f"{name}: must be C-contiguous (updated in place)")
    _cuda.marg_accumulate(X.data.ptr, ctf.data.ptr, s.data.ptr, phases.data.ptr, refs.data.ptr, M,
                          pi.data.ptr, pt.data.ptr, pj.data.ptr, w.data.ptr, pi.shape[0],
                          data_acc.data.ptr, data_acc.dtype == np.complex128, weight_acc.data.ptr,
                          weight_acc.dtype == np.float64, noise_acc.data.ptr, _stream())
