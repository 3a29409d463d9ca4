"""CUDA kernels against the CPU ones on the same random inputs (skipped without cupy or a GPU)."""
import numpy as np
import pytest

cp = pytest.importorskip("cupy")

from hpcem import kernels  # noqa: E402
from hpcem.core.euler import random_rotations, rotation_2d  # noqa: E402

pytestmark = pytest.mark.gpu

if kernels._cuda is None:
    pytest.skip("hpcem._cuda not built", allow_module_level=True)
try:
    if cp.cuda.runtime.getDeviceCount() < 1 or kernels._cuda.device_count() < 1:
        pytest.skip("no CUDA device", allow_module_level=True)
except cp.cuda.runtime.CUDARuntimeError:
    pytest.skip("no CUDA device", allow_module_level=True)


def rand_c(rng, shape):
    return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)


@pytest.mark.parametrize("n", [7, 8, 16, 33])
def test_project3d_cuda_matches_cpu(n):
    rng = np.random.default_rng(n)
    P = 2 * n
    vol = rand_c(rng, (P, P, P // 2 + 1))
    A = random_rotations(20, rng)
    cpu = kernels.project3d(vol, A, n, n / 2, 2)
    gpu = kernels.project3d(cp.asarray(vol), cp.asarray(A), n, n / 2, 2)
    assert isinstance(gpu, cp.ndarray)
    assert np.abs(cp.asnumpy(gpu) - cpu).max() < 1e-4 * np.abs(cpu).max()


@pytest.mark.parametrize("n", [7, 8, 16, 33])
def test_project2d_cuda_matches_cpu(n):
    rng = np.random.default_rng(n + 1)
    P = 2 * n
    refs = rand_c(rng, (3, P, P // 2 + 1))
    R = rotation_2d(rng.uniform(0, 360, 12))
    idx = rng.integers(0, 3, 12)
    cpu = kernels.project2d(refs, R, n, n / 2, 2, ref_index=idx)
    gpu = kernels.project2d(cp.asarray(refs), cp.asarray(R), n, n / 2, 2, ref_index=cp.asarray(idx))
    assert np.abs(cp.asnumpy(gpu) - cpu).max() < 1e-4 * np.abs(cpu).max()


@pytest.mark.parametrize("n", [7, 8, 16, 33])
@pytest.mark.parametrize("dtype", [np.complex128, np.complex64])
def test_backproject3d_cuda_matches_cpu(n, dtype):
    rng = np.random.default_rng(n + 2)
    P = 2 * n
    s = rand_c(rng, (30, n, n // 2 + 1))
    w = rng.uniform(0.5, 2, (30, n, n // 2 + 1)).astype(np.float32)
    A = random_rotations(30, rng)
    wdt = np.float64 if dtype == np.complex128 else np.float32
    D, W = np.zeros((P, P, P // 2 + 1), dtype), np.zeros((P, P, P // 2 + 1), wdt)
    kernels.backproject3d(s, w, A, D, W, n / 2, 2)
    Dg, Wg = cp.zeros(D.shape, dtype), cp.zeros(W.shape, wdt)
    kernels.backproject3d(cp.asarray(s), cp.asarray(w), cp.asarray(A), Dg, Wg, n / 2, 2)
    assert np.abs(cp.asnumpy(Dg) - D).max() < 1e-4 * np.abs(D).max()
    assert np.abs(cp.asnumpy(Wg) - W).max() < 1e-4 * np.abs(W).max()


@pytest.mark.parametrize("n", [7, 8, 16, 33])
def test_backproject2d_cuda_matches_cpu(n):
    rng = np.random.default_rng(n + 3)
    P = 2 * n
    s = rand_c(rng, (25, n, n // 2 + 1))
    R = rotation_2d(rng.uniform(0, 360, 25))
    idx = rng.integers(0, 2, 25)
    D, W = np.zeros((2, P, P // 2 + 1), np.complex128), np.zeros((2, P, P // 2 + 1))
    kernels.backproject2d(s, None, R, D, W, n / 2, 2, ref_index=idx)
    Dg, Wg = cp.zeros(D.shape, D.dtype), cp.zeros(W.shape, W.dtype)
    kernels.backproject2d(cp.asarray(s), None, cp.asarray(R), Dg, Wg, n / 2, 2, ref_index=cp.asarray(idx))
    assert np.abs(cp.asnumpy(Dg) - D).max() < 1e-4 * np.abs(D).max()
    assert np.abs(cp.asnumpy(Wg) - W).max() < 1e-4 * np.abs(W).max()


def test_symmetrise3d_cuda_matches_cpu():
    rng = np.random.default_rng(5)
    P = 32
    D = rand_c(rng, (P, P, P // 2 + 1)).astype(np.complex128)
    W = rng.uniform(0, 1, D.shape)
    ops = random_rotations(4, rng)
    Dc, Wc = kernels.symmetrise3d(D, W, ops, P / 2)
    Dg, Wg = kernels.symmetrise3d(cp.asarray(D), cp.asarray(W), cp.asarray(ops), P / 2)
    assert np.abs(cp.asnumpy(Dg) - Dc).max() < 1e-9 * np.abs(Dc).max()
    assert np.abs(cp.asnumpy(Wg) - Wc).max() < 1e-9 * np.abs(Wc).max()
