"""Superposition of one 3D map onto another: rotation, translation and hand.

Convention
    Arrays are indexed ``[z, y, x]``; a point is an ``(x, y, z)`` vector and the box centre is
    ``c = n // 2`` along every axis (``hpcem.core.fourier``).  :func:`align_maps` returns ``R``
    (3x3), ``t`` (x, y, z in pixels) and ``flipped`` that map ``b`` onto ``a``::

        b_aligned(x) = b'(R^T (x - c - t) + c),      b' = b[::-1] if flipped else b

    i.e. ``b'`` rotated by ``R`` about the centre (the way hpcem's pose matrices rotate a volume,
    ``V(A^T r)``), then moved by ``+t``.  ``b[::-1]`` is the hand flip: a mirror of z (array axis
    0) about ``(n - 1) / 2``.  The Euler angles (rot, tilt, psi) of :class:`Alignment` are those of
    ``hpcem.core.euler``: ``euler_to_matrix(rot, tilt, psi) == R``.

Method
    1. Coarse: both maps soft-masked (sphere), Fourier-cropped to a box of at most 32 and
       low-passed to half that box's Nyquist frequency.  For each of 4608 rotations (HEALPix order
       2 directions x 24 psi, 15 degrees) b's transform is rotated (trilinear interpolation of its
       2x zero-padded transform, only at the frequencies the filter passes) and the inverse FFT of
       ``A conj(B_R)`` gives the cross-correlation at every circular shift; its maximum scores
       the rotation.
    2. Local: the best few distinct rotations are refined by a pattern search (rotations of a
       halving step about x, y and z) on the same grid; the best ones again on a box of at most 64
       at half its Nyquist frequency, with a sub-voxel shift from a parabolic fit to the peak.
    3. Steps 1-2 for ``b`` and for ``b[::-1]``; the higher normalised correlation wins.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft
from scipy import ndimage
from scipy.spatial.transform import Rotation

from hpcem.core.euler import angular_distance, euler_to_matrix, matrix_to_euler
from hpcem.core.filters import lowpass
from hpcem.core.fourier import fft_workers, ft3, kgrid3
from hpcem.core.masks import soft_spherical_mask
from hpcem.core.sampling import orientations_3d
from hpcem.io.resample import resample_volume, window

COARSE_BOX = 32       # box of the global search
FINE_BOX = 64         # box of the final refinement
COARSE_ORDER = 2      # HEALPix order of the global search (15 degrees) ...
COARSE_PSI = 15.0     # ... and its psi step (degrees)
BATCH = 256           # rotations per batched FFT


@dataclass(frozen=True)
class Alignment:
    """``b_aligned(x) = b'(R^T (x - c - t) + c)`` with ``b' = b[::-1]`` when ``flipped`` (see the
    module docstring); ``shift`` is ``t`` (x, y, z) in pixels of the input box; ``score`` the
    normalised cross-correlation of the low-passed maps (fine level) and ``score_other_hand`` the
    best one of the other hand (None when only one hand was tried)."""
    rotation: np.ndarray
    shift: np.ndarray
    flipped: bool
    score: float
    score_other_hand: float | None = None

    @property
    def euler(self) -> tuple[float, float, float]:
        """(rot, tilt, psi) in degrees with ``euler_to_matrix(rot, tilt, psi) == rotation``."""
        return tuple(float(x) for x in matrix_to_euler(self.rotation))


def _prepare(vol: np.ndarray, box: int) -> np.ndarray:
    """Soft-masked (sphere to 0.45 n), Fourier-cropped to ``box``, low-passed to shell box/4 and
    mean-free copy of ``vol``."""
    n = vol.shape[-1]
    v = np.asarray(vol, np.float64) * soft_spherical_mask(n, 0.40 * n, 0.05 * n, np.float64)
    if box != n:
        v = resample_volume(v, 1.0, box, n / box).astype(np.float64)
    v = lowpass(v, 4.0, 1.0, dims=3)                 # 4 pixels of the box = shell box/4
    return v - v.mean()


class _Level:
    """One resolution level: ``a``'s half transform at the frequencies that pass the filter and
    ``b``'s 2x zero-padded full transform to rotate."""

    def __init__(self, a: np.ndarray, b: np.ndarray, box: int):
        m = self.m = int(box)
        am, bm = _prepare(a, m), _prepare(b, m)
        kz, ky, kx = np.broadcast_arrays(*kgrid3(m))
        r = np.sqrt(kx * kx + ky * ky + kz * kz)
        sel = np.nonzero((r <= m / 4.0 + 1.0) & (r > 0))
        self.k = np.stack([kx[sel], ky[sel], kz[sel]], axis=1)         # integer (x, y, z)
        self.A = ft3(am)[sel]
        pad = window(bm, 2 * m, ndim=3)              # centre index m: frequency k at index 2k + m
        self.P = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(pad)))
        self.norm = float(np.sqrt(np.sum(am * am) * np.sum(bm * bm))) or 1.0

    def correlations(self, Rs: np.ndarray, box: int | None = None) -> np.ndarray:
        """Normalised cross-correlation (r, s, s, s) over circular shifts for rotations (r, 3, 3):
        entry ``[i, tz, ty, tx]`` (FFT order) is ``sum_x a(x) b_R(x - t) / (|a| |b|)`` at shifts
        ``t`` in steps of ``m / s`` pixels of this level; ``s = box`` (default ``m``) must exceed
        twice the highest frequency kept, ``m / 2 + 2``."""
        m, s = self.m, box or self.m
        q = np.matmul(self.k[None].astype(np.float64), Rs)      # R^T k (x, y, z), (r, K, 3)
        coords = (2.0 * q[..., ::-1] + m).reshape(-1, 3).T       # (z, y, x) indices, padded box
        BR = ndimage.map_coordinates(self.P, coords, order=1, prefilter=False)
        H = np.zeros((len(Rs), s, s, s // 2 + 1), np.complex64)
        H[:, self.k[:, 2] % s, self.k[:, 1] % s, self.k[:, 0]] = self.A * np.conj(BR.reshape(len(Rs), -1))
        return sfft.irfftn(H, s=(s, s, s), axes=(1, 2, 3), workers=fft_workers()) * ((s / m) ** 3 / self.norm)

    def best(self, Rs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(score (r,), shift (r, 3) x, y, z in pixels of this box) of each rotation: the
        parabolically interpolated maximum of :meth:`correlations`."""
        scores, shifts = [], []
        for i in range(0, len(Rs), BATCH):
            cc = self.correlations(Rs[i:i + BATCH])
            for c in cc:
                s, t = _peak(c)
                scores.append(s)
                shifts.append(t)
        return np.array(scores), np.array(shifts)


def _peak(cc: np.ndarray) -> tuple[float, np.ndarray]:
    """(value, shift (x, y, z)) of the maximum of a circular correlation (FFT order), refined by a
    parabola through the maximum and its two neighbours along each axis."""
    m = cc.shape[0]
    idx = np.unravel_index(int(np.argmax(cc)), cc.shape)
    c0 = float(cc[idx])
    value, shift = c0, np.zeros(3)
    for ax in range(3):
        lo, hi = list(idx), list(idx)
        lo[ax], hi[ax] = (idx[ax] - 1) % m, (idx[ax] + 1) % m
        cm, cp = float(cc[tuple(lo)]), float(cc[tuple(hi)])
        den = cm - 2.0 * c0 + cp
        off = 0.5 * (cm - cp) / den if den < 0 else 0.0
        value -= 0.25 * (cm - cp) * off
        shift[2 - ax] = (idx[ax] + m // 2) % m - m // 2 + off   # axis 0 is z
    return value, shift


def _coarse_candidates(level: _Level, n_keep: int, min_sep: float = 20.0) -> list[np.ndarray]:
    """The ``n_keep`` best rotations of the global grid at least ``min_sep`` degrees apart."""
    Rs = euler_to_matrix(*orientations_3d(COARSE_ORDER, psi_step=COARSE_PSI))
    box = min(level.m, 2 * int(level.m / 4.0 + 1.0) + 2)    # coarser shifts suffice to rank rotations
    scores = np.empty(len(Rs))
    for i in range(0, len(Rs), BATCH):
        cc = level.correlations(Rs[i:i + BATCH], box)
        scores[i:i + len(cc)] = cc.reshape(len(cc), -1).max(axis=1)
    return [R for _, R, _ in _distinct(list(zip(scores, Rs, [None] * len(Rs))), n_keep, min_sep, np.inf)]


_STEPS = np.concatenate([np.eye(3), -np.eye(3)])     # rotation axes of the pattern search


def _refine(level: _Level, R: np.ndarray, step: float, min_step: float, max_evals: int = 40):
    """Pattern search from ``R``: try ``R`` pre-multiplied by rotations of ``step`` degrees about
    +-x, +-y, +-z; move to the best if it improves, else halve the step, until ``min_step``.
    Returns (score, R, shift in pixels of the level's box)."""
    s, t = level.best(R[None])
    best = (float(s[0]), R, t[0])
    for _ in range(max_evals):
        if step < min_step:
            break
        Rs = Rotation.from_rotvec(_STEPS * np.deg2rad(step)).as_matrix() @ best[1]
        s, t = level.best(Rs)
        i = int(np.argmax(s))
        if s[i] > best[0]:
            best = (float(s[i]), Rs[i], t[i])
        else:
            step /= 2.0
    return best


def _distinct(results, n_keep: int, min_sep: float = 5.0, margin: float = 0.05):
    """Up to ``n_keep`` of the (score, R, shift) ``results``, best first, that lie ``min_sep``
    degrees apart and score within ``margin`` of the best."""
    results = sorted(results, key=lambda x: -x[0])
    kept = []
    for r in results:
        if len(kept) == n_keep or r[0] < results[0][0] - margin:
            break
        if all(angular_distance(r[1], k[1]) > min_sep for k in kept):
            kept.append(r)
    return kept


def _align_hand(a: np.ndarray, b: np.ndarray, n_candidates: int = 4, n_fine: int = 2):
    """Best (score, R, shift in input pixels) of ``b`` onto ``a`` for one hand: the coarse grid's
    ``n_candidates`` best rotations refined on the coarse level, the distinct best ``n_fine`` of
    them (usually they agree, and one is left) on the fine level."""
    n = a.shape[-1]
    coarse = _Level(a, b, min(n, COARSE_BOX))
    step = 60.0 / (1 << COARSE_ORDER) / 2.0
    refined = _distinct([_refine(coarse, R, step, 1.0) for R in _coarse_candidates(coarse, n_candidates)], n_fine)
    fine = coarse if min(n, FINE_BOX) == coarse.m else _Level(a, b, min(n, FINE_BOX))
    best = max((_refine(fine, R, 2.0, 0.2) for _, R, _ in refined), key=lambda x: x[0])
    return best[0], best[1], best[2] * (n / fine.m)


def align_maps(a: np.ndarray, b: np.ndarray, try_flip: bool = True) -> Alignment:
    """Rotation, shift and hand that superpose ``b`` onto ``a`` (cubic maps of one shape); see the
    module docstring for the convention and the method."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 3 or a.shape != b.shape or len(set(a.shape)) != 1:
        raise ValueError("align_maps needs two cubic maps of one shape, got %s and %s" % (a.shape, b.shape))
    hands = [(False, *_align_hand(a, b))]
    if try_flip:
        hands.append((True, *_align_hand(a, b[::-1])))
    hands.sort(key=lambda h: -h[1])
    flipped, score, R, t = hands[0]
    other = hands[1][1] if len(hands) > 1 else None
    return Alignment(rotation=R, shift=t, flipped=flipped, score=score, score_other_hand=other)


def transform_volume(b: np.ndarray, R: np.ndarray, shift, flip: bool = False, order: int = 3) -> np.ndarray:
    """``b'(R^T (x - c - t) + c)`` with ``b' = b[::-1]`` if ``flip`` (cubic spline of ``order``,
    zero outside the box), as float32; slab by slab in z to bound memory."""
    b = np.asarray(b, np.float64)
    if flip:
        b = b[::-1]
    n = b.shape[-1]
    c = n // 2
    coef = ndimage.spline_filter(b, order=order, mode="constant") if order > 1 else b
    out = np.empty(b.shape, np.float32)
    y, x = np.meshgrid(np.arange(n) - c - shift[1], np.arange(n) - c - shift[0], indexing="ij")
    for z0 in range(0, n, 16):
        zs = np.arange(z0, min(n, z0 + 16)) - c - shift[2]
        p = np.stack(np.broadcast_arrays(x[None], y[None], zs[:, None, None]), axis=-1)   # (x, y, z)
        q = p @ np.asarray(R, np.float64) + c                                                # R^T p + c
        out[z0:z0 + len(zs)] = ndimage.map_coordinates(coef, q[..., ::-1].reshape(-1, 3).T, order=order,
                                                       mode="constant", prefilter=False).reshape(q.shape[:3])
    return out


def apply_alignment(b: np.ndarray, al: Alignment, order: int = 3) -> np.ndarray:
    """``b`` superposed onto ``a`` by the result of :func:`align_maps`."""
    return transform_volume(b, al.rotation, al.shift, al.flipped, order)


def aligned_resolution(a: np.ndarray, b: np.ndarray, angpix: float, threshold: float = 0.5):
    """(resolution in A where the FSC of ``b`` superposed on ``a`` falls below ``threshold``, the FSC
    curve, the :class:`Alignment`): how a map in an arbitrary frame (an initial model, an ab-initio
    class) is measured against a truth, as ``hpcem fsc a b --align`` does."""
    from .fsc import fsc, resolution_at

    al = align_maps(a, b)
    curve = fsc(a, apply_alignment(b, al))[1]
    return resolution_at(curve, threshold, a.shape[0], angpix), curve, al
