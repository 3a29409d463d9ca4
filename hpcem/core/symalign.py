"""Alignment of a map to the symmetry axes of a point group, and symmetrisation (the step that
follows RELION's C1 3D initial model).

Convention
    As in :mod:`hpcem.core.align3d`: arrays ``[z, y, x]``, points ``(x, y, z)``, centre
    ``c = n // 2``.  :func:`align_to_symmetry` returns ``R`` (3x3) and ``t`` (x, y, z pixels) with::

        aligned(x) = vol(R^T (x - c - t) + c)      (= align3d.transform_volume(vol, R, t))

    symmetric in the frame of :mod:`hpcem.core.symmetry`: ``aligned(c + g p) = aligned(c + p)`` for
    every ``g`` of ``symmetry_ops(sym)``.  In ``vol``'s own frame the operators are the conjugates
    ``h = R^T g R`` about the point ``c + u`` with ``t = -R u``.  The frame is defined only up to the
    rotations that map the group onto itself (for Cn any rotation about z and the flip about x;
    for Dn with n > 2 the 180/n rotation about z; for D2 the 24 signed permutations of x, y, z;
    for T the 90-degree rotation about z; for O and I none beyond the group).  For Cn the centre
    along the axis is not defined by the symmetry: it is kept at the centre of mass of the
    positive density.

Method
    1. Centre: ``u0``, the centre of mass of the positive density, is moved to the box centre.
    2. Coarse: the centred map is prepared as align3d's coarse level (soft sphere, Fourier crop to
       a box <= 32, low-pass to box/4).  Candidates ``R``: for Cn the axis directions ``R^T z`` of
       a hemisphere (HEALPix order 3); for Dn those of order 2 times in-plane angles in
       ``[0, 180/n)`` (15 degrees); for T, O, I a 15-degree grid of SO(3) reduced by the group
       (``R`` and ``g R`` are one candidate).  Each ``R`` is scored by the mean over the ops
       ``g != 1`` (one of each pair ``g``, ``g^-1``, which score alike) of the maximum over circular
       shifts of the normalised cross-correlation of the map with itself rotated by
       ``h = R^T g R`` (``align3d._Level``).
    3. Local: the best candidates that differ as groups are refined by align3d's pattern search on
       the coarse level, the best two (within 0.05) again on a box <= 64, scored by the first
       ``REFINE_OPS`` ops (they include the generators).  The centre ``u`` is the least-squares
       solution of ``(I - h) u = d_h`` over the peak shifts ``d_h`` of the ops (for Cn the
       minimum-norm one: no move along the axis).
    4. ``score``: normalised correlation of the aligned map, prepared as the fine level and less its
       spherical average about the centre (symmetric under any rotation, it would make any globular
       map look symmetric), with its symmetrised copy: the square root of the fraction of that
       power that is symmetric, 1 for a symmetric map, about ``1/sqrt(|G|)`` for an unrelated one.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hpcem.core.align3d import BATCH, COARSE_BOX, FINE_BOX, _Level, _prepare, _refine, transform_volume
from hpcem.core.euler import angular_distance, euler_to_matrix
from hpcem.core.sampling import healpix_directions, orientations_3d
from hpcem.core.symmetry import parse_symmetry, symmetry_ops

N_CANDIDATES = 4       # coarse candidates refined on the coarse level
N_FINE = 2             # of those, refined on the fine level
MIN_SEPARATION = 20.0  # degrees between the conjugated groups of two candidates
MARGIN = 0.05          # candidates refined further score within this of the best
REFINE_OPS = 12        # operators scored in the local search (all in the global one)


@dataclass(frozen=True)
class SymmetryAlignment:
    """``aligned == transform_volume(vol, rotation, shift)`` (see the module docstring);
    ``symmetrised`` is ``symmetrise(aligned, symmetry_ops(sym))``; ``score`` the normalised
    correlation of the low-passed aligned map (less its spherical average) with its symmetrised
    copy (method, step 4)."""
    rotation: np.ndarray
    shift: np.ndarray
    score: float
    aligned: np.ndarray
    symmetrised: np.ndarray


def symmetrise(vol: np.ndarray, ops: np.ndarray, order: int = 3) -> np.ndarray:
    """Mean over the operators ``g`` of ``vol`` rotated by ``g`` about the box centre (float32)."""
    vol = np.asarray(vol, np.float64)
    total = np.zeros(vol.shape)
    for g in np.asarray(ops, np.float64):
        total += vol if np.allclose(g, np.eye(3)) else transform_volume(vol, g, np.zeros(3), order=order)
    return (total / len(ops)).astype(np.float32)


def centre_of_mass(vol: np.ndarray) -> np.ndarray:
    """(x, y, z) of the centre of mass of the positive density, in pixels from the box centre."""
    w = np.clip(np.asarray(vol, np.float64), 0.0, None)
    total = w.sum()
    if total <= 0:
        return np.zeros(3)
    coord = np.arange(w.shape[-1]) - w.shape[-1] // 2
    profiles = (w.sum(axis=(0, 1)), w.sum(axis=(0, 2)), w.sum(axis=(1, 2)))      # along x, y, z
    return np.array([p @ coord for p in profiles]) / total


def candidate_rotations(sym: str) -> np.ndarray:
    """Rotations ``R`` (r, 3, 3) of the global search, one per class that gives a distinct
    conjugated group ``R^T G R`` (up to the grid's spacing); see the module docstring."""
    letter, k = parse_symmetry(sym)
    if letter in "CD":
        rot, tilt = healpix_directions(3 if letter == "C" else 2)
        upper = tilt <= 90.0 + 1e-6                    # -a gives the group of a
        psi = np.arange(0.0, 180.0 / k - 1e-6, 15.0) if letter == "D" else np.zeros(1)
        rot, tilt = np.repeat(rot[upper], len(psi)), np.repeat(tilt[upper], len(psi))
        return euler_to_matrix(rot, tilt, np.tile(psi, int(upper.sum())))   # row 3 = R^T z
    return np.swapaxes(euler_to_matrix(*orientations_3d(2, sym, 15.0)), 1, 2)


def _without_inverses(ops: np.ndarray) -> np.ndarray:
    """The non-identity operators, one of each pair ``g, g^-1`` (whose self-correlations of a map
    are equal)."""
    kept = []
    for g in np.asarray(ops[1:], np.float64):
        if not any(np.abs(g.T - k).max() < 1e-6 for k in kept):
            kept.append(g)
    return np.array(kept)


class _SymmetryLevel:
    """One resolution level of a map ``w``: scores of rotations ``R`` by the agreement of ``w``
    with itself under the conjugated operators ``h = R^T g R`` (g != identity; the local search
    uses the first ``REFINE_OPS`` of them, which include the group's generators)."""

    def __init__(self, w: np.ndarray, box: int, ops: np.ndarray):
        self.level = _Level(w, w, box)
        self.m = self.level.m
        self.ops = _without_inverses(ops)

    def coarse_scores(self, Rs: np.ndarray) -> np.ndarray:
        """Mean over the ops of the maximum correlation over (coarse) circular shifts, per R."""
        H = _conjugates(Rs, self.ops).reshape(-1, 3, 3)
        box = min(self.m, 2 * int(self.m / 4.0 + 1.0) + 2)
        peaks = np.empty(len(H))
        for i in range(0, len(H), BATCH):
            cc = self.level.correlations(H[i:i + BATCH], box)
            peaks[i:i + len(cc)] = cc.reshape(len(cc), -1).max(axis=1)
        return peaks.reshape(len(Rs), -1).mean(axis=1)

    def best(self, Rs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(score (r,), centre u (r, 3) in pixels of this box) per rotation: the mean interpolated
        peak over the ops and the least-squares centre from their shifts (the interface of
        ``align3d._Level.best`` that ``align3d._refine`` uses)."""
        H = _conjugates(Rs, self.ops[:REFINE_OPS])
        scores, shifts = self.level.best(H.reshape(-1, 3, 3))
        M = (np.eye(3) - H).reshape(len(Rs), -1, 3)                 # stacked (I - h)
        u = np.einsum("rij,rj->ri", np.linalg.pinv(M, rcond=1e-6), shifts.reshape(len(Rs), -1))
        return scores.reshape(len(Rs), -1).mean(axis=1), u


def _conjugates(Rs: np.ndarray, ops: np.ndarray) -> np.ndarray:
    """``R^T g R`` (r, g, 3, 3) of rotations (r, 3, 3) and operators (g, 3, 3)."""
    return np.einsum("rji,gjk,rkl->rgil", Rs, ops, Rs)


def _group_distance(ops: np.ndarray, R1: np.ndarray, R2: np.ndarray) -> float:
    """Largest angle (degrees) from an operator of ``R1^T G R1`` to the nearest of ``R2^T G R2``."""
    H1, H2 = _conjugates(np.stack([R1, R2]), ops)
    return float(angular_distance(H1[:, None], H2[None]).min(axis=1).max())


def _distinct(results, ops: np.ndarray, n_keep: int) -> list:
    """Up to ``n_keep`` of the (score, R, ...) ``results``, best first, within ``MARGIN`` of the
    best, whose conjugated groups lie ``MIN_SEPARATION`` degrees apart."""
    results = sorted(results, key=lambda x: -x[0])
    kept = []
    for r in results:
        if len(kept) == n_keep or r[0] < results[0][0] - MARGIN:
            break
        if all(_group_distance(ops, r[1], k[1]) > MIN_SEPARATION for k in kept):
            kept.append(r)
    return kept


def _search(w: np.ndarray, sym: str, ops: np.ndarray, log) -> tuple[np.ndarray, np.ndarray]:
    """(R, centre u in pixels of ``w``'s box) that make ``w`` symmetric: steps 2-3 of the method."""
    n = w.shape[-1]
    coarse = _SymmetryLevel(w, min(n, COARSE_BOX), ops)
    Rs = candidate_rotations(sym)
    log("  symmetry search: %d candidate rotations x %d operators on a %d box"
        % (len(Rs), len(coarse.ops), coarse.m))
    seeds = _distinct([(s, R) for s, R in zip(coarse.coarse_scores(Rs), Rs)], ops, N_CANDIDATES)
    refined = _distinct([_refine(coarse, R, 7.5, 1.0) for _, R in seeds], ops, N_FINE)
    log("  symmetry search: coarse refined scores %s" % ", ".join("%.3f" % r[0] for r in refined))
    fine = coarse if min(n, FINE_BOX) == coarse.m else _SymmetryLevel(w, min(n, FINE_BOX), ops)
    score, R, u = max((_refine(fine, R, 2.0, 0.5) for _, R, _ in refined), key=lambda x: x[0])
    log("  symmetry search: fine score %.3f" % score)
    return R, u * (n / fine.m)


def _without_spherical_average(a: np.ndarray) -> np.ndarray:
    """``a`` minus its average over spheres about the box centre: the radial profile on 1-pixel
    bins with linear weights, read back by linear interpolation at each voxel's exact radius
    (rounded shells would leave a pattern with the symmetry of the cubic grid)."""
    coord = np.arange(a.shape[-1]) - a.shape[-1] // 2
    r = np.sqrt(coord[:, None, None] ** 2 + coord[None, :, None] ** 2 + coord[None, None, :] ** 2)
    r = r.ravel()
    lo = np.floor(r).astype(np.int64)
    frac, values, size = r - lo, a.ravel(), int(lo.max()) + 2
    def binned(x):
        return np.bincount(lo, x * (1 - frac), size) + np.bincount(lo + 1, x * frac, size)
    profile = binned(values) / np.maximum(binned(np.ones_like(values)), 1e-12)
    return a - ((1 - frac) * profile[lo] + frac * profile[lo + 1]).reshape(a.shape)


def _symmetry_score(aligned: np.ndarray, ops: np.ndarray) -> float:
    """Normalised correlation of the non-spherical part of the aligned map at the fine level with
    its symmetrised copy (the spherical part, symmetric under any rotation, is left out)."""
    a = _without_spherical_average(_prepare(aligned, min(aligned.shape[-1], FINE_BOX)))
    s = symmetrise(a, ops, order=1).astype(np.float64)
    return float(np.sum(a * s) / (np.sqrt(np.sum(a * a) * np.sum(s * s)) or 1.0))


def align_to_symmetry(vol: np.ndarray, sym: str, log=None) -> SymmetryAlignment:
    """Rotation and shift that put ``vol``'s symmetry axes (point group ``sym``) in the group's
    standard frame through the box centre; see the module docstring."""
    log = log or (lambda *a: None)
    vol = np.asarray(vol, np.float64)
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise ValueError("align_to_symmetry needs a cubic map, got shape %s" % (vol.shape,))
    ops = symmetry_ops(sym)
    if len(ops) == 1:
        same = vol.astype(np.float32)
        return SymmetryAlignment(np.eye(3), np.zeros(3), 1.0, same, same.copy())
    u0 = centre_of_mass(vol)
    centred = transform_volume(vol, np.eye(3), -u0)
    R, u = _search(centred, sym, ops, log)
    t = -R @ (u0 + u)
    aligned = transform_volume(vol, R, t)
    score = _symmetry_score(aligned, ops)
    log("  aligned to %s: shift %s px, score %.3f" % (sym, np.round(t, 2), score))
    return SymmetryAlignment(R, t, score, aligned, symmetrise(aligned, ops))
