"""The sparsity + total-variation regularised reconstruction (OPUS-SSRI; seed 002, sections 2.1-2.5),
the M-step reconstructor beside :class:`hpcem.recon.mstep.WienerMAP`, called the same way.

Objective (eqs 10, 11, 22, 31), the map ``x`` a real volume on the n box::

    1/2 sum_k N_k |(A x)_k - b_k|^2 + alpha sum |x_j| / (|x^i_j| + eps)
                                    + beta sum |Dx_j| / (|Dx^i_j| + eps') + gamma ||x - x^{k-1}||^2

The data term comes from the E-step's sufficient statistics, the back-projector's data and weight
sums ``D``, ``W`` (padded grid): ``b`` is RELION's gridding estimate of the map's transform
(density-compensated ``D``, :meth:`BackProjector.estimate`) taken to the n box before the gridding
correction, ``N_k = W(pad k)`` (the seed's ``N(n)``, eq 28), ``A = U diag(g)`` with ``U`` the
orthonormal DFT of the n box and ``g`` the interpolation kernel's real-space attenuation (the
gridding correction).  So the penalties act on the corrected map while the data are matched where
they live, and with every penalty off the minimiser is the ordinary reconstruction ``IFT(b) / g``:
the correction is the data term's, not a step after it.  Why the n box and not the padded grid:
DESIGN_NOTES (issue 13; the padded data term gave FSC within 0.02 of this one at 6.5x the time).

Parameters (section 2.5): ``alpha = a S eps``, ``beta = b S eps'``, ``gamma = c Nbar``, with
``S`` the RMS of ``A^H D y`` (the back-projected data, i.e. minus the data term's gradient at 0)
and ``Nbar`` the mean of ``N`` over the coefficients with data; ``a, b, c`` are --tv_alpha,
--tv_beta, --tv_weight (the public implementation's flags are proportional to these products).
``eps`` (--tv_eps) is a density level of the map; --tv_auto takes it from the data (0.1 x the
99.9th percentile of |map|: the level of the molecule's density), ``eps' = eps / 3`` unless given.
Nesterov smoothing ``mu = eps'``.  The Wiener prior (``tau2``) is not used: the regularisers
replace it (the seed's eq 31).  ``x^{k-1}`` is the previous M-step's map (``prev``; none for a
known-pose reconstruction: a ridge towards 0), the start is the unregularised map of this M-step.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft

from ..core.fourier import fft_workers
from ..errors import InputError
from .gridding import correction_profile, soft_mask_outside
from .projector import GRIDDING_ITERS, padded_crop
from .tv_solver import TVProblem, solve

SEED_ALPHA, SEED_BETA, SEED_WEIGHT = 0.5, 1.6, 0.1   # section 2.5's tested ranges: [0.4, 0.5], [1.2, 2.4], [0.05, 0.2]
AUTO_EPS_FRACTION, AUTO_EPS_PERCENTILE = 0.1, 99.9
REWEIGHT_ROUNDS = 3                                  # weights refreshed every tv_iters / 3 iterations


@dataclass(frozen=True)
class TVSettings:
    """The regularisation flags (None: the default or, with ``auto``, from the data)."""

    alpha: float | None = None
    beta: float | None = None
    weight: float | None = None
    eps: float | None = None
    epsp: float | None = None
    lr: float = 1.0
    iters: int = 150
    auto: bool = False

    @classmethod
    def from_options(cls, o) -> "TVSettings":
        """From a Params object with TVOptions' fields; InputError when eps is neither given nor auto."""
        if not o.tv_auto and o.tv_eps is None:
            raise InputError("--tv needs the density level eps of the l1 weights (map units) or --tv_auto "
                             "(eps from the data)", field="--tv_eps")
        return cls(o.tv_alpha, o.tv_beta, o.tv_weight, o.tv_eps, o.tv_epsp, o.tv_lr, o.tv_iters, o.tv_auto)


@dataclass
class TVData:
    """The data term on the n box: ``Zc`` = rfftn of the uncorrected map ``z0`` (complex64), ``Wd``
    (float32 half grid), ``g`` (float32 (n,)), and the unregularised map ``x0`` (corners blended)."""

    Zc: np.ndarray
    Wd: np.ndarray
    g: np.ndarray
    x0: np.ndarray

    @property
    def n(self) -> int:
        return int(self.g.size)

    def scales(self):
        """``(S, Nbar)`` of section 2.5: RMS of ``A^H D y`` and the mean ``N`` where there are data."""
        n = self.n
        gvol = self.g[:, None, None] * self.g[None, :, None] * self.g[None, None, :]
        back = gvol * sfft.irfftn(self.Wd * self.Zc, s=(n, n, n), workers=fft_workers())
        have = self.Wd > 0
        return float(np.sqrt(np.mean(back.astype(np.float64) ** 2))), \
            float(self.Wd[have].mean()) if have.any() else 0.0


