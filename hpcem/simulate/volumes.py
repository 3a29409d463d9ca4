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


# ---------------------------------------------------------------- pseudo-atomic model
def _chain_atoms(n_atoms: int, axes_A: np.ndarray, rng: np.random.Generator, step_A: float = 3.8,
                 persistence: float = 0.7) -> np.ndarray:
    """Positions (A) of ``n_atoms`` residue-like pseudo-atoms: semi-flexible random-walk chains of
    ``step_A`` bonds, folded inside an ellipsoid of semi-axes ``axes_A`` (reflected at its surface)."""
    n_chains = max(1, n_atoms // 150)
    per = int(np.ceil(n_atoms / n_chains))
    out = []
    for _ in range(n_chains):
        p = rng.uniform(-0.5, 0.5, 3) * axes_A
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        for _ in range(per):
            nd = persistence * d + (1 - persistence) * rng.normal(size=3) * 1.2
            nd /= np.linalg.norm(nd)
            q = p + step_A * nd
            if np.sum((q / axes_A) ** 2) > 1.0:     # fold back inside the envelope
                nd = -nd + 0.3 * rng.normal(size=3)
                nd /= np.linalg.norm(nd)
                q = p + step_A * nd
                if np.sum((q / axes_A) ** 2) > 1.0:
                    q = p * 0.98
            d, p = nd, q
            out.append(p.copy())
    return np.array(out[:n_atoms])


def splat_trilinear(shape, points_xyz: np.ndarray, weights=None) -> np.ndarray:
    """Point masses at ``points_xyz`` (N, 3) (x, y, z in voxels of a [z, y, x] grid of ``shape``)
    spread trilinearly onto the grid (float64); corners outside the grid are dropped."""
    nz, ny, nx = (int(s) for s in shape)
    p = np.asarray(points_xyz, np.float64)
    w = np.ones(len(p)) if weights is None else np.broadcast_to(np.asarray(weights, np.float64), (len(p),))
    f = np.floor(p).astype(np.int64)
    fr = p - f
    grid = np.zeros(nz * ny * nx)
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                wt = w * np.where(dx, fr[:, 0], 1 - fr[:, 0]) * np.where(dy, fr[:, 1], 1 - fr[:, 1]) \
                    * np.where(dz, fr[:, 2], 1 - fr[:, 2])
                x, y, z = f[:, 0] + dx, f[:, 1] + dy, f[:, 2] + dz
                ok = (x >= 0) & (x < nx) & (y >= 0) & (y < ny) & (z >= 0) & (z < nz)
                grid += np.bincount((z[ok] * ny + y[ok]) * nx + x[ok], weights=wt[ok], minlength=grid.size)
    return grid.reshape(nz, ny, nx)


def render_atoms(n: int, angpix: float, atoms_A: np.ndarray, bfactor: float = 100.0,
                 weights=None) -> np.ndarray:
    """Density (n,n,n) float32 of point masses at ``atoms_A`` (A, origin at the box centre) blurred
    by a B-factor envelope exp(-B s^2 / 4): scattered trilinearly onto the grid, with the
    trilinear attenuation divided out in Fourier space, so the map's spectrum is that of Gaussian
    atoms of B = ``bfactor`` (a Wilson-like fall-off, unlike wide blobs)."""
    from ..core.fourier import ft3, ift3, kgrid3

    grid = splat_trilinear((n, n, n), np.asarray(atoms_A, np.float64) / angpix + n // 2, weights)
    F = ft3(grid)
    kz, ky, kx = kgrid3(n)
    s2 = (kx ** 2 + ky ** 2 + kz ** 2) / (n * angpix) ** 2
    tri = (np.sinc(kx / n) * np.sinc(ky / n) * np.sinc(kz / n)) ** 2
    F *= np.exp(-bfactor * s2 / 4.0) / np.maximum(tri, 1e-3)
    return ift3(F, n).astype(np.float32)


def pseudo_atomic_model(n: int, angpix: float = 3.0, seed: int = 0, radius_frac: float = 0.3,
                        n_atoms: int | None = None) -> np.ndarray:
    """Residue-level pseudo-atoms (A) of a globular, asymmetric particle of radius ~``radius_frac*n``
    pixels near protein density (one residue per ~170 A^3 of envelope)."""
    rng = np.random.default_rng(seed)
    R = radius_frac * n * angpix
    axes = R * rng.uniform(0.65, 1.0, 3)
    if n_atoms is None:
        n_atoms = int(4.0 / 3.0 * np.pi * np.prod(axes) / 170.0)
    return _chain_atoms(max(n_atoms, 50), axes, rng)


def pseudo_atomic_volume(n: int, angpix: float = 3.0, seed: int = 0, radius_frac: float = 0.3,
                         bfactor: float = 100.0, n_atoms: int | None = None) -> np.ndarray:
    """A protein-like map: :func:`pseudo_atomic_model` rendered with :func:`render_atoms`."""
    return render_atoms(n, angpix, pseudo_atomic_model(n, angpix, seed, radius_frac, n_atoms), bfactor)


def pseudo_atomic_conformations(n: int, k: int, angpix: float = 3.0, seed: int = 0, radius_frac: float = 0.3,
                                bfactor: float = 100.0, domain_fraction: float = 0.3,
                                max_angle: float = 20.0) -> list[np.ndarray]:
    """``k`` conformations of one pseudo-atomic model: a domain (the ``domain_fraction`` of atoms
    nearest a random surface point) rotates rigidly about an axis through its hinge by an angle
    spread over [-max_angle, max_angle] degrees (conformation 0 is the unmoved model)."""
    rng = np.random.default_rng([seed, 1])
    atoms = pseudo_atomic_model(n, angpix, seed, radius_frac)
    d = rng.normal(size=3)
    d /= np.linalg.norm(d)
    tip = d * np.abs(atoms @ d).max()
    dist = np.linalg.norm(atoms - tip, axis=1)
    dom = dist <= np.quantile(dist, domain_fraction)
    hinge = atoms[dom].mean(0) - 0.5 * (atoms[dom].mean(0) - atoms[~dom].mean(0))
    axis = np.cross(d, rng.normal(size=3))
    axis /= np.linalg.norm(axis)
    vols = []
    angles = np.linspace(0.0, max_angle, k) if k > 1 else [0.0]
    for i, ang in enumerate(angles):
        a = np.deg2rad(ang if i % 2 == 0 else -ang)
        K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        R = np.eye(3) + np.sin(a) * K + (1 - np.cos(a)) * K @ K
        moved = atoms.copy()
        moved[dom] = (atoms[dom] - hinge) @ R.T + hinge
        vols.append(render_atoms(n, angpix, moved, bfactor))
    return vols
