"""Shared benchmark helpers: timing and the SGEMM reference ceiling."""
from __future__ import annotations

import time

import numpy as np


def best_time(fn, repeats=2) -> float:
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def sgemm_gflops(m=2048, repeats=3) -> float:
    """numpy float32 matmul rate on this machine (m^3), the compute ceiling the kernels are held to."""
    a = np.random.default_rng(0).standard_normal((m, m), dtype=np.float32)
    b = a.T.copy()
    a @ b
    return 2.0 * m ** 3 / best_time(lambda: a @ b, repeats) / 1e9
