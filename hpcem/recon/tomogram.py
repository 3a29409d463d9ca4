"""Tilt series of a tomogram and its weighted back-projection (single tilt axis, y).

Geometry (:mod:`hpcem.kernels.tomo`): the image at tilt ``a`` shows the sample rotated by ``a``
about y, seen along z; a point at (x, z) (voxels from the volume centre) falls on column
``x cos a + z sin a`` from the image centre.  The Fourier transform of that image is the
central plane of the sample's transform through (cos a, 0, sin a) and (0, 1, 0); a tilt range
of +-60 degrees leaves unsampled the *missing wedge* of directions more than 60 degrees from
kx in the kx-kz plane (around kz, the beam direction at zero tilt), for every ky.

Weighted back-projection (WBP, the filtered back-projection of IMOD's ``tilt``): every image row,
zero-padded to twice its width, is filtered along u by the ramp (the discrete Ram-Lak filter,
whose lowest frequencies are right where a sampled ``|k|`` is not) times the angular interval its
tilt covers (radians), with IMOD's default radial fall-off (flat to 0.35 cycles/pixel, Gaussian
edge of sigma 0.035), and back-projected (the exact adjoint of the projection) into the volume.
For a full 180-degree range this inverts the ray transform up to the fall-off.
"""
from __future__ import annotations

import numpy as np

from hpcem import kernels
from hpcem.core.fourier import fft_workers

RADIAL_CUTOFF = 0.35    # cycles/pixel, IMOD tilt's -RADIAL default
RADIAL_FALLOFF = 0.035


def tilt_angles(tilt_range: float = 60.0, step: float = 3.0) -> np.ndarray:
    """Tilt angles in degrees from -tilt_range to +tilt_range in steps of ``step``."""
    n = int(np.floor(2.0 * tilt_range / step + 1e-9)) + 1
    return -tilt_range + step * np.arange(n, dtype=np.float64)


def project_tilts(volume: np.ndarray, angles_deg, width: int | None = None) -> np.ndarray:
    """Tilt series ``(T, ny, width)`` float32 of a volume ``(nz, ny, nx)`` (compiled kernel)."""
    vol = np.ascontiguousarray(volume, dtype=np.float32)
    return kernels.tilt_project(vol, np.deg2rad(np.asarray(angles_deg, np.float64)),
                                int(width or vol.shape[2]))


def ramp_filter(length: int) -> np.ndarray:
    """The Ram-Lak ramp on the ``rfft`` grid of ``length``: the transform of h(0) = 1/4,
    h(n odd) = -1/(pi n)^2, h(n even) = 0 (|k| in cycles per pixel, exact at the low end)."""
    n = np.arange(int(length))
    n = np.where(n > length // 2, n - length, n)
    h = np.zeros(int(length))
    h[0] = 0.25
    odd = n % 2 == 1
    h[odd] = -1.0 / (np.pi * n[odd]) ** 2
    return np.real(np.fft.rfft(h))


def wbp_weights(length: int, angles_deg) -> np.ndarray:
    """Row filters ``(T, length//2+1)`` of the weighted back-projection on rows of ``length``
    (the padded width; see the module docstring)."""
    a = np.deg2rad(np.asarray(angles_deg, np.float64))
    interval = np.abs(np.gradient(a)) if a.size > 1 else np.array([np.pi])
    k = np.fft.rfftfreq(int(length))                                   # cycles per pixel
    edge = np.where(k > RADIAL_CUTOFF, np.exp(-0.5 * ((k - RADIAL_CUTOFF) / RADIAL_FALLOFF) ** 2), 1.0)
    return interval[:, None] * (ramp_filter(length) * edge)[None, :]


def weighted_backprojection(images: np.ndarray, angles_deg, shape) -> np.ndarray:
    """The tomogram ``shape = (nz, ny, nx)`` (float32) of a tilt series ``(T, ny, W)`` by WBP."""
    import scipy.fft as sfft

    imgs = np.asarray(images, dtype=np.float32)
    T, ny, W = imgs.shape
    L = 2 * W
    filt = sfft.rfft(imgs, n=L, axis=-1, workers=fft_workers()) * wbp_weights(L, angles_deg)[:, None, :].astype(np.float32)
    filtered = np.ascontiguousarray(sfft.irfft(filt, n=L, axis=-1, workers=fft_workers())[..., :W], dtype=np.float32)
    out = np.zeros(tuple(int(s) for s in shape), dtype=np.float32)
    kernels.tilt_backproject(filtered, np.deg2rad(np.asarray(angles_deg, np.float64)), out)
    return out


def wedge_mask(shape, tilt_range: float = 60.0) -> np.ndarray:
    """Boolean mask of the sampled directions on the ``rfftn`` grid of ``shape`` (nz, ny, nx): True
    where the (kx, kz) direction lies within ``tilt_range`` of kx (the origin and the ky axis
    included); the missing wedge is False."""
    nz, ny, nx = shape
    kz = np.fft.fftfreq(nz)[:, None, None]
    kx = np.fft.rfftfreq(nx)[None, None, :]
    ang = np.degrees(np.arctan2(np.abs(kz), np.abs(kx)))
    return np.broadcast_to((ang <= tilt_range + 1e-9) | ((kx == 0) & (kz == 0)), (nz, ny, nx // 2 + 1))
