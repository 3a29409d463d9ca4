"""The one dispatch point for hpcem's kernels.

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

Accumulators are (complex128, float64) or (complex64, float32) pairs, updated in
place.  The CPU back-projection needs no atomics (slab ownership per thread) and
gives the same bits for any thread count; the CUDA one uses atomicAdd.
"""
from __future__ import annotations

import numpy as np

from hpcem import _core

try:  # built only where a CUDA toolkit was found
    from hpcem import _cuda  # noqa: F401
except ImportError:  # pragma: no cover - depends on the build
    _cuda = None


class KernelArgumentError(ValueError):
    """An array handed to a kernel has the wrong dtype, shape or layout."""


# ---------------------------------------------------------------- helpers
def is_cupy(a) -> bool:
    return type(a).__module__.split(".")[0] == "cupy"


def _backend(*arrays) -> str:
    flags = [is_cupy(a) for a in arrays if a is not None]
    if any(flags):
        if not all(flags):
            raise KernelArgumentError("mixing numpy and cupy arrays in one kernel call")
        if _cuda is None:
            raise KernelArgumentError("cupy arrays given but hpcem._cuda was not built (no CUDA toolkit at build time)")
        return "cuda"
    return "cpu"


def _xp(backend):
    if backend == "cuda":
        import cupy

        return cupy
    return np


def _require(ok: bool, msg: str):
    if not ok:
        raise KernelArgumentError(msg)


def _check(a, name: str, dtype, shape=None, ndim=None, writeable=False):
    _require(hasattr(a, "dtype") and hasattr(a, "shape"), f"{name}: expected an array, got {type(a).__name__}")
    _require(a.dtype == np.dtype(dtype), f"{name}: dtype must be {np.dtype(dtype).name}, got {a.dtype}")
    if ndim is not None:
        _require(a.ndim == ndim, f"{name}: must have {ndim} dimensions, got shape {tuple(a.shape)}")
    if shape is not None:
        _require(tuple(a.shape) == tuple(shape), f"{name}: shape must be {tuple(shape)}, got {tuple(a.shape)}")
    _require(a.flags.c_contiguous, f"{name}: must be C-contiguous")
    if writeable and not is_cupy(a):
        _require(a.flags.writeable, f"{name}: must be writeable (accumulated in place)")


def _padded_box(n: int, pad) -> int:
    P = pad * n
    _require(n >= 1, f"n must be positive, got {n}")
    _require(abs(P - round(P)) < 1e-9 and round(P) >= n, f"pad * n must be an integer >= n (pad={pad}, n={n})")
    return int(round(P))


def _rot(rotations, shape_tail, name, xp):
    r = xp.ascontiguousarray(xp.asarray(rotations, dtype=xp.float64))
    _require(r.ndim == len(shape_tail) + 1 and tuple(r.shape[1:]) == shape_tail,
             f"{name}: shape must be (B, {', '.join(map(str, shape_tail))}), got {tuple(r.shape)}")
    return r


def _r_max(r_max, n):
    r = n / 2.0 if r_max is None else float(r_max)
    _require(np.isfinite(r) and r >= 0, f"r_max must be finite and >= 0, got {r_max}")
    return r


def _index(ref_index, B, K, xp):
    if ref_index is None:
        _require(K == 1, "ref_index is required with a stack of several references")
        return xp.zeros(B, dtype=xp.int64)
    idx = xp.ascontiguousarray(xp.asarray(ref_index, dtype=xp.int64))
    _require(idx.shape == (B,), f"ref_index: shape must be ({B},), got {tuple(idx.shape)}")
    if B:
        _require(int(idx.min()) >= 0 and int(idx.max()) < K, f"ref_index: values must be in [0, {K})")
    return idx


