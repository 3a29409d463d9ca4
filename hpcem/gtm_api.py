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

Every function also takes cupy arrays (all inputs on the GPU): it then runs the CUDA twin in
``hpcem._cuda`` (``cuda/gtm.cu``) on cupy's current stream and returns cupy arrays.  The GPU
``gtm_solve`` builds the systems with double-precision tiled GEMMs and factorises them with
one thread block per pixel; ``chunk`` is honoured, ``block`` is ignored on the GPU.
"""
from __future__ import annotations

import numpy as np

from . import _core
from .kernels import (_cuda, check_exact as _arr, check_exact_gpu as _garr,  # noqa: F401
                      cupy_stream as _stream, is_cupy, on_gpu as _gpu)  # (_cuda: None without CUDA build)

__all__ = ["gtm_solve", "gtm_distances", "gtm_responsibilities", "gtm_accumulate",
           "gtm_solve_flops"]


def gtm_solve(Phi: np.ndarray, G: np.ndarray, H: np.ndarray, lam: float, chunk: int = 0) -> np.ndarray:
    """Per-pixel M x M solves of the GTM M-step.

    ``Phi`` float32 ``(K, M)`` basis values; ``G`` float32 ``(K, D)`` = ``sum_n r_kn CTF_nd^2``;
    ``H`` complex64 ``(K, D)`` = ``sum_n r_kn CTF_nd t_nd``; ``lam`` = alpha / beta >= 0.
    Returns ``W`` complex64 ``(M, D)``. A system that is not positive definite in floating
    point gets a growing ridge until it factorises. ``chunk``: pixels per DGEMM (0: auto,
    about 64 MiB of packed matrices; on the GPU about 256 MiB). cupy inputs: W is a cupy array."""
    gpu = _gpu(Phi, G, H)
    chk = _garr if gpu else _arr
    Phi = chk(Phi, "Phi", np.float32, 2)
    G = chk(G, "G", np.float32, 2)
    H = chk(H, "H", np.complex64, 2)
    K, M = Phi.shape
    if G.shape[0] != K:
        raise ValueError(f"G: expected {K} rows like Phi, got shape {G.shape}")
    if H.shape != G.shape:
        raise ValueError(f"H: expected shape {G.shape} like G, got {H.shape}")
    lam = float(lam)
    if not np.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be finite and >= 0, got {lam}")
    if gpu:
        import cupy

        if K < 1 or M < 1:
            raise ValueError(f"Phi: empty basis, shape {Phi.shape}")
        D = G.shape[1]
        W = cupy.empty((M, D), dtype=cupy.complex64)
        _cuda.gtm_solve(Phi.data.ptr, G.data.ptr, H.data.ptr, K, M, D, lam, int(chunk),
                        W.data.ptr, _stream())
        return W
    return _core.gtm_solve(Phi, G, H, lam, int(chunk))


def gtm_solve_flops(K: int, M: int, D: int) -> float:
    """Floating-point operations of one :func:`gtm_solve` call (build + factorise + solve)."""
    Mp = M * (M + 1) / 2
    return D * (2.0 * Mp * K + 2.0 * M * 2 * K + M ** 3 / 3.0 + 4.0 * M * M)


def gtm_distances(Z: np.ndarray, Ymat: np.ndarray, block: int = 4096) -> np.ndarray:
    """``Z @ Ymat^T`` (N, K) float32 (see the module docstring for the layouts)."""
    gpu = _gpu(Z, Ymat)
    chk = _garr if gpu else _arr
    Z = chk(Z, "Z", np.float32, 2)
    Ymat = chk(Ymat, "Ymat", np.float32, 2)
    if Z.shape[1] != Ymat.shape[1]:
        raise ValueError(f"Z {Z.shape} and Ymat {Ymat.shape} must have the same number of columns")
    if gpu:
        import cupy

        (N, L), K = Z.shape, Ymat.shape[0]
        out = cupy.empty((N, K), dtype=cupy.float32)
        _cuda.gtm_distances(Z.data.ptr, Ymat.data.ptr, N, L, K, out.data.ptr, _stream())
        return out
    return _core.gtm_distances(Z, Ymat, int(block))


def gtm_responsibilities(delta: np.ndarray, a: np.ndarray, beta: float):
    """In place: ``delta`` (N, K) float32 -> responsibilities (rows sum to 1).

    ``a`` float64 (N,) adds the k-independent part of the distance. Returns
    ``(logZ, rdelta, kmax, rmax)``: ``logZ_n = log sum_k exp(-beta/2 (a_n + delta_nk))``,
    ``rdelta_n = sum_k r_kn (a_n + delta_nk)``, the most responsible latent point and its
    responsibility.  With a cupy ``delta`` (and ``a`` given as a cupy array or on the host)
    the four results are cupy arrays."""
    if is_cupy(delta):
        return _gtm_responsibilities_gpu(delta, a, beta)
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


def _gtm_responsibilities_gpu(delta, a, beta: float):
    import cupy

    if _cuda is None:
        _backend(delta)  # raises: hpcem._cuda was not built
    if delta.dtype != np.float32 or delta.ndim != 2:
        raise TypeError("delta: expected a 2-D float32 cupy array")
    if not delta.flags.c_contiguous:
        raise ValueError("delta: must be C-contiguous (it is overwritten)")
    N, K = delta.shape
    a = cupy.ascontiguousarray(cupy.asarray(a, dtype=cupy.float64))
    if a.shape != (N,):
        raise ValueError(f"a: expected shape ({N},), got {a.shape}")
    beta = float(beta)
    if not np.isfinite(beta) or beta <= 0:
        raise ValueError(f"beta must be finite and > 0, got {beta}")
    if K < 1 and N > 0:
        raise ValueError("delta: needs at least one latent point (K >= 1)")
    logZ = cupy.empty(N, dtype=cupy.float64)
    rdelta = cupy.empty(N, dtype=cupy.float64)
    kmax = cupy.empty(N, dtype=cupy.int64)
    rmax = cupy.empty(N, dtype=cupy.float32)
    _cuda.gtm_responsibilities(delta.data.ptr, a.data.ptr, N, K, beta, logZ.data.ptr,
                               rdelta.data.ptr, kmax.data.ptr, rmax.data.ptr, _stream())
    return logZ, rdelta, kmax, rmax


def gtm_accumulate(R: np.ndarray, Z: np.ndarray, block: int = 2048) -> np.ndarray:
    """``R^T @ Z`` (K, L) float64 from float32 ``R`` (N, K) and ``Z`` (N, L) (cupy in: cupy out,
    accumulated in double on the GPU)."""
    gpu = _gpu(R, Z)
    chk = _garr if gpu else _arr
    R = chk(R, "R", np.float32, 2)
    Z = chk(Z, "Z", np.float32, 2)
    if R.shape[0] != Z.shape[0]:
        raise ValueError(f"R {R.shape} and Z {Z.shape} must have the same number of rows")
    if gpu:
        import cupy

        (N, K), L = R.shape, Z.shape[1]
        out = cupy.empty((K, L), dtype=cupy.float64)
        _cuda.gtm_accumulate(R.data.ptr, Z.data.ptr, N, K, L, out.data.ptr, _stream())
        return out
    return _core.gtm_accumulate(R, Z, int(block))
