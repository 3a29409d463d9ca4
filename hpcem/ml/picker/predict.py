"""Prediction: segmentation by overlapping patches (softmax averaged where patches overlap, as the
seed does), the voxel classes by argmax, DBSCAN of each species' voxels (the seed's
radius of 1 voxel and 5 samples, computed on the voxel grid with scipy.ndimage: the same clusters),
and the clusters' centroids as picks.

A pick's score is the mean probability of its species over the cluster's voxels
(``rlnAutopickFigureOfMerit``); clusters smaller than ``min_fraction`` of the species' sphere
volume (from its diameter) are dropped, as DeepFinder thresholds cluster sizes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .data import pad_to, patch_grid, sphere_voxels

DBSCAN_EPS = 1.0       # voxels (seed)
DBSCAN_MIN = 5         # voxels (seed)


@dataclass
class Picks:
    coords: np.ndarray      # (N, 3) x, y, z voxels
    classes: np.ndarray     # (N,) 1..S
    scores: np.ndarray      # (N,) mean probability
    sizes: np.ndarray       # (N,) voxels in the cluster


@torch.no_grad()
def segment(seg, volume: np.ndarray, patch: int, overlap: int, batch: int = 4, device="cpu", progress=None):
    """Class probabilities (C, nz, ny, nx) float32 of a normalised tomogram."""
    shape = volume.shape
    vol = pad_to(volume, patch)
    starts = patch_grid(vol.shape, patch, overlap)
    C = seg.n_classes
    acc = np.zeros((C,) + vol.shape, np.float32)
    cnt = np.zeros(vol.shape, np.float32)
    seg.eval()
    for b0 in range(0, len(starts), batch):                    # a loop over batches of patches
        sel = starts[b0:b0 + batch]
        x = np.stack([vol[z:z + patch, y:y + patch, w:w + patch] for z, y, w in sel])[:, None]
        xt = torch.as_tensor(x, device=device).contiguous(memory_format=torch.channels_last_3d)
        p = torch.softmax(seg(xt), dim=1).cpu().numpy()
        for (z, y, w), pk in zip(sel, p):
            acc[:, z:z + patch, y:y + patch, w:w + patch] += pk
            cnt[z:z + patch, y:y + patch, w:w + patch] += 1.0
        if progress:
            progress(min(b0 + batch, len(starts)), len(starts))
    acc /= cnt[None]
    return acc[:, :shape[0], :shape[1], :shape[2]]


def grid_dbscan(mask: np.ndarray):
    """DBSCAN (eps ``DBSCAN_EPS`` = 1 voxel, ``DBSCAN_MIN`` samples) of the voxels of a boolean
    volume, on the grid: (labels, voxels (N, 3) z, y, x) with labels 0..K-1 and -1 for noise.

    At eps 1 a voxel's neighbourhood is itself and its six face neighbours, so a core voxel is one
    with >= ``DBSCAN_MIN`` - 1 of them in the set; DBSCAN's clusters are then the 6-connected
    components of the core voxels, each border voxel (not core, a face neighbour of a core one)
    joined to a neighbouring core's cluster.  The same clusters as scikit-learn's DBSCAN on the
    voxel coordinates (a border voxel touching two clusters, which scikit-learn gives to whichever
    its traversal reaches first, goes to the lowest-numbered), in O(voxels) array operations where
    scikit-learn's neighbour lists took ~25 min for the 10^6 voxels of an under-trained network.
    """
    from scipy import ndimage

    if abs(DBSCAN_EPS - 1.0) > 1e-9:
        raise ValueError("grid_dbscan is written for eps = 1 voxel")
    cross = ndimage.generate_binary_structure(3, 1)
    m = np.ascontiguousarray(mask, bool)
    count = ndimage.convolve(m.astype(np.uint8), cross.astype(np.uint8), mode="constant")
    core = m & (count >= DBSCAN_MIN)
    lab, n = ndimage.label(core, structure=cross)
    big = np.iinfo(np.int32).max
    lab = np.where(core, lab, big).astype(np.int32)
    # the lowest core label among the face neighbours (grey erosion takes the minimum over the cross)
    near = ndimage.grey_erosion(lab, footprint=cross, mode="constant", cval=big)
    border = m & ~core & (near < big)
    out = np.where(core, lab, np.where(border, near, 0))
    zyx = np.argwhere(m)
    return out[m].astype(np.int64) - 1, zyx


def cluster_picks(probs: np.ndarray, min_sizes) -> Picks:
    """Picks from class probabilities: argmax classes, DBSCAN per species (:func:`grid_dbscan`),
    centroids."""
    classes = np.argmax(probs, axis=0)
    out = {k: [] for k in ("coords", "classes", "scores", "sizes")}
    for k in range(1, probs.shape[0]):                         # a loop over species
        mask = classes == k
        if int(mask.sum()) < DBSCAN_MIN:
            continue
        lab, zyx = grid_dbscan(mask)
        ok = lab >= 0
        if not ok.any():
            continue
        lab, zyx = lab[ok], zyx[ok]
        n = lab.max() + 1
        size = np.bincount(lab, minlength=n).astype(np.float64)
        centre = np.stack([np.bincount(lab, weights=zyx[:, a], minlength=n) for a in (2, 1, 0)], 1) / size[:, None]
        pk = probs[k][zyx[:, 0], zyx[:, 1], zyx[:, 2]]
        score = np.bincount(lab, weights=pk, minlength=n) / size
        keep = size >= float(min_sizes[k - 1])
        out["coords"].append(centre[keep])
        out["classes"].append(np.full(int(keep.sum()), k, np.int64))
        out["scores"].append(score[keep])
        out["sizes"].append(size[keep].astype(np.int64))
    if not out["coords"]:
        return Picks(np.zeros((0, 3)), np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64))
    return Picks(*(np.concatenate(out[k]) for k in ("coords", "classes", "scores", "sizes")))


def min_cluster_sizes(diameters_A, angpix: float, min_fraction: float) -> np.ndarray:
    """Smallest cluster kept per species: ``min_fraction`` of its sphere's volume, at least the
    DBSCAN minimum."""
    return np.maximum(DBSCAN_MIN, min_fraction * sphere_voxels(diameters_A, angpix))
