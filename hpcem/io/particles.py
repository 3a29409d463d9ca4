"""ParticleSet: particles, optics groups, CTF parameters and poses (RELION 3.1+ semantics).

Reading validates everything that can be validated without touching pixel data
(STAR structure, optics groups, pixel and box sizes, stack files, image indices,
CTF columns when asked for), raising :class:`hpcem.errors.InputError` naming the
file and field. Pixel data are read lazily from memory-mapped stacks.

Conventions (as in RELION): ``rlnImageName`` is ``NNNNNN@stack`` with a 1-based
index; a relative stack path is looked up from the current working directory (the
project folder) and, failing that, from the STAR file's folder. Origins are in
Angstrom (``rlnOriginXAngst/YAngst``), angles in degrees, defocus in Angstrom,
voltage in kV, Cs in mm.
"""
from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hpcem.errors import InputError
from hpcem.io.mrc import MrcStack, read_header, write_mrc
from hpcem.io.star import read_star, write_star

# optics-level CTF columns -> (key in ctf_params, OpticsGroup attribute)
_OPTICS_CTF = {"rlnVoltage": "voltage", "rlnSphericalAberration": "cs",
               "rlnAmplitudeContrast": "amp_contrast"}
_MAX_OPEN_STACKS = 64
_PIXEL_TOL = 1e-4  # relative tolerance when comparing pixel sizes


@dataclass(frozen=True)
class OpticsGroup:
    """One RELION optics group. Lengths in Angstrom, voltage in kV, Cs in mm."""

    number: int
    name: str
    angpix: float
    box: int
    voltage: float | None = None
    cs: float | None = None
    amp_contrast: float | None = None
    ctf_premultiplied: bool = False

    @property
    def ctf_data_are_ctf_premultiplied(self) -> bool:
        return self.ctf_premultiplied


def _col(df: pd.DataFrame, name: str, default=None, dtype=np.float64):
    if name in df.columns:
        return df[name].to_numpy(dtype=dtype)
    if default is None:
        return None
    return np.full(len(df), default, dtype=dtype)


