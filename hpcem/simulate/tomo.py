"""Simulated cryo-ET tomograms with known truth (the picker's test and benchmark data).

Each species is a pseudo-atomic model (:mod:`hpcem.simulate.volumes`) folded inside an ellipsoid
whose longest axis is the species' diameter.  A tomogram holds particles of every species at
random non-overlapping positions (whole particles inside the volume) and random orientations, in
chosen abundances.  The density (the atoms of every particle spread trilinearly and blurred by a
B-factor) is projected into a tilt series (+-``tilt_range`` degrees, compiled kernel), each image
is multiplied by the CTF (zero-padded to a square), white Gaussian noise is added at ``snr`` (the
variance of the noiseless CTF-modulated series over the noise variance), the images are
phase-flipped (as IMOD's ctfphaseflip) and the tomogram is their weighted back-projection
(:mod:`hpcem.recon.tomogram`).

Truth per particle: coordinates (x, y, z voxels, 0-based, [z, y, x] arrays), species 1..S,
orientation A (the particle is V(A^T r): atoms at A a), and whether its annotation is kept.
Labels: shape-based (voxels of a particle's own density above ``shape_level`` of its species'
density peak, inside its sphere) and sphere-based from the kept annotations only (a controlled
fraction ``missed`` of each species' particles is dropped per tomogram: the noisy labels).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.ctf import ctf2d
from ..core.fourier import fft_workers
from ..core.euler import random_rotations
from ..core.masks import paint_spheres, sphere_voxels
from ..errors import InputError
from ..recon.tomogram import project_tilts, tilt_angles, weighted_backprojection
from .volumes import _chain_atoms, splat_trilinear

RESIDUE_VOLUME = 170.0     # A^3 of envelope per pseudo-atom (protein density)


@dataclass(frozen=True)
class TomoSettings:
    shape: tuple = (128, 256, 256)                       # nz, ny, nx
    angpix: float = 10.0
    diameters: tuple = (250.0, 160.0, 100.0, 63.0, 40.0, 25.0)
    abundance: tuple = (30.0, 15.0, 8.0, 4.0, 2.0, 1.0)
    n_particles: int = 150                               # per tomogram, over all species
    tilt_range: float = 60.0
    tilt_step: float = 3.0
    snr: float = 0.1
    defocus: tuple = (30000.0, 50000.0)                  # A, per tomogram, uniform in the range
    voltage: float = 300.0
    cs: float = 2.7
    amp_contrast: float = 0.1
    bfactor: float = 1000.0                              # A^2, the blur of the density
    missed: float = 0.3
    shape_level: float = 0.25
    ctf: bool = True
    seed: int = 0

    def counts(self) -> np.ndarray:
        a = np.asarray(self.abundance, np.float64)
        return np.maximum(1, np.rint(self.n_particles * a / a.sum())).astype(np.int64)

    def radii(self) -> np.ndarray:
        """Species radii in voxels."""
        return np.asarray(self.diameters, np.float64) / 2.0 / self.angpix


@dataclass
class SimTomogram:
    name: str
    tomogram: np.ndarray
    density: np.ndarray
    coords: np.ndarray          # (N, 3) x, y, z voxels
    classes: np.ndarray         # (N,) 1..S
    rotations: np.ndarray       # (N, 3, 3)
    kept: np.ndarray            # (N,) annotation kept (not missed)
    shape_labels: np.ndarray    # int8 (nz, ny, nx), 0 background
    sphere_labels: np.ndarray   # int8, kept particles only
    defocus: float
    noise_sigma: float
    extra: dict = field(default_factory=dict)


def species_atoms(diameter_A: float, seed: int) -> np.ndarray:
    """Pseudo-atoms (A, centred) of a globular species whose longest axis is ``diameter_A``."""
    rng = np.random.default_rng([seed, 7])
    axes = 0.5 * diameter_A * np.concatenate([[1.0], rng.uniform(0.55, 0.9, 2)])
    axes = rng.permutation(axes)
    n_atoms = int(4.0 / 3.0 * np.pi * np.prod(axes) / RESIDUE_VOLUME)
    atoms = _chain_atoms(max(n_atoms, 20), axes, rng)
    return atoms - atoms.mean(0)


def place_particles(shape, radii, counts, rng, margin: float = 1.0, tries: int = 200):
    """(coords (N, 3) x y z, classes (N,) 1..S): non-overlapping spheres (larger species first),
    each whole inside the volume; InputError when they do not fit."""
    nz, ny, nx = shape
    order = np.argsort(-np.asarray(radii))
    placed, cls, rad = [], [], []
    for s in order:                                   # species, then particles: a sequential
        r = float(radii[s])                           # rejection sampler (set-up, not a hot path)
        lo, hi = np.full(3, r), np.array([nx, ny, nz], np.float64) - 1.0 - r
        if np.any(hi <= lo):
            raise InputError("species %d (diameter %.0f voxels) does not fit in the tomogram" % (s + 1, 2 * r),
                             field="--size")
        for _ in range(int(counts[s])):
            cand = rng.uniform(lo, hi, size=(tries, 3))
            if placed:
                P, R = np.asarray(placed), np.asarray(rad)
                d = np.linalg.norm(cand[:, None, :] - P[None], axis=-1)
                ok = np.all(d >= R[None] + r + margin, axis=1)
            else:
                ok = np.ones(tries, bool)
            if not ok.any():
                raise InputError("cannot place %d particles without overlap: lower --n_particles or raise --size"
                                 % int(np.sum(counts)), field="--n_particles")
            placed.append(cand[np.argmax(ok)])
            cls.append(s + 1)
            rad.append(r)
    return np.asarray(placed).reshape(-1, 3), np.asarray(cls, np.int64)


def render_density(shape, angpix: float, species: list, coords, classes, rotations, bfactor: float) -> np.ndarray:
    """The noiseless density (nz, ny, nx) float32: every particle's atoms (at A a / angpix + c)
    spread trilinearly, blurred by exp(-B s^2 / 4)."""
    import scipy.fft as sfft

    grid = np.zeros(tuple(shape))
    for s, atoms in enumerate(species):            # a loop over species; particles vectorised
        sel = np.flatnonzero(classes == s + 1)
        if sel.size == 0:
            continue
        pos = np.einsum("nij,mj->nmi", rotations[sel], atoms) / angpix + coords[sel][:, None, :]
        grid += splat_trilinear(shape, pos.reshape(-1, 3))
    nz, ny, nx = shape
    F = sfft.rfftn(grid, workers=fft_workers())
    s2 = (np.fft.fftfreq(nz)[:, None, None] ** 2 + np.fft.fftfreq(ny)[None, :, None] ** 2
          + np.fft.rfftfreq(nx)[None, None, :] ** 2) / angpix ** 2
    F *= np.exp(-bfactor * s2 / 4.0)
    return sfft.irfftn(F, s=tuple(shape), workers=fft_workers()).astype(np.float32)


def _square_ctf_apply(images: np.ndarray, ctf: np.ndarray | None, sign_only: bool = False) -> np.ndarray:
    """Images (T, ny, W) multiplied in Fourier space by ``ctf`` (L, L//2+1) of the zero-padded
    square box L = max(ny, W) (``sign_only``: by its sign, phase flipping), cropped back."""
    T, ny, W = images.shape
    L = ctf.shape[0]
    pad = np.zeros((T, L, L), np.float32)
    pad[:, :ny, :W] = images
    f = ctf if not sign_only else np.sign(ctf)
    return np.fft.irfft2(np.fft.rfft2(pad) * f[None], s=(L, L))[:, :ny, :W].astype(np.float32)


def tilt_series(density: np.ndarray, st: TomoSettings, defocus: float, rng):
    """(noisy CTF-modulated tilt series (T, ny, nx), its CTF or None, noise sigma, angles)."""
    angles = tilt_angles(st.tilt_range, st.tilt_step)
    clean = project_tilts(density, angles)
    ctf = None
    if st.ctf:
        L = int(max(clean.shape[1:]))
        ctf = ctf2d(L, st.angpix, defocus, defocus, 0.0, st.voltage, st.cs, st.amp_contrast)
        clean = _square_ctf_apply(clean, ctf)
    sigma = float(np.sqrt(clean.var() / st.snr)) if np.isfinite(st.snr) and st.snr > 0 else 0.0
    noisy = clean + rng.normal(0.0, sigma, clean.shape).astype(np.float32) if sigma > 0 else clean
    return noisy, ctf, sigma, angles


def shape_labels(density: np.ndarray, coords, classes, radii, level: float) -> np.ndarray:
    """int8 map: inside each particle's sphere, the voxels of its density above ``level`` times
    its species' density peak (99th percentile over the species' spheres) carry its species."""
    flat, owner = sphere_voxels(density.shape, coords, radii[classes - 1])
    vals = density.reshape(-1)[flat]
    sp = classes[owner]
    peak = np.zeros(int(classes.max()) + 1 if classes.size else 1)
    for s in np.unique(sp):                          # a loop over species
        peak[s] = np.percentile(vals[sp == s], 99)
    keep = vals > level * peak[sp]
    out = np.zeros(density.size, np.int8)
    out[flat[keep]] = sp[keep]
    return out.reshape(density.shape)


def simulate_tomogram(st: TomoSettings, index: int, species: list | None = None) -> SimTomogram:
    """Tomogram ``index`` (0-based; name TS_NN from 1) of a simulated set (seeded by st.seed, index)."""
    rng = np.random.default_rng([st.seed, index, 11])
    species = species if species is not None else [species_atoms(d, st.seed * 100 + i)
                                                   for i, d in enumerate(st.diameters)]
    radii = st.radii()
    coords, classes = place_particles(st.shape, radii, st.counts(), rng)
    rots = random_rotations(len(coords), rng)
    density = render_density(st.shape, st.angpix, species, coords, classes, rots, st.bfactor)
    defocus = float(rng.uniform(*st.defocus))
    noisy, ctf, sigma, angles = tilt_series(density, st, defocus, rng)
    if ctf is not None:
        noisy = _square_ctf_apply(noisy, ctf, sign_only=True)
    tomo = weighted_backprojection(noisy, angles, st.shape)
    kept = np.ones(len(coords), bool)
    for s in range(1, len(st.diameters) + 1):          # a loop over species
        idx = np.flatnonzero(classes == s)
        n_miss = int(np.rint(st.missed * idx.size))
        kept[rng.choice(idx, size=n_miss, replace=False)] = False
    spheres = paint_spheres(st.shape, coords[kept], radii[classes[kept] - 1], classes[kept])
    shapes = shape_labels(density, coords, classes, radii, st.shape_level)
    return SimTomogram("TS_%02d" % (index + 1), tomo, density, coords, classes, rots, kept, shapes, spheres,
                       defocus, sigma)
