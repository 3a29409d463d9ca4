"""Where a rank's work runs: the one device decision of a job (RELION's ``--gpu``).

``--gpu`` (absent: the CPU) takes RELION's forms: ``--gpu`` or ``--gpu ""`` every visible device,
``--gpu 0,1`` (or RELION's per-rank ``0:1``) those devices; the ranks of a node take them in
turn by their node-local rank (one rank per device; more ranks than devices share them).
Where no device can be used (hpcem._cuda not built, cupy missing, no driver or device) the job
says so in one line and runs on the CPU, so that a pasted RELION command line still works.

:func:`select_device` makes the decision once, in the job; the resulting :class:`Device` is
handed down to the algorithm, which gives it to the particles, the hypothesis spaces and the
projectors: each of them places its arrays with :meth:`Device.put` and brings results back with
:meth:`Device.get`, and the kernels follow their arrays (:mod:`hpcem.kernels`: numpy -> _core,
cupy -> _cuda).  :data:`HOST` is the CPU (numpy; ``put`` and ``get`` copy nothing).
``HPCEM_GPU_EMULATE=1`` makes ``--gpu`` choose the emulated GPU of :mod:`hpcem.kernels.emulated`
(the device code path with the CPU kernels and counted transfers; for tests).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .params import Params, param


class Device:
    """The array namespace and device of a rank's work (see the module docstring)."""

    def __init__(self, xp=np, index: int | None = None, label: str = "CPU"):
        self.xp, self.index, self.label = xp, index, label
        self.h2d_bytes = self.d2h_bytes = 0

    @property
    def gpu(self) -> bool:
        return self.xp is not np

    def put(self, a, dtype=None):
        """``a`` on this device (a host array is copied to a GPU; on the CPU nothing is copied)."""
        if not self.gpu:
            return np.asarray(a, dtype=dtype)
        if isinstance(a, np.ndarray):
            self.h2d_bytes += a.nbytes
        return self.xp.asarray(a, dtype=dtype)

    def get(self, a):
        """``a`` as a host numpy array (copied from a GPU)."""
        if a is None or not self.gpu or isinstance(a, (np.ndarray, np.generic, int, float)):
            return a
        self.d2h_bytes += int(a.nbytes)
        return a.get()

    def zeros(self, shape, dtype):
        return self.xp.zeros(shape, dtype=dtype)

    def __repr__(self):
        return "Device(%s)" % self.label


HOST = Device()


def emulated_device() -> Device:
    """The emulated GPU (:mod:`hpcem.kernels.emulated`)."""
    from ..kernels import emulated

    return Device(emulated.xp, 0, "emulated GPU")


@dataclass(frozen=True)
class DeviceOptions(Params):
    gpu: str = param(None, "run on CUDA devices (RELION's flag): alone or \"\" every visible device, 0,1 (or "
                     "0:1) those; one MPI rank per device by node-local rank; without a usable device the job "
                     "runs on the CPU", nargs="?", const="", metavar="IDS", group="compute")


def parse_ids(spec: str) -> list | None:
    """Device numbers of a ``--gpu`` value (None: every visible device)."""
    s = str(spec).strip().strip("\"'")
    if not s:
        return None
    out = []
    for tok in s.replace(":", ",").split(","):
        tok = tok.strip()
        if not tok:
            continue
        if not tok.isdigit():
            raise InputError("%r is not a list of device numbers (e.g. 0,1)" % spec, field="--gpu")
        out.append(int(tok))
    return out or None


def device_of_rank(ids: list, node_rank: int) -> int:
    """The device of the rank ``node_rank`` of a node among the devices ``ids``: in turn, one per
    rank (RELION's assignment by node-local rank; more ranks than devices share them)."""
    if not ids:
        raise InputError("no device to run on", field="--gpu")
    return int(ids[node_rank % len(ids)])


def why_no_gpu() -> str | None:
    """None when hpcem._cuda, cupy and a CUDA device are all present, else what is missing."""
    from ..kernels import _backend

    if _backend._cuda is None:
        return "hpcem was built without its CUDA kernels (no CUDA compiler at install time)"
    try:
        import cupy
    except ImportError:
        return "cupy is not installed (pip install cupy-cuda12x, or cupy-cuda13x for CUDA 13)"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver, broken install
        return "no CUDA device could be opened (%s)" % str(exc).splitlines()[0]
    return None if n > 0 else "no CUDA device is visible"


def select_device(spec, comm=None, log=print) -> Device:
    """The device of this rank for a job's ``--gpu`` value (None: the CPU); see the module
    docstring.  Rank 0 prints one line with the choice (or why the CPU runs)."""
    if spec is None:
        return HOST
    ids = parse_ids(spec)
    rank0 = comm is None or comm.rank == 0
    say = log if rank0 else (lambda *a: None)
    if os.environ.get("HPCEM_GPU_EMULATE") == "1":
        say("--gpu: HPCEM_GPU_EMULATE=1, the emulated GPU (CPU kernels, device code path)")
        return emulated_device()
    reason = why_no_gpu()
    if reason:
        say("--gpu: %s; running on the CPU" % reason)
        return HOST
    import cupy

    count = cupy.cuda.runtime.getDeviceCount()
    ids = list(range(count)) if ids is None else ids
    bad = [i for i in ids if i >= count]   # (every rank checks; the message is the same on all)
    if bad:
        raise InputError("device %d does not exist (%d visible)" % (bad[0], count), field="--gpu")
    local = comm.node_rank() if comm is not None else 0
    nlocal = comm.node_size() if comm is not None else 1
    index = device_of_rank(ids, local)
    cupy.cuda.Device(index).use()
    name = cupy.cuda.runtime.getDeviceProperties(index)["name"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    shared = " (shared: %d ranks on %d devices)" % (nlocal, len(ids)) if nlocal > len(ids) else ""
    say("--gpu: %d device(s) %s, one per node-local rank%s; rank 0 on %d (%s)" % (
        len(ids), ",".join(map(str, ids)), shared, index, name))
    return Device(cupy, index, "GPU %d (%s)" % (index, name))
