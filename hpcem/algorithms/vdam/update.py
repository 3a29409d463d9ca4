"""The VDAM model update (seed 000, eqs 12-15) on half-grid Fourier arrays, 2D or 3D alike.

One map ``V_k`` per class (as relion_refine --grad keeps one reference per class: every particle
of a mini-batch is aligned against it); the particles' two fixed half sets give two gradients.
Per class k and half set h, from the mini-batch's E-step sums of that half (``D_h`` = sum of
posterior x CTF x image / sigma2, ``W_h`` = sum of posterior x CTF^2 / sigma2):

* the rescaled gradient ``G_h = (D_h - W_h V) / (W_h + eps1)`` (the step to the unregularised EM
  solution of the half's mini-batch; invariant to the batch size);
* moments ``m_h <- b1 m_h + (1 - b1) G_h`` (b1 = 0.9) and, shared by the halves,
  ``u <- b2 u + (1 - b2) |G_1 - G_2|^2`` (b2 = 0.999), bias-corrected as in Adam;
* the half estimates ``E_h = V + m_h`` inside the E-step's resolution limit (zero beyond): each
  the running average of its half's mini-batch solutions.  Their FSC (:func:`half_fsc`) is the
  SNR measure of eq 12 and sets the E-step's next resolution limit;
* ``V <- V + eta [f a (m_1 + m_2) / 2 - (1 - f) V]`` with ``f`` the FSC turned into the
  regularised Wiener weight ``T s / (1 + T s)``, ``s = FSC / (1 - FSC)`` (eq 12 with the prior of
  eq 11), and ``a = sqrt(<u>_shell) / (sqrt(u) + eps2)``, the per-coefficient adaptive metric of
  eq 14 normalised per shell (as printed, eq 14 divides a map-valued moment by the square root of
  a map-valued second moment, which leaves the step without the map's units; normalising by the
  shell's mean keeps ``a`` ~ 1 where the gradient noise is uniform, and smaller where it is
  larger than its shell's; capped at ``A_MAX``, and 1 where the shell has no gradient noise);
* below ``floor_shell`` (``--grad_min_resol``) the FSC weight is 1; the weight used is the smaller
  of it and the data's Wiener weight (:func:`data_weights`);
* inactive classes (eq 15): the class of least posterior mass, when below ``rho / K``, takes the
  updated map and the moments of the most populated class, which itself is not updated in this
  step.

Two maps per class, each updated by its own half set and aligned against itself (eq 14 read
literally), drift apart: in 2D, class k of one half became one view and class k of the other
half another, and their mean a mixture of the two (ARI 0.60-0.78 on 3 of 6 seeds where EM reaches
0.97); in 3D the two halves converged to one structure in two frames (see DESIGN_NOTES).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...core.fsc import shell_sums

BETA1, BETA2 = 0.9, 0.999
A_MAX = 2.0     # cap of the adaptive metric: where both halves agree (u ~ 0) it would diverge


def shell_mean(x, shell):
    """(K, shell.max() + 1) mean of ``x`` (K, *grid) over the coefficients of each shell."""
    s = np.ravel(shell)
    cnt = np.maximum(np.bincount(s), 1)
    return np.stack([np.bincount(s, weights=xk.ravel(), minlength=cnt.size) / cnt for xk in x])


def fsc_shell(curve, r_cur: int) -> int:
    """Highest shell (<= r_cur) up to which the half-set FSC ``curve`` stays >= 0.143."""
    below = np.flatnonzero(np.asarray(curve)[1:r_cur + 1] < 0.143)
    return int(below[0]) if below.size else int(r_cur)


def mean_fsc_shell(fsc, pclass, r_cur: int) -> int:
    """:func:`fsc_shell` of the class-prior-weighted mean half-set FSC (not the best class's: a
    class just replaced has two identical half estimates)."""
    return fsc_shell(np.asarray(pclass) @ fsc / max(float(np.sum(pclass)), 1e-30), r_cur)


def half_fsc(E):
    """(K, n//2+1) FSC between the two half estimates ``E`` (2, K, *half grid) of every class
    (:func:`hpcem.core.fsc.shell_sums`: hermitian-weighted, corners beyond n/2 left out)."""
    dims, n = E.ndim - 2, E.shape[2]
    out = np.zeros((E.shape[1], n // 2 + 1))
    for k in range(E.shape[1]):
        cross, pa, pb = shell_sums(E[0, k], E[1, k], n, dims)
        den = np.sqrt(pa * pb)
        out[k] = np.where(den > 0, cross / np.where(den > 0, den, 1.0), 0.0)
    return out


def fsc_weights(fsc, fudge: float, floor_shell: int):
    """Update weights ``T s / (1 + T s)`` per class and shell from the half-set FSC."""
    c = np.clip(np.asarray(fsc, np.float64), 0.0, 0.999)
    s = c / (1.0 - c)
    f = fudge * s / (1.0 + fudge * s)
    f[:, :max(int(floor_shell), 0) + 1] = 1.0
    return f


@dataclass
class Moments:
    m: np.ndarray        # (2, K, *grid) complex: first moments per half
    u: np.ndarray        # (K, *grid) real: second moment of the half-set difference
    t: np.ndarray        # (K,) updates so far (bias correction)

    @classmethod
    def zeros(cls, K: int, grid) -> "Moments":
        return cls(np.zeros((2, K) + tuple(grid), np.complex128), np.zeros((K,) + tuple(grid)), np.zeros(K))

    def state(self) -> dict:
        return {"grad_m": self.m, "grad_u": self.u, "grad_t": self.t}

    @classmethod
    def load(cls, st) -> "Moments":
        return cls(np.asarray(st["grad_m"]), np.asarray(st["grad_u"]), np.asarray(st["grad_t"], np.float64))

    def copy_class(self, src: int, dst: int) -> None:
        self.m[:, dst], self.u[dst], self.t[dst] = self.m[:, src], self.u[src], self.t[src]

    def add(self, G) -> None:
        """Running averages of the half gradients ``G`` (2, K, *grid) and of their difference."""
        self.m *= BETA1
        self.m += (1.0 - BETA1) * G
        self.u *= BETA2
        self.u += (1.0 - BETA2) * np.abs(G[0] - G[1]) ** 2
        self.t += 1.0

    def corrected(self):
        """Bias-corrected (first moments (2, K, *grid), second moment (K, *grid))."""
        grid = (slice(None),) + (None,) * (self.u.ndim - 1)
        return self.m / (1.0 - BETA1 ** self.t)[grid], self.u / (1.0 - BETA2 ** self.t)[grid]


def data_weights(W, scale, tau2, fudge: float, shell):
    """The Wiener weight ``Wn / (Wn + 1 / (T tau2))`` per class and coefficient, with ``Wn =
    sum_h scale_h W_h`` the mini-batch weight scaled to the whole set and ``tau2`` (K, nsh) the
    signal power: a class that draws few particles is shrunk as EM would shrink it, however
    alike its half estimates (a class without particles keeps them equal, and a replaced class
    starts as a copy)."""
    nsh = tau2.shape[1]
    t2 = fudge * tau2[:, np.minimum(shell, nsh - 1)]
    Wn = np.tensordot(np.asarray(scale, np.float64), W, axes=(0, 0))
    return np.where(t2 > 0, Wn * t2 / (Wn * t2 + 1.0), 0.0)


def vdam_update(V, D, W, mom: Moments, scale, tau2, fudge: float, floor_shell: int, shell, eta: float,
                r_used: int, replace=None):
    """One VDAM update of the maps ``V`` (K, *half grid) in place from the half sets' sums ``D``,
    ``W`` (2, K, *grid) of a mini-batch aligned up to shell ``r_used``; ``scale`` (2,) scales each
    half's batch weight to its whole half set, ``tau2`` (K, nsh) the signal power, ``shell`` the
    shell of every coefficient; ``replace`` = (a, b) for eq 15.  Returns the (K, nsh) FSC of the
    half estimates (before the step)."""
    nsh = tau2.shape[1]
    inside = shell <= r_used
    sh = np.minimum(shell, nsh - 1)
    eps1 = 1e-3 * np.maximum(W.reshape(2, -1).mean(1), 1e-300).reshape(2, 1, *([1] * (W.ndim - 2)))
    mom.add(np.where(inside, (D - W * V[None]) / (W + eps1), 0.0))
    mh, uh = mom.corrected()
    fsc = half_fsc(np.where(inside, V[None] + mh, 0.0))
    f = np.minimum(fsc_weights(fsc, fudge, floor_shell)[:, sh], data_weights(W, scale, tau2, fudge, shell))
    ubar = shell_mean(uh, shell)[:, shell]
    a = np.where(ubar > 0, np.sqrt(ubar) / (np.sqrt(uh) + 1e-3 * np.sqrt(ubar) + 1e-300), 1.0)
    np.minimum(a, A_MAX, out=a)
    old_b = None if replace is None else V[replace[1]].copy()
    V += np.where(inside, eta * (f * a * mh.mean(0) - (1.0 - f) * V), 0.0)
    if replace is not None:
        a_, b_ = replace
        V[a_] = V[b_]
        V[b_] = old_b
        mom.copy_class(b_, a_)
    return fsc


def replace_inactive(pclass, rho: float):
    """(a, b) of eq 15 or None: ``a`` the least active class, when below rho / K; ``b`` the most
    populated class (the issue's rule; the seed picks the class of largest normalised first
    moment, which on 2D test sets kept copying well-defined single views, so that merged views
    in the large classes never split: see DESIGN_NOTES)."""
    K = len(pclass)
    a = int(np.argmin(pclass))
    if K < 2 or rho <= 0 or pclass[a] >= rho / K:
        return None
    return a, int(np.argmax(pclass))


def share_prior(pclass, replace) -> None:
    """Eq 15's classes ``replace`` = (a, b) share b's prior, in place (nothing for None)."""
    if replace is not None:
        a, b = replace
        pclass[a] = pclass[b] = 0.5 * pclass[b]
