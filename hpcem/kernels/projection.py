"""Projection, back-projection and symmetrisation kernels (csrc/project.cpp,
csrc/backproject.cpp; CUDA twins in cuda/kernels.cu).

numpy arrays go to ``hpcem._core`` (C++/OpenMP), cupy arrays to ``hpcem._cuda``
(same signatures, device pointers).  Arrays are checked here once (dtype,
contiguity, shapes) with a clear error; the compiled code trusts them.

Fourier layout (see :mod:`hpcem.core.fourier`): half transforms, FFT-ordered rows.
A *padded* transform of box ``n`` with padding ``pad`` has box ``P = pad * n``:
``(P, P, P//2+1)`` for a volume, ``(P, P//2+1)`` (or a stack ``(K, P, P//2+1)``)
for 2D references.  Zero-padding in real space makes the padded transform at
frequency ``pad * k`` equal the unpadded one at ``k``, so slices need no scale.

Projection / back-projection
    ``project3d``: the slice coefficient at 2D frequency ``k = (kx, ky)``,
    ``|k| <= r_max`` (0 elsewhere), is the trilinear interpolation of the padded
    volume at ``pad * A^T (kx, ky, 0)``; a point with negative x is read at its
    mirror and conjugated (Friedel).  Corners outside the representable
    frequencies count as zero.  ``backproject3d`` is its exact adjoint for the
    real inner product ``Re sum conj(a) b`` over the kernel's arrays:
    ``data += w * s`` (``w * conj(s)`` for mirrored points) with the same
    weights ``w``, and ``weight += w * weights``.  ``project2d``/``backproject2d``
    are the 2D (bilinear) analogues with 2x2 in-plane matrices and a stack of
    references selected per slice by ``ref_index``.

``kernel="gauss"`` (3D only) replaces trilinear interpolation by seed 002's Gaussian kernel
(eqs 27-29): a point ``p`` reaches the 27 grid points ``round(p) + d``, ``d`` in ``{-1, 0, 1}^3``,
with weight ``exp(-|round(p) + d - p|^2 / 2)``; a neighbour with negative x is its Friedel mate,
conjugated.  ``project3d`` then sums ``K(n - p) V(n)`` (unnormalised, so that ``backproject3d``
stays its exact adjoint); reconstructions divide by the kernel's own real-space attenuation
(:func:`hpcem.recon.gridding.correction_profile`).

Accumulators are (complex128, float64) or (complex64, float32) pairs, updated in
place.  The CPU back-projection needs no atomics (slab ownership per thread) and
gives the same bits for any thread count; the CUDA one uses atomicAdd.

With cupy arrays, ``rotations``, ``weights`` and ``ref_index`` may also be host arrays
(they are copied to the device).
"""
from __future__ import annotations

import numpy as np

from . import _backend

__all__ = ["project3d", "project2d", "project2d_at", "backproject3d", "backproject2d", "backproject2d_at",
           "symmetrise3d"]

KERNELS = {"linear": 0, "gauss": 1}


def _kernel(c, kernel) -> int:
    if kernel not in KERNELS:
        c.fail(f"kernel: must be one of {', '.join(KERNELS)}, got {kernel!r}")
    return KERNELS[kernel]


# ---------------------------------------------------------------- argument helpers
def _padded_box(c, n, pad) -> int:
    n = c.count(n, "n", minimum=1)
    P = pad * n
    if not (abs(P - round(P)) < 1e-9 and round(P) >= n):
        c.fail(f"pad: pad * n must be an integer >= n (pad={pad}, n={n})")
    return int(round(P))


def _rotations(c, rotations, name, d):
    r = c.cast(rotations, name, np.float64)
    if not (r.ndim == 3 and tuple(r.shape[1:]) == (d, d)):
        c.fail(f"{name}: shape must be (B, {d}, {d}), got {tuple(r.shape)}")
    return r


def _r_max(c, r_max, n):
    return n / 2.0 if r_max is None else c.number(r_max, "r_max")


