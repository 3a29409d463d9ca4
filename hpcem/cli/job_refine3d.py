"""3D auto-refinement with gold-standard halves, like relion_refine --auto_refine --split_random_halves:
the particles are split by rlnRandomSubset (seeded random halves if absent), each half is refined
against its own reference (both from the low-passed --ref), regularised by the half-map FSC; the
HEALPix order grows with the resolution, local searches from --auto_local_healpix_order; after
convergence a final iteration combines both halves into run_class001.mrc (plus
run_half{1,2}_class001_unfil.mrc, run_fsc.star/png, masked and unmasked resolution at FSC 0.143).
Input poses are ignored. Under `mpiexec -n N` the ranks form two groups, one per half (-n 2
works); one rank refines both halves in turn. Resume with --continue run_itNNN_optimiser.star."""
from __future__ import annotations

from dataclasses import dataclass

from ..algorithms.map_em.config3d import Refine3DConfig
from ..runtime.device import DeviceOptions
from .common import IterativeJobIO, ref_angpix_param, ref_param
from .job_class3d import run_map3d


@dataclass(frozen=True)
class Params(IterativeJobIO, Refine3DConfig, DeviceOptions):
    ref: str = ref_param()
    ref_angpix: float = ref_angpix_param()


def run(p: Params, ctx):
    from ..algorithms.map_em.refine3d import Refine3D

    return run_map3d(p, ctx, Refine3D, Refine3DConfig, "gold-standard halves")
