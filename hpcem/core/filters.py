"""Fourier-space filters and radial (shell) averages.

Shells are integer radii ``rint(|k|)`` in cycles per box (``fourier.shell_index2/3``);
a resolution ``res`` Angstrom is shell ``n * angpix / res``.  Filters act on
origin-centred real arrays through the half transforms of ``core.fourier``.

``dims`` (2 or 3) is the number of spatial axes: a 2D array is one image, a
3D array is a volume when it is cubic and a stack of images otherwise; pass
``dims=2`` for a stack of ``n`` images of ``n x n`` pixels.
"""
from __future__ import annotations

import numpy as np
from scipy import sparse

from hpcem.core import fourier


def _spatial_dims(x: np.ndarray, dims: int | None) -> int:
    if dims is not None:
        if dims not in (2, 3) or x.ndim < dims:
            raise ValueError("dims must be 2 or 3 and not exceed the array's dimensions")
        return dims
    if x.ndim == 2:
        return 2
    if x.ndim == 3:
        return 3 if x.shape[0] == x.shape[1] == x.shape[2] else 2
    return 2 if x.ndim > 3 and x.shape[-1] == x.shape[-2] else 3


def _radius(n: int, dims: int) -> np.ndarray:
    return fourier.radius2(n) if dims == 2 else fourier.radius3(n)


def _apply(x: np.ndarray, dims: int, fn) -> np.ndarray:
    """Multiply the half transform of ``x`` by ``fn(|k|)`` and transform back."""
    a = np.asarray(x)
    n = a.shape[-1]
    r = _radius(n, dims)
    filt = fn(r)
    if dims == 2:
        out = fourier.ift2(fourier.ft2(a) * filt, n)
    else:
        F = fourier.ft3(a.reshape((-1,) + a.shape[-3:]) if a.ndim > 3 else a)
        out = fourier.ift3(F * filt, n).reshape(a.shape)
    return out.astype(a.dtype if a.dtype.kind == "f" else np.float64, copy=False)


def raised_cosine_lowpass(r: np.ndarray, cutoff_shell: float, width_shells: float) -> np.ndarray:
    """1 below ``cutoff - width/2``, 0 above ``cutoff + width/2``, raised cosine between
    (0.5 at the cutoff)."""
    if width_shells <= 0:
        return (r <= cutoff_shell).astype(np.float64)
    t = np.clip((r - (cutoff_shell - 0.5 * width_shells)) / width_shells, 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * t))


def lowpass(x: np.ndarray, res_A: float, angpix: float, width_shells: float = 2.0,
            dims: int | None = None) -> np.ndarray:
    """Low-pass an image, a stack or a volume to ``res_A`` Angstrom (raised-cosine edge)."""
    d = _spatial_dims(np.asarray(x), dims)
    kc = fourier.shell_of_resolution(res_A, np.asarray(x).shape[-1], angpix)
    return _apply(x, d, lambda r: raised_cosine_lowpass(r, kc, width_shells))


def highpass(x: np.ndarray, res_A: float, angpix: float, width_shells: float = 2.0,
             dims: int | None = None) -> np.ndarray:
    """Remove features coarser than ``res_A`` (complement of :func:`lowpass`; removes the mean)."""
    d = _spatial_dims(np.asarray(x), dims)
    kc = fourier.shell_of_resolution(res_A, np.asarray(x).shape[-1], angpix)
    return _apply(x, d, lambda r: 1.0 - raised_cosine_lowpass(r, kc, width_shells))


def bfactor_sharpen(vol: np.ndarray, bfactor: float, angpix: float,
                    lowpass_A: float | None = None, width_shells: float = 2.0) -> np.ndarray:
    """Multiply the amplitudes by ``exp(-B s^2 / 4)`` (s in 1/A): a negative B sharpens,
    as in RELION's post-processing.  Optionally low-pass at ``lowpass_A``."""
    v = np.asarray(vol)
    n = v.shape[-1]
    kc = None if lowpass_A is None else fourier.shell_of_resolution(lowpass_A, n, angpix)

    def fn(r):
        s2 = (r / (n * angpix)) ** 2
        f = np.exp(-bfactor / 4.0 * s2)
        return f if kc is None else f * raised_cosine_lowpass(r, kc, width_shells)
    return _apply(v, 3, fn)


def hermitian_weights(n: int, dims: int) -> np.ndarray:
    """Multiplicities of half-grid coefficients in the full transform (2D or 3D)."""
    w2 = fourier.hermitian_weights2(n)
    if dims == 2:
        return w2
    return np.broadcast_to(w2[None, :1, :], (n, n, n // 2 + 1))


def radial_average(F_half: np.ndarray, dims: int | None = None) -> np.ndarray:
    """Per-shell means (shells 0..n//2) of a real quantity on a 2D or 3D half grid.

    Each coefficient is weighted by its hermitian multiplicity, so the result
    equals the mean over the full grid's shell.  Leading axes are batch axes:
    ``(..., n, n//2+1)`` with ``dims=2`` gives ``(..., n//2+1)``.  ``dims``
    defaults to the array's dimensionality (2 or 3)."""
    F = np.asarray(F_half)
    d = F.ndim if dims is None else dims
    if d not in (2, 3):
        raise ValueError("dims must be 2 or 3")
    n = F.shape[-2]
    if F.shape[-1] != n // 2 + 1 or (d == 3 and F.shape[-3] != n):
        raise ValueError(f"not a half grid: shape {F.shape}")
    shell = (fourier.shell_index2(n) if d == 2 else fourier.shell_index3(n)).ravel()
    w = hermitian_weights(n, d).ravel()
    nsh = n // 2 + 1
    inside = shell < nsh
    shell, w = shell[inside], w[inside]
    counts = np.bincount(shell, weights=w, minlength=nsh)
    flat = F.reshape(F.shape[:F.ndim - d] + (-1,))[..., inside]
    batch = flat.reshape(-1, flat.shape[-1]).astype(np.float64, copy=False)
    S = sparse.csr_matrix((w, (np.arange(shell.size), shell)), shape=(shell.size, nsh))
    sums = np.asarray((S.T @ batch.T).T)
    return (sums / np.maximum(counts, 1e-30)).reshape(F.shape[:F.ndim - d] + (nsh,))
