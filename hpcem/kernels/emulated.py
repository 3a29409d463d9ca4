"""An emulated GPU: the device code path of hpcem on a machine without one.

Device arrays are :class:`EmulatedArray` objects (a numpy array inside) with cupy's rules: a
host numpy array never mixes with them (``TypeError``, as cupy raises), ``numpy.asarray(dev)``
refuses with cupy's message, ``.get()`` copies to the host, reductions return 0-d device arrays,
sorts are stable.  :data:`xp` is their array namespace (cupy's spelling: ``xp.asarray`` copies a
host array to the device, ``xp.asnumpy`` back, ``xp.cupyx.scatter_add``), and the kernels of
:mod:`hpcem.kernels` take them (:func:`device_aware`: host arrays allowed only where the cupy
path also copies them, e.g. rotations and index lists) and run the CPU code on them.  Every
host-to-device and device-to-host copy is counted in :data:`TRAFFIC`.

So a job run with the emulated device (``HPCEM_GPU_EMULATE=1 hpcem class2d --gpu ...``, or
:func:`hpcem.runtime.device.emulated_device`) exercises exactly the placement decisions and the
array-namespace code that a real GPU runs, with the CPU kernels' results, and measures what
crosses the bus.  It is a test instrument, not a backend: it is as slow as the CPU.
"""
from __future__ import annotations

import functools
import inspect
import operator
from dataclasses import fields, is_dataclass

import numpy as np

HOST_MIX = ("hpcem emulated device: a host numpy array where a device array is needed (cupy refuses "
            "this too; move it with xp.asarray or keep it on the device)")


class Traffic:
    """Bytes and copies between the host and the emulated device."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.h2d_bytes = self.d2h_bytes = self.h2d_copies = self.d2h_copies = 0
        self.round_trip_h2d = self.round_trip_d2h = 0   # of the above: kernels without a device path

    def h2d(self, nbytes: int):
        self.h2d_bytes += int(nbytes)
        self.h2d_copies += 1

    def d2h(self, nbytes: int):
        self.d2h_bytes += int(nbytes)
        self.d2h_copies += 1

    def snapshot(self) -> dict:
        return {"h2d_bytes": self.h2d_bytes, "d2h_bytes": self.d2h_bytes, "h2d_copies": self.h2d_copies,
                "d2h_copies": self.d2h_copies, "round_trip_h2d": self.round_trip_h2d,
                "round_trip_d2h": self.round_trip_d2h}


TRAFFIC = Traffic()


def _is_host_array(v) -> bool:
    return type(v) is np.ndarray or (isinstance(v, np.ndarray) and not isinstance(v, EmulatedArray))


def _unwrap(v):
    """Device arrays to their numpy arrays (recursively through lists, tuples, dicts); a host
    array of one or more dimensions raises TypeError (cupy's rule)."""
    if isinstance(v, EmulatedArray):
        return v._a
    if isinstance(v, np.ndarray):
        if v.ndim == 0:
            return v
        raise TypeError(HOST_MIX)
    if isinstance(v, (list, tuple)):
        return type(v)(_unwrap(x) for x in v)
    if isinstance(v, dict):
        return {k: _unwrap(x) for k, x in v.items()}
    return v


def _wrap(v):
    """numpy results as device arrays (numpy scalars as 0-d arrays, as cupy returns them)."""
    if isinstance(v, np.ndarray):
        return EmulatedArray(v)
    if isinstance(v, np.generic):
        return EmulatedArray(np.asarray(v))
    if isinstance(v, tuple):
        return tuple(_wrap(x) for x in v)
    if isinstance(v, list):
        return [_wrap(x) for x in v]
    if is_dataclass(v) and not isinstance(v, type):
        return type(v)(*(_wrap(getattr(v, f.name)) for f in fields(v)))
    return v


def _index(key):
    if isinstance(key, tuple):
        return tuple(_index(k) for k in key)
    if isinstance(key, list):
        raise TypeError(HOST_MIX)
    return _unwrap(key)


class EmulatedArray:
    """A device array of the emulated GPU (see the module docstring)."""

    __slots__ = ("_a",)
    __array_priority__ = 1000

    def __init__(self, a: np.ndarray):
        object.__setattr__(self, "_a", a)

    # -- cupy's host boundary
    def get(self) -> np.ndarray:
        TRAFFIC.d2h(self._a.nbytes)
        return self._a.copy()

    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct "
                        "a NumPy array explicitly.")

    def __array_namespace__(self, api_version=None):
        return xp

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if "out" in kwargs:
            kwargs["out"] = tuple(_unwrap(o) for o in kwargs["out"])
        return _wrap(getattr(ufunc, method)(*_unwrap(inputs), **kwargs))

    def __array_function__(self, func, types, args, kwargs):
        return _wrap(func(*_unwrap(args), **_unwrap(kwargs)))

    # -- attributes and methods: those of the numpy array, results on the device
    def __getattr__(self, name):
        if name.startswith("__"):      # numpy's array protocols (__array_interface__, ...): cupy has none
            raise AttributeError(name)
        v = getattr(self._a, name)
        if callable(v):
            @functools.wraps(v)
            def method(*args, **kwargs):
                return _wrap(v(*_unwrap(args), **_unwrap(kwargs)))
            return method
        return _wrap(v)

    def __setattr__(self, name, value):
        setattr(self._a, name, _unwrap(value))

    def __getitem__(self, key):
        return _wrap(self._a[_index(key)])

    def __setitem__(self, key, value):
        self._a[_index(key)] = _unwrap(value)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (EmulatedArray(np.asarray(x)) for x in self._a)

    def __bool__(self):
        return bool(self._a)

    def __int__(self):
        return int(self._a)

    def __float__(self):
        return float(self._a)

    def __complex__(self):
        return complex(self._a)

    def __index__(self):
        return operator.index(self._a)

    def __repr__(self):
        return "EmulatedArray(%r)" % (self._a,)

    @property
    def flags(self):
        return self._a.flags

    @property
    def dtype(self):
        return self._a.dtype

    @property
    def shape(self):
        return self._a.shape

    @property
    def ndim(self):
        return self._a.ndim

    @property
    def size(self):
        return self._a.size


