"""Point-group symmetry operators (rotations only, as in single-particle cryo-EM).

Orientations of the groups (the volume frame):

* ``C1`` identity; ``Cn`` n-fold about z.
* ``Dn`` (n >= 2): Cn about z plus n two-folds in the xy plane, one along x.
* ``T``: two-folds along x, y, z; three-folds along the body diagonals (1, 1, 1).
* ``O``: four-folds along x, y, z; three-folds along (1, 1, 1).
* ``I`` / ``I2``: two-folds along x, y, z; five-folds along (0, +-1, +-phi)/|.|
  (phi the golden ratio), i.e. in the yz plane: the "222" setting with a
  five-fold at (0, 0.526, 0.851).  ``I1`` is the same rotated 90 degrees about z
  (five-folds in the xz plane).

A volume is symmetric when ``V(R r) = V(r)`` for every ``R`` of the group; a
pose ``A`` and ``A R`` then give the same image (see hpcem.core.euler).
"""
from __future__ import annotations

import re

import numpy as np

from hpcem.errors import InputError


def axis_rotation(axis, angle_deg: float) -> np.ndarray:
    """Rotation matrix by ``angle_deg`` about ``axis`` (right-handed, active)."""
    u = np.asarray(axis, dtype=np.float64)
    u = u / np.linalg.norm(u)
    a = np.deg2rad(angle_deg)
    K = np.array([[0.0, -u[2], u[1]], [u[2], 0.0, -u[0]], [-u[1], u[0], 0.0]])
    return np.eye(3) + np.sin(a) * K + (1.0 - np.cos(a)) * (K @ K)


def _closure(generators, max_order: int = 120) -> np.ndarray:
    """All products of the generators (a finite group), identity first."""
    elems = [np.eye(3)]
    frontier = [np.eye(3)]
    while frontier:
        new = []
        for a in frontier:
            for g in generators:
                b = g @ a
                if not any(np.abs(b - e).max() < 1e-8 for e in elems):
                    elems.append(b)
                    new.append(b)
        frontier = new
        if len(elems) > max_order:
            raise RuntimeError("generators do not close to a finite group")
    out = np.array(elems)
    out[np.abs(out) < 1e-12] = 0.0
    return out


def parse_symmetry(name: str) -> tuple[str, int]:
    """'c4' -> ('C', 4); 'I2' -> ('I', 2); raises InputError(field='--sym')."""
    s = str(name).strip().upper()
    m = re.fullmatch(r"([CD])(\d+)", s)
    if m:
        letter, order = m.group(1), int(m.group(2))
        if order < 1 or (letter == "D" and order < 2):
            raise InputError(f"unsupported symmetry {name!r} (Cn needs n>=1, Dn n>=2)", field="--sym")
        return letter, order
    if s in ("T", "O"):
        return s, 0
    if s in ("I", "I1", "I2"):
        return "I", 1 if s == "I1" else 2
    raise InputError(f"unknown symmetry {name!r} (use C1, Cn, Dn, T, O, I, I1, I2)", field="--sym")


def symmetry_ops(name: str | None) -> np.ndarray:
    """Rotation matrices ``(G, 3, 3)`` of a point group, identity first. ``None`` -> C1."""
    if name is None:
        return np.eye(3)[None]
    letter, k = parse_symmetry(name)
    z = (0.0, 0.0, 1.0)
    if letter == "C":
        return np.array([axis_rotation(z, 360.0 * i / k) for i in range(k)])
    if letter == "D":
        c = [axis_rotation(z, 360.0 * i / k) for i in range(k)]
        flip = axis_rotation((1.0, 0.0, 0.0), 180.0)
        return np.array(c + [r @ flip for r in c])
    if letter == "T":
        return _closure([axis_rotation((1, 1, 1), 120.0), axis_rotation(z, 180.0)])
    if letter == "O":
        return _closure([axis_rotation((1, 1, 1), 120.0), axis_rotation(z, 90.0)])
    phi = (1.0 + 5.0 ** 0.5) / 2.0
    five = (0.0, 1.0, phi) if k == 2 else (-1.0, 0.0, phi)
    return _closure([axis_rotation(five, 72.0), axis_rotation(z, 180.0)])


def group_order(name: str | None) -> int:
    return int(symmetry_ops(name).shape[0])
