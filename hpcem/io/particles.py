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
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from hpcem.errors import InputError
from hpcem.io.mrc import MrcStack, read_header, write_mrc
from hpcem.io.image_names import parse_image_names, portable_image_names
from hpcem.io.optics import OpticsGroup, build_optics, convert_relion30, mixed_groups_note
from hpcem.io.particle_columns import ParticleColumns, check_numeric
from hpcem.io.resample import resample
from hpcem.io.star import read_star, write_star

_MAX_OPEN_STACKS = 64


class ParticleSet(ParticleColumns):
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
        check_numeric(self._table, self._src, "data_particles")
        check_numeric(self._optics_table, self._src, "data_optics")
        self._stacks: OrderedDict[str, MrcStack] = OrderedDict()
        self._optics_table, self._optics, self._box, self._angpix = build_optics(self._optics_table, self._src, angpix)
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
            table, optics = convert_relion30(blocks[name], path, angpix)
        ps = cls(table, optics, star_path=path, angpix=angpix, validate_stacks=validate_stacks)
        if ctf:
            ps.ctf_params()  # presence and finiteness of the CTF columns
        return ps

    # ------------------------------------------------------------------ validation
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
        self._stack_paths, self._stack_id, self._image_index = parse_image_names(
            self._table["rlnImageName"], self._src, self.star_path)
        if validate_stacks:
            self._validate_stacks()

    def _validate_stacks(self) -> None:
        maxidx = np.full(len(self._stack_paths), -1, np.int64)
        np.maximum.at(maxidx, self._stack_id, self._image_index)
        groups = list(self._optics.values())
        boxes = {}
        for sid, p in enumerate(self._stack_paths):
            h = read_header(p, require_square=True)
            n = 1 if h.nz < 1 else h.nz
            if maxidx[sid] >= n:
                raise InputError(f"image index {maxidx[sid] + 1} is beyond the stack's {n} images",
                                 file=p, field="rlnImageName")
            for gi in np.unique(self._group_index[self._stack_id == sid]):
                want = groups[gi].box or boxes.get(gi, h.nx)
                if h.nx != want:
                    raise InputError(f"stack images are {h.nx} px but optics group {groups[gi].number} says "
                                     f"rlnImageSize {want}", file=p, field="rlnImageSize")
                boxes[gi] = h.nx
        if self._box == 0 and not self._stack_paths:
            raise InputError("no particles and no rlnImageSize", file=self._src, field="rlnImageSize")
        if any(g.box == 0 for g in groups):   # e.g. converted RELION 3.0 files: boxes from the stacks
            self._optics = {g.number: replace(g, box=boxes.get(i, g.box)) for i, g in enumerate(groups)}
            self._box = self._optics[min(self._optics)].box
            ot = self._optics_table.copy()
            ot["rlnImageSize"] = [g.box for g in self._optics.values()]
            if "rlnImageDimensionality" not in ot.columns:
                ot["rlnImageDimensionality"] = 2
            self._optics_table = ot
        note = mixed_groups_note(self._optics, self._box, self._angpix)
        if note:
            warnings.warn(f"{self._src}: {note}", UserWarning, stacklevel=3)

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
    def _mixed(self) -> bool:
        """Whether some optics group's pixel size differs from the common grid's."""
        return any(abs(g.angpix - self._angpix) > 1e-6 * self._angpix for g in self._optics.values())

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
        """Images of the particles at ``indices`` (0-based rows) as float32 (B, box, box), on the
        common grid (images of optics groups with another pixel or box size are resampled)."""
        idx = self._idx(indices)
        if self._memory is not None:
            return np.array(self._memory[idx], dtype=np.float32)
        out = np.empty((idx.size, self.box, self.box), np.float32)
        sids = self._stack_id[idx]
        groups = list(self._optics.values())
        for sid in np.unique(sids):
            where = np.flatnonzero(sids == sid)
            imgs = self._stack(int(sid)).read(self._image_index[idx[where]])
            if imgs.shape[-1] == self.box and not self._mixed:
                out[where] = imgs
                continue
            gi = self._group_index[idx[where]]
            for g in np.unique(gi):   # a stack's images normally share one group
                w = gi == g
                out[where[w]] = resample(imgs[w], groups[g].angpix, self.box, self.angpix)
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
    @classmethod
    def from_arrays(cls, images, angpix: float, **kw) -> "ParticleSet":
        """A set of images (N, n, n) with one optics group (see
        :func:`hpcem.io.particles_make.particles_from_arrays` for the keywords)."""
        from hpcem.io.particles_make import particles_from_arrays

        return particles_from_arrays(cls, images, angpix, **kw)

    def write(self, path: str | os.PathLike) -> None:
        """Write optics + particles blocks atomically, image names readable from the working
        directory (:func:`hpcem.io.image_names.portable_image_names`).

        An in-memory set (from_arrays without a path) also writes its images to
        ``<stem>.mrcs`` beside the STAR file."""
        table = self._table
        if self._memory is None and "rlnImageName" in table.columns:
            names = portable_image_names(table["rlnImageName"], self.star_path)
            if names is not table["rlnImageName"]:
                table = table.copy()
                table["rlnImageName"] = names.to_numpy()
        if self._memory is not None:
            path = Path(path)
            stack = path.with_suffix(".mrcs")
            write_mrc(stack, self._memory, self._angpix, stack=True)
            table = table.copy()
            table["rlnImageName"] = [f"{i + 1:06d}@{stack.name}" for i in range(self.n)]
        write_star(path, {"optics": self._optics_table, "particles": table})



def write_particle_stack(star_path, images, angpix: float, **kwargs) -> ParticleSet:
    """Write ``<stem>.mrcs`` + ``star_path`` (one optics group) and return the ParticleSet
    (keywords as :meth:`ParticleSet.from_arrays`)."""
    return ParticleSet.from_arrays(images, angpix, star_path=star_path, **kwargs)