def _finite_float(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def _resolve_stack(name: str, star_dir: Path) -> Path | None:
    p = Path(name)
    if p.is_absolute():
        return p if p.is_file() else None
    for base in (Path.cwd(), star_dir):
        q = base / p
        if q.is_file():
            return q.resolve()
    return None


class ParticleSet:
    """Particles with their optics groups, backed by a STAR file and MRC stacks
    (or by an in-memory image array, see :meth:`from_arrays`)."""

    # ------------------------------------------------------------------ construction
    def __init__(self, table: pd.DataFrame, optics_table: pd.DataFrame, *,
                 star_path: str | os.PathLike | None = None, angpix: float | None = None,
                 images: np.ndarray | None = None, validate_stacks: bool = True):
        self.star_path = None if star_path is None else str(star_path)
        self._src = self.star_path or "<memory>"
        self._table = table.reset_index(drop=True)
        self._optics_table = optics_table.reset_index(drop=True)
        self._memory = None if images is None else np.asarray(images, dtype=np.float32)
        self._stacks: OrderedDict[str, MrcStack] = OrderedDict()
        self._build_optics(angpix)
        self._map_groups()
        if self._memory is None:
            self._parse_image_names(validate_stacks)
        else:
            m = self._memory
            if m.ndim != 3 or m.shape[0] != len(self._table):
                raise InputError(f"images must be (N, n, n) with N = {len(self._table)}, got {m.shape}",
                                 file=self._src, field="images")
            if m.shape[1] != m.shape[2]:
                raise InputError(f"images are not square ({m.shape[2]} x {m.shape[1]})",
                                 file=self._src, field="nx/ny")
            if m.shape[-1] != self._box:
                raise InputError(f"images are {m.shape[-1]} px but the optics group says "
                                 f"{self._box}", file=self._src, field="rlnImageSize")
            self._stack_paths, self._stack_id = [], np.zeros(len(self._table), np.int64)
            self._image_index = np.arange(len(self._table), dtype=np.int64)

    @classmethod
    def read(cls, star_path: str | os.PathLike, angpix: float | None = None, ctf: bool = False,
             validate_stacks: bool = True) -> "ParticleSet":
        """Read a RELION particle STAR file (3.1+ optics + particles, or 3.0 single block).

        ``angpix`` is used only where the file gives no pixel size (RELION 3.0 files
        without rlnImagePixelSize / rlnDetectorPixelSize + rlnMagnification).
        ``ctf=True`` also checks that the CTF columns are present and finite.
        """
        path = str(star_path)
        blocks = read_star(path)
        if "optics" in blocks:
            if "particles" not in blocks:
                raise InputError("data_optics present but no data_particles block",
                                 file=path, field="data_particles")
            table, optics = blocks["particles"], blocks["optics"]
            if "rlnImageName" not in table.columns:
                raise InputError("data_particles has no rlnImageName column",
                                 file=path, field="rlnImageName")
        else:
            name = "particles" if "particles" in blocks else None
            if name is None:
                with_images = [k for k, b in blocks.items() if "rlnImageName" in b.columns]
                if not with_images:
                    raise InputError("no data block with an rlnImageName column",
                                     file=path, field="rlnImageName")
                name = with_images[0]
            if "rlnImageName" not in blocks[name].columns:
                raise InputError(f"data_{name} has no rlnImageName column",
                                 file=path, field="rlnImageName")
            warnings.warn(f"{path}: RELION 3.0-style STAR file (no data_optics block); building one "
                          "optics group from the per-particle columns and converting rlnOriginX/Y "
                          "from pixels to Angstrom. Convert it to the RELION 3.1 format "
                          "(e.g. relion_convert_star) to silence this warning.",
                          UserWarning, stacklevel=2)
            table, optics = cls._convert_old_style(blocks[name], path, angpix)
        ps = cls(table, optics, star_path=path, angpix=angpix, validate_stacks=validate_stacks)
        if ctf:
            ps.ctf_params()  # presence and finiteness of the CTF columns
        return ps

    @staticmethod
    def _convert_old_style(df: pd.DataFrame, path: str, angpix: float | None):
        df = df.copy()
        if "rlnImagePixelSize" in df.columns:
            ps = df["rlnImagePixelSize"].to_numpy(np.float64)
            field = "rlnImagePixelSize"
        elif "rlnDetectorPixelSize" in df.columns and "rlnMagnification" in df.columns:
            ps = df["rlnDetectorPixelSize"].to_numpy(np.float64) * 1e4 / \
                df["rlnMagnification"].to_numpy(np.float64)
            field = "rlnDetectorPixelSize"
        elif angpix is not None:
            ps = np.full(len(df), float(angpix))
            field = "angpix"
        else:
            raise InputError("no pixel size: RELION 3.0-style file without rlnDetectorPixelSize + "
                             "rlnMagnification; give the pixel size (--angpix)",
                             file=path, field="rlnImagePixelSize")
        if len(ps) and (not np.all(np.isfinite(ps)) or np.any(ps <= 0)):
            raise InputError("pixel size must be positive", file=path, field=field)
        px = float(ps[0]) if len(ps) else (float(angpix) if angpix else 1.0)
        if len(ps) and np.any(np.abs(ps - px) > _PIXEL_TOL * px):
            raise InputError("pixel size varies between particles; not supported",
                             file=path, field=field)
        optics = {"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                  "rlnImagePixelSize": [px]}
        for c in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"):
            if c in df.columns:
                v = df[c].to_numpy(np.float64)
                optics[c] = [float(v[0])] if len(v) else [np.nan]
                if len(v) and np.allclose(v, v[0], rtol=1e-9, atol=0, equal_nan=True):
                    df = df.drop(columns=c)  # constant: lives in the optics group
                # else: kept per particle, and ctf_params() uses the per-particle values
        for old, new in (("rlnOriginX", "rlnOriginXAngst"), ("rlnOriginY", "rlnOriginYAngst")):
            if old in df.columns:
                if new not in df.columns:
                    df[new] = df[old].to_numpy(np.float64) * px
                df = df.drop(columns=old)
        for c in ("rlnImagePixelSize",):
            if c in df.columns:
                df = df.drop(columns=c)
        df["rlnOpticsGroup"] = 1
        return df, pd.DataFrame(optics)

    # ------------------------------------------------------------------ validation
    def _build_optics(self, angpix: float | None) -> None:
        ot, src = self._optics_table, self._src
        if "rlnOpticsGroup" not in ot.columns:
            if len(ot) == 1:
                ot = ot.copy()
                ot["rlnOpticsGroup"] = 1
                self._optics_table = ot
            else:
                raise InputError("data_optics has no rlnOpticsGroup column", file=src,
                                 field="rlnOpticsGroup")
        if len(ot) == 0:
            raise InputError("data_optics is empty", file=src, field="data_optics")
        if "rlnImagePixelSize" not in ot.columns:
            if angpix is None:
                raise InputError("data_optics has no rlnImagePixelSize; give the pixel size",
                                 file=src, field="rlnImagePixelSize")
            ot = ot.copy()
            ot["rlnImagePixelSize"] = float(angpix)
            self._optics_table = ot
        optics: dict[int, OpticsGroup] = {}
        for _, row in ot.iterrows():
            try:
                num = int(row["rlnOpticsGroup"])
            except (TypeError, ValueError):
                raise InputError(f"optics group number {row['rlnOpticsGroup']!r} is not an integer",
                                 file=src, field="rlnOpticsGroup") from None
            if num in optics:
                raise InputError(f"optics group {num} defined twice", file=src, field="rlnOpticsGroup")
            px = _finite_float(row["rlnImagePixelSize"])
            if px is None or px <= 0:
                raise InputError(f"optics group {num}: pixel size {row['rlnImagePixelSize']} must be "
                                 "positive", file=src, field="rlnImagePixelSize")
            box = 0
            if "rlnImageSize" in ot.columns:
                b = _finite_float(row["rlnImageSize"])
                if b is None or b <= 0 or b != int(b):
                    raise InputError(f"optics group {num}: image size {row['rlnImageSize']} is not a "
                                     "positive integer", file=src, field="rlnImageSize")
                box = int(b)
            vals = {}
            for col, attr in _OPTICS_CTF.items():
                vals[attr] = _finite_float(row[col]) if col in ot.columns else None
            pre = False
            if "rlnCtfDataAreCtfPremultiplied" in ot.columns:
                pre = bool(int(row["rlnCtfDataAreCtfPremultiplied"]))
            name = str(row["rlnOpticsGroupName"]) if "rlnOpticsGroupName" in ot.columns \
                else f"opticsGroup{num}"
            optics[num] = OpticsGroup(num, name, px, box, ctf_premultiplied=pre, **vals)
        boxes = {g.box for g in optics.values() if g.box > 0}
        if len(boxes) > 1:
            raise InputError(f"optics groups have different box sizes {sorted(boxes)}; hpcem does not "
                             "support mixed box sizes (re-extract at one size)",
                             file=src, field="rlnImageSize")
        pxs = [g.angpix for g in optics.values()]
        if max(pxs) - min(pxs) > _PIXEL_TOL * max(pxs):
            raise InputError(f"optics groups have different pixel sizes {sorted(set(pxs))}; hpcem "
                             "does not support mixed pixel sizes (rescale to one)",
                             file=src, field="rlnImagePixelSize")
        self._optics = dict(sorted(optics.items()))
        self._box = boxes.pop() if boxes else 0
        self._angpix = float(pxs[0])

    def _map_groups(self) -> None:
        t, src = self._table, self._src
        numbers = np.array(list(self._optics), dtype=np.int64)
        if "rlnOpticsGroup" not in t.columns:
            if len(numbers) != 1:
                raise InputError("data_particles has no rlnOpticsGroup column but there are "
                                 f"{len(numbers)} optics groups", file=src, field="rlnOpticsGroup")
            t = t.copy()
            t["rlnOpticsGroup"] = int(numbers[0])
            self._table = t
        raw = self._table["rlnOpticsGroup"]
        try:
            g = raw.to_numpy(dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError("rlnOpticsGroup must be integers", file=src, field="rlnOpticsGroup") from None
        ok = np.isin(g, numbers)
        if not ok.all():
            i = int(np.flatnonzero(~ok)[0])
            raise InputError(f"particle {i + 1} refers to optics group {raw.iloc[i]}, which is not in "
                             f"data_optics (groups {numbers.tolist()})", file=src, field="rlnOpticsGroup")
        self._group_index = np.searchsorted(numbers, g.astype(np.int64)).astype(np.int64)

    def _parse_image_names(self, validate_stacks: bool) -> None:
        src = self._src
        names = self._table["rlnImageName"].astype(str)
        if self._table["rlnImageName"].isna().any():
            i = int(np.flatnonzero(self._table["rlnImageName"].isna().to_numpy())[0])
            raise InputError(f"particle {i + 1} has no image name", file=src, field="rlnImageName")
        parts = names.str.split("@", n=1, expand=True)
        if parts.shape[1] == 1:
            parts[1] = None
        has_at = parts[1].notna().to_numpy()
        idx_str = parts[0].where(has_at, "1")
        stack_str = parts[1].where(has_at, parts[0])
        index = pd.to_numeric(idx_str, errors="coerce").to_numpy(np.float64)
        bad = ~np.isfinite(index) | (index < 1) | (index != np.floor(index))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError(f"particle {i + 1}: image name {names.iloc[i]!r} is not NNNNNN@stack "
                             "with a 1-based index", file=src, field="rlnImageName")
        codes, uniques = pd.factorize(stack_str)
        star_dir = Path(self.star_path).parent if self.star_path else Path.cwd()
        paths = []
        for s in uniques:
            p = _resolve_stack(str(s), star_dir)
            if p is None:
                raise InputError(f"image stack {s!r} not found (looked in the working directory "
                                 f"{Path.cwd()} and the STAR file's folder {star_dir})",
                                 file=src, field=f"rlnImageName ({s})")
            paths.append(str(p))
        self._stack_paths = paths
        self._stack_id = codes.astype(np.int64)
        self._image_index = index.astype(np.int64) - 1
        if validate_stacks:
            self._validate_stacks()

    def _validate_stacks(self) -> None:
        maxidx = np.full(len(self._stack_paths), -1, np.int64)
        np.maximum.at(maxidx, self._stack_id, self._image_index)
        for sid, p in enumerate(self._stack_paths):
            h = read_header(p, require_square=True)
            n = 1 if h.nz < 1 else h.nz
            if maxidx[sid] >= n:
                raise InputError(f"image index {maxidx[sid] + 1} is beyond the stack's {n} images",
                                 file=p, field="rlnImageName")
            if self._box == 0:
                self._box = h.nx
            elif h.nx != self._box:
                raise InputError(f"stack images are {h.nx} px but the optics group says rlnImageSize "
                                 f"{self._box}", file=p, field="rlnImageSize")
        if self._box == 0 and not self._stack_paths:
            raise InputError("no particles and no rlnImageSize", file=self._src, field="rlnImageSize")
        if "rlnImageSize" not in self._optics_table.columns:  # e.g. converted RELION 3.0 files
            ot = self._optics_table.copy()
            ot["rlnImageSize"] = self._box
            if "rlnImageDimensionality" not in ot.columns:
                ot["rlnImageDimensionality"] = 2
            self._optics_table = ot
            self._optics = {k: OpticsGroup(g.number, g.name, g.angpix, self._box, g.voltage, g.cs,
                                           g.amp_contrast, g.ctf_premultiplied)
                            for k, g in self._optics.items()}

    def validate(self, ctf: bool = False, images: bool = False) -> None:
        """Re-run the up-front checks: stacks (exist, box, index range), CTF columns when
        ``ctf``, and a NaN/Inf scan of all images when ``images``. Raises InputError."""
        if self._memory is None:
            self._validate_stacks()
        if ctf:
            self.ctf_params()
        if images:
            self.check_images()

    def check_images(self, sample: int | None = None, chunk: int = 512, seed: int = 0) -> None:
        """Scan images for NaN/Inf (all, or a random ``sample`` of particles) in chunks.

        Raises InputError naming the stack file and the 1-based image index."""
        idx = np.arange(self.n)
        if sample is not None and sample < self.n:
            idx = np.sort(np.random.default_rng(seed).choice(self.n, size=sample, replace=False))
        order = idx[np.lexsort((self._image_index[idx], self._stack_id[idx]))]
        for start in range(0, len(order), chunk):
            sel = order[start:start + chunk]
            imgs = self.read_images(sel)
            bad = ~np.isfinite(imgs).reshape(len(sel), -1).all(axis=1)
            if bad.any():
                k = int(sel[np.flatnonzero(bad)[0]])
                f = self._stack_paths[self._stack_id[k]] if self._memory is None else self._src
                raise InputError(f"image {self._image_index[k] + 1} (particle {k + 1}, "
                                 f"{self._table['rlnImageName'].iloc[k]}) contains NaN or Inf",
                                 file=f, field="image data")

    # ------------------------------------------------------------------ properties
    @property
    def n(self) -> int:
        return len(self._table)

    def __len__(self) -> int:
        return self.n

    @property
    def box(self) -> int:
        return int(self._box)

    @property
    def angpix(self) -> float:
        return self._angpix

    @property
    def optics(self) -> dict[int, OpticsGroup]:
        return dict(self._optics)

    @property
    def table(self) -> pd.DataFrame:
        """Particle rows in file order with all their columns (treat as read-only)."""
        return self._table

    @property
    def optics_table(self) -> pd.DataFrame:
        return self._optics_table

    @property
    def stack_paths(self) -> list[str]:
        """Resolved stack files, in order of first appearance."""
        return list(self._stack_paths)

    def _idx(self, indices) -> np.ndarray:
        if indices is None:
            return np.arange(self.n)
        idx = np.atleast_1d(np.asarray(indices)).astype(np.int64, copy=False)
        if idx.size and (idx.min() < -self.n or idx.max() >= self.n):
            raise IndexError(f"particle index out of range for {self.n} particles")
        return idx % self.n if self.n else idx

    # ------------------------------------------------------------------ images
    def _stack(self, sid: int) -> MrcStack:
        p = self._stack_paths[sid]
        st = self._stacks.get(p)
        if st is None:
            st = MrcStack(p)
            self._stacks[p] = st
            if len(self._stacks) > _MAX_OPEN_STACKS:
                _, old = self._stacks.popitem(last=False)
                old.close()
        else:
            self._stacks.move_to_end(p)
        return st

    def read_images(self, indices=None) -> np.ndarray:
        """Images of the particles at ``indices`` (0-based rows) as float32 (B, box, box)."""
        idx = self._idx(indices)
        if self._memory is not None:
            return np.array(self._memory[idx], dtype=np.float32)
        out = np.empty((idx.size, self.box, self.box), np.float32)
        sids = self._stack_id[idx]
        for sid in np.unique(sids):
            where = np.flatnonzero(sids == sid)
            out[where] = self._stack(int(sid)).read(self._image_index[idx[where]])
        return out

    def __getstate__(self):  # picklable (e.g. for MPI): open memory maps are not sent
        state = self.__dict__.copy()
        state["_stacks"] = OrderedDict()
        return state

    def __repr__(self) -> str:
        return (f"ParticleSet(n={self.n}, box={self.box}, angpix={self.angpix:g}, "
                f"optics_groups={list(self._optics)}, source={self._src!r})")

    def close(self) -> None:
        for st in self._stacks.values():
            st.close()
        self._stacks.clear()

    # ------------------------------------------------------------------ per-particle values
    def _optics_value(self, attr: str, col: str, idx: np.ndarray) -> np.ndarray:
        t = self._table
        if col in t.columns:  # per-particle value (RELION 3.0 files with varying values)
            return t[col].to_numpy(np.float64)[idx]
        vals = []
        for g in self._optics.values():
            v = getattr(g, attr)
            if v is None:
                raise InputError(f"optics group {g.number} has no {col} (needed for the CTF)",
                                 file=self._src, field=col)
            vals.append(v)
        return np.asarray(vals, np.float64)[self._group_index[idx]]

    def ctf_params(self, indices=None) -> dict[str, np.ndarray]:
        """CTF parameters per particle: defocus_u, defocus_v [A], defocus_angle [deg],
        voltage [kV], cs [mm], amp_contrast, phase_shift [deg], bfactor [A^2], angpix [A].

        rlnDefocusU is required; rlnDefocusV defaults to U, rlnDefocusAngle, rlnPhaseShift
        and rlnCtfBfactor to 0."""
        idx = self._idx(indices)
        t, src = self._table, self._src
        if "rlnDefocusU" not in t.columns:
            raise InputError("data_particles has no rlnDefocusU column (needed for the CTF)",
                             file=src, field="rlnDefocusU")
        du = t["rlnDefocusU"].to_numpy(np.float64)[idx]
        out = {
            "defocus_u": du,
            "defocus_v": t["rlnDefocusV"].to_numpy(np.float64)[idx] if "rlnDefocusV" in t.columns
            else du.copy(),
            "defocus_angle": _col(t, "rlnDefocusAngle", 0.0)[idx],
            "voltage": self._optics_value("voltage", "rlnVoltage", idx),
            "cs": self._optics_value("cs", "rlnSphericalAberration", idx),
            "amp_contrast": self._optics_value("amp_contrast", "rlnAmplitudeContrast", idx),
            "phase_shift": _col(t, "rlnPhaseShift", 0.0)[idx],
            "bfactor": _col(t, "rlnCtfBfactor", 0.0)[idx],
            "angpix": np.asarray([g.angpix for g in self._optics.values()],
                                 np.float64)[self._group_index[idx]],
        }
        cols = {"defocus_u": "rlnDefocusU", "defocus_v": "rlnDefocusV",
                "defocus_angle": "rlnDefocusAngle", "voltage": "rlnVoltage",
                "cs": "rlnSphericalAberration", "amp_contrast": "rlnAmplitudeContrast",
                "phase_shift": "rlnPhaseShift", "bfactor": "rlnCtfBfactor"}
        for k, c in cols.items():
            v = out[k]
            bad = ~np.isfinite(v)
            if bad.any():
                i = int(idx[np.flatnonzero(bad)[0]])
                raise InputError(f"particle {i + 1} has a non-finite {c}", file=src, field=c)
        if np.any(out["voltage"] <= 0):
            raise InputError("voltage must be positive (kV)", file=src, field="rlnVoltage")
        return out

    def poses(self, indices=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rot, tilt, psi) in degrees per particle; zeros where absent."""
        idx = self._idx(indices)
        t = self._table
        return tuple(_col(t, c, 0.0)[idx] for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"))

    def origins_angst(self, indices=None) -> np.ndarray:
        """(B, 2) origins (x, y) in Angstrom; zeros where absent."""
        idx = self._idx(indices)
        t = self._table
        return np.stack([_col(t, "rlnOriginXAngst", 0.0)[idx], _col(t, "rlnOriginYAngst", 0.0)[idx]],
                        axis=1)

    def origins_px(self, indices=None) -> np.ndarray:
        """(B, 2) origins (x, y) in pixels (rlnOriginX/YAngst / pixel size); zeros where absent."""
        idx = self._idx(indices)
        px = np.asarray([g.angpix for g in self._optics.values()], np.float64)[self._group_index[idx]]
        return self.origins_angst(idx) / px[:, None]

    def random_subset(self, indices=None) -> np.ndarray | None:
        t = self._table
        return None if "rlnRandomSubset" not in t.columns else \
            t["rlnRandomSubset"].to_numpy(np.int64)[self._idx(indices)]

    def class_numbers(self, indices=None) -> np.ndarray | None:
        t = self._table
        return None if "rlnClassNumber" not in t.columns else \
            t["rlnClassNumber"].to_numpy(np.int64)[self._idx(indices)]

    def optics_group_index(self, indices=None) -> np.ndarray:
        """0-based index of each particle's optics group (in order of group number)."""
        return self._group_index[self._idx(indices)]

    # ------------------------------------------------------------------ derived sets
    def _derive(self, table: pd.DataFrame, rows: np.ndarray | None) -> "ParticleSet":
        new = object.__new__(ParticleSet)
        new.star_path, new._src = self.star_path, self._src
        new._table = table.reset_index(drop=True)
        new._optics_table = self._optics_table
        new._optics, new._box, new._angpix = self._optics, self._box, self._angpix
        new._stacks = OrderedDict()
        new._stack_paths = self._stack_paths
        sel = slice(None) if rows is None else rows
        new._memory = None if self._memory is None else self._memory[sel]
        new._stack_id, new._image_index = self._stack_id[sel], self._image_index[sel]
        new._group_index = self._group_index[sel]
        return new

    def subset(self, indices) -> "ParticleSet":
        """A ParticleSet of the rows at ``indices`` (in that order)."""
        idx = self._idx(indices)
        return self._derive(self._table.iloc[idx], idx)

    def with_columns(self, **cols) -> "ParticleSet":
        """A copy with particle columns set (arrays of length n, or scalars)."""
        t = self._table.copy()
        for k, v in cols.items():
            if np.ndim(v) and len(v) != self.n:
                raise ValueError(f"with_columns: {k} has {len(v)} values for {self.n} particles")
            t[k] = v
        if "rlnImageName" in cols or "rlnOpticsGroup" in cols:
            return ParticleSet(t, self._optics_table, star_path=self.star_path, angpix=self._angpix,
                               images=self._memory)
        return self._derive(t, None)

    # ------------------------------------------------------------------ writing
    def write(self, path: str | os.PathLike) -> None:
        """Write optics + particles blocks atomically (image names unchanged).

        An in-memory set (from_arrays without a path) also writes its images to
        ``<stem>.mrcs`` beside the STAR file."""
        table = self._table
        if self._memory is not None:
            path = Path(path)
            stack = path.with_suffix(".mrcs")
            write_mrc(stack, self._memory, self._angpix, stack=True)
            table = table.copy()
            table["rlnImageName"] = [f"{i + 1:06d}@{stack.name}" for i in range(self.n)]
        write_star(path, {"optics": self._optics_table, "particles": table})

    @classmethod
    def from_arrays(cls, images: np.ndarray, angpix: float, *, star_path=None,
                    defocus_u=None, defocus_v=None, defocus_angle=None, phase_shift=None,
                    bfactor=None, voltage: float = 300.0, cs: float = 2.7,
                    amp_contrast: float = 0.1, rot=None, tilt=None, psi=None, origins=None,
                    class_numbers=None, random_subset=None, extra: dict | None = None,
                    dtype=np.float32) -> "ParticleSet":
        """Build a particle set from arrays (one optics group). ``origins`` is (N, 2) (x, y) in
        Angstrom. With ``star_path`` the images go to ``<stem>.mrcs`` beside the STAR file
        (names relative to the STAR folder) and the set is read back from disk; without,
        it lives in memory."""
        images = np.asarray(images, dtype=np.float32)
        if images.ndim == 2:
            images = images[None]
        if images.ndim != 3 or images.shape[1] != images.shape[2]:
            raise ValueError(f"from_arrays: images must be (N, n, n), got {images.shape}")
        n, box = images.shape[0], images.shape[1]
        optics = pd.DataFrame({
            "rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
            "rlnMicrographOriginalPixelSize": [float(angpix)], "rlnVoltage": [float(voltage)],
            "rlnSphericalAberration": [float(cs)], "rlnAmplitudeContrast": [float(amp_contrast)],
            "rlnImagePixelSize": [float(angpix)], "rlnImageSize": [int(box)],
            "rlnImageDimensionality": [2]})
        cols: dict[str, object] = {}
        stack_name = None
        if star_path is not None:
            stack_name = Path(star_path).with_suffix(".mrcs").name
            cols["rlnImageName"] = [f"{i + 1:06d}@{stack_name}" for i in range(n)]
        else:
            cols["rlnImageName"] = [f"{i + 1:06d}@<memory>" for i in range(n)]

        def put(name, v, dt=np.float64):
            if v is not None:
                a = np.broadcast_to(np.asarray(v, dtype=dt), (n,))
                cols[name] = np.array(a)

        put("rlnDefocusU", defocus_u)
        put("rlnDefocusV", defocus_v if defocus_v is not None or defocus_u is None else defocus_u)
        put("rlnDefocusAngle", defocus_angle if defocus_angle is not None or defocus_u is None else 0.0)
        put("rlnPhaseShift", phase_shift)
        put("rlnCtfBfactor", bfactor)
        put("rlnAngleRot", rot)
        put("rlnAngleTilt", tilt)
        put("rlnAnglePsi", psi)
        if origins is not None:
            o = np.asarray(origins, np.float64).reshape(n, 2)
            cols["rlnOriginXAngst"], cols["rlnOriginYAngst"] = o[:, 0].copy(), o[:, 1].copy()
        put("rlnClassNumber", class_numbers, np.int64)
        put("rlnRandomSubset", random_subset, np.int64)
        cols["rlnOpticsGroup"] = np.ones(n, np.int64)
        for k, v in (extra or {}).items():
            cols[k] = v
        table = pd.DataFrame(cols)
        if star_path is None:
            return cls(table, optics, images=images)
        star_path = Path(star_path)
        write_mrc(star_path.parent / stack_name, images, angpix, stack=True, dtype=dtype)
        write_star(star_path, {"optics": optics, "particles": table})
        return cls.read(star_path)


def write_particle_stack(star_path: str | os.PathLike, images: np.ndarray, angpix: float,
                         **kwargs) -> ParticleSet:
    """Write ``<stem>.mrcs`` + ``star_path`` (one optics group) and return the ParticleSet.

    Keyword arguments as :meth:`ParticleSet.from_arrays` (defocus_u/v/angle [A, deg],
    voltage [kV], cs [mm], amp_contrast, phase_shift, rot/tilt/psi [deg], origins (N, 2)
    [A], class_numbers, random_subset, extra columns)."""
    return ParticleSet.from_arrays(images, angpix, star_path=star_path, **kwargs)
