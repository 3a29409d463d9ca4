"""Particle stacks with known truth (poses, shifts, CTF, classes) at a chosen SNR.

Image formation (hpcem's conventions, core/fourier.py): Fourier slice of the true
volume at pose A, times the CTF, shifted by ``-origin`` (RELION: the particle
sits at ``-rlnOriginX/Y``), back to real space, plus white Gaussian noise.
SNR = variance of the clean signal inside the particle disc (radius
``0.35*n``) over the noise variance, averaged over the data set.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.ctf import ctf2d
from ..core.euler import euler_to_matrix, matrix_to_euler, random_rotations
from ..core.fourier import ift2, shift_phases
from ..recon.projector import Projector


@dataclass
class SimulatedData:
    images: np.ndarray            # (N, n, n) float32, noisy
    angpix: float
    rot: np.ndarray               # degrees
    tilt: np.ndarray
    psi: np.ndarray
    origins_A: np.ndarray         # (N, 2) rlnOriginXAngst, rlnOriginYAngst
    classes: np.ndarray           # (N,) 1-based true class
    subsets: np.ndarray           # (N,) 1 or 2 (rlnRandomSubset)
    ctf: dict                     # per-particle CTF parameters (arrays) or None
    volumes: list                 # true volumes, one per 3D class
    snr: float
    noise_sigma: float
    views: np.ndarray | None = None          # (K, 3) true (rot, tilt, psi) of 2D classes
    projections: np.ndarray | None = None    # (K, n, n) clean centred class projections (2D mode)
    meta: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.images.shape[-1]


def simulate_projections(volumes, rotations, classes, origins_px, ctf_params, angpix, batch=512,
                         pad=2) -> np.ndarray:
    """Clean images (N, n, n) float32: CTF-modulated, shifted projections of ``volumes[classes[i]]``."""
    n = volumes[0].shape[0]
    N = len(classes)
    out = np.empty((N, n, n), dtype=np.float32)
    for c, vol in enumerate(volumes):
        idx = np.flatnonzero(classes == c)
        if idx.size == 0:
            continue
        proj = Projector.from_volume(vol, pad=pad)
        for s in range(0, idx.size, batch):
            b = idx[s:s + batch]
            F = proj.project(rotations[b].astype(np.float32))
            if ctf_params is not None:
                F = F * ctf2d(n, angpix, *(ctf_params[k][b] for k in (
                    "defocus_u", "defocus_v", "defocus_angle", "voltage", "cs", "amp_contrast", "phase_shift")))
            F = F * shift_phases(n, -origins_px[b])
            out[b] = ift2(F, n).astype(np.float32)
    return out


def _ctf_draw(N, rng, defocus, astig, voltage, cs, amp_contrast):
    dmean = rng.uniform(defocus[0], defocus[1], N)
    da = rng.uniform(0, astig, N)
    return {
        "defocus_u": dmean + da / 2, "defocus_v": dmean - da / 2,
        "defocus_angle": rng.uniform(-180, 180, N),
        "voltage": np.full(N, float(voltage)), "cs": np.full(N, float(cs)),
        "amp_contrast": np.full(N, float(amp_contrast)), "phase_shift": np.zeros(N),
    }


def _signal_disc(n: int) -> np.ndarray:
    """(n, n) bool: the particle disc (radius ``0.35 n``) in which the SNR's signal variance is taken."""
    c = np.arange(n) - n // 2
    return (c[:, None] ** 2 + c[None, :] ** 2) <= (0.35 * n) ** 2


def _signal_variance(clean, chunk=4096) -> float:
    """Mean over the images of the clean signal's variance inside the particle disc."""
    disc = _signal_disc(clean.shape[-1])
    return float(np.mean([clean[s:s + chunk][:, disc].var(axis=1).mean() for s in range(0, len(clean), chunk)]))


def equal_signal_volumes(volumes, angpix: float, ctf: bool = True, n_views: int = 300, seed: int = 0) -> list:
    """``volumes`` scaled so that each one's noiseless :func:`simulate_dataset` particles (the same
    ``n_views`` poses, shifts and CTFs for each) carry the same signal variance inside the particle
    disc (the mean of theirs): in a mixture simulated from them at SNR s, every volume's particles
    are at SNR s.  Without it the SNR is the set's mean, and a map of half the mass of the others
    has its particles at about two thirds of it (issue 11: maps 21-23 at 0.063 / 0.033 / 0.054 in a
    set at 0.05)."""
    n = volumes[0].shape[0]
    var = np.array([_signal_variance(simulate_dataset(n=n, n_particles=n_views, angpix=angpix, snr=0, ctf=ctf,
                                                      seed=seed, volumes=[v]).images) for v in volumes])
    return [v * np.sqrt(var.mean() / vk) for v, vk in zip(volumes, var)]


