"""GTM (ROME statistical manifold learning) kernels, CPU production path in ``hpcem._core``
(csrc/gtm.cpp; CUDA twins in cuda/gtm.cu).

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

Array inputs must have exactly the documented dtype; a strided read-only input is copied
to C order (``delta``, overwritten in place, must be C-contiguous).

Every function also takes cupy arrays (all inputs on the GPU): it then runs the CUDA twin in
``hpcem._cuda`` (``cuda/gtm.cu``) on cupy's current stream and returns cupy arrays.  The GPU
``gtm_solve`` builds the systems with double-precision tiled GEMMs and factorises them with
one thread block per pixel; ``chunk`` is honoured, ``block`` is ignored on the GPU.
"""
from __future__ import annotations

import numpy as np

from . import _backend

__all__ = ["gtm_solve", "gtm_distances", "gtm_responsibilities", "gtm_accumulate",
           "gtm_solve_flops"]


def _matrix(c, a, name, dtype):
    return c.array(a, name, dtype, ndim=2, strided="copy")


def gtm_solve(Phi: np.ndarray, G: np.ndarray, H: np.ndarray, lam: float, chunk: int = 0) -> np.ndarray:
    """Per-pixel M x M solves of the GTM M-step.

    ``Phi`` float32 ``(K, M)`` basis values; ``G`` float32 ``(K, D)`` = ``sum_n r_kn CTF_nd^2``;
    ``H`` complex64 ``(K, D)`` = ``sum_n r_kn CTF_nd t_nd``; ``lam`` = alpha / beta >= 0.
    Returns ``W`` complex64 ``(M, D)``. A system that is not positive definite in floating
    point gets a growing ridge until it factorises. ``chunk``: pixels per DGEMM (0: auto,
    about 64 MiB of packed matrices; on the GPU about 256 MiB). cupy inputs: W is a cupy array."""
    c = _backend.args_for("gtm_solve", Phi=Phi, G=G, H=H)
    Phi = _matrix(c, Phi, "Phi", np.float32)
    K, M = Phi.shape
    G = _matrix(c, G, "G", np.float32)
    if G.shape[0] != K:
        c.fail(f"G: expected {K} rows like Phi, got shape {tuple(G.shape)}")
    H = c.array(H, "H", np.complex64, shape=G.shape, strided="copy")
    lam = c.number(lam, "lam")
    if K < 1 or M < 1:
        c.fail(f"Phi: empty basis, shape {tuple(Phi.shape)}")
    if not c.gpu:
        return _backend.core("gtm_solve", Phi, G, H, lam, int(chunk))
    D = G.shape[1]
    W = c.xp.empty((M, D), dtype=np.complex64)
    _backend.cuda("gtm_solve", Phi, G, H, K, M, D, lam, int(chunk), W)
    return W


def gtm_solve_flops(K: int, M: int, D: int) -> float:
    """Floating-point operations of one :func:`gtm_solve` call (build + factorise + solve)."""
    Mp = M * (M + 1) / 2
    return D * (2.0 * Mp * K + 2.0 * M * 2 * K + M ** 3 / 3.0 + 4.0 * M * M)


def gtm_distances(Z: np.ndarray, Ymat: np.ndarray, block: int = 4096) -> np.ndarray:
    """``Z @ Ymat^T`` (N, K) float32 (see the module docstring for the layouts)."""
    c = _backend.args_for("gtm_distances", Z=Z, Ymat=Ymat)
    Z = _matrix(c, Z, "Z", np.float32)
    Ymat = _matrix(c, Ymat, "Ymat", np.float32)
    (N, L), K = Z.shape, Ymat.shape[0]
    if Ymat.shape[1] != L:
        c.fail(f"Ymat: expected {L} columns like Z {tuple(Z.shape)}, got shape {tuple(Ymat.shape)}")
    if not c.gpu:
        return _backend.core("gtm_distances", Z, Ymat, int(block))
    out = c.xp.empty((N, K), dtype=np.float32)
    _backend.cuda("gtm_distances", Z, Ymat, N, L, K, out)
    return out


def gtm_responsibilities(delta: np.ndarray, a: np.ndarray, beta: float):
    """In place: ``delta`` (N, K) float32 -> responsibilities (rows sum to 1).

    ``a`` float64 (N,) adds the k-independent part of the distance. Returns
    ``(logZ, rdelta, kmax, rmax)``: ``logZ_n = log sum_k exp(-beta/2 (a_n + delta_nk))``,
    ``rdelta_n = sum_k r_kn (a_n + delta_nk)``, the most responsible latent point and its
    responsibility.  With a cupy ``delta`` (and ``a`` given as a cupy array or on the host)
    the four results are cupy arrays."""
    c = _backend.args_for("gtm_responsibilities", delta=delta)
    delta = c.array(delta, "delta", np.float32, ndim=2, writeable=True)
    N, K = delta.shape
    a = c.cast(a, "a", np.float64, shape=(N,))
    beta = c.number(beta, "beta", positive=True)
    if K < 1 and N > 0:
        c.fail("delta: needs at least one latent point (K >= 1)")
    if not c.gpu:
        return _backend.core("gtm_responsibilities", delta, a, beta)
    xp = c.xp
    logZ, rdelta = xp.empty(N, dtype=np.float64), xp.empty(N, dtype=np.float64)
    kmax, rmax = xp.empty(N, dtype=np.int64), xp.empty(N, dtype=np.float32)
    _backend.cuda("gtm_responsibilities", delta, a, N, K, beta, logZ, rdelta, kmax, rmax)
    return logZ, rdelta, kmax, rmax


def gtm_accumulate(R: np.ndarray, Z: np.ndarray, block: int = 2048) -> np.ndarray:
    """``R^T @ Z`` (K, L) float64 from float32 ``R`` (N, K) and ``Z`` (N, L) (cupy in: cupy out,
    accumulated in double on the GPU)."""
    c = _backend.args_for("gtm_accumulate", R=R, Z=Z)
    R = _matrix(c, R, "R", np.float32)
    Z = _matrix(c, Z, "Z", np.float32)
    (N, K), L = R.shape, Z.shape[1]
    if Z.shape[0] != N:
        c.fail(f"Z: expected {N} rows like R {tuple(R.shape)}, got shape {tuple(Z.shape)}")
    if not c.gpu:
        return _backend.core("gtm_accumulate", R, Z, int(block))
    out = c.xp.empty((K, L), dtype=np.float64)
    _backend.cuda("gtm_accumulate", R, Z, N, K, L, out)
    return out
