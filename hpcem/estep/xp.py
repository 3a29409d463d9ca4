"""Array-namespace helpers for the E-step: the few operations whose numpy and cupy spellings
differ (ragged repeats, stable sorts, scatter-adds).  Everything else in :mod:`hpcem.estep` is
written as ``xp.<numpy name>`` with ``xp = namespace(*arrays)``, so that a batch whose arrays
live on a GPU (cupy) stays there."""
from __future__ import annotations

import numpy as np

from ..kernels import array_namespace as namespace  # noqa: F401  (re-exported)


def is_numpy(xp) -> bool:
    return xp is np


def repeat(xp, values, counts):
    """``numpy.repeat(values, counts)`` with an array of counts (cupy's repeat takes only host
    counts: a sorted search over the segment ends does it on the device)."""
    counts = xp.asarray(counts, dtype=xp.int64)
    if is_numpy(xp):
        return np.repeat(values, counts)
    ends = xp.cumsum(counts)
    total = int(ends[-1]) if counts.size else 0
    seg = xp.searchsorted(ends, xp.arange(total, dtype=xp.int64), side="right")
    return xp.asarray(values)[seg]


def argsort_stable(xp, a, axis=-1):
    """Stable argsort (cupy's sort is always stable and takes no ``kind``)."""
    return np.argsort(a, axis=axis, kind="stable") if is_numpy(xp) else xp.argsort(a, axis=axis)


def lexsort(xp, keys):
    """Indices sorting by the last key, then the one before, ... (numpy's lexsort order)."""
    return xp.lexsort(xp.stack([xp.asarray(k) for k in keys]))


def add_at(xp, target, index, values):
    """Unbuffered ``target[index] += values`` (repeated indices accumulate)."""
    if is_numpy(xp):
        np.add.at(target, index, values)
    else:
        _cupyx(xp).scatter_add(target, index, values)


def _cupyx(xp):
    """cupyx (the emulated GPU of hpcem.kernels.emulated carries its own)."""
    if hasattr(xp, "cupyx"):
        return xp.cupyx
    import cupyx

    return cupyx
