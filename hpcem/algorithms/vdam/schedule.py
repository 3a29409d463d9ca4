"""The mini-batch schedule of VDAM (seed 000, section 3.1.5): batch size, step size and the
regularisation parameter per mini-batch.

Three phases over ``iters`` mini-batches: the initial ``ini_frac`` (small batches, step 0.9, T = 1),
the final ``fin_frac`` (large batches, the final step, the full T) and, between, a linear growth of
the batch, a cosine decrease of the step and a linear ramp of T."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LIMITS = {2: ((200, 10_000), (1_000, 100_000), 0.05, 0.3), 3: ((200, 5_000), (1_000, 50_000), 0.10, 0.5)}
INITIAL_STEP = 0.9


def _clamp(v, lo_hi):
    return int(min(max(v, lo_hi[0]), lo_hi[1]))


@dataclass(frozen=True)
class Schedule:
    n_particles: int
    iters: int
    dim: int = 2
    ini_frac: float = 0.3
    fin_frac: float = 0.2
    ini_subset: int = -1
    fin_subset: int = -1
    final_step: float = -1.0
    tau2_fudge: float = 2.0

    @classmethod
    def of(cls, cfg, n_particles: int, dim: int) -> "Schedule":
        return cls(n_particles, cfg.iters, dim, cfg.grad_ini_frac, cfg.grad_fin_frac, cfg.grad_ini_subset,
                   cfg.grad_fin_subset, cfg.grad_stepsize, cfg.tau2_fudge)

    def sizes(self) -> tuple[int, int]:
        ini_lim, fin_lim, fin_frac, _ = LIMITS[self.dim]
        N = self.n_particles
        ini = self.ini_subset if self.ini_subset > 0 else _clamp(0.005 * N, ini_lim)
        fin = self.fin_subset if self.fin_subset > 0 else _clamp(fin_frac * N, fin_lim)
        return min(ini, N), min(max(fin, ini), N)

    @property
    def final_start(self) -> float:
        """Where the final phase begins: mini-batch ``it`` (0-based) is in it from ``it >= final_start``."""
        return (1.0 - self.fin_frac) * self.iters

    def _progress(self, it: int) -> float:
        """0 through the initial phase, 1 through the final one, linear between (``it`` 0-based)."""
        a = self.ini_frac * self.iters
        b = self.final_start
        if it < a:
            return 0.0
        if it >= b or b <= a:
            return 1.0
        return (it - a) / (b - a)

    def batch_size(self, it: int) -> int:
        ini, fin = self.sizes()
        return int(round(ini + (fin - ini) * self._progress(it)))

    def step(self, it: int) -> float:
        fin = self.final_step if self.final_step > 0 else LIMITS[self.dim][3]
        p = self._progress(it)
        return float(fin + (INITIAL_STEP - fin) * 0.5 * (1.0 + np.cos(np.pi * p)))

    def fudge(self, it: int) -> float:
        return float(1.0 + (self.tau2_fudge - 1.0) * self._progress(it))
