"""Euler angles (ZYZ, RELION's convention) and rotation matrices.

``euler_to_matrix(rot, tilt, psi)`` returns A = Rz(psi) Ry(tilt) Rz(rot) written
in RELION's (Xmipp's) form; a particle with these angles is the projection along
z of the reference rotated by A, i.e. of ``V(A^T r)`` (see core/fourier.py).
Angles in degrees at the API, like the STAR files.
"""
from __future__ import annotations

import numpy as np


def euler_to_matrix(rot, tilt, psi) -> np.ndarray:
    """Angles in degrees (scalars or arrays of one shape) -> matrices (..., 3, 3)."""
    a, b, g = (np.deg2rad(np.asarray(x, dtype=np.float64)) for x in (rot, tilt, psi))
    a, b, g = np.broadcast_arrays(a, b, g)
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    A = np.empty(a.shape + (3, 3))
    A[..., 0, 0] = cg * cc - sg * sa
    A[..., 0, 1] = cg * cs + sg * ca
    A[..., 0, 2] = -cg * sb
    A[..., 1, 0] = -sg * cc - cg * sa
    A[..., 1, 1] = -sg * cs + cg * ca
    A[..., 1, 2] = sg * sb
    A[..., 2, 0] = sc
    A[..., 2, 1] = ss
    A[..., 2, 2] = cb
    return A


def wrap180(angle_deg):
    """Angles in degrees wrapped to [-180, 180)."""
    return (np.asarray(angle_deg) + 180.0) % 360.0 - 180.0


def matrix_to_euler(A) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of :func:`euler_to_matrix`: (..., 3, 3) -> (rot, tilt, psi) in degrees.

    Tilt in [0, 180]; at the poles (tilt 0 or 180) rot is set to 0."""
    A = np.asarray(A, dtype=np.float64)
    abs_sb = np.hypot(A[..., 0, 2], A[..., 1, 2])
    regular = abs_sb > 1e-6
    gamma = np.where(regular, np.arctan2(A[..., 1, 2], -A[..., 0, 2]), 0.0)
    alpha = np.where(regular, np.arctan2(A[..., 2, 1], A[..., 2, 0]), 0.0)
    beta = np.where(regular, np.arctan2(abs_sb, A[..., 2, 2]), 0.0)
    # poles: only rot + psi (tilt 0) or psi - rot (tilt 180) is defined
    north = ~regular & (A[..., 2, 2] > 0)
    south = ~regular & (A[..., 2, 2] <= 0)
    gamma = np.where(north, np.arctan2(-A[..., 1, 0], A[..., 0, 0]), gamma)
    gamma = np.where(south, np.arctan2(A[..., 1, 0], -A[..., 0, 0]), gamma)
    beta = np.where(south, np.pi, beta)
    return np.rad2deg(alpha), np.rad2deg(beta), np.rad2deg(gamma)


def rotation_2d(psi) -> np.ndarray:
    """In-plane rotation matrices (..., 2, 2) for psi in degrees (the 2x2 block of A)."""
    g = np.deg2rad(np.asarray(psi, dtype=np.float64))
    c, s = np.cos(g), np.sin(g)
    R = np.empty(g.shape + (2, 2))
    R[..., 0, 0] = c
    R[..., 0, 1] = s
    R[..., 1, 0] = -s
    R[..., 1, 1] = c
    return R


def angular_distance(A, B) -> np.ndarray:
    """Angle in degrees of the rotation A B^T (..., 3, 3)."""
    R = np.einsum("...ij,...kj->...ik", np.asarray(A), np.asarray(B))
    c = (np.trace(R, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.rad2deg(np.arccos(np.clip(c, -1.0, 1.0)))


def random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """n rotation matrices uniform on SO(3) (from uniform unit quaternions)."""
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    R = np.empty((n, 3, 3))
    R[:, 0, 0] = 1 - 2 * (y * y + z * z)
    R[:, 0, 1] = 2 * (x * y - z * w)
    R[:, 0, 2] = 2 * (x * z + y * w)
    R[:, 1, 0] = 2 * (x * y + z * w)
    R[:, 1, 1] = 1 - 2 * (x * x + z * z)
    R[:, 1, 2] = 2 * (y * z - x * w)
    R[:, 2, 0] = 2 * (x * z - y * w)
    R[:, 2, 1] = 2 * (y * z + x * w)
    R[:, 2, 2] = 1 - 2 * (x * x + y * y)
    return R
