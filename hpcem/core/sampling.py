"""Orientation and translation sampling (HEALPix directions x in-plane angles).

Directions
    HEALPix pixel centres in the RING scheme (Gorski et al. 2005), computed
    here: ``nside = 2**order``, ``12 nside^2`` equal-area pixels, ordered ring by
    ring from the north pole.  A direction is (rot, tilt) = (phi, theta) in
    degrees: the unit vector ``(sin t cos r, sin t sin r, cos t)``, which is the
    third row of the pose matrix ``euler_to_matrix(rot, tilt, psi)`` (the volume
    direction that projects along the beam).  Angular step ``60 / 2**order``
    degrees (RELION's mapping: order 2 -> 15 degrees, order 3 -> 7.5 ...).

Symmetry
    Poses ``A`` and ``A R`` (R in the group) give identical images, and the
    projection direction of ``A R`` is ``R^T v``.  The directions are reduced to
    an asymmetric unit by keeping a direction ``v`` only if it is the canonical
    member of its orbit ``{R v}``: the member closest to a fixed reference
    direction ``p`` (ties, on the unit's boundary, broken by closeness to a
    second fixed direction ``q``).  The kept region is the Dirichlet cell of
    ``p``'s orbit, a compact spherical polygon of area ``4 pi / |G|``.  With
    ``p`` chosen at rot = 180/n on a two-fold plane this gives for ``Cn`` the
    wedge rot in [0, 360/n) and for ``Dn`` the same wedge with tilt <= 90.

Orientation grid
    ``orientations_3d`` returns the product (directions x psi), direction-major:
    index ``d * P + p``.
"""
from __future__ import annotations

import numpy as np

from hpcem.core import euler
from hpcem.core.symmetry import parse_symmetry, symmetry_ops


# ---------------------------------------------------------------- HEALPix (RING)

def healpix_nside(order: int) -> int:
    if order < 0 or order > 13:
        raise ValueError("HEALPix order must be in 0..13")
    return 1 << int(order)


def healpix_z_phi(order: int) -> tuple[np.ndarray, np.ndarray]:
    """(z = cos(theta), phi in radians) of all RING-ordered pixel centres."""
    ns = healpix_nside(order)
    zs, phis = [], []
    for i in range(1, 4 * ns):
        if i < ns:                                    # north polar cap
            j = np.arange(1, 4 * i + 1)
            z = 1.0 - i * i / (3.0 * ns * ns)
            phi = np.pi / (2.0 * i) * (j - 0.5)
        elif i <= 3 * ns:                             # equatorial belt
            j = np.arange(1, 4 * ns + 1)
            z = 4.0 / 3.0 - 2.0 * i / (3.0 * ns)
            s = (i - ns + 1) % 2
            phi = np.pi / (2.0 * ns) * (j - s / 2.0)
        else:                                         # south polar cap
            ip = 4 * ns - i
            j = np.arange(1, 4 * ip + 1)
            z = -(1.0 - ip * ip / (3.0 * ns * ns))
            phi = np.pi / (2.0 * ip) * (j - 0.5)
        zs.append(np.full(j.shape, z))
        phis.append(phi)
    return np.concatenate(zs), np.concatenate(phis)


def healpix_directions(order: int) -> tuple[np.ndarray, np.ndarray]:
    """(rot, tilt) in degrees of the ``12 * 4**order`` HEALPix pixel centres (RING order)."""
    z, phi = healpix_z_phi(order)
    return np.rad2deg(phi) % 360.0, np.rad2deg(np.arccos(np.clip(z, -1.0, 1.0)))


def direction_vectors(rot, tilt) -> np.ndarray:
    """Unit vectors (..., 3) of directions (rot, tilt) in degrees."""
    r, t = np.deg2rad(np.asarray(rot, np.float64)), np.deg2rad(np.asarray(tilt, np.float64))
    st = np.sin(t)
    return np.stack([st * np.cos(r), st * np.sin(r), np.cos(t)], axis=-1)


def vectors_to_directions(v) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(v, np.float64)
    rot = np.rad2deg(np.arctan2(v[..., 1], v[..., 0])) % 360.0
    tilt = np.rad2deg(np.arccos(np.clip(v[..., 2], -1.0, 1.0)))
    return rot, tilt


def angular_step(order: int) -> float:
    """Nominal angular sampling of a HEALPix order in degrees (60 / 2**order)."""
    return 60.0 / (1 << int(order))


def angular_accuracy(resolution_A: float, radius_A: float) -> float:
    """Angular accuracy (deg) that a map at ``resolution_A`` supports for a particle of radius
    ``radius_A``: a rotation by res/radius moves the edge of the particle by one resolution length
    (90 deg when the resolution is not yet known)."""
    if not np.isfinite(resolution_A) or resolution_A <= 0 or radius_A <= 0:
        return 90.0
    return float(np.rad2deg(resolution_A / radius_A))


