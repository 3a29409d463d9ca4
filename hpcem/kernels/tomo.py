"""Single-axis tilt kernels in real space (csrc/tomo.cpp; CUDA twins in cuda/tomo.cu).

Geometry: a volume ``(nz, ny, nx)`` [z, y, x] and a tilt series ``(T, ny, W)``; the tilt axis is
y.  Voxel ``(ix, iy, iz)`` at ``x = ix - nx//2``, ``z = iz - nz//2`` falls on column
``u = x cos(a) + z sin(a) + W//2`` of row ``iy`` of the image at tilt ``a`` (radians), spread
linearly over the two nearest columns.  ``tilt_project`` sums those spreads (the ray sums of the
sample rotated by ``a`` about y, seen along z); ``tilt_backproject`` adds the exact adjoint into a
volume in place.  Both are race-free on the CPU (bitwise independent of the thread count).
"""
from __future__ import annotations

import numpy as np

from . import _backend

__all__ = ["tilt_project", "tilt_backproject"]


def _angles(c, angles, T=None):
    a = c.cast(angles, "angles", np.float64, ndim=1)
    if T is not None and a.shape[0] != T:
        c.fail(f"angles: {a.shape[0]} angles for {T} images")
    return a


def tilt_project(volume, angles, width: int):
    """Tilt series ``(T, ny, width)`` float32 of a float32 volume ``(nz, ny, nx)``."""
    c = _backend.args_for("tilt_project", volume=volume)
    v = c.array(volume, "volume", np.float32, ndim=3)
    a = _angles(c, angles)
    W = c.count(width, "width", minimum=1)
    if not c.gpu:
        return _backend.core("tilt_project", v, a, W)
    nz, ny, nx = (int(s) for s in v.shape)
    out = c.xp.empty((a.shape[0], ny, W), dtype=np.float32)
    _backend.cuda("tilt_project", v, nz, ny, nx, a, a.shape[0], W, out)
    return out


def tilt_backproject(images, angles, volume):
    """``volume += P^T images`` in place (float32 ``(nz, ny, nx)``; images float32 ``(T, ny, W)``);
    returns ``volume``."""
    c = _backend.args_for("tilt_backproject", images=images, volume=volume)
    img = c.array(images, "images", np.float32, ndim=3)
    vol = c.array(volume, "volume", np.float32, ndim=3, writeable=True)
    T, ny, W = (int(s) for s in img.shape)
    if int(vol.shape[1]) != ny:
        c.fail(f"volume: ny must be {ny} (the images' rows), got shape {tuple(vol.shape)}")
    a = _angles(c, angles, T)
    if not c.gpu:
        _backend.core("tilt_backproject", img, a, vol)
    else:
        _backend.cuda("tilt_backproject", img, a, T, ny, W, vol, int(vol.shape[0]), int(vol.shape[2]))
    return volume