def tv_data(bp, ops=None, gridding_iters: int = GRIDDING_ITERS) -> TVData:
    """The data term of a back-projector's sums (symmetrised by ``ops``; see the module docstring)."""
    sym = ops if ops is not None and len(ops) > 1 else None
    F, W = bp.estimate(symmetry_ops=sym, gridding_iters=gridding_iters)
    n, pad = bp.n, bp.pad
    z0 = padded_crop(F, n, pad)
    g = correction_profile(n, bp.P, bp.kernel)
    x0 = soft_mask_outside(z0 / (g[:, None, None] * g[None, :, None] * g[None, None, :]), n / 2.0)
    f = (int(pad) * np.fft.fftfreq(n, 1.0 / n).astype(np.int64)) % bp.P
    fx = int(pad) * np.arange(n // 2 + 1)
    return TVData(Zc=np.ascontiguousarray(sfft.rfftn(z0.astype(np.float32), workers=fft_workers()), np.complex64),
                  Wd=np.ascontiguousarray(W[np.ix_(f, f, fx)], np.float32), g=g.astype(np.float32),
                  x0=x0.astype(np.float32))


def map_data(x, Wd) -> TVData:
    """The data term of a map ``x`` (n, n, n) known on the n box with weights ``Wd`` (rfftn half
    grid of x, as a back-projector's ``N``): ``g = 1`` (no interpolation to correct)."""
    x = np.ascontiguousarray(x, np.float32)
    n = x.shape[0]
    return TVData(Zc=np.ascontiguousarray(sfft.rfftn(x, workers=fft_workers()), np.complex64),
                  Wd=np.ascontiguousarray(Wd, np.float32), g=np.ones(n, np.float32), x0=x)


def resolve(settings: TVSettings, data: TVData, ref) -> dict:
    """The absolute parameters of one M-step (section 2.5) from the flags and the data; ``ref``
    the map whose density level sets eps under --tv_auto."""
    S, Nbar = data.scales()
    a = SEED_ALPHA if settings.alpha is None else settings.alpha
    b = SEED_BETA if settings.beta is None else settings.beta
    c = SEED_WEIGHT if settings.weight is None else settings.weight
    eps = settings.eps
    if eps is None:
        eps = AUTO_EPS_FRACTION * float(np.percentile(np.abs(ref), AUTO_EPS_PERCENTILE))
        eps = eps if eps > 0 else 1e-6
    epsp = eps / 3.0 if settings.epsp is None else settings.epsp
    return {"S": S, "Nbar": Nbar, "a": a, "b": b, "c": c, "eps": eps, "epsp": epsp, "alpha": a * S * eps,
            "beta": b * S * epsp, "gamma": c * Nbar, "mu": epsp}


class TVReconstructor:
    """``reconstruct(bp, tau2, fudge, ops, prev=None)`` like :class:`WienerMAP` (``tau2`` and
    ``fudge`` unused: the regularisers replace the Wiener prior); ``prev`` the previous map
    x^{k-1}.  ``last`` holds the last call's parameters, penalty terms, residual and time."""

    name = "tv"
    uses_tau2 = False

    def __init__(self, settings: TVSettings, gridding_iters: int = GRIDDING_ITERS):
        self.settings = settings
        self.gridding_iters = int(gridding_iters)
        self.last = None

    def reconstruct(self, bp, tau2=None, fudge: float = 1.0, ops=None, prev=None) -> np.ndarray:
        return self._solve(tv_data(bp, ops, self.gridding_iters), prev, time.time())

    def regularise(self, x, Wd, prev=None) -> np.ndarray:
        """The penalised map nearest ``x`` (a map on the n box, e.g. a VDAM step's) in the metric
        of its data weights ``Wd`` (rfftn half grid): the same problem with ``b`` = x's transform,
        ``N = Wd`` and no gridding correction (:func:`map_data`)."""
        return self._solve(map_data(x, Wd), prev, time.time())

    def _solve(self, data: TVData, prev, t0: float) -> np.ndarray:
        xp = np.zeros_like(data.x0) if prev is None else np.ascontiguousarray(prev, np.float32)
        p = resolve(self.settings, data, data.x0 if prev is None or not np.any(prev) else xp)
        pb = TVProblem(Zc=data.Zc, Wd=data.Wd, g=data.g, xp=xp, alpha=p["alpha"], beta=p["beta"],
                       gamma=p["gamma"], eps=p["eps"], epsp=p["epsp"], mu=p["mu"])
        r = solve(pb, data.x0, self.settings.iters, REWEIGHT_ROUNDS, self.settings.lr)
        self.last = dict(p, **r.terms, residual=r.residual, iterations=r.iterations, solve_seconds=r.seconds,
                         seconds=time.time() - t0, history=np.asarray(r.history))
        return np.asarray(r.x, np.float32)


def summary(last: dict | None) -> str:
    """One log line of a regularised reconstruction's terms (``TVReconstructor.last``)."""
    if not last:
        return ""
    return ("data %.4g  l1 %.4g  tv %.4g  restraint %.4g  residual %.2e  %d it %.1f s (solver %.1f s)  "
            "(alpha %.3g beta %.3g gamma %.3g eps %.3g eps' %.3g; S %.3g Nbar %.3g)" % (
                last["data"], last["l1"], last["tv"], last["restraint"], last["residual"], last["iterations"],
                last["seconds"], last["solve_seconds"], last["alpha"], last["beta"], last["gamma"], last["eps"],
                last["epsp"], last["S"], last["Nbar"]))
