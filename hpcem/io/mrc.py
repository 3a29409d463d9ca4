"""MRC images, stacks and volumes (MRC2014, via mrcfile).

Supported modes: 0 int8, 1 int16, 2 float32, 6 uint16, 12 float16. Everything is
returned as float32. Headers are checked before any data is touched: a missing file,
a file shorter than its header promises, an unsupported mode or (for particle stacks)
non-square images raise :class:`hpcem.errors.InputError` naming the file and field.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np

from hpcem.errors import InputError
from hpcem.io.atomic import atomic_write

MODE_DTYPES = {
    0: np.dtype(np.int8),
    1: np.dtype(np.int16),
    2: np.dtype(np.float32),
    6: np.dtype(np.uint16),
    12: np.dtype(np.float16),
}
HEADER_BYTES = 1024


@dataclass(frozen=True)
class MrcHeader:
    """The header fields hpcem uses. ``nx, ny, nz`` as in the file (columns, rows, sections)."""

    path: str
    nx: int
    ny: int
    nz: int
    mode: int
    angpix: float
    ispg: int
    nsymbt: int

    @property
    def dtype(self) -> np.dtype:
        return MODE_DTYPES[self.mode]

    @property
    def expected_bytes(self) -> int:
        return HEADER_BYTES + self.nsymbt + self.nx * self.ny * self.nz * self.dtype.itemsize


_WARNED: set = set()


def _check_pre2014(p: Path, size: int, nx: int, ny: int, nz: int, mode: int, nsymbt: int) -> None:
    """A header without MRC2014's 'MAP ' identifier (older programs and converters write such
    files; RELION reads them) is accepted, with one warning per file, when its mode is known and
    its sizes account for the file's bytes exactly; anything else is not an MRC file."""
    ok = mode in MODE_DTYPES and nx > 0 and ny > 0 and nz > 0 and 0 <= nsymbt < size
    expected = HEADER_BYTES + nsymbt + nx * ny * nz * MODE_DTYPES[mode].itemsize if ok else -1
    if expected != size:
        raise InputError("not an MRC file: no 'MAP ' identifier in the header, and its sizes and mode do not "
                         "account for the file's %d bytes" % size, file=str(p), field="header")
    if str(p) not in _WARNED:
        _WARNED.add(str(p))
        warnings.warn("%s: no 'MAP ' identifier in the MRC header (a pre-2014 MRC file); read as its header "
                      "describes it: %d x %d x %d, mode %d" % (p, nx, ny, nz, mode), UserWarning, stacklevel=3)


def read_header(path: str | os.PathLike, require_square: bool = False) -> MrcHeader:
    """Read and validate an MRC header without touching the data block.

    A header without the MRC2014 'MAP ' identifier is read (one warning) when its sizes and mode
    match the file size.  Raises InputError for: missing file (field 'file'), not an MRC file ('header'),
    unsupported mode ('mode'), bad dimensions ('nx/ny/nz'), file shorter than the
    header says ('size'), and, with ``require_square``, nx != ny ('nx/ny').
    """
    p = Path(path)
    if not p.is_file():
        raise InputError("MRC file not found", file=str(p), field="file")
    size = p.stat().st_size
    if size < HEADER_BYTES:
        raise InputError(f"file is {size} bytes, shorter than the 1024-byte MRC header "
                         "(truncated or not an MRC file)", file=str(p), field="size")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(p, mode="r", header_only=True, permissive=True) as m:
                h = m.header
                map_id = bytes(h.map)
                nx, ny, nz = int(h.nx), int(h.ny), int(h.nz)
                mode = int(h.mode)
                ispg = int(h.ispg)
                nsymbt = int(h.nsymbt)
                vs = m.voxel_size
                angpix = float(vs.x)
    except Exception as exc:  # mrcfile could not even read a header
        raise InputError(f"cannot read MRC header ({exc})", file=str(p), field="header") from None
    if map_id != b"MAP ":
        _check_pre2014(p, size, nx, ny, nz, mode, nsymbt)
    if mode not in MODE_DTYPES:
        raise InputError(f"unsupported MRC mode {mode} (supported: 0 int8, 1 int16, 2 float32, "
                         "6 uint16, 12 float16)", file=str(p), field="mode")
    if nx <= 0 or ny <= 0 or nz <= 0 or nsymbt < 0:
        raise InputError(f"invalid dimensions nx={nx} ny={ny} nz={nz} nsymbt={nsymbt}",
                         file=str(p), field="nx/ny/nz")
    hdr = MrcHeader(str(p), nx, ny, nz, mode, angpix, ispg, nsymbt)
    if size < hdr.expected_bytes:
        raise InputError(f"truncated MRC: header promises {hdr.expected_bytes} bytes "
                         f"({nz} x {ny} x {nx} mode {mode}) but the file has {size}",
                         file=str(p), field="size")
    if require_square and nx != ny:
        raise InputError(f"images are not square ({nx} x {ny}); hpcem needs square images",
                         file=str(p), field="nx/ny")
    return hdr


