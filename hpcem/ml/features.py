"""The class ranker's feature vector of a 2D class (RELION-4's, seed 000 section 3.2).

From the classification's metadata (:class:`hpcem.ml.classjob.ClassJob`): the expected accuracy
of the class's rotational and translational alignment, its estimated resolution as ``1/d``
(1/A), the weighted resolution ``(1/d)^2 / ln N`` (N its particles) and the relative resolution
``d / (box * pixel size)``.

From the class average, in units of the particles' noise standard deviation and resampled to
4 A/px (as RELION's ranker, so that pixel statistics do not depend on the pixel size), inside the
circle of the classification's mask (radius R).  The noise unit is taken at the nearest pixel size
of the training sets (:data:`TRAINED_ANGPIX`, :func:`noise_unit`): binning particles by b divides
their per-pixel noise by b and leaves the signal, so a unit at the data's own pixel size would give
the same particles, sampled twice as finely, averages half as strong (issue 14, stop 35: 128 px sets
at 1.3-1.8 A/px):

* the average low-passed to 25 A: its mean, standard deviation, minimum and maximum;
* the protein mask: the pixels of the low-passed average above 5% of its standard deviation,
  grouped into 4-connected islands; an island is protein when more than 10% of the central disc
  (radius 0.6 R) belongs to it, otherwise scattered signal (RELION's rule, applied to every island
  of the circle, not only to those touching the central disc);
* the first four moments (mean, standard deviation, skewness, kurtosis) of the average inside the
  protein mask, in the solvent (the rest of the circle) and in the ring 0.95 R <= r <= R;
* the scattered signal, ``n_scattered / (n_scattered + n_protein + 1)`` pixels, and the edge
  signal, the fraction of the circle's outermost pixels (``R - 1 < r <= R``) that are protein
  (RELION counts ``round(r) = round(R)``, half of which lie outside the circle);
* job-normalised sums (z-scores over the job's classes, as RELION's local normalisation): the
  protein sum, the solvent sum and the relative signal ``protein sum - solvent mean x protein
  area``.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..core.filters import lowpass
from ..io.resample import fourier_resize

UNIFORM_ANGPIX = 4.0
TRAINED_ANGPIX = (2.6, 3.6)     # the pixel sizes of the shipped weights' training sets (datagen)
LOWPASS_A = 25.0
NAMES = ("acc_rot", "acc_trans", "inv_resolution", "weighted_resolution", "relative_resolution",
         "lowpass_mean", "lowpass_std", "lowpass_min", "lowpass_max",
         "protein_mean", "protein_std", "protein_skew", "protein_kurt",
         "solvent_mean", "solvent_std", "solvent_skew", "solvent_kurt",
         "ring_mean", "ring_std", "ring_skew", "ring_kurt",
         "scattered_signal", "edge_signal",
         "protein_sum_z", "solvent_sum_z", "relative_signal_z")
N_FEATURES = len(NAMES)


def moments(img, mask):
    """(K, 4) mean, standard deviation, skewness and kurtosis of ``img`` (K, m, m) over the pixels
    of ``mask`` (K, m, m) or (m, m) bool; all zero where a mask is empty (RELION's convention)."""
    w = np.broadcast_to(mask, img.shape).astype(np.float64)
    cnt = w.sum(axis=(1, 2))
    safe = np.maximum(cnt, 1.0)
    mean = (img * w).sum(axis=(1, 2)) / safe
    d = (img - mean[:, None, None]) * w
    m2, m3, m4 = ((d ** p).sum(axis=(1, 2)) for p in (2, 3, 4))
    std = np.sqrt(m2 / safe)
    flat = m2 <= 1e-30 * np.maximum(mean ** 2 * safe, 1e-300)
    den = np.where(flat, 1.0, m2)
    skew = np.where(flat, 0.0, m3 * np.sqrt(safe) / den ** 1.5)
    kurt = np.where(flat, 0.0, m4 * safe / den ** 2)
    out = np.stack([mean, std, skew, kurt], axis=1)
    out[cnt == 0] = 0.0
    return out


def _radius(m):
    c = np.arange(m) - m // 2
    return np.sqrt(c[:, None] ** 2 + c[None, :] ** 2)


def protein_masks(lpf, circle, R):
    """(protein (K, m, m) bool, scattered pixel counts (K,)) of low-passed averages ``lpf``
    inside ``circle`` (m, m) bool: islands of ``lpf > 0.05 std`` (4-connected) that cover more
    than 10% of the central disc (radius 0.6 R) are protein, the others scattered signal."""
    K, m = lpf.shape[0], lpf.shape[-1]
    central = _radius(m) <= 0.6 * R
    need = 0.1 * central.sum()
    thr = 0.05 * np.array([x[circle].std() for x in lpf])
    protein = np.zeros(lpf.shape, bool)
    scattered = np.zeros(K)
    for k in range(K):          # one labelling per class
        lab, nlab = ndimage.label((lpf[k] > thr[k]) & circle)
        if nlab == 0:
            continue
        size = np.bincount(lab.ravel(), minlength=nlab + 1)
        inside = np.bincount(lab[central], minlength=nlab + 1)
        is_protein = inside > need
        is_protein[0] = False
        protein[k] = is_protein[lab]
        scattered[k] = size[1:][~is_protein[1:]].sum()
    return protein, scattered


def edge_signal(protein, R) -> np.ndarray:
    """(K,) share of the mask circle's outermost pixels (R - 1 < r <= R) inside ``protein``."""
    r = _radius(protein.shape[-1])
    edge = (r > R - 1.0) & (r <= R)
    return protein[:, edge].mean(axis=1) if edge.any() else np.zeros(len(protein))


def _zscore(x):
    sd = x.std()
    return (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)


def image_features(images, angpix: float, radius_px: float) -> np.ndarray:
    """(K, 18) image features (lowpass 4, protein 4, solvent 4, ring 4, scattered, edge) and the
    three raw sums (protein sum, solvent sum, relative signal) as (K, 3), of class averages
    ``images`` (K, n, n) in noise-sigma units, mask radius ``radius_px`` (pixels of ``images``)."""
    imgs = np.asarray(images, np.float64)
    n = imgs.shape[-1]
    m = max(8, 2 * int(round(n * angpix / UNIFORM_ANGPIX / 2)))
    imgs = fourier_resize(imgs, m)
    px = n * angpix / m
    R = min(radius_px * angpix / px, m / 2.0)
    r = _radius(m)
    circle = r <= R
    lpf = lowpass(imgs, LOWPASS_A, px, dims=2)
    lp = lpf[:, circle]
    low = np.stack([lp.mean(1), lp.std(1), lp.min(1), lp.max(1)], axis=1)
    protein, n_scat = protein_masks(lpf, circle, R)
    solvent = circle[None] & ~protein
    ring = (r >= 0.95 * R) & circle
    n_prot = protein.sum(axis=(1, 2)).astype(np.float64)
    edge = edge_signal(protein, R)
    pm, sm = moments(imgs, protein), moments(imgs, solvent)
    feats = np.concatenate([low, pm, sm, moments(imgs, ring),
                            (n_scat / (n_scat + n_prot + 1.0))[:, None], edge[:, None]], axis=1)
    p_sum = (imgs * protein).sum(axis=(1, 2))
    s_sum = (imgs * solvent).sum(axis=(1, 2))
    sums = np.stack([p_sum, s_sum, p_sum - sm[:, 0] * n_prot], axis=1)
    return feats, sums


def metadata_features(acc_rot, acc_trans, resolution_A, n_particles, box: int, angpix: float) -> np.ndarray:
    """(K, 5): accuracies (deg, A), 1/d, (1/d)^2 / ln N, d / (box angpix)."""
    d = np.maximum(np.asarray(resolution_A, np.float64), 1e-3)
    N = np.maximum(np.asarray(n_particles, np.float64), 2.0)
    return np.stack([np.asarray(acc_rot, np.float64), np.asarray(acc_trans, np.float64), 1.0 / d,
                     (1.0 / d) ** 2 / np.log(N), d / (box * angpix)], axis=1)


def noise_unit(noise_std: float, angpix: float) -> float:
    """The features' intensity unit: the particles' per-pixel noise standard deviation ``noise_std``
    (at ``angpix``) as it would be at the nearest pixel size in :data:`TRAINED_ANGPIX` (binned, or
    sampled more finely), so that one class average gives the same features at any sampling; equal
    to ``noise_std`` within that range."""
    return float(noise_std) * angpix / float(np.clip(angpix, *TRAINED_ANGPIX))


def class_features(job, live) -> np.ndarray:
    """(K_live, N_FEATURES) feature vectors of the classes ``live`` (indices) of a
    :class:`~hpcem.ml.classjob.ClassJob`; the job-normalised sums over those classes."""
    live = np.asarray(live, np.int64)
    meta = metadata_features(job.acc_rot[live], job.acc_trans[live], job.resolution[live], job.counts[live],
                             job.box, job.angpix)
    img, sums = image_features(job.images[live] / noise_unit(job.noise_std, job.angpix), job.angpix, job.radius_px)
    z = np.stack([_zscore(sums[:, i]) for i in range(3)], axis=1)
    return np.concatenate([meta, img, z], axis=1)
