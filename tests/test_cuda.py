"""CUDA kernels against the CPU ones on the same random inputs (skipped without cupy or a GPU)."""
import numpy as np
import pytest

cp = pytest.importorskip("cupy")

from hpcem import kernels  # noqa: E402
from hpcem.core.euler import random_rotations, rotation_2d  # noqa: E402

pytestmark = pytest.mark.gpu

if not kernels.has_cuda():
    pytest.skip("hpcem._cuda not built or no CUDA device", allow_module_level=True)


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


# ----------------------------------------------------------------------------- GTM twins
@pytest.mark.parametrize("K,M,D,lam,chunk", [(7, 3, 5, 0.5, 0), (64, 17, 300, 1e-3, 128),
                                             (40, 9, 33, 0.01, 7), (150, 120, 6, 0.1, 0)])
def test_gtm_solve_cuda_matches_cpu(K, M, D, lam, chunk):
    # M = 120: the per-pixel system no longer fits shared memory (global scratch path)
    rng = np.random.default_rng(K + M + D)
    Phi = rng.random((K, M)).astype(np.float32)
    Phi[:, -1] = 1.0
    G = rng.random((K, D)).astype(np.float32)
    H = rand_c(rng, (K, D))
    cpu = kernels.gtm_solve(Phi, G, H, lam)
    gpu = kernels.gtm_solve(cp.asarray(Phi), cp.asarray(G), cp.asarray(H), lam, chunk=chunk)
    assert isinstance(gpu, cp.ndarray) and gpu.shape == (M, D) and gpu.dtype == np.complex64
    g = cp.asnumpy(gpu)
    assert np.isfinite(g).all()
    assert np.abs(g - cpu).max() <= 1e-4 * np.abs(cpu).max()


def test_gtm_solve_cuda_against_numpy():
    K, M, D, lam = 50, 12, 20, 0.05
    rng = np.random.default_rng(11)
    Phi = rng.random((K, M)).astype(np.float32)
    G = rng.random((K, D)).astype(np.float32)
    H = rand_c(rng, (K, D))
    W = cp.asnumpy(kernels.gtm_solve(cp.asarray(Phi), cp.asarray(G), cp.asarray(H), lam))
    P = Phi.astype(np.float64)
    ref = np.stack([np.linalg.solve(P.T @ (G[:, d, None] * P) + lam * np.eye(M), P.T @ H[:, d])
                    for d in range(D)], axis=1)
    assert np.abs(W - ref).max() <= 2e-5 * np.abs(ref).max()


@pytest.mark.parametrize("N,L,K", [(1, 1, 1), (70, 33, 5), (300, 129, 65)])
def test_gtm_distances_and_accumulate_cuda_match_cpu(N, L, K):
    rng = np.random.default_rng(N + L + K)
    Z = rng.normal(size=(N, L)).astype(np.float32)
    Y = rng.normal(size=(K, L)).astype(np.float32)
    R = rng.random((N, K)).astype(np.float32)
    d_cpu = kernels.gtm_distances(Z, Y)
    d_gpu = kernels.gtm_distances(cp.asarray(Z), cp.asarray(Y))
    assert d_gpu.dtype == np.float32 and d_gpu.shape == (N, K)
    scale = np.abs(Z).max() * np.abs(Y).max() * L
    assert np.abs(cp.asnumpy(d_gpu) - d_cpu).max() <= 1e-5 * scale
    a_cpu = kernels.gtm_accumulate(R, Z)
    a_gpu = kernels.gtm_accumulate(cp.asarray(R), cp.asarray(Z))
    assert a_gpu.dtype == np.float64 and a_gpu.shape == (K, L)
    exact = R.astype(np.float64).T @ Z.astype(np.float64)
    assert np.abs(cp.asnumpy(a_gpu) - exact).max() <= 1e-9 * np.abs(R).max() * np.abs(Z).max() * N
    assert np.abs(cp.asnumpy(a_gpu) - a_cpu).max() <= 1e-5 * np.abs(exact).max()