def read_mrc(path: str | os.PathLike, require_square: bool = False) -> tuple[np.ndarray, float]:
    """Read a whole MRC file: (data as float32, pixel size in Angstrom).

    A single image comes back 2D (ny, nx); stacks and volumes 3D (nz, ny, nx).
    The pixel size is the header's voxel size along x (0.0 when unset).
    """
    hdr = read_header(path, require_square=require_square)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # the header was checked above; pre-2014 files warn there
            with mrcfile.mmap(path, mode="r", permissive=True) as m:
                data = np.array(m.data, dtype=np.float32)
    except Exception as exc:
        raise InputError(f"cannot read MRC data ({exc})", file=str(path), field="data") from None
    return data, hdr.angpix


def write_mrc(path: str | os.PathLike, data: np.ndarray, angpix: float, stack: bool = False,
              dtype=np.float32) -> None:
    """Write ``data`` atomically as an MRC file with voxel size ``angpix``.

    ``stack=True`` or a ``.mrcs`` suffix writes a 3D array (or a 2D one, as one image)
    as an image stack (ispg 0); otherwise a 3D array is a volume (ispg 1).
    ``dtype`` is float32 by default; float16, int8, int16 and uint16 are accepted too.
    """
    dt = np.dtype(dtype)
    if dt not in MODE_DTYPES.values():
        raise ValueError(f"write_mrc: unsupported dtype {dt}")
    arr = np.asarray(data)
    is_stack = bool(stack) or str(path).endswith(".mrcs")
    if is_stack and arr.ndim == 2:
        arr = arr[None]
    if arr.ndim not in (2, 3):
        raise ValueError(f"write_mrc: data must be 2D or 3D, got shape {arr.shape}")
    if dt.kind in "iu":
        info = np.iinfo(dt)
        arr = np.clip(np.rint(arr), info.min, info.max)
    arr = np.ascontiguousarray(arr, dtype=dt)
    with atomic_write(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as m:
            m.set_data(arr)
            if arr.ndim == 3:
                if is_stack:
                    m.set_image_stack()
                else:
                    m.set_volume()
            m.voxel_size = float(angpix)


class MrcStack:
    """Lazy, memory-mapped access to a stack of square images (may be larger than RAM).

    A single 2D image file is treated as a stack of one. ``read(indices)`` takes
    0-based indices and returns float32 ``(B, box, box)``; only those images are read.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self.header = read_header(self.path, require_square=True)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # checked by read_header
                self._mrc = mrcfile.mmap(self.path, mode="r", permissive=True)
        except Exception as exc:
            raise InputError(f"cannot map MRC data ({exc})", file=self.path, field="data") from None
        data = self._mrc.data
        self._data = data[None] if data.ndim == 2 else data

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self._data.shape)

    @property
    def n(self) -> int:
        return int(self._data.shape[0])

    @property
    def box(self) -> int:
        return int(self._data.shape[-1])

    @property
    def angpix(self) -> float:
        return self.header.angpix

    def __len__(self) -> int:
        return self.n

    def read(self, indices=None) -> np.ndarray:
        """Images at 0-based ``indices`` (int, sequence, slice or None for all) as float32."""
        if indices is None:
            return np.array(self._data, dtype=np.float32)
        if isinstance(indices, slice):
            return np.array(self._data[indices], dtype=np.float32)
        idx = np.atleast_1d(np.asarray(indices, dtype=np.int64))
        if idx.size == 0:
            return np.zeros((0, self.box, self.box), np.float32)
        bad = (idx < 0) | (idx >= self.n)
        if bad.any():
            i = int(idx[bad][0])
            raise InputError(f"image index {i + 1} (1-based) is beyond the stack's {self.n} images",
                             file=self.path, field="image index")
        uniq, inverse = np.unique(idx, return_inverse=True)
        if uniq.size == uniq[-1] - uniq[0] + 1:  # contiguous run: one slice read
            block = np.array(self._data[uniq[0]:uniq[-1] + 1], dtype=np.float32)
        else:
            block = np.array(self._data[uniq], dtype=np.float32)
        return block if uniq.size == idx.size and np.all(inverse == np.arange(idx.size)) \
            else block[inverse]

    def close(self) -> None:
        if self._mrc is not None:
            self._data = None
            self._mrc.close()
            self._mrc = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
