"""The one dispatch point for hpcem's kernels.

numpy arrays go to ``hpcem._core`` (C++/OpenMP), cupy arrays to ``hpcem._cuda`` (CUDA,
same maths, device pointers, cupy's current stream).  Arrays are checked here once
(dtype, shape, contiguity, index ranges) and every bad argument raises
:class:`KernelArgumentError` (a TypeError and a ValueError) naming the kernel and the
argument; the compiled code trusts what passes.

Families, each documented in its module (Fourier layout and notation there):

* :mod:`hpcem.kernels.projection`  project3d, project2d, backproject3d, backproject2d,
  symmetrise3d (padded half transforms, trilinear / bilinear, exact adjoints); project3d_at,
  backproject3d_at, project2d_at, backproject2d_at (the same at listed frequencies only; the 2D
  ones CPU only, backproject2d_at for rows of double sums and their residuals)
* :mod:`hpcem.kernels.marginalise`  coarse_diff2, pair_diff2, posteriors,
  segment_posteriors, accumulate (the MAP-EM E-step over class x orientation x translation)
* :mod:`hpcem.kernels.gtm`  gtm_solve, gtm_distances, gtm_responsibilities, gtm_accumulate
  (the ROME GTM E- and M-step)
* :mod:`hpcem.kernels.tv`  tv_weights, tv_prox_step, tv_penalties, tv_data_value, tv_extrapolate,
  tv_extrapolate_residual (the sparsity + TV regularised M-step's stencils)
* :mod:`hpcem.kernels.tomo`  tilt_project, tilt_backproject (single-axis tilt series of a
  tomogram in real space, exact adjoints)
* :mod:`hpcem.kernels.importance`  is_draw, is_candidates (importance-sampled quadrature over
  poses: draws from the mixture distributions, the product of the drawn sets as candidates)

Helpers: :func:`is_cupy`, :func:`array_namespace`, :func:`to_host`, :func:`has_cuda`,
:func:`set_threads` / :func:`max_threads` (OpenMP threads of the CPU kernels).
"""
from __future__ import annotations

from . import gtm as _gtm, marginalise as _marg, projection as _proj
from ._backend import array_namespace, has_cuda, max_threads, set_threads, to_host
from ._checks import KernelArgumentError, is_cupy
from .emulated import device_aware as _device_aware
from .gtm import gtm_solve_flops
from .importance import Draws, is_candidates, is_draw
from .marginalise import Posteriors, SegmentPosteriors, coarse_flops
from .tv import (tv_data_value, tv_extrapolate, tv_extrapolate_residual, tv_penalties, tv_prox_step,
                 tv_weights)
from .tomo import tilt_backproject, tilt_project

# every kernel also takes the emulated GPU's arrays (hpcem.kernels.emulated; a pass-through otherwise)
gtm_solve, gtm_distances, gtm_responsibilities, gtm_accumulate = (
    _device_aware(getattr(_gtm, k)) for k in ("gtm_solve", "gtm_distances", "gtm_responsibilities", "gtm_accumulate"))
coarse_diff2, pair_diff2, posteriors, segment_posteriors, accumulate = (
    _device_aware(getattr(_marg, k)) for k in ("coarse_diff2", "pair_diff2", "posteriors", "segment_posteriors",
                                               "accumulate"))
project3d, project2d, backproject3d, backproject2d, symmetrise3d = (
    _device_aware(getattr(_proj, k)) for k in ("project3d", "project2d", "backproject3d", "backproject2d",
                                               "symmetrise3d"))
project3d_at, backproject3d_at = (_device_aware(getattr(_proj, k)) for k in ("project3d_at", "backproject3d_at"))
project2d_at, backproject2d_at = _proj.project2d_at, _proj.backproject2d_at      # CPU only

__all__ = [
    # projection
    "project3d", "project2d", "backproject3d", "backproject2d", "symmetrise3d", "project3d_at", "backproject3d_at",
    "project2d_at", "backproject2d_at",
    # marginalisation
    "coarse_diff2", "coarse_flops", "posteriors", "pair_diff2", "segment_posteriors",
    "accumulate", "Posteriors", "SegmentPosteriors",
    # tilt series
    "tilt_project", "tilt_backproject",
    # GTM
    "gtm_solve", "gtm_solve_flops", "gtm_distances", "gtm_responsibilities", "gtm_accumulate",
    # regularised reconstruction
    "tv_weights", "tv_prox_step", "tv_penalties", "tv_data_value", "tv_extrapolate", "tv_extrapolate_residual",
    # importance sampling
    "is_draw", "is_candidates", "Draws",
    # dispatch helpers
    "KernelArgumentError", "is_cupy", "array_namespace", "to_host", "set_threads",
    "max_threads", "has_cuda",
]
