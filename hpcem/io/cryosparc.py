"""cryoSPARC particle files (``.cs``: a numpy structured array saved with ``np.save``) -> the tables of a
RELION 3.1 particle STAR file. Reads and converts; writes nothing but :func:`write_cs` (tests, bench).

Conventions (the same as pyem's csparc2star and cryoDRGN's parse_pose_csparc; checked by a
reconstruction in tests/test_import_cs.py and against cryoDRGN's parse of a real refinement):

* ``alignments3D/pose`` is a rotation vector v (axis * angle, radians). Its matrix R(v) (Rodrigues,
  right-handed) is the transpose of RELION's A = euler_to_matrix(rot, tilt, psi): A = R(v)^T.
* ``alignments3D/shift`` (x, y) in pixels has RELION's sign: rlnOriginX/YAngst = shift * pixel size,
  the pixel of ``alignments3D/psize_A`` when given (rescaled to the image pixel, see ``_shifts``).
* ``alignments2D/pose`` is the in-plane angle (radians) -> rlnAnglePsi (= the z-rotvec above).
* ``ctf/df1_A``, ``df2_A``, ``df_angle_rad`` -> rlnDefocusU, V, Angle (degrees); phase shift to degrees.
* ``blob/idx`` is 0-based -> ``NNNNNN@path`` 1-based; a leading '>' of ``blob/path`` is dropped.
* ``location/center_x/y_frac`` times ``location/micrograph_shape`` ([ny, nx]) -> rlnCoordinateX/Y.
* one optics group per ``ctf/exp_group_id`` (split further if its voltage, Cs, amplitude contrast,
  pixel or box size are not constant).
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
from scipy.spatial.transform import Rotation

from hpcem.core.euler import euler_to_matrix, matrix_to_euler, wrap180
from hpcem.errors import InputError

# the fields read, with their values per particle (all others are passed over unchecked)
SHAPES = {k: () for k in (
    "uid blob/path blob/idx blob/psize_A alignments3D/psize_A alignments3D/class alignments3D/split "
    "alignments2D/pose alignments2D/psize_A alignments2D/class ctf/exp_group_id ctf/accel_kv ctf/cs_mm "
    "ctf/amp_contrast ctf/df1_A ctf/df2_A ctf/df_angle_rad ctf/phase_shift_rad ctf/bfactor "
    "location/micrograph_path location/center_x_frac location/center_y_frac").split()}
SHAPES.update({"blob/shape": (2,), "alignments3D/pose": (3,), "alignments3D/shift": (2,),
               "alignments2D/shift": (2,), "location/micrograph_shape": (2,)})
TEXT = ("blob/path", "location/micrograph_path")


# ---------------------------------------------------------------- rotations
def rotvec_to_matrix(v) -> np.ndarray:
    """Rotation vectors (..., 3) -> matrices (..., 3, 3), right-handed (Rodrigues)."""
    v = np.asarray(v, dtype=np.float64)
    return Rotation.from_rotvec(v.reshape(-1, 3)).as_matrix().reshape(v.shape[:-1] + (3, 3))


def matrix_to_rotvec(R) -> np.ndarray:
    """Inverse of :func:`rotvec_to_matrix` (angle in [0, pi])."""
    R = np.asarray(R, dtype=np.float64)
    return Rotation.from_matrix(R.reshape(-1, 3, 3)).as_rotvec().reshape(R.shape[:-2] + (3,))


def rotvec_to_euler(v):
    """cryoSPARC pose (..., 3) -> RELION (rot, tilt, psi) in degrees: A = R(v)^T."""
    return matrix_to_euler(np.swapaxes(rotvec_to_matrix(v), -1, -2))


def euler_to_rotvec(rot, tilt, psi) -> np.ndarray:
    """RELION angles (degrees) -> cryoSPARC pose: the rotation vector of A^T."""
    return matrix_to_rotvec(np.swapaxes(euler_to_matrix(rot, tilt, psi), -1, -2))


# ---------------------------------------------------------------- files
def write_cs(path, fields: dict) -> None:
    """Write ``{field: array}`` (first axis: particles; the arrays' dtypes are kept) as a .cs file
    (``np.save`` format under exactly ``path``), atomically."""
    from hpcem.io.atomic import atomic_write

    arrays = {k: np.asarray(v) for k, v in fields.items()}
    n = {a.shape[0] for a in arrays.values()}
    if len(n) != 1:
        raise ValueError("write_cs: fields have different lengths %s" % sorted(n))
    rec = np.zeros(n.pop(), dtype=[(k, a.dtype, a.shape[1:]) for k, a in arrays.items()])
    for k, a in arrays.items():
        rec[k] = a
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, rec, allow_pickle=False)


def read_cs(path) -> dict:
    """``{field: array}`` of a .cs file; InputError unless it is a 1-D numpy structured array."""
    path = str(path)
    if not os.path.isfile(path):
        raise InputError("file not found", file=path, field="file")
    try:
        a = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise InputError("not a cryoSPARC .cs file (numpy array: %s)" % exc, file=path, field="format") from None
    if not isinstance(a, np.ndarray) or a.dtype.names is None:
        raise InputError("not a cryoSPARC .cs file: a numpy array without named fields", file=path,
                         field="format")
    if a.ndim != 1 or a.size == 0:
        raise InputError("expected a non-empty list of particles, got shape %s" % (a.shape,), file=path,
                         field="format")
    return {name: a[name] for name in a.dtype.names}


def _check_field(name, arr, path):
    want = SHAPES.get(name)
    if want is None:
        return
    if arr.shape[1:] != want:
        raise InputError("expected %s values per particle, got %s" % (want or "one", arr.shape[1:] or "one"),
                         file=path, field=name)
    if name in TEXT:
        if arr.dtype.kind not in "SU":
            raise InputError("expected text, got %s" % arr.dtype, file=path, field=name)
    elif arr.dtype.kind not in "biuf" or not np.isfinite(arr).all():
        raise InputError("expected finite numbers (%s)" % arr.dtype, file=path, field=name)


def _uids(fields, path):
    if "uid" not in fields:
        raise InputError("no uid field: cannot match the passthrough file", file=path, field="uid")
    u = fields["uid"]
    if len(np.unique(u)) != len(u):
        raise InputError("uids are not unique", file=path, field="uid")
    return u


def merge_passthrough(main: dict, main_path, pt: dict, pt_path) -> tuple[dict, dict]:
    """Fields of ``main`` plus the passthrough's other fields, matched by uid; the main file's win.
    Returns (fields, {field: file it came from})."""
    u, v = _uids(main, main_path), _uids(pt, pt_path)
    order = np.argsort(v)
    pos = np.searchsorted(v, u, sorter=order).clip(0, len(v) - 1)
    miss = v[order[pos]] != u
    if miss.any():
        raise InputError("%d of %d particles of %s (e.g. uid %d) are not in the passthrough file" % (
            int(miss.sum()), len(u), main_path, int(u[np.flatnonzero(miss)[0]])), file=pt_path, field="uid")
    fields, src = dict(main), dict.fromkeys(main, str(main_path))
    for k, a in pt.items():
        if k not in fields:
            fields[k], src[k] = a[order[pos]], str(pt_path)
    return fields, src


# ---------------------------------------------------------------- conversion
def _decode(a, prefix=None) -> np.ndarray:
    u, inv = np.unique(a, return_inverse=True)
    out = []
    for s in u:
        s = s.decode("utf-8", "replace") if isinstance(s, bytes) else str(s)
        s = s[1:] if s.startswith(">") else s
        out.append(os.path.join(prefix, s) if prefix and s else s)
    return np.asarray(out, dtype=object)[inv.ravel()]


def _pixels(f, src, angpix):
    """(pixel size, box) per particle, from blob/psize_A (or ``angpix``) and blob/shape."""
    if "blob/shape" not in f:
        raise InputError("no image size", file=src["blob/shape"], field="blob/shape")
    sh = f["blob/shape"].astype(np.int64)
    if (sh[:, 0] != sh[:, 1]).any() or (sh <= 0).any():
        raise InputError("images must be square and non-empty", file=src["blob/shape"], field="blob/shape")
    if angpix:
        return np.full(len(sh), float(angpix)), sh[:, 0]
    if "blob/psize_A" not in f:
        raise InputError("no pixel size in the file; give --angpix", file=src["blob/psize_A"], field="blob/psize_A")
    ps = f["blob/psize_A"].astype(np.float64)
    if (ps <= 0).any():
        raise InputError("pixel sizes must be positive", file=src["blob/psize_A"], field="blob/psize_A")
    return ps, sh[:, 0]


def _shifts(f, kind, psize):
    """rlnOriginX/YAngst from ``<kind>/shift``: pixels of ``<kind>/psize_A`` (when given) in the image
    pixel of ``blob/psize_A``, times the image pixel size used (``psize``, e.g. --angpix)."""
    s = f[kind + "/shift"].astype(np.float64)
    scale = psize
    if kind + "/psize_A" in f and "blob/psize_A" in f:
        a, b = f[kind + "/psize_A"].astype(np.float64), f["blob/psize_A"].astype(np.float64)
        scale = psize * np.where((a > 0) & (b > 0), a / np.where(b > 0, b, 1.0), 1.0)
    return {"rlnOriginXAngst": s[:, 0] * scale, "rlnOriginYAngst": s[:, 1] * scale}


def _alignments(f, src, main, psize, log):
    """Angles, shifts, class, half set from alignments3D (else alignments2D), the main file's first."""
    cols = {}
    kinds = [k for k in ("alignments3D", "alignments2D") if k + "/pose" in f]
    if any(k.startswith("alignments_class_") for k in f):
        log("note: per-class poses (alignments_class_N/*) are not converted")
    if not kinds:
        log("no alignments3D/pose or alignments2D/pose: no angles")
        return cols
    kind = sorted(kinds, key=lambda k: src[k + "/pose"] != main)[0]
    if kind == "alignments3D":
        rot, tilt, psi = rotvec_to_euler(f["alignments3D/pose"])
        cols.update(rlnAngleRot=rot, rlnAngleTilt=tilt, rlnAnglePsi=psi)
    else:
        cols["rlnAnglePsi"] = wrap180(np.rad2deg(f["alignments2D/pose"].astype(np.float64)))
    if kind + "/shift" in f:
        cols.update(_shifts(f, kind, psize))
    if kind + "/class" in f:
        cols["rlnClassNumber"] = f[kind + "/class"].astype(np.int64) + 1
    split = f.get(kind + "/split")
    if split is not None and set(np.unique(split).tolist()) == {0, 1}:
        cols["rlnRandomSubset"] = split.astype(np.int64) + 1
    log("angles and shifts from %s (%s)" % (kind, src[kind + "/pose"]))
    return cols


def _ctf(f):
    cols = {}
    for field, col, conv in (("ctf/df1_A", "rlnDefocusU", None), ("ctf/df2_A", "rlnDefocusV", None),
                             ("ctf/df_angle_rad", "rlnDefocusAngle", np.rad2deg),
                             ("ctf/phase_shift_rad", "rlnPhaseShift", np.rad2deg),
                             ("ctf/bfactor", "rlnCtfBfactor", None)):
        if field in f:
            v = f[field].astype(np.float64)
            cols[col] = conv(v) if conv else v
    return cols


def _location(f, prefix):
    cols = {}
    if "location/micrograph_path" in f:
        cols["rlnMicrographName"] = _decode(f["location/micrograph_path"], prefix)
    if all(k in f for k in ("location/center_x_frac", "location/center_y_frac", "location/micrograph_shape")):
        shape = f["location/micrograph_shape"].astype(np.float64)          # [ny, nx]
        cols["rlnCoordinateX"] = f["location/center_x_frac"].astype(np.float64) * shape[:, 1]
        cols["rlnCoordinateY"] = f["location/center_y_frac"].astype(np.float64) * shape[:, 0]
    return cols


OPTICS = (("ctf/accel_kv", "rlnVoltage"), ("ctf/cs_mm", "rlnSphericalAberration"),
          ("ctf/amp_contrast", "rlnAmplitudeContrast"))


def _optics(f, psize, box):
    """(optics table, 1-based group per particle)."""
    n = len(box)
    exp = f["ctf/exp_group_id"].astype(np.int64) if "ctf/exp_group_id" in f else np.zeros(n, np.int64)
    present = [(k, c) for k, c in OPTICS if k in f]
    key = np.stack([exp, box, psize] + [np.round(f[k].astype(np.float64), 6) for k, _ in present], axis=1)
    uniq, group = np.unique(key, axis=0, return_inverse=True)
    ids = uniq[:, 0].astype(np.int64)
    names = ["exp_group_%d" % e if (ids == e).sum() == 1 else "exp_group_%d_%d" % (e, (ids[:i] == e).sum() + 1)
             for i, e in enumerate(ids)]
    t = {"rlnOpticsGroupName": names, "rlnOpticsGroup": np.arange(1, len(uniq) + 1),
         "rlnMicrographOriginalPixelSize": uniq[:, 2]}
    t.update({c: uniq[:, 3 + j] for j, (_, c) in enumerate(present)})
    t.update(rlnImagePixelSize=uniq[:, 2], rlnImageSize=uniq[:, 1].astype(np.int64),
             rlnImageDimensionality=np.full(len(uniq), 2))
    return pd.DataFrame(t), group.ravel() + 1


def cs_to_star(path, passthrough=None, angpix: float | None = None, stack_dir: str | None = None,
               log=None) -> dict:
    """``{"optics": DataFrame, "particles": DataFrame}`` of a RELION 3.1 particle STAR file from a
    cryoSPARC .cs (and its passthrough file). ``angpix`` overrides ``blob/psize_A``; ``stack_dir``
    is prepended to relative image and micrograph paths (cryoSPARC's are relative to the project
    folder). Every check runs before any conversion; bad input raises one InputError."""
    log = log or (lambda *a: None)
    f = read_cs(path)
    src = dict.fromkeys(f, str(path))
    if passthrough:
        f, src = merge_passthrough(f, path, read_cs(passthrough), passthrough)
    for k in ("blob/path", "blob/idx"):
        if k not in f:
            raise InputError("required field missing (is this a particle file?)", file=path, field=k)
    for k in ("blob/psize_A", "blob/shape"):
        src.setdefault(k, str(path))
    for k, a in f.items():
        _check_field(k, a, src[k])
    if f["blob/idx"].dtype.kind not in "iu" or (f["blob/idx"] < 0).any():
        raise InputError("image indices must be integers >= 0", file=src["blob/idx"], field="blob/idx")
    psize, box = _pixels(f, src, angpix)
    optics, group = _optics(f, psize, box)
    paths = _decode(f["blob/path"], stack_dir)
    cols = {"rlnImageName": ["%06d@%s" % (i + 1, p) for i, p in zip(f["blob/idx"].tolist(), paths)]}
    cols.update(_location(f, stack_dir))
    cols.update(_ctf(f))
    cols.update(_alignments(f, src, str(path), psize, log))
    cols["rlnOpticsGroup"] = group
    log("%d particles, %d optics group(s)" % (len(group), len(optics)))
    return {"optics": optics, "particles": pd.DataFrame(cols)}
