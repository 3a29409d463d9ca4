"""RELION's rlnImageName: ``NNNNNN@stack.mrcs`` with a 1-based index; a relative stack path is looked
up from the working directory (the project folder) and, failing that, from the STAR file's folder."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from hpcem.errors import InputError


def _resolve_stack(name: str, star_dir: Path) -> Path | None:
    p = Path(name)
    if p.is_absolute():
        return p if p.is_file() else None
    for base in (Path.cwd(), star_dir):
        q = base / p
        if q.is_file():
            return q.resolve()
    return None


def parse_image_names(column: pd.Series, src: str, star_path: str | None):
    """(stack paths, stack id per particle, 0-based image index per particle) of a
    rlnImageName column (``NNNNNN@stack``, or a bare file for single images)."""
    names = column.astype(str)
    if column.isna().any():
        i = int(np.flatnonzero(column.isna().to_numpy())[0])
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
    star_dir = Path(star_path).parent if star_path else Path.cwd()
    paths = []
    for s in uniques:
        p = _resolve_stack(str(s), star_dir)
        if p is None:
            raise InputError(f"image stack {s!r} not found (looked in the working directory "
                             f"{Path.cwd()} and the STAR file's folder {star_dir})",
                             file=src, field=f"rlnImageName ({s})")
        paths.append(str(p))
    return paths, codes.astype(np.int64), index.astype(np.int64) - 1


def portable_image_names(column: pd.Series, star_path: str | None) -> pd.Series:
    """``column`` with every stack readable from the working directory, where RELION resolves
    image names (the project folder): names that resolve from it, and absolute names, are kept;
    a name that resolved from the STAR file's folder becomes relative to the working directory
    when the stack lies under it, absolute otherwise.  So a data STAR written into another job's
    folder still finds the stacks of a particle file whose names were relative to its own folder."""
    if star_path is None:
        return column
    names = column.astype(str)
    parts = names.str.split("@", n=1, expand=True)
    if parts.shape[1] < 2:
        return column
    has_at = parts[1].notna()
    stacks = parts[1].where(has_at, parts[0])
    star_dir, cwd = Path(star_path).parent, Path.cwd()
    fixed = {}
    for s in stacks.unique():
        p = Path(s)
        if p.is_absolute() or (cwd / p).is_file() or not (star_dir / p).is_file():
            fixed[s] = s
            continue
        q = (star_dir / p).resolve()
        try:
            fixed[s] = str(q.relative_to(cwd.resolve()))
        except ValueError:
            fixed[s] = str(q)
    if all(fixed[s] == s for s in fixed):
        return column
    new = stacks.map(fixed)
    return (parts[0] + "@" + new).where(has_at, new)
