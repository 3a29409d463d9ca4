"""Fourier conventions of hpcem, written down once.

Real space
    An image or volume of box ``n`` has its origin at index ``n // 2`` along every
    axis (RELION's convention, odd and even boxes alike).  Pixel ``i`` sits at
    coordinate ``i - n // 2``.  Arrays are indexed ``[z, y, x]`` / ``[y, x]``.

Fourier space
    ``ft2``/``ft3`` are real-to-complex half transforms of the origin-centred
    array: ``rfftn(ifftshift(a))``, *unnormalised* forward, so the central-slice
    theorem holds with no scale factor: ``ft2(sum_z vol) == ft3(vol)[kz=0]``.
    ``ift2``/``ift3`` are their exact inverses.  Shapes are ``(n, n//2+1)`` and
    ``(n, n, n//2+1)``; the last axis holds frequencies ``0..n//2``, the others
    are in FFT order (index ``i`` is frequency ``i`` if ``i <= (n-1)//2`` else
    ``i - n``).  Frequencies are in cycles per box; a frequency ``k`` has a
    resolution of ``n * angpix / |k|`` Angstrom.

Shifts
    ``shift_phases(n, s)`` multiplies a transform to move the content by ``+s``
    pixels (``g(x) = f(x - s)``).  A RELION particle with ``rlnOriginX/Y`` = ``o``
    (pixels) holds its projection shifted by ``-o``: the particle sits at ``-o``
    and shifting the image by ``+o`` centres it.

Rotations
    A pose matrix ``A`` (``hpcem.core.euler``) gives the image as the projection
    along z of the rotated volume ``V(A^T r)``; in Fourier space the image is the
    slice ``V^(A^T (kx, ky, 0))``.
"""
from __future__ import annotations

import numpy as np
import scipy.fft as sfft

_WORKERS = [-1]  # scipy.fft threads: all cores of this rank until --j says (kernels.set_threads)


def fft_workers() -> int:
    """The ``workers`` of every scipy.fft call in hpcem."""
    return _WORKERS[0]


def set_fft_workers(n: int) -> None:
    _WORKERS[0] = int(n)


def ft2(img: np.ndarray) -> np.ndarray:
    """Half transform of one image or a stack ``(..., n, n)`` -> ``(..., n, n//2+1)`` complex."""
    a = np.asarray(img)
    a = sfft.ifftshift(a, axes=(-2, -1))
    out = sfft.rfft2(a, axes=(-2, -1), workers=fft_workers())
    return out.astype(np.complex64 if a.dtype in (np.float32, np.complex64) else np.complex128, copy=False)


