"""GTM (ROME statistical manifold learning) kernels, CPU production path in ``hpcem._core``.

Notation (see :mod:`hpcem.algorithms.gtm`): ``K`` latent points, ``M`` basis functions,
``N`` particles, ``D`` Fourier coefficients of this rank's pixel block.

* :func:`gtm_solve`  ``W[:, d] = (Phi^T diag(G[:, d]) Phi + lam I)^{-1} Phi^T H[:, d]`` for
  every pixel ``d`` (ROME eqs 15-16; batched Cholesky, double precision; all ``A_d`` are
  built by one DGEMM over Khatri-Rao rows ``phi_km phi_km'``).
* :func:`gtm_distances`  ``delta' = Z @ Ymat^T`` (SGEMM), the E-step distances without the
  k-independent ``|t_n|^2`` term.  Layout: ``Z[n] = [h c t (interleaved re, im) | h c^2]``
  and ``Ymat[k] = [-2 y_k (interleaved) | |y_k|^2]``, so
  ``Z[n] . Ymat[k] = sum_d h_d (|c_nd y_kd|^2 - 2 Re(conj(t_nd) c_nd y_kd))``.
* :func:`gtm_responsibilities`  in place ``delta -> r_kn = softmax_k(-beta/2 (a_n + delta_nk))``
  (eq 9, log-sum-exp in double).
* :func:`gtm_accumulate`  ``R^T @ Z`` (float64), the M-step sums.
"""
from __future__ import annotations

import numpy as np

from . import _core

__all__ = ["gtm_solve", "gtm_distances", "gtm_responsibilities", "gtm_accumulate",
           "gtm_solve_flops"]


def _arr(a, name: str, dtype, ndim: int) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array, got {type(a).__name__}")
    if a.dtype != np.dtype(dtype):
        raise TypeError(f"{name}: expected dtype {np.dtype(dtype)}, got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim}-D, got shape {a.shape}")
    return np.ascontiguousarray(a)


def gtm_solve(Phi: np.ndarray, G: np.ndarray, H: np.ndarray, lam: float, chunk: int = 0) -> np.ndarray:
    """Per-pixel M x M solves of the GTM M-step.

    ``Phi`` float32 ``(K, M)`` basis values; ``G`` float32 ``(K, D)`` = ``sum_n r_kn CTF_nd^2``;
    ``H`` complex64 ``(K, D)`` = ``sum_n r_kn CTF_nd t_nd``; ``lam`` = alpha / beta >= 0.
    Returns ``W`` complex64 ``(M, D)``. A system that is not positive definite in floating
    point gets a growing ridge until it factorises. ``chunk``: pixels per DGEMM (0: auto,
    about 64 MiB of packed matrices)."""
    Phi = _arr(Phi, "Phi", np.float32, 2)
    G = _arr(G, "G", np.float32, 2)
    H = _arr(H, "H", np.complex64, 2)
    K, M = Phi.shape
    if G.shape[0] != K:
        raise ValueError(f"G: expected {K} rows like Phi, got shape {G.shape}")
    if H.shape != G.shape:
        raise ValueError(f"H: expected shape {G.shape} like G, got {H.shape}")
    lam = float(lam)
    if not np.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be finite and >= 0, got {lam}")
    return _core.gtm_solve(Phi, G, H, lam, int(chunk))


def gtm_solve_flops(K: int, M: int, D: int) -> float:
    """Floating-point operations of one :func:`gtm_solve` call (build + factorise + solve)."""
    Mp = M * (M + 1) / 2
    return D * (2.0 * Mp * K + 2.0 * M * 2 * K + M ** 3 / 3.0 + 4.0 * M * M)


def gtm_distances(Z: np.ndarray, Ymat: np.ndarray, block: int = 4096) -> np.ndarray:
    """``Z @ Ymat^T`` (N, K) float32 (see the module docstring for the layouts)."""
    Z = _arr(Z, "Z", np.float32, 2)
    Ymat = _arr(Ymat, "Ymat", np.float32, 2)
    if Z.shape[1] != Ymat.shape[1]:
        raise ValueError(f"Z {Z.shape} and Ymat {Ymat.shape} must have the same number of columns")
    return _core.gtm_distances(Z, Ymat, int(block))


def gtm_responsibilities(delta: np.ndarray, a: np.ndarray, beta: float):
    """In place: ``delta`` (N, K) float32 -> responsibilities (rows sum to 1).

    ``a`` float64 (N,) adds the k-independent part of the distance. Returns
    ``(logZ, rdelta, kmax, rmax)``: ``logZ_n = log sum_k exp(-beta/2 (a_n + delta_nk))``,
    ``rdelta_n = sum_k r_kn (a_n + delta_nk)``, the most responsible latent point and its
    responsibility."""
    if not isinstance(delta, np.ndarray) or delta.dtype != np.float32 or delta.ndim != 2:
        raise TypeError("delta: expected a 2-D float32 numpy array")
    if not delta.flags.c_contiguous or not delta.flags.writeable:
        raise ValueError("delta: must be C-contiguous and writeable (it is overwritten)")
    a = np.ascontiguousarray(a, dtype=np.float64)
    if a.shape != (delta.shape[0],):
        raise ValueError(f"a: expected shape ({delta.shape[0]},), got {a.shape}")
    beta = float(beta)
    if not np.isfinite(beta) or beta <= 0:
        raise ValueError(f"beta must be finite and > 0, got {beta}")
    return _core.gtm_responsibilities(delta, a, beta)


def gtm_accumulate(R: np.ndarray, Z: np.ndarray, block: int = 2048) -> np.ndarray:
    """``R^T @ Z`` (K, L) float64 from float32 ``R`` (N, K) and ``Z`` (N, L)."""
    R = _arr(R, "R", np.float32, 2)
    Z = _arr(Z, "Z", np.float32, 2)
    if R.shape[0] != Z.shape[0]:
        raise ValueError(f"R {R.shape} and Z {Z.shape} must have the same number of rows")
    return _core.gtm_accumulate(R, Z, int(block))
