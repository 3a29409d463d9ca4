"""Volumes built from Gaussian blobs (a protein-like density with secondary-structure-sized features)."""
from __future__ import annotations

import numpy as np


def _blob_params(n: int, n_blobs: int, rng: np.random.Generator, radius_frac: float):
    # centres inside a sphere, clustered along a few random "chains" so the map is connected and asymmetric
    r_max = radius_frac * n
    centres = []
    n_chains = max(1, n_blobs // 12)
    per = int(np.ceil(n_blobs / n_chains))
    for _ in range(n_chains):
        p = rng.normal(size=3)
        p *= rng.uniform(0.1, 0.6) * r_max / np.linalg.norm(p)
        for _ in range(per):
            step = rng.normal(size=3)
            step *= 0.08 * n / np.linalg.norm(step)
            q = p + step
            if np.linalg.norm(q) > r_max:
                q = p - step
            p = q
            centres.append(p.copy())
    centres = np.array(centres[:n_blobs])
    sigmas = rng.uniform(0.012, 0.03, size=n_blobs) * n
    amps = rng.uniform(0.5, 1.0, size=n_blobs)
    return centres, sigmas, amps


def _render(n: int, centres, sigmas, amps, dtype=np.float32) -> np.ndarray:
    c = np.arange(n) - n // 2
    vol = np.zeros((n, n, n), dtype=np.float64)
    for (x, y, z), s, a in zip(centres, sigmas, amps):
        gx = np.exp(-0.5 * ((c - x) / s) ** 2)
        gy = np.exp(-0.5 * ((c - y) / s) ** 2)
        gz = np.exp(-0.5 * ((c - z) / s) ** 2)
        vol += a * gz[:, None, None] * gy[None, :, None] * gx[None, None, :]
    return vol.astype(dtype)


def blob_volume(n: int, n_blobs: int = 60, seed: int = 0, radius_frac: float = 0.3) -> np.ndarray:
    """A reproducible (n,n,n) float32 volume of ``n_blobs`` Gaussian blobs within ``radius_frac*n``.

    Indexed [z, y, x], origin at n//2 (hpcem's convention)."""
    rng = np.random.default_rng(seed)
    return _render(n, *_blob_params(n, n_blobs, rng, radius_frac))


def conformations(n: int, k: int, n_blobs: int = 60, seed: int = 0, radius_frac: float = 0.3,
                  moved_fraction: float = 0.3, displacement: float = 0.08) -> list[np.ndarray]:
    """``k`` distinct conformations of one blob model: a shared core, with a subset of blobs
    (``moved_fraction``) displaced by ``displacement*n`` in a different direction per conformation."""
    rng = np.random.default_rng(seed)
    centres, sigmas, amps = _blob_params(n, n_blobs, rng, radius_frac)
    n_moved = max(1, int(round(moved_fraction * n_blobs)))
    moved = rng.choice(n_blobs, size=n_moved, replace=False)
    vols = []
    for i in range(k):
        c = centres.copy()
        if i > 0:
            d = rng.normal(size=3)
            d *= displacement * n / np.linalg.norm(d)
            c[moved] += d
        vols.append(_render(n, c, sigmas, amps))
    return vols
