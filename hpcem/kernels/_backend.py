"""Backend selection: the only module that imports the compiled kernels.

numpy arrays go to ``hpcem._core`` (C++/OpenMP), cupy arrays to ``hpcem._cuda`` (CUDA,
built only where a CUDA toolkit was found; device pointers and cupy's current stream in).
Also the host/device moves and the thread-count controls of the CPU kernels.
"""
from __future__ import annotations

import numpy as np

from hpcem import _core

from ._checks import Args, KernelArgumentError, is_cupy
from .emulated import is_emulated, xp as emulated_xp

try:  # built only where a CUDA toolkit was found
    from hpcem import _cuda
except ImportError:  # pragma: no cover - depends on the build
    _cuda = None


def _cupy():
    try:
        import cupy
    except ImportError:
        raise KernelArgumentError("cupy arrays given but cupy cannot be imported") from None
    return cupy


def array_namespace(*arrays):
    """The array module of the arrays: numpy, or cupy when they are cupy arrays, or the emulated
    GPU's namespace (:mod:`.emulated`) for its arrays (None entries are ignored).
    KernelArgumentError when host and device arrays are mixed."""
    if any(map(is_emulated, arrays)):
        if not all(is_emulated(a) for a in arrays if a is not None):
            raise KernelArgumentError("mixing host and emulated-device arrays")
        return emulated_xp
    flags = [is_cupy(a) for a in arrays if a is not None]
    if not any(flags):
        return np
    if not all(flags):
        raise KernelArgumentError("mixing numpy and cupy arrays in one kernel call")
    return _cupy()


def args_for(kernel: str, **arrays) -> Args:
    """The checker of one kernel call whose backend is chosen by ``arrays`` (name=array):
    numpy -> hpcem._core, cupy -> hpcem._cuda (which must have been built)."""
    if not any(map(is_cupy, arrays.values())):  # the common case first: all numpy
        return Args(kernel, np)
    flags = {name: is_cupy(a) for name, a in arrays.items() if a is not None}
    if not all(flags.values()):
        cp = ", ".join(n for n, f in flags.items() if f)
        host = ", ".join(n for n, f in flags.items() if not f)
        raise KernelArgumentError(f"{kernel}: mixing numpy and cupy arrays (cupy: {cp}; numpy: {host})")
    if _cuda is None:
        raise KernelArgumentError(f"{kernel}: cupy arrays given but hpcem._cuda was not built "
                                  "(no CUDA toolkit at build time)")
    return Args(kernel, _cupy())


def core(name: str, *args):
    """``hpcem._core.<name>(*args)``; an argument error raised by the compiled code (one that
    the Python checks let through) comes back as KernelArgumentError."""
    try:
        return getattr(_core, name)(*args)
    except (TypeError, ValueError) as e:
        raise KernelArgumentError(f"{name}: {e}") from e


def stream_ptr() -> int:
    """cupy's current CUDA stream, as the integer handle the _cuda entry points take."""
    return _cupy().cuda.get_current_stream().ptr


def cuda(name: str, *args):
    """``hpcem._cuda.<name>(*args, stream)``: cupy arrays are passed as device pointers,
    None as a null pointer, and cupy's current stream is appended."""
    conv = [0 if a is None else (a.data.ptr if is_cupy(a) else a) for a in args]
    return getattr(_cuda, name)(*conv, stream_ptr())


def to_host(a) -> np.ndarray:
    """A numpy array from a numpy array (returned as is), a cupy array (copied to the host)
    or an array-like."""
    return a.get() if is_cupy(a) or is_emulated(a) else np.asarray(a)


def to_device(a):
    """A cupy array from a host array (copied) or a cupy array (returned as is)."""
    return _cupy().asarray(a)


def has_cuda() -> bool:
    """True when hpcem._cuda was built, cupy imports and a CUDA device is present. Never raises."""
    if _cuda is None:
        return False
    try:
        import cupy

        return bool(cupy.cuda.runtime.getDeviceCount() > 0 and _cuda.device_count() > 0)
    except Exception:  # no driver, no device, broken cupy install: no GPU path
        return False


def set_threads(n: int) -> None:
    """Threads of the CPU kernels, process-wide: OpenMP's (``omp_set_num_threads``) and those of the
    OpenBLAS the kernels' SGEMMs call (scipy's; ``_core.blas_threads()`` reads it, -1 for another BLAS)
    and scipy.fft's workers (``core.fourier.fft_workers``)."""
    from ..core.fourier import set_fft_workers

    n = Args("set_threads").count(n, "n", minimum=1)
    _core.set_threads(n)
    set_fft_workers(n)


def max_threads() -> int:
    """OpenMP threads the CPU kernels use (``omp_get_max_threads``)."""
    return int(_core.max_threads())