def order_for_resolution(resolution_A: float, radius_A: float, factor: float = 2.0,
                         max_order: int = 7) -> int:
    """Lowest HEALPix order whose step is at most ``factor`` x the angular accuracy the resolution
    supports (auto-sampling: the step follows the resolution, as refine3d's schedule does)."""
    need = factor * angular_accuracy(resolution_A, radius_A)
    order = 0
    while angular_step(order) > need and order < max_order:
        order += 1
    return order


def inplane_angles(step_deg: float) -> np.ndarray:
    """psi in [0, 360): ``ceil(360/step)`` equally spaced angles starting at 0."""
    if step_deg <= 0:
        raise ValueError("in-plane step must be positive")
    m = int(np.ceil(360.0 / step_deg - 1e-9))
    return np.arange(m) * (360.0 / m)


# ---------------------------------------------------------------- symmetry reduction

def _reference_directions(sym) -> tuple[np.ndarray, np.ndarray]:
    """Reference p (defines the asymmetric unit) and tie-break q for a group."""
    if sym is None:
        n, letter = 1, "C"
    else:
        letter, n = parse_symmetry(sym)
    if letter in ("C", "D"):
        p = direction_vectors(180.0 / max(n, 1), 30.0)
    else:
        p = direction_vectors(17.0, 11.0)        # generic: on no symmetry axis or plane
    q = direction_vectors(71.3, 53.9)
    return p, q


def asymmetric_mask(vectors: np.ndarray, sym) -> np.ndarray:
    """Boolean mask of unit vectors (N, 3) that are canonical in their symmetry orbit."""
    ops = symmetry_ops(sym)
    v = np.asarray(vectors, np.float64)
    if ops.shape[0] == 1:
        return np.ones(v.shape[0], dtype=bool)
    p, q = _reference_directions(sym)
    mates = np.einsum("gij,nj->ngi", ops, v)            # (N, G, 3): R v
    sp = mates @ p                                       # (N, G)
    sq = mates @ q
    tol = 1e-9
    best = sp.max(axis=1, keepdims=True)
    tied = sp >= best - tol
    best_q = np.where(tied, sq, -np.inf).max(axis=1)
    own_p, own_q = sp[:, 0], sq[:, 0]                    # ops[0] is the identity
    return (own_p >= best[:, 0] - tol) & (own_q >= best_q - tol)