@pytest.mark.parametrize("N,K", [(5, 1), (40, 30), (17, 300)])
def test_gtm_responsibilities_cuda_matches_cpu(N, K):
    rng = np.random.default_rng(N * K)
    delta = rng.normal(scale=20.0, size=(N, K)).astype(np.float32)
    a = rng.normal(size=N)
    dg = cp.asarray(delta)
    out_cpu = kernels.gtm_responsibilities(delta, a, 0.3)
    out_gpu = kernels.gtm_responsibilities(dg, cp.asarray(a), 0.3)
    assert np.abs(cp.asnumpy(dg) - delta).max() <= 1e-6
    np.testing.assert_allclose(cp.asnumpy(out_gpu[0]), out_cpu[0], rtol=1e-10, atol=1e-8)
    np.testing.assert_allclose(cp.asnumpy(out_gpu[1]), out_cpu[1], rtol=1e-8, atol=1e-6)
    np.testing.assert_array_equal(cp.asnumpy(out_gpu[2]), out_cpu[2])
    np.testing.assert_allclose(cp.asnumpy(out_gpu[3]), out_cpu[3], rtol=1e-6)


# ----------------------------------------------------------------------------- marginalisation
def _marg_inputs(rng, B, T, J, M):
    X = rand_c(rng, (B, M))
    ctf = rng.uniform(-1, 1, (B, M)).astype(np.float32)
    s = rng.uniform(0.2, 1.0, (B, M)).astype(np.float32)
    ang = rng.uniform(0, 2 * np.pi, (T, M))
    ph = np.exp(1j * ang).astype(np.complex64)
    R = rand_c(rng, (J, M))
    return X, ctf, s, ph, R


def _gpu(*arrays):
    return [cp.asarray(a) for a in arrays]


@pytest.mark.parametrize("B,T,J,M", [(1, 1, 1, 1), (3, 5, 70, 40), (9, 2, 130, 77)])
def test_coarse_diff2_cuda_matches_cpu(B, T, J, M):
    rng = np.random.default_rng(B * T + J + M)
    args = _marg_inputs(rng, B, T, J, M)
    cpu = kernels.coarse_diff2(*args)
    gpu = kernels.coarse_diff2(*_gpu(*args))
    assert isinstance(gpu, cp.ndarray) and gpu.shape == (B, T, J) and gpu.dtype == np.float32
    assert np.abs(cp.asnumpy(gpu) - cpu).max() <= 2e-5 * np.abs(cpu).max()


def _pairs(rng, B, T, J, P):
    return rng.integers(0, B, P), rng.integers(0, T, P), rng.integers(0, J, P)


@pytest.mark.parametrize("B,T,J,M,P", [(2, 3, 4, 5, 17), (6, 4, 20, 100, 500)])
def test_pair_diff2_cuda_matches_cpu(B, T, J, M, P):
    rng = np.random.default_rng(P + M)
    args = _marg_inputs(rng, B, T, J, M)
    pi, pt, pj = _pairs(rng, B, T, J, P)
    cpu = kernels.pair_diff2(*args, pi, pt, pj)
    gpu = kernels.pair_diff2(*_gpu(*args), *_gpu(pi, pt, pj))
    assert isinstance(gpu, cp.ndarray) and gpu.shape == (P,)
    np.testing.assert_allclose(cp.asnumpy(gpu), cpu, rtol=3e-5)
    # and the coarse grid agrees with the explicit pairs
    full = kernels.coarse_diff2(*args)
    np.testing.assert_allclose(cpu, full[pi, pt, pj], rtol=1e-3, atol=1e-4 * np.abs(full).max())


@pytest.mark.parametrize("acc", [(np.complex128, np.float64), (np.complex64, np.float32),
                                 (np.complex128, np.float32)])
