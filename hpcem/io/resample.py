"""Images of an optics group put onto the common pixel grid of a particle set (RELION 3.1 merges
data sets of different pixel and box sizes as optics groups).

The common grid is the first optics group's pixel size ``p`` and box ``n``.  An image of box
``n_g`` at pixel size ``p_g`` is resampled in Fourier space: the coefficient at frequency ``k`` of
the n box (physical frequency ``k / (n p)``) is read at ``k n_g p_g / (n p)`` of the image's own
transform, by the bilinear interpolation of its 2x-padded transform (with the gridding correction:
:func:`hpcem.kernels.project2d` with the scaling ``p_g / p`` as its 2x2 matrix), zero beyond the
image's own Nyquist frequency, and scaled by ``(p_g / p)^2`` so that the transforms agree in
physical units (an area element ``p^2`` per pixel).  With equal pixel sizes and different boxes the
image is cropped or padded (zeros) about its centre instead, which is exact.
"""
from __future__ import annotations

import numpy as np

from ..core.fourier import ift2

PAD = 4   # padding of the interpolated transform: the interpolation error falls as 1/PAD^2


def window(a: np.ndarray, n: int, ndim: int = 2) -> np.ndarray:
    """``a`` cropped or zero-padded about the centre (index m//2) of its last ``ndim`` axes (each of
    size m) to size ``n``: images (B, m, m) -> (B, n, n), a map (m, m, m) -> (n, n, n) with ndim 3."""
    m = a.shape[-1]
    out = np.zeros(a.shape[:a.ndim - ndim] + (n,) * ndim, a.dtype)
    s0, t0 = max(0, m // 2 - n // 2), max(0, n // 2 - m // 2)   # first source / target index
    s = min(m - s0, n - t0)
    lead = (slice(None),) * (a.ndim - ndim)
    out[lead + (slice(t0, t0 + s),) * ndim] = a[lead + (slice(s0, s0 + s),) * ndim]
    return out


def resample(imgs: np.ndarray, angpix_from: float, n: int, angpix: float) -> np.ndarray:
    """Images (B, m, m) at ``angpix_from`` on the (B, n, n) grid of pixel size ``angpix``."""
    from .. import kernels
    from ..recon.projector import Projector2D

    imgs = np.asarray(imgs, np.float32)
    B, m = imgs.shape[0], imgs.shape[-1]
    if abs(angpix_from - angpix) <= 1e-6 * angpix:
        return imgs if m == n else window(imgs, n)
    proj = Projector2D.from_images(imgs, pad=PAD)             # padded box PAD m
    scale = angpix_from / angpix
    A = np.broadcast_to(scale * np.eye(2), (B, 2, 2))
    r_max = min(n / 2.0, (m / 2.0) * (n * angpix) / (m * angpix_from))
    F = kernels.project2d(proj.data, np.ascontiguousarray(A), n, r_max, PAD * m / n,
                          ref_index=np.arange(B, dtype=np.int64))
    return (ift2(F.astype(np.complex128), n) * scale ** 2).astype(np.float32)


def resample_volume(vol: np.ndarray, angpix_from: float, n: int, angpix: float) -> np.ndarray:
    """A map (m, m, m) at ``angpix_from`` on the (n, n, n) grid of pixel size ``angpix``: windowed
    in real space to the box ``m2 = round(n angpix / angpix_from)`` of the target's physical size,
    then Fourier cropped or padded from ``m2`` to ``n`` (the new pixel size is ``m2 angpix_from / n``,
    within half a pixel of ``m2`` of ``angpix``); values keep their scale."""
    v = np.asarray(vol, np.float64)
    m2 = max(2, int(round(n * angpix / angpix_from)))
    v = window(v, m2, ndim=3)
    if m2 == n:
        return v.astype(np.float32)
    F = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(v)))
    G = window(F, n, ndim=3)
    out = np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(G))).real * (n / m2) ** 3
    return out.astype(np.float32)


def fourier_resize(a: np.ndarray, m: int, ndim: int = 2) -> np.ndarray:
    """Images (..., n, n) (or maps with ``ndim`` 3) of box n resized to box ``m`` by cropping or
    zero-padding their full centred transforms (the pixel size becomes ``n / m`` times larger
    or smaller); values keep their scale.  float64."""
    a = np.asarray(a, np.float64)
    n = a.shape[-1]
    if m == n:
        return a.copy()
    axes = tuple(range(-ndim, 0))
    F = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(a, axes=axes), axes=axes), axes=axes)
    G = window(F, m, ndim=ndim)
    out = np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(G, axes=axes), axes=axes), axes=axes).real
    return out * (m / n) ** ndim
