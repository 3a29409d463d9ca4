"""One checkpoint schema for every iterative job, and RELION's optimiser STAR that points to it.

A checkpoint is an HDF5 file (written atomically) holding one iteration's whole state as nested
groups: arrays as datasets, numbers and strings as attributes; and, as attributes of the root,
``hpcem_version``, ``schema`` (this module's :data:`SCHEMA`), ``kind`` (the job: class2d, class3d,
refine3d, sml, ...), ``iteration``, ``config_json`` (the algorithm's settings) and ``job_json``
(the job's parameters: input, output, flags), so that ``--continue`` needs nothing else.
Reading one back costs what reading its arrays costs: resuming is as fast as starting.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from .. import __version__
from ..errors import InputError
from ..io.atomic import atomic_write
from ..io.star import read_star, write_star

SCHEMA = 1


def _plain(o):
    return o.item() if hasattr(o, "item") else str(o)


def _put(g, d: dict) -> None:
    for k, v in d.items():
        if isinstance(v, dict):
            _put(g.create_group(k), v)
        elif isinstance(v, (str, bytes)) or (np.ndim(v) == 0 and not isinstance(v, np.ndarray)):
            g.attrs[k] = v
        else:
            g.create_dataset(k, data=np.asarray(v))


def _get(g) -> dict:
    out = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in g.attrs.items()}
    for k in g:
        out[k] = _get(g[k]) if hasattr(g[k], "keys") else g[k][()]
    return out


@dataclass
class Checkpoint:
    path: str
    kind: str
    iteration: int
    state: dict
    config: dict
    job: dict
    version: str


def save_checkpoint(path: str, kind: str, state: dict, config: dict, job: dict | None = None) -> None:
    """Write ``state`` (nested dict; ``state['iteration']`` required) atomically to ``path``."""
    import h5py

    with atomic_write(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["hpcem_version"] = __version__
            f.attrs["schema"] = SCHEMA
            f.attrs["kind"] = kind
            f.attrs["iteration"] = int(state["iteration"])
            f.attrs["config_json"] = json.dumps(config, default=_plain)
            f.attrs["job_json"] = json.dumps(job or {}, default=_plain)
            _put(f.create_group("state"), state)


def load_checkpoint(path: str, kind: str | None = None) -> Checkpoint:
    """Read a checkpoint; ``kind`` (if given) must match the job that wrote it."""
    import h5py

    if not os.path.isfile(path):
        raise InputError("checkpoint not found", file=path, field="--continue")
    try:
        with h5py.File(path, "r") as f:
            head = {k: f.attrs[k] for k in ("schema", "kind", "iteration", "config_json", "job_json",
                                            "hpcem_version")}
            state = _get(f["state"])
    except (OSError, KeyError) as exc:
        raise InputError("not an hpcem checkpoint (%s)" % exc, file=path, field="--continue") from None
    if int(head["schema"]) != SCHEMA:
        raise InputError("checkpoint schema %s, this hpcem reads %d" % (head["schema"], SCHEMA), file=path,
                         field="schema")
    k = str(head["kind"])
    if kind is not None and k != kind:
        raise InputError("written by '%s', not '%s'" % (k, kind), file=path, field="kind")
    return Checkpoint(path, k, int(head["iteration"]), state, json.loads(head["config_json"]),
                      json.loads(head["job_json"]), str(head["hpcem_version"]))


def write_optimiser(root, it: int, iters: int, checkpoint: str, model: str | None = None,
                    data: str | None = None) -> str:
    """RELION's run_itNNN_optimiser.star (what ``--continue`` is given), naming the checkpoint."""
    gen = {"rlnOutputRootName": root.rootname, "rlnCurrentIteration": int(it),
           "rlnNumberOfIterations": int(iters), "hpcemCheckpointFile": os.path.basename(checkpoint)}
    if model:
        gen["rlnModelStarFile"] = os.path.basename(model)
    if data:
        gen["rlnExperimentalDataStarFile"] = os.path.basename(data)
    path = root.iteration(it, "optimiser.star")
    write_star(path, {"optimiser_general": gen})
    return path


def checkpoint_of_optimiser(optimiser_star: str) -> str:
    """The checkpoint named by a run_itNNN_optimiser.star."""
    if not os.path.isfile(optimiser_star):
        raise InputError("file not found", file=optimiser_star, field="--continue")
    blocks = read_star(optimiser_star)
    b = next((v for k, v in blocks.items() if "optimiser_general" in k), None)
    if b is None:
        b = next(iter(blocks.values()))
    try:
        name = b["hpcemCheckpointFile"] if isinstance(b, dict) else b["hpcemCheckpointFile"].iloc[0]
    except (KeyError, IndexError):
        raise InputError("missing (not written by hpcem)", file=optimiser_star, field="hpcemCheckpointFile") from None
    return os.path.join(os.path.dirname(os.path.abspath(optimiser_star)), str(name))