def test_marg_accumulate_cuda_matches_cpu(acc):
    B, T, J, M, P = 5, 3, 7, 60, 200
    rng = np.random.default_rng(3)
    args = _marg_inputs(rng, B, T, J, M)
    pi, pt, pj = _pairs(rng, B, T, J, P)
    w = rng.random(P).astype(np.float32)
    w[::7] = 0.0
    ddt, wdt = acc
    D, W, N = np.zeros((J, M), ddt), np.zeros((J, M), wdt), np.zeros((B, M), np.float32)
    kernels.accumulate(*args, pi, pt, pj, w, D, W, N)
    Dg, Wg, Ng = cp.zeros((J, M), ddt), cp.zeros((J, M), wdt), cp.zeros((B, M), np.float32)
    kernels.accumulate(*_gpu(*args), *_gpu(pi, pt, pj), cp.asarray(w), Dg, Wg, Ng)
    for g, c in ((Dg, D), (Wg, W), (Ng, N)):
        assert np.abs(cp.asnumpy(g) - c).max() <= 1e-5 * np.abs(c).max()


def _same_posteriors(gpu, cpu):
    """Device posteriors against the CPU kernel's: the same significant sets (no ties or
    borderline masses in these inputs), logZ / probabilities up to summation order."""
    for f in cpu.__dataclass_fields__:
        assert isinstance(getattr(gpu, f), cp.ndarray), f
        assert getattr(gpu, f).dtype == getattr(cpu, f).dtype, f
    for f in ("argmax_t", "argmax_j", "nsig", "offsets", "t_idx", "j_idx"):
        np.testing.assert_array_equal(cp.asnumpy(getattr(gpu, f)), getattr(cpu, f), err_msg=f)
    np.testing.assert_allclose(cp.asnumpy(gpu.logZ), cpu.logZ, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cp.asnumpy(gpu.pmax), cpu.pmax, rtol=1e-12)
    np.testing.assert_allclose(cp.asnumpy(gpu.weight), cpu.weight, rtol=1e-6)
    np.testing.assert_array_equal(cp.asnumpy(gpu.pair_i), cpu.pair_i)


@pytest.mark.parametrize("B,T,J,frac", [(3, 4, 9, 0.99), (5, 25, 400, 0.95), (4, 3, 7, 1.0),
                                        (2, 1, 1, 0.5)])
def test_marg_posteriors_cuda_matches_cpu(B, T, J, frac):
    """posteriors() with cupy inputs runs on the device (marg_logsumexp + cupy selection)."""
    rng = np.random.default_rng(8 + B * T * J)
    d = (rng.uniform(0, 10, (B, T, J)) * (1 + (T * J > 100) * 2)).astype(np.float32)
    lt = rng.normal(size=(B, T)).astype(np.float32)
    lj = rng.normal(size=J).astype(np.float32)
    cpu = kernels.posteriors(d, lt, lj, frac)
    _same_posteriors(kernels.posteriors(*_gpu(d, lt, lj), frac), cpu)
    # host priors are moved to the device
    _same_posteriors(kernels.posteriors(cp.asarray(d), lt, lj, frac), cpu)


def test_marg_posteriors_cuda_ties_and_empty_rows():
    B, T, J = 4, 5, 8
    d = np.full((B, T, J), 5.0, np.float32)      # all tied: ceil(frac * T * J), index order
    d[1, 2, 3] = -40.0                           # one dominant hypothesis
    d[2] = np.inf                                # no posterior: logZ -inf, pmax 0, nsig 0
    lt, lj = np.zeros((B, T), np.float32), np.zeros(J, np.float32)
    for frac in (0.33, 0.77, 1.0):  # frac * T * J not an integer: no borderline sums
        cpu = kernels.posteriors(d, lt, lj, frac)
        gpu = kernels.posteriors(*_gpu(d, lt, lj), frac)
        for f in ("argmax_t", "argmax_j", "nsig", "offsets", "t_idx", "j_idx"):
            np.testing.assert_array_equal(cp.asnumpy(getattr(gpu, f)), getattr(cpu, f), err_msg=f)
        np.testing.assert_allclose(cp.asnumpy(gpu.weight), cpu.weight, rtol=1e-6)
        assert np.isneginf(cp.asnumpy(gpu.logZ)[2]) and cp.asnumpy(gpu.pmax)[2] == 0.0


