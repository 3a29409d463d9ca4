"""Argument checks shared by every kernel wrapper, for numpy and cupy arrays alike.

One error type, :class:`KernelArgumentError`, and one checker, :class:`Args`, bound to a
kernel's name and its array namespace (numpy or cupy): every message reads
``<kernel>: <argument>: <problem>``.  The compiled kernels trust what passes here.
"""
from __future__ import annotations

import numpy as np


class KernelArgumentError(TypeError, ValueError):
    """An argument handed to a kernel has the wrong type, dtype, shape, layout or value.

    It subclasses both TypeError (wrong type or dtype) and ValueError (wrong shape, layout
    or value), so callers catching either keep working; the message names the kernel and
    the argument."""


def is_cupy(a) -> bool:
    """True when ``a`` is a cupy object (judged by its type's module; cupy is not imported)."""
    m = type(a).__module__
    return m == "cupy" or m.startswith("cupy.")


def _dtype_names(dts) -> str:
    return " or ".join(np.dtype(d).name for d in dts)


class Args:
    """The checks of one kernel call.

    ``kernel`` names the call in messages; ``xp`` is the array namespace of its arrays
    (numpy: the CPU kernels, cupy: the CUDA ones)."""

    __slots__ = ("kernel", "xp")

    def __init__(self, kernel: str, xp=np):
        self.kernel = kernel
        self.xp = xp

    @property
    def gpu(self) -> bool:
        return self.xp is not np

    def fail(self, msg: str):
        raise KernelArgumentError(f"{self.kernel}: {msg}")

    def same_side(self, a, name: str):
        """A cupy array given where the call's arrays are numpy ones."""
        if not self.gpu and is_cupy(a):
            self.fail(f"{name}: a cupy array among numpy inputs (mixing numpy and cupy arrays)")

    def array(self, a, name: str, dtype, *, ndim=None, shape=None, strided: str = "reject",
              writeable: bool = False, convert: bool = False):
        """``a`` checked: an array of this call's namespace of exactly ``dtype`` (or one of a
        tuple of dtypes), with ``ndim`` dimensions / exactly ``shape`` (a tuple),
        C-contiguous.

        ``strided``: "reject" a non-contiguous array, or "copy" it (inputs only; an output
        updated in place is never copied).  ``writeable``: updated in place (numpy arrays
        must be writeable).  ``convert``: accept array-likes and, for cupy calls, host
        arrays (moved to the device) - the dtype still has to match."""
        xp = self.xp
        if not isinstance(a, xp.ndarray):
            self.same_side(a, name)
            if not convert:
                self.fail(f"{name}: expected a {xp.__name__} array, got {type(a).__name__}")
            a = xp.asarray(a)
        if not (a.dtype in dtype if isinstance(dtype, tuple) else a.dtype == dtype):
            dts = dtype if isinstance(dtype, tuple) else (dtype,)
            self.fail(f"{name}: dtype must be {_dtype_names(dts)}, got {a.dtype}")
        if ndim is not None and a.ndim != ndim:
            self.fail(f"{name}: must have {ndim} dimensions, got shape {tuple(a.shape)}")
        if shape is not None and tuple(a.shape) != shape:
            self.fail(f"{name}: shape must be {tuple(shape)}, got {tuple(a.shape)}")
        flags = a.flags
        if not flags.c_contiguous:
            if strided != "copy":
                what = " (updated in place)" if writeable else ""
                self.fail(f"{name}: must be C-contiguous{what}")
            a = xp.ascontiguousarray(a)
        if writeable and xp is np and not flags.writeable:
            self.fail(f"{name}: must be writeable (updated in place)")
        return a

    def cast(self, a, name: str, dtype, *, ndim=None, shape=None):
        """``a`` converted to a C-contiguous ``dtype`` array of this call's namespace (small
        inputs: rotations, priors; host arrays move to the device for cupy calls)."""
        self.same_side(a, name)
        try:
            out = self.xp.ascontiguousarray(self.xp.asarray(a, dtype=dtype))
        except (TypeError, ValueError) as e:
            self.fail(f"{name}: cannot be read as {np.dtype(dtype).name}: {e}")
        if ndim is not None and out.ndim != ndim:
            self.fail(f"{name}: must have {ndim} dimensions, got shape {tuple(out.shape)}")
        if shape is not None and tuple(out.shape) != tuple(shape):
            self.fail(f"{name}: shape must be {tuple(shape)}, got {tuple(out.shape)}")
        return out

    def index(self, a, name: str, *, size=None, bound=None):
        """A 1-D int64 index array (any integer dtype, or empty) of this call's namespace,
        of length ``size`` and with values in ``[0, bound)`` when given."""
        self.same_side(a, name)
        a = self.xp.asarray(a)
        if a.ndim != 1 or not (a.dtype.kind in "iu" or a.size == 0):
            self.fail(f"{name}: expected a 1-D integer array, got {a.dtype} {tuple(a.shape)}")
        a = self.xp.ascontiguousarray(a, dtype=np.int64)
        if size is not None and a.shape[0] != size:
            self.fail(f"{name}: shape must be ({size},), got {tuple(a.shape)}")
        if bound is not None and a.size and (int(a.min()) < 0 or int(a.max()) >= bound):
            self.fail(f"{name}: values must lie in [0, {bound})")
        return a

    def number(self, v, name: str, *, positive: bool = False) -> float:
        """A finite real number, >= 0 (``positive``: > 0)."""
        try:
            x = float(v)
        except (TypeError, ValueError):
            self.fail(f"{name}: expected a real number, got {v!r}")
        ok = np.isfinite(x) and (x > 0 if positive else x >= 0)
        if not ok:
            self.fail(f"{name}: must be finite and {'>' if positive else '>='} 0, got {v}")
        return x

    def fraction(self, frac) -> float:
        """A probability mass in (0, 1]."""
        try:
            x = float(frac)
        except (TypeError, ValueError):
            self.fail(f"frac: expected a real number, got {frac!r}")
        if not (0.0 < x <= 1.0):
            self.fail(f"frac: must be in (0, 1], got {frac}")
        return x

    def count(self, v, name: str, *, minimum: int = 0) -> int:
        """An integer >= ``minimum`` (sizes, thread counts)."""
        try:
            ok = int(v) == v
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not (ok and int(v) >= minimum):
            self.fail(f"{name}: must be an integer >= {minimum}, got {v!r}")
        return int(v)
