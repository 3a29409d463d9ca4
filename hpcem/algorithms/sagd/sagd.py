"""Stochastic average gradient descent on the density maps (seed 003, section 3.3, Algorithm 1).

The objective of mini-batch k is ``f_k(V) = -sum_{i in k} log p(I_i | V) + (1/n_b) (-log p(V))``
(eq 7, the prior shared by the ``n_b`` mini-batches).  Its data gradient with respect to the
real-space maps comes from the E-step's padded sums (data ``D = sum w c X / sigma2``, weight
``W = sum w c^2 / sigma2``) and the maps' padded transforms ``F(V)`` (the projector's own
parametrisation: gridding-corrected, zero-padded, Fourier transformed) through the exact adjoint of
the projection: the E-step back-projects each hypothesis's posterior-weighted *residual*
``sum w c (X - c R) / sigma2`` (Fisher's identity: the gradient of the marginal log-likelihood is
that of the E-step's expected complete-data log-likelihood at the current maps), and
``grad = -Z^T F^H B(residual) / g`` (:func:`data_gradient`; EM's voxel-wise ``W F(V) - D`` is a
poor approximation of it at padding 2, 2-10x off in tests).  Gradients are kept as the n-box Fourier coefficients inside
shell ``R`` (the data only reach the E-step's limit): :class:`Basis`.

SAG keeps every mini-batch's last gradient and their sum ``gbar`` (Algorithm 1) and steps with
their mean over the mini-batches seen so far (Le Roux et al.: the mean, with the count of
batches seen in the first pass): ``V <- V - (epsilon / L) (gbar / m + grad(-log p(V)) / n_b)``,
then non-negativity by projection.  ``L`` is the Lipschitz constant of a mini-batch's gradient,
found by a bisection on the sufficient-decrease condition
``f_k(V) - f_k(V - dV / L) >= |dV|^2 / (2 L)`` at the first iteration, re-checked every
``LINE_SEARCH_EVERY`` iterations (doubled until it holds) and decreased by ``2^(-1/150)`` every
iteration in between.
"""
from __future__ import annotations

import numpy as np
from scipy import fft as sfft

from ...core.fourier import fft_workers, ft3, ft_padded, ift3, shell_index3
from ...recon.projector import gridding_correction

LINE_SEARCH_EVERY = 20
DECREASE = 2.0 ** (-1.0 / 150.0)
BISECTIONS = 3
MAX_DOUBLINGS = 12


