"""Real-space masks and background normalisation (origin at index n//2)."""
from __future__ import annotations

import numpy as np


def _radius_grid(n: int, ndim: int) -> np.ndarray:
    c = np.arange(n, dtype=np.float64) - n // 2
    grids = np.meshgrid(*([c] * ndim), indexing="ij")
    return np.sqrt(sum(g * g for g in grids))


def _soft_edge(r: np.ndarray, radius: float, width: float) -> np.ndarray:
    """1 inside ``radius``, raised-cosine fall to 0 over ``width`` pixels, 0 beyond."""
    if width <= 0:
        return (r <= radius).astype(np.float64)
    t = np.clip((r - radius) / width, 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * t))


def soft_circular_mask(n: int, radius_px: float, width_px: float = 5.0, dtype=np.float32) -> np.ndarray:
    """2D mask (n, n): 1 for r <= radius, raised cosine to 0 at radius + width."""
    return _soft_edge(_radius_grid(n, 2), radius_px, width_px).astype(dtype)


def soft_spherical_mask(n: int, radius: float, width: float = 5.0, dtype=np.float32) -> np.ndarray:
    """3D mask (n, n, n), as :func:`soft_circular_mask`."""
    return _soft_edge(_radius_grid(n, 3), radius, width).astype(dtype)


def apply_mask(data: np.ndarray, mask: np.ndarray, background: float | str | None = 0.0) -> np.ndarray:
    """``data * mask + background * (1 - mask)`` over the trailing axes of ``data``.

    ``background='mean'`` fills with each image's (volume's) mean over the region
    where the mask is 0 (RELION fills solvent with the average background)."""
    d = np.asarray(data)
    m = np.asarray(mask, dtype=d.dtype if d.dtype.kind == "f" else np.float64)
    if background is None or (not isinstance(background, str) and background == 0.0):
        return d * m
    if isinstance(background, str):
        if background != "mean":
            raise ValueError("background must be a number or 'mean'")
        axes = tuple(range(d.ndim - m.ndim, d.ndim))
        outside = m < 1e-6
        bg = (d * outside).sum(axis=axes, keepdims=True) / max(int(outside.sum()), 1)
    else:
        bg = background
    return d * m + bg * (1 - m)


def normalise_background(images: np.ndarray, radius_px: float) -> np.ndarray:
    """Per image: subtract the mean and divide by the std of the pixels outside
    ``radius_px`` of the centre (RELION's particle normalisation).

    ``images`` is (n, n) or (B, n, n); returns float32 (float64 kept)."""
    x = np.asarray(images)
    out_dtype = np.float64 if x.dtype == np.float64 else np.float32
    n = x.shape[-1]
    bg = _radius_grid(n, 2) > radius_px
    if not bg.any():
        raise ValueError(f"no background pixels outside radius {radius_px} in box {n}")
    v = x[..., bg].astype(np.float64)                  # (..., Nbg)
    mean = v.mean(axis=-1)
    std = v.std(axis=-1)
    std = np.where(std > 0, std, 1.0)
    return ((x - mean[..., None, None]) / std[..., None, None]).astype(out_dtype)


def sphere_voxels(shape, centres_xyz, radii) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices into a [z, y, x] grid of ``shape`` of the voxels within ``radii`` (voxels) of
    ``centres_xyz`` (N, 3), and for each the index of its sphere; vectorised per distinct radius
    (no loop over spheres), voxels outside the grid dropped."""
    shape = tuple(int(s) for s in shape)
    c = np.asarray(centres_xyz, np.float64).reshape(-1, 3)
    r = np.broadcast_to(np.asarray(radii, np.float64), (len(c),))
    flat, owner = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for rad in np.unique(r):
        sel = np.flatnonzero(r == rad)
        m = int(np.ceil(rad)) + 1
        o = np.arange(-m, m + 1)
        off = np.stack(np.meshgrid(o, o, o, indexing="ij"), -1).reshape(-1, 3)    # (K, 3) x, y, z offsets
        base = np.rint(c[sel]).astype(np.int64)
        vox = base[:, None, :] + off[None]                                         # (n, K, 3)
        inside = np.sum((vox - c[sel][:, None, :]) ** 2, axis=-1) <= rad * rad
        for axis, n in zip((0, 1, 2), (shape[2], shape[1], shape[0])):
            inside &= (vox[..., axis] >= 0) & (vox[..., axis] < n)
        i, k = np.nonzero(inside)
        v = vox[i, k]
        flat.append((v[:, 2] * shape[1] + v[:, 1]) * shape[2] + v[:, 0])
        owner.append(sel[i])
    return np.concatenate(flat), np.concatenate(owner)


def paint_spheres(shape, centres_xyz, radii, values, dtype=np.int8) -> np.ndarray:
    """A [z, y, x] volume of ``shape``: ``values[i]`` inside sphere i (centre ``centres_xyz[i]``,
    radius ``radii[i]`` in voxels), 0 elsewhere; where spheres overlap the later one wins."""
    out = np.zeros(int(np.prod(shape)), dtype=dtype)
    flat, owner = sphere_voxels(shape, centres_xyz, radii)
    order = np.argsort(owner, kind="stable")
    out[flat[order]] = np.asarray(values)[owner[order]]
    return out.reshape(tuple(int(s) for s in shape))