def ift2(F: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`ft2` for box ``n``."""
    a = sfft.irfft2(F, s=(n, n), axes=(-2, -1), workers=fft_workers())
    return sfft.fftshift(a, axes=(-2, -1))


def ft_padded(arr: np.ndarray, P: int, ndim: int) -> np.ndarray:
    """Half transform of the last ``ndim`` axes of ``arr`` (box n) zero-padded to ``P`` about the
    origin ``n//2 -> P//2``: ``ft2``/``ft3`` of the centred padded array, with the pixels written
    straight to their ifftshifted places (no padded copy to shift).  complex64 for float32."""
    a = np.asarray(arr)
    n = a.shape[-1]
    wrap = (np.arange(n) - n // 2) % P
    out = np.zeros(a.shape[:a.ndim - ndim] + (P,) * ndim, dtype=np.float32 if a.dtype == np.float32 else np.float64)
    out[(Ellipsis,) + np.ix_(*([wrap] * ndim))] = a
    F = sfft.rfftn(out, axes=tuple(range(-ndim, 0)), workers=fft_workers())
    return F.astype(np.complex64 if out.dtype == np.float32 else np.complex128, copy=False)


def ft3(vol: np.ndarray) -> np.ndarray:
    """Half transform of a volume ``(n, n, n)`` -> ``(n, n, n//2+1)``."""
    a = sfft.ifftshift(np.asarray(vol), axes=(-3, -2, -1))
    out = sfft.rfftn(a, axes=(-3, -2, -1), workers=fft_workers())
    return out.astype(np.complex64 if a.dtype == np.float32 else np.complex128, copy=False)


def ift3(F: np.ndarray, n: int) -> np.ndarray:
    a = sfft.irfftn(F, s=(n, n, n), axes=(-3, -2, -1), workers=fft_workers())
    return sfft.fftshift(a, axes=(-3, -2, -1))


def freqs(n: int) -> np.ndarray:
    """Integer frequencies of an FFT-ordered axis of length n."""
    return np.fft.fftfreq(n, 1.0 / n).round().astype(np.int64)


def kgrid2(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(ky, kx) integer frequency grids of a 2D half transform, shape (n, n//2+1)."""
    ky = freqs(n)[:, None] * np.ones((1, n // 2 + 1), dtype=np.int64)
    kx = np.arange(n // 2 + 1, dtype=np.int64)[None, :] * np.ones((n, 1), dtype=np.int64)
    return ky, kx


def kgrid3(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    f = freqs(n)
    kz = f[:, None, None]
    ky = f[None, :, None]
    kx = np.arange(n // 2 + 1)[None, None, :]
    shape = (n, n, n // 2 + 1)
    return (np.broadcast_to(kz, shape), np.broadcast_to(ky, shape), np.broadcast_to(kx, shape))


def radius2(n: int) -> np.ndarray:
    """|k| in cycles per box on the 2D half grid."""
    ky, kx = kgrid2(n)
    return np.sqrt(ky * ky + kx * kx)


def radius3(n: int) -> np.ndarray:
    kz, ky, kx = kgrid3(n)
    return np.sqrt(kz * kz + ky * ky + kx * kx)


def shell_index2(n: int) -> np.ndarray:
    """Integer shell (rounded |k|) of every 2D half-transform coefficient."""
    return np.rint(radius2(n)).astype(np.int64)


def shell_index3(n: int) -> np.ndarray:
    return np.rint(radius3(n)).astype(np.int64)


def hermitian_weights2(n: int) -> np.ndarray:
    """Multiplicity of each half-transform coefficient in the full transform.

    Sums over the half grid weighted by this equal sums over the full grid
    (columns kx = 0 and, for even n, kx = n/2 are their own mirror)."""
    w = np.full((n, n // 2 + 1), 2.0)
    w[:, 0] = 1.0
    if n % 2 == 0:
        w[:, -1] = 1.0
    return w


def friedel_unique(n: int) -> np.ndarray:
    """(n, n//2+1) float32: 0 on the kx = 0 coefficients with ky < 0 (other than -n/2), 1 elsewhere.  A real
    image's half transform holds both (0, ky) and its Friedel mate (0, -ky); the 3D half-grid accumulators
    are completed by Friedel symmetry, so inserting both counts the kx = 0 line twice (in data and
    weights: unbiased, but that line outweighs its neighbours in every trilinear cell).  With this mask
    each independent coefficient is inserted once, as relion_reconstruct does (its FSC with hpcem's
    map from the same particles rises from 0.995 to 0.9999 at shells 10-28 of 32; notes, issue 10).
    reconstruct and the 3D M-steps (``ProjectionSpace.insert``) both insert through it."""
    m = np.ones((n, n // 2 + 1), np.float32)
    m[n // 2 + 1:, 0] = 0.0
    return m


def coef_freqs(kidx, n: int):
    """``(ky, kx)`` int32 of flat (n, n//2+1) half-grid coefficient indices ``kidx``."""
    iy, kx = np.divmod(np.asarray(kidx, np.int64), n // 2 + 1)
    return freqs(n)[iy].astype(np.int32), kx.astype(np.int32)


def shift_phases(n: int, shifts: np.ndarray, dtype=np.complex64, index=None) -> np.ndarray:
    """Phase factors ``exp(-2 pi i k.s / n)`` for shifts ``(..., 2)`` = (sx, sy) in pixels.

    Returns ``(..., n, n//2+1)``, or ``(..., len(index))`` on the flat half-grid coefficients
    ``index``; multiplying a transform by them moves its content by +s.  Separable: one exp per
    row and per column, their products per coefficient.  Device (cupy) ``shifts`` (and
    ``index``) give device phases, computed there."""
    from ..kernels import array_namespace

    xp = array_namespace(shifts)
    s = xp.asarray(shifts, dtype=np.float64)
    nh = n // 2 + 1
    px = xp.exp(-2j * np.pi / n * s[..., 0, None] * xp.arange(nh))                 # (..., nh)
    py = xp.exp(-2j * np.pi / n * s[..., 1, None] * xp.asarray(freqs(n)))          # (..., n)
    px, py = px.astype(dtype, copy=False), py.astype(dtype, copy=False)     # the products in ``dtype``
    if index is None:
        return py[..., :, None] * px[..., None, :]
    iy, ix = xp.divmod(xp.asarray(index), nh)
    return py[..., iy] * px[..., ix]


def resolution_of_shell(shell, n: int, angpix: float):
    """Resolution in Angstrom of a shell index (cycles per box)."""
    shell = np.asarray(shell, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(shell > 0, n * angpix / np.maximum(shell, 1e-12), np.inf)


def shell_of_resolution(res_A: float, n: int, angpix: float) -> float:
    """Shell index (cycles per box, float) of a resolution in Angstrom."""
    return n * angpix / float(res_A)