def _binary(op):
    return (lambda self, other: _wrap(op(self._a, _unwrap(other))),
            lambda self, other: _wrap(op(_unwrap(other), self._a)))


def _inplace(iop):
    def f(self, other):
        object.__setattr__(self, "_a", iop(self._a, _unwrap(other)))
        return self
    return f


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor",
              "lshift", "rshift"):
    _op = getattr(operator, _name + "_" if _name in ("and", "or") else _name)
    _f, _r = _binary(_op)
    setattr(EmulatedArray, "__%s__" % _name, _f)
    setattr(EmulatedArray, "__r%s__" % _name, _r)
    setattr(EmulatedArray, "__i%s__" % _name, _inplace(getattr(operator, "i" + _name)))
for _name in ("lt", "le", "eq", "ne", "gt", "ge"):
    setattr(EmulatedArray, "__%s__" % _name, _binary(getattr(operator, _name))[0])
for _name in ("neg", "pos", "abs", "invert"):
    setattr(EmulatedArray, "__%s__" % _name, (lambda op: (lambda self: _wrap(op(self._a))))(getattr(operator, _name)))
EmulatedArray.__hash__ = None


# ----------------------------------------------------------------------------- the namespace
class _Cupyx:
    @staticmethod
    def scatter_add(target, index, values):
        np.add.at(_unwrap(target), _index(index), _unwrap(values))


