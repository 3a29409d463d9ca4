"""The accelerated proximal-gradient solver of the regularised M-step (seed 002, eqs 11-22), on the
stencil kernels of :mod:`hpcem.kernels.tv` and the array library's real FFTs (numpy arrays: scipy.fft
and ``hpcem._core``; cupy arrays: cupy's cuFFT and ``hpcem._cuda``).

The problem (one reweighting round; the unknown ``x`` a real volume on the n box)::

    F(x) = 1/2 sum_k Wd_k |U(g x)_k - Zc_k / sqrt(N)|^2      data term (U the orthonormal DFT, N = n^3)
         + alpha sum_j wl1_j |x_j|                             reweighted l1 (eq 11)
         + beta  sum_j wtv_j h_mu(|(Dx)_j|)                    reweighted, Nesterov-smoothed TV (eqs 11-16)
         + gamma ||x - xp||^2                                  implicit-gradient restraint (eq 22)

``g`` is the separable gridding correction (the projector's interpolation kernel seen in real space),
so that the map ``x`` itself is penalised while its blurred image ``g x`` is matched to the data;
``Zc`` and ``Wd`` come from :func:`hpcem.recon.tv.tv_data`.  The weights ``wl1 = 1/(|x^i| + eps)``,
``wtv = 1/(h_mu(|Dx^i|) + eps')`` are refreshed from the current iterate ``x^i`` at the start of each
of ``rounds`` rounds (majorise-minimise of the log penalties of eq 9: every round minimises a convex
upper bound that touches them at ``x^i``).  Inside a round: monotone FISTA (Beck & Teboulle 2009,
MFISTA): a gradient step on the smooth part, the soft-thresholding prox of the l1 part (eq 21),
momentum, and ``x_k`` the better of the new point and ``x_{k-1}``, so ``F(x_k)`` never increases.
Step ``t = lr / L`` with ``L = max(Wd) max(g)^2 + 2 gamma + 12 beta max(wtv) / mu`` (the data
term's, the restraint's and the smoothed TV's Lipschitz constants; ``||D||^2 <= 12`` in 3D).

Cost per iteration: one forward and one inverse real FFT of the n box (the transform of ``g x``
at the extrapolated point is a linear combination of kept transforms) and three passes over the
volume (prox step, penalties, extrapolation).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from .. import kernels


@dataclass
class TVProblem:
    """One regularised reconstruction: data (``Zc`` complex64 and ``Wd`` float32 half grids of
    the n box, ``g`` float32 (n,) correction profile) and the absolute parameters."""

    Zc: object
    Wd: object
    g: object
    xp: object                 # restraint centre (n, n, n) float32
    alpha: float
    beta: float
    gamma: float
    eps: float
    epsp: float
    mu: float


@dataclass
class TVResult:
    x: object
    history: list = field(default_factory=list)   # F(x_k) of every iteration, round by round
    terms: dict = field(default_factory=dict)     # the last iterate's data, l1, tv, restraint, objective
    residual: float = 0.0                          # ||z - y|| / ||y|| of the last step (gradient mapping)
    iterations: int = 0
    seconds: float = 0.0


def _fft(xp):
    if xp is np:
        import scipy.fft as sfft

        from ..core.fourier import fft_workers
        return (lambda a: sfft.rfftn(a, workers=fft_workers())), \
            (lambda A, s: sfft.irfftn(A, s=s, workers=fft_workers()))
    import cupy
    return cupy.fft.rfftn, (lambda A, s: cupy.fft.irfftn(A, s=s))


def _as32(xp, a):
    return xp.ascontiguousarray(xp.asarray(a, dtype=np.float32))


def objective(pb: TVProblem, z, Gz, wl1, wtv):
    """The terms of F at ``z`` (``Gz`` = rfftn(g z)), each times its parameter, and their sum."""
    n = z.shape[0]
    data = kernels.tv_data_value(Gz, pb.Zc, pb.Wd, n)
    l1, tv, rs = kernels.tv_penalties(z, pb.xp, wl1, wtv, pb.mu)
    terms = {"data": data, "l1": pb.alpha * l1, "tv": pb.beta * tv, "restraint": pb.gamma * rs}
    terms["objective"] = sum(terms.values())
    return terms


def lipschitz(pb: TVProblem, wtv, xp=np) -> float:
    gmax = float(xp.max(xp.abs(pb.g))) if pb.g.size else 1.0
    return float(xp.max(pb.Wd)) * gmax ** 2 + 2.0 * pb.gamma + 12.0 * pb.beta * float(xp.max(wtv)) / pb.mu


def solve(pb: TVProblem, x_init, iters: int, rounds: int = 3, lr: float = 1.0) -> TVResult:
    """Minimise F from ``x_init`` in ``rounds`` reweighting rounds of ``ceil(iters / rounds)``
    MFISTA iterations each (see the module docstring)."""
    t0 = time.time()
    xp = kernels.array_namespace(x_init, pb.Zc)
    rfft, irfft = _fft(xp)
    x = _as32(xp, x_init)
    shape = x.shape
    gvol = pb.g[:, None, None] * pb.g[None, :, None] * pb.g[None, None, :]
    wl1, wtv = xp.empty_like(x), xp.empty_like(x)
    z, gz, y = xp.empty_like(x), xp.empty_like(x), xp.empty_like(x)
    res = TVResult(x=x)
    per_round = max(1, math.ceil(int(iters) / max(int(rounds), 1))) if iters > 0 else 0
    for _ in range(max(int(rounds), 1) if per_round else 0):
        kernels.tv_weights(x, pb.eps, pb.epsp, pb.mu, wl1, wtv)
        t = float(lr) / max(lipschitz(pb, wtv, xp), 1e-30)
        Gx = rfft(x * gvol)
        terms = objective(pb, x, Gx, wl1, wtv)
        Gy, R = xp.empty_like(Gx), xp.empty_like(Gx)
        kernels.tv_extrapolate(x, x, x, 0.0, 0.0, y)
        kernels.tv_extrapolate_residual(Gx, Gx, Gx, 0.0, 0.0, pb.Wd, pb.Zc, Gy, R)
        tk = 1.0
        for _ in range(per_round):
            graw = _as32(xp, irfft(R, shape))
            dz, yy = kernels.tv_prox_step(y, graw, pb.xp, wl1, wtv, pb.g, pb.mu, pb.beta, 2.0 * pb.gamma, t,
                                          pb.alpha, z, gz)
            Gz = rfft(gz)
            tz = objective(pb, z, Gz, wl1, wtv)
            tn = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * tk * tk))
            a, b = tk / tn, (tk - 1.0) / tn
            if tz["objective"] <= terms["objective"]:      # x_k = z_k
                kernels.tv_extrapolate(z, z, x, a, b, y)
                kernels.tv_extrapolate_residual(Gz, Gz, Gx, a, b, pb.Wd, pb.Zc, Gy, R)
                x, z, Gx, terms = z, x, Gz, tz
            else:                                           # x_k = x_{k-1}
                kernels.tv_extrapolate(x, z, x, a, b, y)
                kernels.tv_extrapolate_residual(Gx, Gz, Gx, a, b, pb.Wd, pb.Zc, Gy, R)
            tk = tn
            res.history.append(terms["objective"])
            res.residual = math.sqrt(dz / max(yy, 1e-300))
            res.iterations += 1
        res.terms = terms
    res.x = x
    res.seconds = time.time() - t0
    return res
