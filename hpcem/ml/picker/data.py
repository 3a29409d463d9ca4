"""The picker's data (numpy only): normalised tomograms, sphere label maps from particle tables,
and patches for training.

Training patches are drawn as DeepFinder does, around a particle chosen uniformly from the
annotations (the species imbalance kept), shifted by up to a quarter patch; the meta (clean)
set is resampled class-balanced as the seed does (a species uniformly, then one of its
particles).  Augmentation: independent flips of x, y and z, which keep the missing wedge in place
(it is symmetric under each).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...core.masks import paint_spheres
from ...io.mrc import read_mrc


def load_tomogram(entry, min_size: int = 0) -> np.ndarray:
    """The tomogram (nz, ny, nx) float32 normalised to mean 0, std 1, zero-padded at the high end
    of every axis shorter than ``min_size``."""
    vol, _ = read_mrc(entry.path)
    vol = np.asarray(vol, np.float32)
    vol = (vol - vol.mean()) / max(float(vol.std()), 1e-12)
    return pad_to(vol, min_size)


def pad_to(vol: np.ndarray, min_size: int) -> np.ndarray:
    pads = [(0, max(0, int(min_size) - s)) for s in vol.shape]
    return np.pad(vol, pads) if any(p[1] for p in pads) else vol


def sphere_labels(shape, angpix: float, coords, classes, diameters_A) -> np.ndarray:
    """int8 label map: species k inside a sphere of diameter ``diameters_A[k-1]`` at each particle."""
    radii = np.asarray(diameters_A, np.float64)[np.asarray(classes) - 1] / 2.0 / angpix
    return paint_spheres(shape, coords, radii, classes)


def sphere_voxels(diameters_A, angpix: float) -> np.ndarray:
    """Each species' sphere volume in voxels (4/3 pi r^3 of its radius in voxels)."""
    r = np.asarray(diameters_A, np.float64) / 2.0 / angpix
    return 4.0 / 3.0 * np.pi * r ** 3


@dataclass
class LabelledTomogram:
    name: str
    volume: np.ndarray          # (nz, ny, nx) float32, normalised
    labels: np.ndarray          # (nz, ny, nx) int8
    coords: np.ndarray          # (N, 3) x, y, z voxels
    classes: np.ndarray         # (N,)


class PatchSampler:
    """Batches of patches ``(x (B, 1, P, P, P) float32, y (B, P, P, P) int64)`` from labelled
    tomograms; ``balanced`` draws a species uniformly first (the seed's resampling)."""

    def __init__(self, tomos: list, patch: int, balanced: bool = False):
        self.tomos = tomos
        self.patch = int(patch)
        self.balanced = balanced
        self.owner = np.concatenate([np.full(len(t.coords), i) for i, t in enumerate(tomos)])
        self.index = np.concatenate([np.arange(len(t.coords)) for t in tomos])
        self.cls = np.concatenate([t.classes for t in tomos]).astype(np.int64)
        self.species = np.unique(self.cls)

    def __len__(self) -> int:
        return len(self.owner)

    def _pick(self, rng) -> int:
        if not self.balanced:
            return int(rng.integers(len(self.owner)))
        s = self.species[rng.integers(len(self.species))]
        members = np.flatnonzero(self.cls == s)
        return int(members[rng.integers(len(members))])

    def _crop(self, t: LabelledTomogram, centre_xyz, flips):
        P = self.patch
        start = np.rint(np.asarray(centre_xyz)[::-1] - P / 2).astype(np.int64)          # z, y, x
        start = np.clip(start, 0, np.asarray(t.volume.shape) - P)
        sl = tuple(slice(int(s), int(s) + P) for s in start)
        x, y = t.volume[sl], t.labels[sl]
        axes = tuple(a for a, f in enumerate(flips) if f)
        if axes:
            x, y = np.flip(x, axes), np.flip(y, axes)
        return x, y

    def batch(self, rng, size: int):
        P = self.patch
        xs = np.empty((size, 1, P, P, P), np.float32)
        ys = np.empty((size, P, P, P), np.int64)
        for b in range(size):                          # a loop over the batch's patches
            k = self._pick(rng)
            t = self.tomos[self.owner[k]]
            centre = t.coords[self.index[k]] + rng.uniform(-P / 4, P / 4, 3)
            xs[b, 0], ys[b] = self._crop(t, centre, rng.integers(0, 2, 3).astype(bool))
        return xs, ys


def patch_grid(shape, patch: int, overlap: int) -> np.ndarray:
    """Start corners (K, 3) z, y, x of overlapping patches covering a volume (each axis >= patch)."""
    step = max(1, int(patch) - int(overlap))
    axes = []
    for n in shape:
        s = list(range(0, max(n - patch, 0) + 1, step))
        if s[-1] != n - patch:
            s.append(n - patch)
        axes.append(np.asarray(s, np.int64))
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
