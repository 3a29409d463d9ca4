"""Priors on the densities of the MAP objective (seed 003, eqs 5-6 and section 4.6): their
negative log (up to constants) and its gradient with respect to the real-space map.

* ``exponential``: independent exponential densities, ``-log p(V) = lambda sum_i V_i`` on V >= 0
  (the seed's choice); ``lambda = weight / mean(V)`` inside the particle mask of the random initial
  maps (scaled to the data's signal), fixed for the run (re-estimated from the current maps it
  feeds back: a shrinking mean raises lambda, which shrinks the maps further, to zero in tests).
  The seed leaves lambda open; at weight 1 (the exponential's maximum-likelihood scale) the prior
  outweighs a few thousand particles' evidence per voxel (true poses, 2,000 particles at 40 px,
  SNR 0.3: FSC 0.5 at 12.2 A against 10.4 A with the uniform prior), at 0.1 it helps (10.3 A);
* ``uniform``: the improper prior, nothing;
* ``car``: the conditionally autoregressive smoothness prior, each voxel Gaussian around the mean
  of its 26 neighbours, ``-log p(V) = |V - A V|^2 / (2 sigma_car^2)`` (A the 26-neighbour mean, a
  symmetric operator, so the gradient is ``(I - A)(V - A V) / sigma_car^2``), ``sigma_car^2`` the
  mean square of ``V - A V`` inside the mask of the initial maps.
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import uniform_filter

KINDS = ("exponential", "uniform", "car")


def _neighbour_mean(V):
    """Mean of the 26 neighbours of every voxel (zero outside the box)."""
    return (27.0 * uniform_filter(V, size=3, mode="constant") - V) / 26.0


class Prior:
    """A prior with its parameters fixed from the initial maps (``fit``); ``value(V)`` and ``grad(V)``."""

    def __init__(self, kind: str, mask, weight: float = 1.0):
        if kind not in KINDS:
            raise ValueError("prior: one of %s" % ", ".join(KINDS))
        self.kind, self.mask, self.weight = kind, np.asarray(mask, np.float64), float(weight)
        self.scale = 0.0

    def fit(self, V) -> "Prior":
        """Parameters from the maps ``V`` (K, n, n, n) (one per class)."""
        inside = self.mask > 0.5
        if self.kind == "exponential":
            mu = np.array([max(float(np.mean(v[inside])), 1e-30) for v in V])
            self.scale = self.weight / mu
        elif self.kind == "car":
            r2 = np.array([float(np.mean((v - _neighbour_mean(v))[inside] ** 2)) for v in V])
            self.scale = self.weight / np.maximum(r2, 1e-30)
        return self

    def value(self, V) -> float:
        if self.kind == "exponential":
            return float(sum(s * np.sum(v) for s, v in zip(self.scale, V)))
        if self.kind == "car":
            return float(sum(0.5 * s * np.sum((v - _neighbour_mean(v)) ** 2) for s, v in zip(self.scale, V)))
        return 0.0

    def grad(self, V) -> np.ndarray:
        if self.kind == "exponential":
            return np.broadcast_to(np.asarray(self.scale)[:, None, None, None], V.shape).copy()
        if self.kind == "car":
            out = np.empty_like(V, dtype=np.float64)
            for k, v in enumerate(V):
                r = v - _neighbour_mean(v)
                out[k] = self.scale[k] * (r - _neighbour_mean(r))
            return out
        return np.zeros(V.shape)

    def curvature(self, dV) -> float:
        """``dV^T H dV`` of the prior (0 for the linear exponential prior)."""
        if self.kind != "car":
            return 0.0
        return float(sum(s * np.sum((d - _neighbour_mean(d)) ** 2) for s, d in zip(self.scale, dV)))