def _ref_index(c, ref_index, B, K):
    if ref_index is None:
        if K != 1:
            c.fail("ref_index: required with a stack of several references")
        return c.xp.zeros(B, dtype=np.int64)
    return c.index(ref_index, "ref_index", size=B, bound=K)


def _weights(c, weights, B, n):
    xp = c.xp
    shape = (B, n, n // 2 + 1)
    if weights is None:
        return xp.ones(shape, dtype=np.float32)
    c.same_side(weights, "weights")
    w = xp.asarray(weights)
    if w.dtype.kind != "f":
        c.fail(f"weights: dtype must be real floating point, got {w.dtype}")
    try:
        w = xp.broadcast_to(w.astype(np.float32, copy=False), shape)
    except ValueError:
        c.fail(f"weights: shape {tuple(w.shape)} does not broadcast to {shape}")
    return xp.ascontiguousarray(w)


def _slices(c, slices):
    s = c.array(slices, "slices", np.complex64, ndim=3)
    B, n = s.shape[0], s.shape[1]
    if s.shape[2] != n // 2 + 1:
        c.fail(f"slices: shape must be (B, n, n//2+1), got {tuple(s.shape)}")
    return s, B, n


def _accumulators(c, data, weight, shape, in_place=True):
    """The (data, weight) accumulator pair, checked; True for (complex128, float64)."""
    data = c.array(data, "data accumulator", (np.complex128, np.complex64), shape=shape, writeable=in_place)
    dbl = data.dtype == np.complex128
    c.array(weight, "weight accumulator", np.float64 if dbl else np.float32, shape=shape, writeable=in_place)
    return bool(dbl)


# ---------------------------------------------------------------- project
def project3d(vol_ft_pad, rotations, n: int, r_max=None, pad=2, kernel="linear"):
    """Fourier slices ``(B, n, n//2+1)`` complex64 of a padded half volume ``(P, P, P//2+1)``
    (``kernel`` "linear": trilinear interpolation; "gauss": the Gaussian kernel sum)."""
    c = _backend.args_for("project3d", vol_ft_pad=vol_ft_pad)
    kern = _kernel(c, kernel)
    P = _padded_box(c, n, pad)
    vol = c.array(vol_ft_pad, "vol_ft_pad", np.complex64, shape=(P, P, P // 2 + 1))
    rot = _rotations(c, rotations, "rotations", 3)
    r = _r_max(c, r_max, n)
    if not c.gpu:
        return _backend.core("project3d", vol, rot, int(n), r, float(pad), kern)
    out = c.xp.empty((rot.shape[0], n, n // 2 + 1), dtype=np.complex64)
    _backend.cuda("project3d", vol, P, rot, rot.shape[0], int(n), r, float(pad), kern, out)
    return out


def _freqs(c, ky, kx, P):
    ky = c.cast(ky, "ky", np.int32, ndim=1)
    kx = c.cast(kx, "kx", np.int32, ndim=1)
    if ky.shape != kx.shape:
        c.fail(f"ky, kx: must have the same length, got {ky.shape[0]} and {kx.shape[0]}")
    if kx.size and (int(kx.min()) < 0 or 2 * int(abs(ky).max()) > P or 2 * int(kx.max()) > P):
        c.fail("kx, ky: frequencies outside the padded box (kx >= 0, |k| <= P/2)")
    return ky, kx


def project3d_at(vol_ft_pad, rotations, ky, kx, pad=2):
    """Slice coefficients ``(B, M)`` complex64 at the listed 2D frequencies ``(ky[m], kx[m])`` only
    (``kx >= 0``): :func:`project3d`'s values there, without computing the rest of the slices."""
    c = _backend.args_for("project3d_at", vol_ft_pad=vol_ft_pad)
    vol = c.array(vol_ft_pad, "vol_ft_pad", np.complex64, ndim=3)
    P = vol.shape[0]
    if tuple(vol.shape) != (P, P, P // 2 + 1):
        c.fail(f"vol_ft_pad: shape must be (P, P, P//2+1), got {tuple(vol.shape)}")
    rot = _rotations(c, rotations, "rotations", 3)
    ky, kx = _freqs(c, ky, kx, P)
    if not c.gpu:
        return _backend.core("project3d_at", vol, rot, ky, kx, float(pad))
    out = c.xp.empty((rot.shape[0], kx.shape[0]), dtype=np.complex64)
    _backend.cuda("project3d_at", vol, P, rot, rot.shape[0], ky, kx, kx.shape[0], float(pad), out)
    return out


def project2d(ref_ft_pad, rotations2d, n: int, r_max=None, pad=2, ref_index=None):
    """Rotated transforms ``(B, n, n//2+1)`` of padded half references.

    ``ref_ft_pad``: one reference ``(P, P//2+1)`` or a stack ``(K, P, P//2+1)`` with
    ``ref_index`` (B,) naming the reference of each output (all classes in one call)."""
    c = _backend.args_for("project2d", ref_ft_pad=ref_ft_pad)
    P = _padded_box(c, n, pad)
    refs = c.array(ref_ft_pad, "ref_ft_pad", np.complex64)
    if refs.ndim not in (2, 3):
        c.fail(f"ref_ft_pad: must be (P, P//2+1) or (K, P, P//2+1), got {tuple(refs.shape)}")
    refs = refs[None] if refs.ndim == 2 else refs
    if tuple(refs.shape[1:]) != (P, P // 2 + 1):
        c.fail(f"ref_ft_pad: shape must be (K, {P}, {P // 2 + 1}), got {tuple(ref_ft_pad.shape)}")
    rot = _rotations(c, rotations2d, "rotations2d", 2)
    B, K = rot.shape[0], refs.shape[0]
    idx = _ref_index(c, ref_index, B, K)
    r = _r_max(c, r_max, n)
    if not c.gpu:
        return _backend.core("project2d", refs, rot, idx, int(n), r, float(pad))
    out = c.xp.empty((B, n, n // 2 + 1), dtype=np.complex64)
    _backend.cuda("project2d", refs, K, P, rot, idx, B, int(n), r, float(pad), out)
    return out


def project2d_at(ref_ft_pad, rotations2d, ky, kx, pad=2, ref_index=None):
    """Rotated reference coefficients ``(B, M)`` complex64 at the listed frequencies ``(ky[m], kx[m])``
    only (``kx >= 0``): :func:`project2d`'s values there, without computing the rest of the
    transforms (CPU only; a GPU projects the whole transforms)."""
    c = _backend.args_for("project2d_at", ref_ft_pad=ref_ft_pad)
    if c.gpu:
        c.fail("a CPU kernel: host arrays only")
    refs = c.array(ref_ft_pad, "ref_ft_pad", np.complex64)
    refs = refs[None] if refs.ndim == 2 else refs
    P = refs.shape[1]
    if refs.ndim != 3 or tuple(refs.shape[1:]) != (P, P // 2 + 1):
        c.fail(f"ref_ft_pad: must be (P, P//2+1) or (K, P, P//2+1), got {tuple(ref_ft_pad.shape)}")
    rot = _rotations(c, rotations2d, "rotations2d", 2)
    idx = _ref_index(c, ref_index, rot.shape[0], refs.shape[0])
    ky, kx = _freqs(c, ky, kx, P)
    return _backend.core("project2d_at", refs, rot, idx, ky, kx, float(pad))


# ---------------------------------------------------------------- backproject
def backproject3d(slices, weights, rotations, data_acc, weight_acc, r_max=None, pad=2, kernel="linear"):
    """Adjoint of :func:`project3d` (same ``kernel``), in place: ``data_acc += P^T slices``,
    ``weight_acc += P^T weights``.

    ``slices`` complex64 ``(B, n, n//2+1)``; ``weights`` real, broadcastable to it
    (None: ones); accumulators ``(P, P, P//2+1)`` (complex128, float64) or
    (complex64, float32)."""
    c = _backend.args_for("backproject3d", slices=slices, data_acc=data_acc, weight_acc=weight_acc)
    kern = _kernel(c, kernel)
    s, B, n = _slices(c, slices)
    P = _padded_box(c, n, pad)
    dbl = _accumulators(c, data_acc, weight_acc, (P, P, P // 2 + 1))
    rot = _rotations(c, rotations, "rotations", 3)
    if rot.shape[0] != B:
        c.fail(f"rotations: {rot.shape[0]} rotations for {B} slices")
    w = _weights(c, weights, B, n)
    r = _r_max(c, r_max, n)
    if not c.gpu:
        _backend.core("backproject3d", s, w, rot, data_acc, weight_acc, r, float(pad), kern)
    else:
        _backend.cuda("backproject3d", s, w, rot, B, int(n), data_acc, weight_acc, P, dbl, r, float(pad), kern)
    return data_acc, weight_acc


def backproject3d_at(values, weights, rotations, ky, kx, data_acc, weight_acc, pad=2):
    """Adjoint of :func:`project3d_at`, in place: ``values`` complex64 and ``weights`` float32
    ``(B, M)`` at the listed frequencies, accumulated as :func:`backproject3d` would the full slices."""
    c = _backend.args_for("backproject3d_at", values=values, data_acc=data_acc, weight_acc=weight_acc)
    v = c.array(values, "values", np.complex64, ndim=2, strided="copy")
    w = c.array(weights, "weights", np.float32, shape=tuple(v.shape), strided="copy", convert=True)
    c.array(data_acc, "data accumulator", (np.complex128, np.complex64), ndim=3)
    P = data_acc.shape[0]
    dbl = _accumulators(c, data_acc, weight_acc, (P, P, P // 2 + 1))
    rot = _rotations(c, rotations, "rotations", 3)
    if rot.shape[0] != v.shape[0]:
        c.fail(f"rotations: {rot.shape[0]} rotations for {v.shape[0]} rows")
    ky, kx = _freqs(c, ky, kx, P)
    if kx.shape[0] != v.shape[1]:
        c.fail(f"values: {v.shape[1]} columns for {kx.shape[0]} frequencies")
    if not c.gpu:
        _backend.core("backproject3d_at", v, w, rot, ky, kx, data_acc, weight_acc, float(pad))
    else:
        _backend.cuda("backproject3d_at", v, w, rot, v.shape[0], ky, kx, kx.shape[0], data_acc, weight_acc, P, dbl,
                      float(pad))
    return data_acc, weight_acc


def backproject2d(slices, weights, rotations2d, data_acc, weight_acc, r_max=None, pad=2, ref_index=None):
    """Adjoint of :func:`project2d`, in place; accumulators ``(P, P//2+1)`` or ``(K, P, P//2+1)``."""
    c = _backend.args_for("backproject2d", slices=slices, data_acc=data_acc, weight_acc=weight_acc)
    s, B, n = _slices(c, slices)
    P = _padded_box(c, n, pad)
    c.array(data_acc, "data accumulator", (np.complex128, np.complex64), writeable=True)
    if data_acc.ndim not in (2, 3):
        c.fail("accumulators: must be (P, P//2+1) or (K, P, P//2+1), "
               f"got {tuple(data_acc.shape)}")
    D = data_acc[None] if data_acc.ndim == 2 else data_acc
    W = weight_acc[None] if getattr(weight_acc, "ndim", 0) == 2 else weight_acc
    K = D.shape[0]
    dbl = _accumulators(c, D, W, (K, P, P // 2 + 1))
    rot = _rotations(c, rotations2d, "rotations2d", 2)
    if rot.shape[0] != B:
        c.fail(f"rotations2d: {rot.shape[0]} rotations for {B} slices")
    idx = _ref_index(c, ref_index, B, K)
    w = _weights(c, weights, B, n)
    r = _r_max(c, r_max, n)
    if not c.gpu:
        _backend.core("backproject2d", s, w, rot, idx, D, W, r, float(pad))
    else:
        _backend.cuda("backproject2d", s, w, rot, idx, B, int(n), D, W, K, P, dbl, r, float(pad))
    return data_acc, weight_acc


def backproject2d_at(values, weights, rotations2d, ref_index, ky, kx, data_acc, weight_acc, pad=2, cols=None,
                     refs=None, pred_index=None):
    """Adjoint of :func:`project2d_at`, in place, for rows of double sums at the listed frequencies
    (CPU only): row b's ``values`` (complex128 (B, M), with float64 ``weights``; or complex64 with float32) minus ``weights`` times its
    prediction ``refs[pred_index[b]]`` (complex64 (J, M); None: the values themselves), rounded to
    complex64 / float32 and accumulated into class ``ref_index[b]``'s accumulator as
    :func:`backproject2d` accumulates the rows put on the full half grid (zero elsewhere).  Only
    the columns ``cols`` are visited, in that order (None: all, in order); entries of zero weight
    (no particle reached them) are skipped, whatever their value."""
    c = _backend.args_for("backproject2d_at", values=values, data_acc=data_acc, weight_acc=weight_acc)
    if c.gpu:
        c.fail("a CPU kernel: host arrays only")
    v = c.array(values, "values", (np.complex128, np.complex64), ndim=2, strided="copy")
    wdt = np.float32 if v.dtype == np.complex64 else np.float64
    w = c.array(weights, "weights", wdt, shape=tuple(v.shape), strided="copy", convert=True)
    B, M = v.shape
    c.array(data_acc, "data accumulator", (np.complex128, np.complex64), writeable=True)
    D = data_acc[None] if data_acc.ndim == 2 else data_acc
    W = weight_acc[None] if getattr(weight_acc, "ndim", 0) == 2 else weight_acc
    P = D.shape[-2]
    _accumulators(c, D, W, (D.shape[0], P, P // 2 + 1))
    rot = _rotations(c, rotations2d, "rotations2d", 2)
    if rot.shape[0] != B:
        c.fail(f"rotations2d: {rot.shape[0]} rotations for {B} rows")
    idx = _ref_index(c, ref_index, B, D.shape[0])
    ky, kx = _freqs(c, ky, kx, P)
    if kx.shape[0] != M:
        c.fail(f"values: {M} columns for {kx.shape[0]} frequencies")
    cols = c.cast(np.arange(M) if cols is None else cols, "cols", np.int32, ndim=1)
    if cols.size and (int(cols.min()) < 0 or int(cols.max()) >= M):
        c.fail(f"cols: column indices outside [0, {M})")
    if refs is not None:
        refs = c.array(refs, "refs", np.complex64, ndim=2, strided="copy")
        if refs.shape[1] != M:
            c.fail(f"refs: {refs.shape[1]} columns for {M} frequencies")
        pred_index = c.index(pred_index, "pred_index", size=B, bound=refs.shape[0])
    _backend.core("backproject2d_at", v, w, rot, idx, ky, kx, cols, D, W, float(pad), refs, pred_index)
    return data_acc, weight_acc


def symmetrise3d(data_acc, weight_acc, ops, r_pad=None):
    """Symmetrised copies of 3D accumulators: ``sum_R acc(R^T k)`` (trilinear, Friedel-aware)
    for ``|k| <= r_pad`` (padded-grid units; default P/2), zero beyond."""
    c = _backend.args_for("symmetrise3d", data_acc=data_acc, weight_acc=weight_acc)
    c.array(data_acc, "data accumulator", (np.complex128, np.complex64), ndim=3)
    P = data_acc.shape[0]
    dbl = _accumulators(c, data_acc, weight_acc, (P, P, P // 2 + 1), in_place=False)
    R = _rotations(c, ops, "ops", 3)
    r = P / 2.0 if r_pad is None else c.number(r_pad, "r_pad")
    if not c.gpu:
        return _backend.core("symmetrise3d", data_acc, weight_acc, R, r)
    D = c.xp.empty_like(data_acc)
    W = c.xp.empty_like(weight_acc)
    _backend.cuda("symmetrise3d", data_acc, weight_acc, D, W, P, R, R.shape[0], r, dbl)
    return D, W