def test_marg_segment_posteriors_cuda_roundtrip():
    """segment_posteriors() with cupy inputs copies to the host and returns cupy arrays."""
    rng = np.random.default_rng(8)
    off = np.array([0, 3, 3, 10])
    m = rng.uniform(0, 5, 10)
    sc, sg = kernels.segment_posteriors(m, off), kernels.segment_posteriors(*_gpu(m, off))
    for f in sc.__dataclass_fields__:
        assert isinstance(getattr(sg, f), cp.ndarray)
        np.testing.assert_array_equal(cp.asnumpy(getattr(sg, f)), getattr(sc, f))


# ---------------------------------------------------------------- seed 002: Gaussian kernel, TV stencils
@pytest.mark.parametrize("n", [7, 8, 16])
def test_gauss_project_and_backproject_cuda_match_cpu(n):
    rng = np.random.default_rng(n + 40)
    P = 2 * n
    vol = rand_c(rng, (P, P, P // 2 + 1))
    A = random_rotations(20, rng)
    cpu = kernels.project3d(vol, A, n, n / 2, 2, kernel="gauss")
    gpu = kernels.project3d(cp.asarray(vol), cp.asarray(A), n, n / 2, 2, kernel="gauss")
    assert np.abs(cp.asnumpy(gpu) - cpu).max() < 1e-4 * np.abs(cpu).max()
    s = rand_c(rng, (20, n, n // 2 + 1))
    w = rng.uniform(0.5, 2, s.shape).astype(np.float32)
    D, W = np.zeros(vol.shape, np.complex128), np.zeros(vol.shape)
    kernels.backproject3d(s, w, A, D, W, n / 2, 2, kernel="gauss")
    Dg, Wg = cp.zeros(D.shape, np.complex128), cp.zeros(W.shape)
    kernels.backproject3d(cp.asarray(s), cp.asarray(w), cp.asarray(A), Dg, Wg, n / 2, 2, kernel="gauss")
    assert np.abs(cp.asnumpy(Dg) - D).max() < 1e-4 * np.abs(D).max()
    assert np.abs(cp.asnumpy(Wg) - W).max() < 1e-4 * np.abs(W).max()


@pytest.mark.parametrize("n", [7, 16])
def test_tv_kernels_cuda_match_cpu(n):
    rng = np.random.default_rng(n + 50)
    vols = [rng.normal(size=(n, n, n)).astype(np.float32) for _ in range(3)]
    w = [rng.uniform(0.5, 2, (n, n, n)).astype(np.float32) for _ in range(2)]
    g = rng.uniform(0.5, 1, n).astype(np.float32)
    cpu_w = [np.empty_like(vols[0]) for _ in range(2)]
    gpu_w = [cp.empty(vols[0].shape, np.float32) for _ in range(2)]
    kernels.tv_weights(vols[0], 0.1, 0.05, 0.3, *cpu_w)
    kernels.tv_weights(cp.asarray(vols[0]), 0.1, 0.05, 0.3, *gpu_w)
    for a, b in zip(cpu_w, gpu_w):
        np.testing.assert_allclose(cp.asnumpy(b), a, rtol=1e-5)
    z, gz = np.empty_like(vols[0]), np.empty_like(vols[0])
    zg, gzg = cp.empty_like(cp.asarray(z)), cp.empty_like(cp.asarray(z))
    sc = kernels.tv_prox_step(*vols, *w, g, 0.3, 0.5, 0.4, 0.05, 0.7, z, gz)
    sg = kernels.tv_prox_step(*[cp.asarray(v) for v in vols + w + [g]], 0.3, 0.5, 0.4, 0.05, 0.7, zg, gzg)
    np.testing.assert_allclose(cp.asnumpy(zg), z, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cp.asnumpy(gzg), gz, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(sg, sc, rtol=1e-5)
    pc = kernels.tv_penalties(z, vols[1], *w, 0.3)
    pg = kernels.tv_penalties(zg, cp.asarray(vols[1]), *[cp.asarray(v) for v in w], 0.3)
    np.testing.assert_allclose(pg, pc, rtol=1e-5)
    G = [np.fft.rfftn(v).astype(np.complex64) for v in vols]
    Wd = np.abs(np.fft.rfftn(w[0])).astype(np.float32)
    assert kernels.tv_data_value(cp.asarray(G[0]), cp.asarray(G[1]), cp.asarray(Wd), n) == pytest.approx(
        kernels.tv_data_value(G[0], G[1], Wd, n), rel=1e-5)
    Gy, R = np.empty_like(G[0]), np.empty_like(G[0])
    Gyg, Rg = cp.empty_like(cp.asarray(Gy)), cp.empty_like(cp.asarray(R))
    kernels.tv_extrapolate_residual(*G, 0.6, 0.2, Wd, G[1], Gy, R)
    kernels.tv_extrapolate_residual(*[cp.asarray(v) for v in G], 0.6, 0.2, cp.asarray(Wd), cp.asarray(G[1]), Gyg, Rg)
    np.testing.assert_allclose(cp.asnumpy(Rg), R, rtol=1e-4, atol=1e-3)


def test_tv_solver_cuda_matches_cpu():
    from hpcem.recon.tv_solver import TVProblem, solve

    rng = np.random.default_rng(60)
    n = 16
    x0 = rng.normal(size=(n, n, n)).astype(np.float32)
    Zc = np.fft.rfftn(x0).astype(np.complex64)
    Wd = np.abs(np.fft.rfftn(rng.normal(size=(n, n, n)))).astype(np.float32)
    g = np.ones(n, np.float32)
    kw = dict(alpha=0.05, beta=0.05, gamma=0.3, eps=0.2, epsp=0.1, mu=0.1)
    cpu = solve(TVProblem(Zc=Zc, Wd=Wd, g=g, xp=np.zeros_like(x0), **kw), x0, 60, 2)
    gpu = solve(TVProblem(Zc=cp.asarray(Zc), Wd=cp.asarray(Wd), g=cp.asarray(g), xp=cp.zeros(x0.shape, np.float32),
                          **kw), cp.asarray(x0), 60, 2)
    assert isinstance(gpu.x, cp.ndarray)
    assert np.linalg.norm(cp.asnumpy(gpu.x) - cpu.x) <= 1e-3 * np.linalg.norm(cpu.x)
    assert gpu.history[-1] == pytest.approx(cpu.history[-1], rel=1e-4)


@pytest.mark.parametrize("shape,W", [((7, 5, 9), 9), ((16, 8, 32), 40)])
def test_tilt_kernels_cuda_match_cpu(shape, W):
    rng = np.random.default_rng(W)
    vol = rng.normal(size=shape).astype(np.float32)
    ang = np.deg2rad(np.linspace(-60, 60, 11))
    cpu = kernels.tilt_project(vol, ang, W)
    gpu = kernels.tilt_project(cp.asarray(vol), cp.asarray(ang), W)
    assert np.abs(cp.asnumpy(gpu) - cpu).max() < 1e-4 * np.abs(cpu).max()
    img = rng.normal(size=cpu.shape).astype(np.float32)
    back = kernels.tilt_backproject(img, ang, np.zeros(shape, np.float32))
    gback = kernels.tilt_backproject(cp.asarray(img), cp.asarray(ang), cp.zeros(shape, np.float32))
    assert np.abs(cp.asnumpy(gback) - back).max() < 1e-4 * np.abs(back).max()
