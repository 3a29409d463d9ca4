"""3D initial model(s) from the particles alone by VDAM, like RELION-4's InitialModel job
(relion_refine --grad --denovo_3dref, then relion_align_symmetry): --iter mini-batches (200) of
growing size, K classes in C1 from random Gaussian blobs (with K > 1 the last 4 of --iter are EM
iterations over all particles, --grad_em_iters), then every map aligned to the axes of
--sym and symmetrised into initial_model.mrc (the most populated class; with K > 1 also
initial_model_classKKK.mrc) in the output folder.  Writes run_itNNN_classKKK.mrc, _data.star,
_model.star, _optimiser.star, an HDF5 checkpoint and central slices every --grad_write_iter
mini-batches and at the last; resume with --continue (the searches and the prior may change there:
--auto_sampling, --healpix_order, --tv, ...).  Under `mpiexec -n N` each mini-batch's
particles are split across ranks; rank 0 writes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..algorithms.map_em.config3d import InitialModelConfig
from ..runtime.device import DeviceOptions
from .common import CONTINUABLE_SEARCH, IterativeJobIO
from .job_class3d import run_map3d


@dataclass(frozen=True)
class Params(IterativeJobIO, InitialModelConfig, DeviceOptions):
    # as class3d: the searches and the prior; and the split-merge move, to unstick a run
    continue_may_change: ClassVar[frozenset] = CONTINUABLE_SEARCH | {"split_merge", "grad_em_iters"}


def run(p: Params, ctx):
    from ..algorithms.map_em.initial_model import InitialModel

    return run_map3d(p, ctx, InitialModel, InitialModelConfig, "K %(K)d, %(iters)d mini-batches, VDAM")