def _add_noise(clean, snr, rng, chunk=4096):
    # signal variance inside the particle disc, over the whole set
    var = _signal_variance(clean, chunk)
    sigma = np.sqrt(var / snr) if snr and np.isfinite(snr) and snr > 0 else 0.0
    if sigma > 0:
        for s in range(0, len(clean), chunk):
            clean[s:s + chunk] += rng.normal(0.0, sigma, size=clean[s:s + chunk].shape).astype(np.float32)
    return clean, sigma


def simulate_dataset(n: int = 64, n_particles: int = 1000, angpix: float = 3.0, snr: float = 0.1,
                     mode: str = "3d", n_classes: int = 1, n_views: int = 10, n_volumes: int = 1,
                     ctf: bool = True, defocus=(5000.0, 25000.0), astig: float = 1000.0,
                     voltage: float = 300.0, cs: float = 2.7, amp_contrast: float = 0.1,
                     max_shift_A: float | None = None, n_blobs: int = 60, seed: int = 0,
                     volumes=None, model: str = "blobs", bfactor: float = 100.0) -> SimulatedData:
    """Simulate a particle data set with known truth.

    mode '3d': ``n_classes`` conformations of one blob model (or the given ``volumes``), uniform
    random poses on SO(3), equal class proportions.
    mode '2d': ``n_views`` projection classes drawn from ``n_volumes`` different volumes (fixed
    rot/tilt per class), random in-plane psi per particle; ``projections`` holds the clean
    centred class images (no CTF) for comparing class averages.
    Shifts are uniform in a disc of ``max_shift_A`` (default 2 pixels).
    ``model`` 'blobs': smooth Gaussian-blob maps (``n_blobs``); 'atoms': pseudo-atomic maps with a
    protein-like (Wilson) spectrum and B-factor ``bfactor``, conformations by a rigid domain motion."""
    from .volumes import (blob_volume, conformations, pseudo_atomic_conformations,
                          pseudo_atomic_volume)

    if model not in ("blobs", "atoms"):
        raise ValueError("model must be 'blobs' or 'atoms'")

    rng = np.random.default_rng(seed)
    if max_shift_A is None:
        max_shift_A = 2.0 * angpix
    N = int(n_particles)
    views = projections = None
    if mode == "3d":
        if volumes is None:
            if model == "atoms":
                volumes = (pseudo_atomic_conformations(n, n_classes, angpix, seed=seed, bfactor=bfactor)
                           if n_classes > 1 else [pseudo_atomic_volume(n, angpix, seed=seed, bfactor=bfactor)])
            else:
                volumes = (conformations(n, n_classes, n_blobs=n_blobs, seed=seed) if n_classes > 1
                           else [blob_volume(n, n_blobs=n_blobs, seed=seed)])
        K = len(volumes)
        classes = rng.permutation(np.arange(N) % K)
        R = random_rotations(N, rng)
        rot, tilt, psi = matrix_to_euler(R)
    elif mode == "2d":
        if volumes is None:
            volumes = [pseudo_atomic_volume(n, angpix, seed=seed + 17 * v, bfactor=bfactor) if model == "atoms"
                       else blob_volume(n, n_blobs=n_blobs, seed=seed + 17 * v) for v in range(n_volumes)]
        K = n_views
        vol_of_view = np.arange(K) % len(volumes)
        vr, vt, _ = matrix_to_euler(random_rotations(K, rng))
        views = np.stack([vr, vt, np.zeros(K)], axis=1)
        view_of = rng.permutation(np.arange(N) % K)
        rot, tilt = vr[view_of], vt[view_of]
        psi = rng.uniform(-180, 180, N)
        R = euler_to_matrix(rot, tilt, psi)
        classes = view_of
    else:
        raise ValueError("mode must be '2d' or '3d'")
    r = np.sqrt(rng.uniform(0, 1, N)) * max_shift_A / angpix
    phi = rng.uniform(0, 2 * np.pi, N)
    origins_px = np.stack([r * np.cos(phi), r * np.sin(phi)], axis=1)
    ctfp = _ctf_draw(N, rng, defocus, astig, voltage, cs, amp_contrast) if ctf else None
    if mode == "3d":
        clean = simulate_projections(volumes, R, classes, origins_px, ctfp, angpix)
    else:
        # one projector per source volume; class -> volume via vol_of_view
        clean = simulate_projections(volumes, R, vol_of_view[classes], origins_px, ctfp, angpix)
        Rv = euler_to_matrix(views[:, 0], views[:, 1], views[:, 2])
        projections = simulate_projections(volumes, Rv, vol_of_view, np.zeros((K, 2)), None, angpix)
    images, sigma = _add_noise(clean, snr, rng)
    subsets = 1 + rng.permutation(np.arange(N) % 2)
    return SimulatedData(images=images, angpix=float(angpix), rot=rot, tilt=tilt, psi=psi,
                         origins_A=origins_px * angpix, classes=classes.astype(np.int64) + 1,
                         subsets=subsets.astype(np.int64), ctf=ctfp, volumes=list(volumes), snr=snr,
                         noise_sigma=float(sigma), views=views, projections=projections,
                         meta={"mode": mode, "seed": seed, "model": model})
