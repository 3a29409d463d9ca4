"""The data side of ROME's GTM (:mod:`.gtm`): the latent grid and basis functions (eqs 1, 3-4), the
Fourier coefficients used, and the particles put into their class frames with their CTFs."""
from __future__ import annotations

import math

import numpy as np

from ...core.ctf import ctf_from_params
from ...core.euler import rotation_2d
from ...core.fourier import ft2, ift2, hermitian_weights2, shell_index2, shift_phases
from ...recon.projector import Projector2D


# ----------------------------------------------------------------------------- latent model
def latent_shape(K: int, L: int) -> tuple:
    """Balanced factorisation of K into L grid sides (longest last)."""
    if L not in (1, 2, 3):
        raise ValueError("dimension must be 1, 2 or 3")
    if L == 1:
        return (K,)
    best = None
    divs = [d for d in range(1, K + 1) if K % d == 0]
    if L == 2:
        for a in divs:
            b = K // a
            if a <= b and (best is None or b / a < best[1] / best[0]):
                best = (a, b)
        return best
    for a in divs:
        for b in divs:
            if (K // a) % b == 0:
                c = K // a // b
                s = tuple(sorted((a, b, c)))
                if best is None or s[2] / s[0] < best[2] / best[0]:
                    best = s
    return best


def latent_grid(shape) -> np.ndarray:
    """Grid points (K, L); equal spacing on all axes, the longest axis spans [-1, 1]."""
    smax = max(shape)
    step = 2.0 / max(smax - 1, 1)
    axes = [(np.arange(s) - (s - 1) / 2.0) * step for s in shape]
    g = np.meshgrid(*axes, indexing="ij")
    return np.stack([a.ravel() for a in g], axis=1)


def basis_functions(shape, n_basis: int = 0, width: float = 1.0):
    """Phi (K, M_NL + 1) float32: Gaussians on a coarser grid + a constant (eq 4).

    ``n_basis`` along the longest axis (0: ``round(1.5 sqrt(side))``, at least 2), the
    other axes proportionally; ``sigma = width * basis spacing``."""
    X = latent_grid(shape)
    smax = max(shape)
    nb_max = n_basis if n_basis > 0 else max(2, int(round(1.5 * math.sqrt(smax))))
    nb_max = min(nb_max, smax)
    counts = [max(1, min(s, int(round(nb_max * s / smax)))) if s > 1 else 1 for s in shape]
    counts = [max(c, 2) if s > 1 else 1 for c, s in zip(counts, shape)]
    step = 2.0 / max(smax - 1, 1)
    axes, spacings = [], []
    for s, c in zip(shape, counts):
        half = (s - 1) / 2.0 * step
        ax = np.linspace(-half, half, c) if c > 1 else np.zeros(1)
        axes.append(ax)
        if c > 1:
            spacings.append(2 * half / (c - 1))
    mu = np.stack([a.ravel() for a in np.meshgrid(*axes, indexing="ij")], axis=1)
    sigma = width * (float(np.mean(spacings)) if spacings else 1.0)
    d2 = ((X[:, None, :] - mu[None, :, :]) ** 2).sum(-1)
    Phi = np.concatenate([np.exp(-d2 / (2 * sigma * sigma)), np.ones((len(X), 1))], axis=1)
    return np.ascontiguousarray(Phi, dtype=np.float32), X, mu, sigma


# ----------------------------------------------------------------------------- data
def coefficient_selection(n: int, min_shell: float, max_shell: float):
    """Flat half-grid indices with min_shell <= shell <= max_shell and their hermitian weights."""
    sh = shell_index2(n).ravel()
    sel = np.flatnonzero((sh >= min_shell) & (sh <= max_shell))
    h = hermitian_weights2(n).ravel()[sel]
    return sel, h


def aligned_transforms(ps, idx, mask) -> np.ndarray:
    """Half transforms (B, n, n//2+1) of particles ``idx`` in the class frame.

    Shift by +origin (RELION: the particle sits at -origin), apply the (rotation-invariant)
    mask, then rotate by -psi: C(q) = P(R(psi) q), through the padded 2D projector."""
    n = ps.box
    imgs = ps.read_images(idx)
    F = ft2(imgs) * shift_phases(n, ps.origins_px(idx))
    centred = ift2(F, n).astype(np.float32) * mask
    _, _, psi = ps.poses(idx)
    rots = np.ascontiguousarray(np.swapaxes(rotation_2d(psi), -1, -2), dtype=np.float32)  # R^T
    proj = Projector2D.from_images(centred, pad=2)
    return proj.project(rots, ref_index=np.arange(len(idx), dtype=np.int64))


def aligned_ctf(ps, idx, use_ctf: bool) -> np.ndarray:
    """CTF (B, n, n//2+1) in the class frame: CTF_particle(R(psi) q) = CTF with angle + psi."""
    n = ps.box
    if not use_ctf:
        return np.ones((len(idx), n, n // 2 + 1), np.float32)
    _, _, psi = ps.poses(idx)
    return ctf_from_params(n, ps.angpix, ps.ctf_params(idx), angle_offset=psi)


def memory_plan(N: int, K: int, D_local: int, M: int, n: int, chunk: int, pca: int) -> dict:
    """Bytes per rank of the big objects."""
    Mp = M * (M + 1) // 2
    plan = {
        "particle block Z (N x 3D_local float32)": N * 3 * D_local * 4,
        "distances / responsibilities (N x K float32)": N * K * 4,
        "M-step sums R^T Z (K x 3D_local, float64 + float32)": K * 3 * D_local * 12,
        "solve workspace (K x M(M+1)/2 float64 + chunks)": K * Mp * 8 + (Mp + 3 * K + 2 * M) * 256 * 8,
        "image chunk (aligned, padded, transforms)": chunk * n * n * 4 * 12,
        "PCA block": min(pca, N) * 2 * D_local * 4 * 2,
    }
    plan["total"] = sum(plan.values())
    return plan