class _Namespace:
    """cupy's spelling of the numpy functions, on emulated device arrays."""

    __name__ = "hpcem.kernels.emulated"
    ndarray = EmulatedArray
    cupyx = _Cupyx()

    def __getattr__(self, name):
        v = getattr(np, name)
        if isinstance(v, type) or not callable(v):
            return v                      # dtypes, constants
        fn = functools.wraps(v)(lambda *a, **k: _wrap(v(*_unwrap(a), **_unwrap(k))))
        object.__setattr__(self, name, fn)
        return fn

    def asarray(self, a, dtype=None, order=None):
        """A device array of ``a``: a host array (or list, scalar) is copied to the device."""
        if isinstance(a, EmulatedArray):
            return a if dtype is None or a.dtype == np.dtype(dtype) else EmulatedArray(a._a.astype(dtype))
        h = np.asarray(a, dtype=dtype)
        TRAFFIC.h2d(h.nbytes)
        return EmulatedArray(np.array(h, copy=True, order=order or "K"))

    def array(self, a, dtype=None, copy=True):
        d = self.asarray(a, dtype)
        return EmulatedArray(d._a.copy()) if copy and isinstance(a, EmulatedArray) else d

    def ascontiguousarray(self, a, dtype=None):
        if not isinstance(a, EmulatedArray):
            raise TypeError(HOST_MIX)     # cupy.ascontiguousarray takes device arrays only
        return EmulatedArray(np.ascontiguousarray(a._a, dtype=dtype))

    def asnumpy(self, a):
        return a.get() if isinstance(a, EmulatedArray) else np.asarray(a)

    def argsort(self, a, axis=-1):
        return _wrap(np.argsort(_unwrap(a), axis=axis, kind="stable"))   # cupy's sort is stable

    def sort(self, a, axis=-1):
        return _wrap(np.sort(_unwrap(a), axis=axis, kind="stable"))


xp = _Namespace()


def is_emulated(a) -> bool:
    return isinstance(a, EmulatedArray)


# ----------------------------------------------------------------------------- kernels
HOST_OK = frozenset({"rotations", "rotations2d", "weights", "ref_index", "logprior_t", "logprior_j", "pair_i",
                     "pair_t", "pair_j", "weight", "offsets", "a", "ops"})


# kernels whose cupy path copies its inputs to the host and its results back (no device path):
# the emulation counts those copies as the real device would make them (none at present)
HOST_ROUND_TRIP = frozenset()
# kernels whose device path is array code (numpy/cupy alike): they run it on the emulated arrays
XP_NATIVE = frozenset({"segment_posteriors"})


def _nbytes(v) -> int:
    if isinstance(v, (EmulatedArray, np.ndarray)):
        return int(v.nbytes)
    if is_dataclass(v) and not isinstance(v, type):
        return sum(_nbytes(getattr(v, f.name)) for f in fields(v))
    return 0


def _has_device(values) -> bool:
    return any(isinstance(v, EmulatedArray) for v in values)


def device_aware(fn):
    """``fn`` (a kernel of :mod:`hpcem.kernels`) taking emulated device arrays: their numpy
    arrays go to the CPU kernel and the results come back as device arrays; a host array is
    refused unless it is an argument that the cupy path copies to the device itself
    (:data:`HOST_OK`; the copy is counted).  Calls without device arrays are passed through."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        if fn.__name__ in XP_NATIVE or not (_has_device(args) or _has_device(kwargs.values())):
            return fn(*args, **kwargs)
        bound = sig.bind(*args, **kwargs)
        for name, v in bound.arguments.items():
            if _is_host_array(v) and v.ndim > 0:
                if name not in HOST_OK:
                    from ._checks import KernelArgumentError
                    raise KernelArgumentError("%s: %s: %s" % (fn.__name__, name, HOST_MIX))
                TRAFFIC.h2d(v.nbytes)
            elif isinstance(v, EmulatedArray):
                bound.arguments[name] = v._a
        round_trip = fn.__name__ in HOST_ROUND_TRIP
        if round_trip:
            down = sum(_nbytes(a) for a in bound.args)
            TRAFFIC.d2h(down)
        out = fn(*bound.args, **bound.kwargs)
        if round_trip:
            TRAFFIC.h2d(_nbytes(out))
            TRAFFIC.round_trip_d2h += down
            TRAFFIC.round_trip_h2d += _nbytes(out)
        return _wrap(out)
    return call
