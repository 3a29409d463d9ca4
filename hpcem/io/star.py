"""STAR files (RELION style), via starfile.

``read_star`` always returns ``{block_name: DataFrame}`` (block names without the
``data_`` prefix; non-loop blocks become one-row DataFrames). ``write_star`` writes
atomically; loop columns come out as ``_rlnX #n`` like RELION's own files, and a
block given as a plain dict is written as a RELION key/value (non-loop) block.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import pandas as pd
import starfile

from hpcem.errors import InputError
from hpcem.io.atomic import atomic_write

FLOAT_FORMAT = "%.10g"


def _block_name(name: str) -> str:
    name = str(name)
    return name[5:] if name.startswith("data_") else name


def read_star(path: str | os.PathLike) -> dict[str, pd.DataFrame]:
    """Read every data block of a STAR file into ``{name: DataFrame}``."""
    p = Path(path)
    if not p.is_file():
        raise InputError("STAR file not found", file=str(p), field="file")
    try:
        raw = starfile.read(p, always_dict=True)
    except Exception as exc:
        raise InputError(f"cannot parse STAR file ({type(exc).__name__}: {exc})",
                         file=str(p), field="format") from None
    if isinstance(raw, pd.DataFrame):  # older starfile versions, single block
        raw = {"": raw}
    if not raw:
        raise InputError("no data_ blocks found: not a STAR file", file=str(p), field="format")
    out: dict[str, pd.DataFrame] = {}
    for name, block in raw.items():
        if isinstance(block, pd.DataFrame):
            df = block.reset_index(drop=True)
        elif isinstance(block, Mapping):
            df = pd.DataFrame({k: [v] for k, v in block.items()})
        else:
            raise InputError(f"unexpected block type {type(block).__name__}",
                             file=str(p), field=f"data_{name}")
        out[_block_name(name)] = df
    return out


def write_star(path: str | os.PathLike, blocks: Mapping[str, object]) -> None:
    """Write ``{name: DataFrame | dict}`` as a STAR file, atomically.

    Names may be given with or without ``data_`` (``optics``, ``particles``,
    ``model_general`` ...). Column names may carry a leading underscore or not.
    """
    clean: dict[str, object] = {}
    for name, block in blocks.items():
        if isinstance(block, pd.DataFrame):
            b = block.rename(columns=lambda c: str(c).lstrip("_")).reset_index(drop=True)
        elif isinstance(block, Mapping):
            b = {str(k).lstrip("_"): (v.item() if hasattr(v, "item") else v) for k, v in block.items()}
        else:
            raise TypeError(f"write_star: block {name!r} must be a DataFrame or dict")
        clean[_block_name(name)] = b
    with atomic_write(path) as tmp:
        starfile.write(clean, tmp, float_format=FLOAT_FORMAT)