def _weights(weights, B, n, xp):
    shape = (B, n, n // 2 + 1)
    if weights is None:
        return xp.ones(shape, dtype=xp.float32)
    w = xp.asarray(weights)
    _require(w.dtype.kind == "f", f"weights: must be real floating point, got {w.dtype}")
    try:
        w = xp.broadcast_to(w.astype(xp.float32, copy=False), shape)
    except ValueError:
        raise KernelArgumentError(f"weights: shape {tuple(w.shape)} does not broadcast to {shape}") from None
    return xp.ascontiguousarray(w)


def _acc_pair(data, weight, shape, name):
    _require(data.dtype in (np.complex128, np.complex64),
             f"{name}: data accumulator must be complex128 or complex64, got {data.dtype}")
    wdt = np.float64 if data.dtype == np.complex128 else np.float32
    _check(data, f"{name}: data accumulator", data.dtype, shape, writeable=True)
    _check(weight, f"{name}: weight accumulator", wdt, shape, writeable=True)
    return data.dtype == np.complex128


def _stream(xp):
    return xp.cuda.get_current_stream().ptr


# ---------------------------------------------------------------- project
def project3d(vol_ft_pad, rotations, n: int, r_max=None, pad=2):
    """Fourier slices ``(B, n, n//2+1)`` complex64 of a padded half volume ``(P, P, P//2+1)``."""
    be = _backend(vol_ft_pad)
    xp = _xp(be)
    P = _padded_box(n, pad)
    _check(vol_ft_pad, "project3d: vol_ft_pad", np.complex64, (P, P, P // 2 + 1))
    rot = _rot(rotations, (3, 3), "project3d: rotations", xp)
    r = _r_max(r_max, n)
    if be == "cpu":
        return _core.project3d(vol_ft_pad, rot, int(n), r, float(pad))
    out = xp.empty((rot.shape[0], n, n // 2 + 1), dtype=xp.complex64)
    _cuda.project3d(vol_ft_pad.data.ptr, P, rot.data.ptr, rot.shape[0], int(n), r, float(pad), out.data.ptr, _stream(xp))
    return out


def project2d(ref_ft_pad, rotations2d, n: int, r_max=None, pad=2, ref_index=None):
    """Rotated transforms ``(B, n, n//2+1)`` of padded half references.

    ``ref_ft_pad``: one reference ``(P, P//2+1)`` or a stack ``(K, P, P//2+1)`` with
    ``ref_index`` (B,) naming the reference of each output (all classes in one call)."""
    be = _backend(ref_ft_pad)
    xp = _xp(be)
    P = _padded_box(n, pad)
    refs = ref_ft_pad[None] if ref_ft_pad.ndim == 2 else ref_ft_pad
    _check(refs, "project2d: ref_ft_pad", np.complex64, ndim=3)
    _require(tuple(refs.shape[1:]) == (P, P // 2 + 1),
             f"project2d: ref_ft_pad must be (K, {P}, {P // 2 + 1}), got {tuple(ref_ft_pad.shape)}")
    rot = _rot(rotations2d, (2, 2), "project2d: rotations2d", xp)
    B, K = rot.shape[0], refs.shape[0]
    idx = _index(ref_index, B, K, xp)
    r = _r_max(r_max, n)
    if be == "cpu":
        return _core.project2d(refs, rot, idx, int(n), r, float(pad))
    out = xp.empty((B, n, n // 2 + 1), dtype=xp.complex64)
    _cuda.project2d(refs.data.ptr, K, P, rot.data.ptr, idx.data.ptr, B, int(n), r, float(pad), out.data.ptr,
                    _stream(xp))
    return out


# ---------------------------------------------------------------- backproject
def backproject3d(slices, weights, rotations, data_acc, weight_acc, r_max=None, pad=2):
    """Adjoint of :func:`project3d`, in place: ``data_acc += P^T slices``, ``weight_acc += P^T weights``.

    ``slices`` complex64 ``(B, n, n//2+1)``; ``weights`` real, broadcastable to it
    (None: ones); accumulators ``(P, P, P//2+1)`` (complex128, float64) or
    (complex64, float32)."""
    be = _backend(slices, data_acc, weight_acc)
    xp = _xp(be)
    _check(slices, "backproject3d: slices", np.complex64, ndim=3)
    B, n = slices.shape[0], slices.shape[1]
    _require(slices.shape[2] == n // 2 + 1, f"backproject3d: slices must be (B, n, n//2+1), got {tuple(slices.shape)}")
    P = _padded_box(n, pad)
    dbl = _acc_pair(data_acc, weight_acc, (P, P, P // 2 + 1), "backproject3d")
    rot = _rot(rotations, (3, 3), "backproject3d: rotations", xp)
    _require(rot.shape[0] == B, f"backproject3d: {rot.shape[0]} rotations for {B} slices")
    w = _weights(weights, B, n, xp)
    r = _r_max(r_max, n)
    if be == "cpu":
        _core.backproject3d(slices, w, rot, data_acc, weight_acc, r, float(pad))
    else:
        _cuda.backproject3d(slices.data.ptr, w.data.ptr, rot.data.ptr, B, int(n), data_acc.data.ptr,
                            weight_acc.data.ptr, P, bool(dbl), r, float(pad), _stream(xp))
    return data_acc, weight_acc


def backproject2d(slices, weights, rotations2d, data_acc, weight_acc, r_max=None, pad=2, ref_index=None):
    """Adjoint of :func:`project2d`, in place; accumulators ``(P, P//2+1)`` or ``(K, P, P//2+1)``."""
    be = _backend(slices, data_acc, weight_acc)
    xp = _xp(be)
    _check(slices, "backproject2d: slices", np.complex64, ndim=3)
    B, n = slices.shape[0], slices.shape[1]
    _require(slices.shape[2] == n // 2 + 1, f"backproject2d: slices must be (B, n, n//2+1), got {tuple(slices.shape)}")
    P = _padded_box(n, pad)
    _require(data_acc.ndim in (2, 3), "backproject2d: accumulators must be (P, P//2+1) or (K, P, P//2+1)")
    D = data_acc[None] if data_acc.ndim == 2 else data_acc
    W = weight_acc[None] if weight_acc.ndim == 2 else weight_acc
    K = D.shape[0]
    dbl = _acc_pair(D, W, (K, P, P // 2 + 1), "backproject2d")
    rot = _rot(rotations2d, (2, 2), "backproject2d: rotations2d", xp)
    _require(rot.shape[0] == B, f"backproject2d: {rot.shape[0]} rotations for {B} slices")
    idx = _index(ref_index, B, K, xp)
    w = _weights(weights, B, n, xp)
    r = _r_max(r_max, n)
    if be == "cpu":
        _core.backproject2d(slices, w, rot, idx, D, W, r, float(pad))
    else:
        _cuda.backproject2d(slices.data.ptr, w.data.ptr, rot.data.ptr, idx.data.ptr, B, int(n), D.data.ptr,
                            W.data.ptr, K, P, bool(dbl), r, float(pad), _stream(xp))
    return data_acc, weight_acc


def symmetrise3d(data_acc, weight_acc, ops, r_pad=None):
    """Symmetrised copies of 3D accumulators: ``sum_R acc(R^T k)`` (trilinear, Friedel-aware)
    for ``|k| <= r_pad`` (padded-grid units; default P/2), zero beyond."""
    be = _backend(data_acc, weight_acc)
    xp = _xp(be)
    _require(data_acc.ndim == 3, "symmetrise3d: accumulators must be (P, P, P//2+1)")
    P = data_acc.shape[0]
    dbl = _acc_pair(data_acc, weight_acc, (P, P, P // 2 + 1), "symmetrise3d")
    R = _rot(ops, (3, 3), "symmetrise3d: ops", xp)
    r = P / 2.0 if r_pad is None else float(r_pad)
    if be == "cpu":
        return _core.symmetrise3d(data_acc, weight_acc, R, r)
    D = xp.empty_like(data_acc)
    W = xp.empty_like(weight_acc)
    _cuda.symmetrise3d(data_acc.data.ptr, weight_acc.data.ptr, D.data.ptr, W.data.ptr, P, R.data.ptr, R.shape[0],
                       r, bool(dbl), _stream(xp))
    return D, W


# ----------------------------------------------------------------------------- shared checks
# Used by the marginalisation (hpcem.marginalise_api) and GTM (hpcem.gtm_api) families, whose
# wrappers take exact dtypes (no silent casts of large arrays) on numpy or cupy inputs.
def check_exact(a, name: str, dtype, ndim: int) -> np.ndarray:
    """A numpy array of exactly ``dtype`` and ``ndim``, C-contiguous (copied only if strided)."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array, got {type(a).__name__}")
    if a.dtype != np.dtype(dtype):
        raise TypeError(f"{name}: expected dtype {np.dtype(dtype)}, got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim}-D, got shape {a.shape}")
    return np.ascontiguousarray(a)


def check_exact_gpu(a, name: str, dtype, ndim: int):
    """The cupy twin of :func:`check_exact`."""
    import cupy

    if not is_cupy(a):
        raise TypeError(f"{name}: expected a cupy array, got {type(a).__name__}")
    if a.dtype != np.dtype(dtype):
        raise TypeError(f"{name}: expected dtype {np.dtype(dtype)}, got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim}-D, got shape {a.shape}")
    return cupy.ascontiguousarray(a)


def check_index(a, name: str) -> np.ndarray:
    """A 1-D int64 index array (any integer input)."""
    a = np.asarray(a)
    if a.ndim != 1 or not (np.issubdtype(a.dtype, np.integer) or a.size == 0):
        raise TypeError(f"{name}: expected a 1-D integer array, got {a.dtype} {a.shape}")
    return np.ascontiguousarray(a, dtype=np.int64)


def check_index_gpu(a, name: str):
    import cupy

    a = cupy.asarray(a)
    if a.ndim != 1 or not (np.issubdtype(a.dtype, np.integer) or a.size == 0):
        raise TypeError(f"{name}: expected a 1-D integer array, got {a.dtype} {a.shape}")
    return cupy.ascontiguousarray(a, dtype=cupy.int64)


def on_gpu(*arrays) -> bool:
    """True when the inputs are cupy arrays (all of them, else KernelArgumentError)."""
    if not any(is_cupy(a) for a in arrays):
        return False
    return _backend(*arrays) == "cuda"


def cupy_stream():
    import cupy

    return cupy.cuda.get_current_stream().ptr
