"""VDAM's initial references (seed 000, section 3.1.5): randomly placed positive and negative
Gaussian blobs inside the particle radius, different for every class (seeded by class)."""
from __future__ import annotations

import numpy as np

N_BLOBS = 12          # blobs per class
NEGATIVE = 0.25       # fraction of negative blobs


def blob_images(K: int, n: int, radius_px: float, seed: int, dim: int = 2) -> np.ndarray:
    """(K, n, n) or (K, n, n, n) float64: ``N_BLOBS`` Gaussians each, centres uniform in the ball
    of 0.7 x ``radius_px``, widths 0.08-0.2 x ``radius_px``, weights +1 or -0.5."""
    c = np.arange(n) - n // 2
    grids = np.meshgrid(*([c] * dim), indexing="ij")
    out = np.zeros((K,) + (n,) * dim)
    for k in range(K):
        rng = np.random.default_rng([seed, 31, k])
        for _ in range(N_BLOBS):
            d = rng.normal(size=dim)
            centre = d / np.linalg.norm(d) * 0.7 * radius_px * rng.uniform() ** (1.0 / dim)
            width = radius_px * rng.uniform(0.08, 0.2)
            w = -0.5 if rng.uniform() < NEGATIVE else 1.0
            r2 = sum((g - x) ** 2 for g, x in zip(grids, centre))
            out[k] += w * np.exp(-r2 / (2.0 * width ** 2))
    return out


def signal_std(ps, radius_px: float, seed: int, n_sample: int = 500) -> float:
    """Standard deviation of the particles' signal inside ``radius_px``: the variance inside
    less the variance of the background outside it, over a seeded sample of particles (the same
    on every rank)."""
    idx = np.sort(np.random.default_rng([seed, 37]).choice(ps.n, size=min(n_sample, ps.n), replace=False))
    imgs = np.asarray(ps.read_images(idx), np.float64)
    n = imgs.shape[-1]
    c = np.arange(n) - n // 2
    r = np.sqrt(c[:, None] ** 2 + c[None, :] ** 2)
    var_in = imgs[:, r < radius_px].var(axis=1).mean()
    var_out = imgs[:, r > min(radius_px + 2, n / 2 - 1)].var(axis=1).mean() if np.any(r > radius_px + 2) else 0.0
    return float(np.sqrt(max(var_in - var_out, 0.05 * var_in)))