class Basis:
    """The n-box half-grid Fourier coefficients inside shell ``R``."""

    def __init__(self, n: int, R: int):
        self.n = int(n)
        sh = shell_index3(n).ravel()
        self.idx = np.flatnonzero(sh <= R)
        self.shell = sh[self.idx]

    @property
    def size(self) -> int:
        return self.idx.size

    def take(self, vol) -> np.ndarray:
        return ft3(np.asarray(vol, np.float64)).ravel()[self.idx]

    def volume(self, coef) -> np.ndarray:
        n = self.n
        F = np.zeros(n * n * (n // 2 + 1), np.complex128)
        F[self.idx] = coef
        return ift3(F.reshape(n, n, n // 2 + 1), n)


def padded_transform(V, pad: int = 2):
    """The projector's parametrisation of a map: ``F(V / g)`` zero-padded to ``pad n`` (complex128)."""
    n = V.shape[-1]
    P = pad * n
    return ft_padded(np.asarray(V, np.float64) / gridding_correction(n, P, 3), P, 3)


def data_gradient(D_res, n: int, basis: Basis, pad: int = 2) -> np.ndarray:
    """Coefficients (``basis``) of the gradient of ``-sum log p(I | V)`` with respect to the real map
    from the back-projected residual sums ``D_res = B(h/2 sum w c (X - c P V) / sigma2)`` (h the
    slices' hermitian weights; x = 0 plane completed, symmetrised): ``-Z^T F^H D_res / g``, the exact
    adjoint of the projector's parametrisation (F^H on the hermitian grid: ``P^3 irfftn``)."""
    P = pad * n
    full = sfft.irfftn(D_res, s=(P, P, P), workers=fft_workers()) * float(P) ** 3
    wrap = (np.arange(n) - n // 2) % P
    return -basis.take(full[np.ix_(wrap, wrap, wrap)] / gridding_correction(n, P, 3))


def data_curvature(dV, W, pad: int = 2) -> float:
    """``dV^T H dV`` of the E-step's quadratic (``H = F^H W F``): sum over the full padded grid of
    ``W |F(dV)|^2`` (the half grid counted twice, its kx = 0 and Nyquist planes once)."""
    F = padded_transform(dV, pad)
    h = np.full(F.shape[-1], 2.0)
    h[0] = 1.0
    if (pad * dV.shape[-1]) % 2 == 0:
        h[-1] = 1.0
    return float(np.sum(h * W * (F.real ** 2 + F.imag ** 2)))


class SAG:
    """Per-mini-batch gradients (``n_batches`` x K x basis, complex64) and their sum."""

    def __init__(self, n_batches: int, K: int, ncoef: int):
        self.mem = np.zeros((int(n_batches), int(K), int(ncoef)), np.complex64)
        self.seen = np.zeros(int(n_batches), bool)
        self.gbar = np.zeros((int(K), int(ncoef)), np.complex128)

    def add(self, b: int, G) -> None:
        """Algorithm 1: ``gbar <- gbar - dV_b + g_b``, ``dV_b <- g_b``."""
        G64 = np.asarray(G, np.complex64)
        self.gbar += G64.astype(np.complex128) - self.mem[b]
        self.mem[b] = G64
        self.seen[b] = True

    def mean(self) -> np.ndarray:
        return self.gbar / max(int(self.seen.sum()), 1)

    def apply_phase(self, k: int, phase) -> None:
        """Shift class ``k``'s gradients with its map (``phase`` on the basis coefficients)."""
        self.mem[:, k] *= phase.astype(np.complex64)
        self.gbar[k] *= phase

    def copy_class(self, src: int, dst: int) -> None:
        self.mem[:, dst] = self.mem[:, src]
        self.gbar[dst] = self.gbar[src]

    def clear_class(self, k: int) -> None:
        self.mem[:, k] = 0
        self.gbar[k] = 0

    def state(self) -> dict:
        return {"sag_mem": self.mem, "sag_seen": self.seen, "sag_gbar": self.gbar}

    @classmethod
    def load(cls, st) -> "SAG":
        mem = np.asarray(st["sag_mem"])
        s = cls(mem.shape[0], mem.shape[1], mem.shape[2])
        s.mem[...] = mem
        s.seen[...] = np.asarray(st["sag_seen"], bool)
        s.gbar[...] = np.asarray(st["sag_gbar"])
        return s


class Lipschitz:
    """The step's Lipschitz constant: bisection at the first search, doubling after, the gradual
    decrease in between (Algorithm 1, section 3.3.2)."""

    def __init__(self, L: float = 0.0):
        self.L = float(L)
        self.searches = 0

    @staticmethod
    def holds(f0: float, f1: float, dnorm2: float, L: float) -> bool:
        return f0 - f1 >= dnorm2 / (2.0 * L)

    def search(self, f_at, f0: float, dnorm2: float, L_guess: float) -> int:
        """Update ``L`` with ``f_at(L)`` = f_k(V - dV / L); returns the evaluations made."""
        evals = 0
        if self.searches == 0 or self.L <= 0:
            lo, hi = 0.0, 0.0
            L = max(float(L_guess), 1e-300)
            for _ in range(MAX_DOUBLINGS):       # bracket: the largest failing, the smallest holding
                evals += 1
                if self.holds(f0, f_at(L), dnorm2, L):
                    hi = L
                    if lo > 0:
                        break
                    L *= 0.5
                else:
                    lo = L
                    if hi > 0:
                        break
                    L *= 2.0
            if hi <= 0:
                hi = L
            if lo > 0:
                for _ in range(BISECTIONS):
                    mid = np.sqrt(lo * hi)
                    evals += 1
                    if self.holds(f0, f_at(mid), dnorm2, mid):
                        hi = mid
                    else:
                        lo = mid
            self.L = hi
        else:
            for _ in range(MAX_DOUBLINGS):
                evals += 1
                if self.holds(f0, f_at(self.L), dnorm2, self.L):
                    break
                self.L *= 2.0
        self.searches += 1
        return evals

    def decrease(self) -> None:
        self.L *= DECREASE