def asymmetric_directions(order: int, sym=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rot, tilt, healpix_index) of the HEALPix directions in the asymmetric unit."""
    rot, tilt = healpix_directions(order)
    keep = asymmetric_mask(direction_vectors(rot, tilt), sym)
    idx = np.nonzero(keep)[0]
    return rot[idx], tilt[idx], idx


def orientations_3d(order: int, sym=None, psi_step: float | None = None):
    """(rot, tilt, psi) in degrees of the full grid, direction-major (index d*P + p).

    ``psi_step`` defaults to ``angular_step(order)``."""
    rot, tilt, _ = asymmetric_directions(order, sym)
    psi = inplane_angles(angular_step(order) if psi_step is None else psi_step)
    P = psi.size
    return np.repeat(rot, P), np.repeat(tilt, P), np.tile(psi, rot.size)


def grid_shape(order: int, sym=None, psi_step: float | None = None) -> tuple[int, int]:
    """(number of directions, number of psi) of :func:`orientations_3d`."""
    nd = asymmetric_directions(order, sym)[0].size
    return nd, inplane_angles(angular_step(order) if psi_step is None else psi_step).size


# ---------------------------------------------------------------- translations

def translation_grid(offset_range: float, offset_step: float) -> np.ndarray:
    """Shifts (T, 2) = (x, y) in pixels on a square grid of spacing ``offset_step``
    within a disc of radius ``offset_range``; always contains (0, 0)."""
    if offset_step <= 0 or offset_range < offset_step:
        return np.zeros((1, 2))
    m = int(np.floor(offset_range / offset_step + 1e-9))
    a = np.arange(-m, m + 1) * float(offset_step)
    yy, xx = np.meshgrid(a, a, indexing="ij")
    keep = xx * xx + yy * yy <= offset_range * offset_range * (1 + 1e-9)
    return np.stack([xx[keep], yy[keep]], axis=1)


# ---------------------------------------------------------------- local searches

def local_neighbours(rot, tilt, psi, sigma_ang: float, order: int, sym=None,
                     psi_step: float | None = None, nsigma: float = 3.0, chunk: int = 256):
    """Candidate orientations of :func:`orientations_3d` near each particle's pose.

    A grid orientation ``B`` is a candidate for a particle with pose ``A`` when the
    rotation angle between ``B`` and the closest symmetry mate ``A R`` is at most
    ``nsigma * sigma_ang`` degrees; the nearest grid orientation is always
    included.  Directions are prefiltered (the rotation angle bounds the
    direction angle from below), then only the kept directions' in-plane angles
    are evaluated.

    Returns CSR arrays ``(offsets (N+1,), indices (nnz,), distances_deg (nnz,))``:
    particle ``i`` has candidates ``indices[offsets[i]:offsets[i+1]]`` (sorted).
    """
    A = euler.euler_to_matrix(np.atleast_1d(rot), np.atleast_1d(tilt), np.atleast_1d(psi))
    N = A.shape[0]
    ops = symmetry_ops(sym)
    drot, dtilt, _ = asymmetric_directions(order, sym)
    psis = inplane_angles(angular_step(order) if psi_step is None else psi_step)
    P = psis.size
    V = direction_vectors(drot, dtilt)                          # (D, 3)
    Bm = euler.euler_to_matrix(drot[:, None], dtilt[:, None], psis[None, :])  # (D, P, 3, 3)
    lim = nsigma * float(sigma_ang)
    cos_lim = np.cos(np.deg2rad(min(lim, 180.0)))

    counts = np.zeros(N, dtype=np.int64)
    all_idx, all_dist = [], []
    for c0 in range(0, N, chunk):
        Ac = A[c0:c0 + chunk]
        M = np.einsum("nij,gjk->ngik", Ac, ops)                 # mates A R: (n, G, 3, 3)
        u = M[:, :, 2, :]                                       # their directions
        cosd = np.einsum("ngk,dk->ngd", u, V)                   # (n, G, D)
        cand = np.argwhere(cosd >= cos_lim - 1e-9)              # (K, 3): particle, mate, dir
        # nearest direction per particle too, so that nearest orientation is always found
        flat = cosd.reshape(cosd.shape[0], -1).argmax(axis=1)
        g0, d0 = np.unravel_index(flat, cosd.shape[1:])
        near = np.stack([np.arange(Ac.shape[0]), g0, d0], axis=1)
        cand = np.unique(np.concatenate([cand, near]), axis=0)
        i, g, d = cand.T
        # rotation angle between mate M[i,g] and every psi of direction d
        tr = np.einsum("kab,kpab->kp", M[i, g], Bm[d])          # trace(M B^T)
        ang = np.rad2deg(np.arccos(np.clip((tr - 1.0) / 2.0, -1.0, 1.0)))  # (K, P)
        gi = (d[:, None] * P + np.arange(P)[None, :])           # grid index
        pi = np.broadcast_to(i[:, None], ang.shape)
        keep = ang <= lim + 1e-9
        # always keep each particle's nearest grid orientation
        best = np.full(Ac.shape[0], np.inf)
        np.minimum.at(best, i, ang.min(axis=1))
        keep |= ang <= best[pi] + 1e-9
        pi, gi, ang = pi[keep], gi[keep], ang[keep]
        # a grid orientation reached through several mates: keep the smallest angle
        order_ = np.lexsort((ang, gi, pi))
        pi, gi, ang = pi[order_], gi[order_], ang[order_]
        first = np.ones(pi.size, dtype=bool)
        first[1:] = (pi[1:] != pi[:-1]) | (gi[1:] != gi[:-1])
        pi, gi, ang = pi[first], gi[first], ang[first]
        counts[c0:c0 + Ac.shape[0]] = np.bincount(pi, minlength=Ac.shape[0])
        all_idx.append(gi)
        all_dist.append(ang)
    offsets = np.zeros(N + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets, np.concatenate(all_idx).astype(np.int64), np.concatenate(all_dist)


# ---------------------------------------------------------------- oversampling

def oversample_directions(order: int):
    """Fine directions (order + 1) and, for each, its parent direction at ``order``.

    In the RING scheme the four sub-pixels of a pixel are not numbered together,
    so the parent is the coarse pixel centre nearest to the fine centre (which
    equals the HEALPix nesting except on rare ties).  Returns
    ``(fine_rot, fine_tilt, parent)``; on average four fine directions per parent.
    """
    frot, ftilt = healpix_directions(order + 1)
    crot, ctilt = healpix_directions(order)
    fv, cv = direction_vectors(frot, ftilt), direction_vectors(crot, ctilt)
    parent = np.empty(fv.shape[0], dtype=np.int64)
    step = 4096
    for s in range(0, fv.shape[0], step):
        parent[s:s + step] = np.argmax(fv[s:s + step] @ cv.T, axis=1)
    return frot, ftilt, parent
