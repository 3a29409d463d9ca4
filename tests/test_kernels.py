"""Projection / back-projection kernels and the projector classes, against numpy
references, real-space projections and the known truth."""
import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from hpcem import kernels
from hpcem.core.euler import euler_to_matrix, random_rotations, rotation_2d
from hpcem.core.fourier import ft3, ift2, shell_index3
from hpcem.recon.projector import BackProjector, BackProjector2D, Projector, Projector2D

SIZES = [7, 8, 16, 33]


# ---------------------------------------------------------------- helpers (numpy references live here only)
def blob_volume(n, rng, n_blobs=20, smin=1.0, smax=2.0, ops=None):
    """Sum of Gaussian blobs inside 0.3 n; with ops, every blob is repeated at R c (symmetric)."""
    c = np.arange(n) - n // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    v = np.zeros((n, n, n))
    ops = [np.eye(3)] if ops is None else ops
    for _ in range(n_blobs):
        p = rng.normal(size=3)
        p *= 0.3 * n * rng.uniform(0, 1) ** (1 / 3) / np.linalg.norm(p)
        s, a = rng.uniform(smin, smax), rng.uniform(0.5, 1.5)
        for R in ops:
            q = R @ p
            v += a * np.exp(-((x - q[0]) ** 2 + (y - q[1]) ** 2 + (z - q[2]) ** 2) / (2 * s * s))
    return v


def real_space_projection(V, A):
    """sum_z V(A^T r), origin at n//2, cubic-spline sampling."""
    n = V.shape[0]
    c = np.arange(n) - n // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    r = np.stack([x, y, z], -1) @ A  # (A^T r)_j = sum_i A_ij r_i
    coords = np.stack([r[..., 2], r[..., 1], r[..., 0]]) + n // 2
    return map_coordinates(V, coords, order=3, mode="constant").sum(0)


def fsc(a, b):
    n = a.shape[0]
    A, B = ft3(a.astype(np.float64)), ft3(b.astype(np.float64))
    sh = shell_index3(n).ravel()
    num = np.bincount(sh, (A * np.conj(B)).real.ravel())
    d = np.sqrt(np.bincount(sh, (abs(A) ** 2).ravel()) * np.bincount(sh, (abs(B) ** 2).ravel()))
    return (num / d)[: n // 2 + 1]


def ref_project(vol, A, n, r_max, pad, two_d=False):
    """Pure-numpy trilinear (bilinear) interpolation, the kernels' definition."""
    P = vol.shape[-2]
    Ph = P // 2 + 1
    fmin, fmax = -(P // 2), (P - 1) // 2
    nh = n // 2 + 1
    ky = np.fft.fftfreq(n, 1.0 / n).round()[:, None] * np.ones((1, nh))
    kx = np.arange(nh)[None, :] * np.ones((n, 1))
    inside = kx ** 2 + ky ** 2 <= r_max ** 2
    out = np.zeros((len(A), n, nh), dtype=np.complex128)
    for b, M in enumerate(A):
        p = [pad * (M[0, j] * kx + M[1, j] * ky) for j in range(2 if two_d else 3)]
        flip = p[0] < 0
        p = [np.where(flip, -q, q) for q in p]
        f0 = [np.floor(q).astype(int) for q in p]
        fr = [q - q0 for q, q0 in zip(p, f0)]
        val = np.zeros((n, nh), dtype=np.complex128)
        for corner in np.ndindex(*(2,) * len(p)):
            w = np.ones((n, nh))
            idx, ok = [], np.ones((n, nh), bool)
            for d, c in enumerate(corner):
                w = w * (fr[d] if c else 1 - fr[d])
                f = f0[d] + c
                if d == 0:
                    ok &= f < Ph
                    idx.append(np.clip(f, 0, Ph - 1))
                else:
                    ok &= (f >= fmin) & (f <= fmax)
                    idx.append(np.clip(f, fmin, fmax) % P)
            if two_d:
                g = vol[idx[1], idx[0]]
            else:
                g = vol[idx[2], idx[1], idx[0]]
            val += np.where(ok, w * g, 0)
        out[b] = np.where(inside, np.where(flip, np.conj(val), val), 0)
    return out


def rand_c(rng, shape):
    return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)


# ---------------------------------------------------------------- project vs numpy reference
@pytest.mark.parametrize("n", SIZES)
def test_project3d_matches_numpy_reference(n):
    rng = np.random.default_rng(n)
    P = 2 * n
    vol = rand_c(rng, (P, P, P // 2 + 1))
    A = random_rotations(6, rng)
    for r_max in (n / 2, 0.35 * n):
        got = kernels.project3d(vol, A, n, r_max, 2)
        want = ref_project(vol, A, n, r_max, 2)
        assert got.shape == (6, n, n // 2 + 1) and got.dtype == np.complex64
        assert np.abs(got - want).max() < 2e-5 * np.abs(want).max()


@pytest.mark.parametrize("n", SIZES)
def test_project2d_matches_numpy_reference(n):
    rng = np.random.default_rng(100 + n)
    P = 2 * n
    refs = rand_c(rng, (3, P, P // 2 + 1))
    R = rotation_2d(rng.uniform(0, 360, 7))
    idx = rng.integers(0, 3, 7)
    got = kernels.project2d(refs, R, n, n / 2, 2, ref_index=idx)
    for b in range(7):
        want = ref_project(refs[idx[b]], R[b:b + 1], n, n / 2, 2, two_d=True)[0]
        assert np.abs(got[b] - want).max() < 2e-5 * np.abs(want).max()


# ---------------------------------------------------------------- adjointness
def _inner(a, b):
    return float(np.sum((np.conj(a.astype(np.complex128)) * b.astype(np.complex128)).real))


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", [np.complex128, np.complex64])
def test_backproject3d_is_adjoint(n, dtype):
    """<P x, y> = <x, P^T y> for the real inner product Re sum conj(a) b over the kernels' own arrays."""
    rng = np.random.default_rng(7 * n)
    P = 2 * n
    x = rand_c(rng, (P, P, P // 2 + 1))
    A = random_rotations(9, rng)
    y = rand_c(rng, (9, n, n // 2 + 1))
    D = np.zeros(x.shape, dtype=dtype)
    W = np.zeros(x.shape, dtype=np.float64 if dtype == np.complex128 else np.float32)
    kernels.backproject3d(y, None, A, D, W, n / 2, 2)
    lhs, rhs = _inner(kernels.project3d(x, A, n, n / 2, 2), y), _inner(x, D)
    assert abs(lhs - rhs) < 1e-5 * (abs(lhs) + np.linalg.norm(x) * np.linalg.norm(y) * 1e-2)
    # the weight accumulator gets the same interpolation weights: P^T 1 summed = sum of P 1
    ones = np.ones_like(x)
    assert abs(W.sum() - kernels.project3d(ones, A, n, n / 2, 2).real.sum()) < 1e-4 * W.sum()


@pytest.mark.parametrize("n", SIZES)
def test_backproject2d_is_adjoint(n):
    rng = np.random.default_rng(11 * n)
    P = 2 * n
    K = 3
    x = rand_c(rng, (K, P, P // 2 + 1))
    R = rotation_2d(rng.uniform(0, 360, 10))
    idx = rng.integers(0, K, 10)
    y = rand_c(rng, (10, n, n // 2 + 1))
    D = np.zeros(x.shape, dtype=np.complex128)
    W = np.zeros(x.shape, dtype=np.float64)
    kernels.backproject2d(y, None, R, D, W, n / 2, 2, ref_index=idx)
    lhs = _inner(kernels.project2d(x, R, n, n / 2, 2, ref_index=idx), y)
    rhs = _inner(x, D)
    assert abs(lhs - rhs) < 1e-5 * np.linalg.norm(x) * np.linalg.norm(y) * 1e-2 + 1e-5 * abs(lhs)


@pytest.mark.parametrize("n", [16, 33])
def test_2d_kernels_at_listed_frequencies_match_the_full_ones(n):
    """project2d_at = project2d's coefficients at the listed frequencies (bit for bit), and
    backproject2d_at (double rows minus weights x predictions, the columns ``cols`` in raster
    order) = backproject2d of those residual rows rounded to complex64 and put on the full half
    grid, for 1 and 3 threads."""
    from hpcem.core.fourier import coef_freqs, shell_index2

    rng = np.random.default_rng(3 * n)
    P, nh, K, B = 2 * n, n // 2 + 1, 3, 12
    refs = rand_c(rng, (K, P, P // 2 + 1))
    R = rotation_2d(rng.uniform(0, 360, B))
    idx = rng.integers(0, K, B)
    r = int(0.4 * n)
    sh = shell_index2(n).ravel()
    kidx = np.flatnonzero(sh <= r)
    kidx = kidx[np.argsort(sh[kidx], kind="stable")]          # the E-step's order: by shell
    ky, kx = coef_freqs(kidx, n)
    got = kernels.project2d_at(refs, R, ky, kx, 2, ref_index=idx)
    full = kernels.project2d(refs, R, n, r + 1.0, 2, ref_index=idx).reshape(B, -1)
    assert got.dtype == np.complex64 and np.array_equal(got, full[:, kidx])
    vals = rng.standard_normal((B, kidx.size)) + 1j * rng.standard_normal((B, kidx.size))
    wts = rng.uniform(0.0, 2.0, (B, kidx.size))
    wts[3] = 0.0                                               # a row no particle reached: skipped
    pred = rand_c(rng, (5, kidx.size))
    pidx = rng.integers(0, 5, B)
    cols = np.argsort(kidx, kind="stable")
    S = np.zeros((B, n * nh), np.complex64)
    Wt = np.zeros((B, n * nh), np.float32)
    S[:, kidx] = vals - wts * pred[pidx].astype(np.complex128)
    S[3] = 0.0
    Wt[:, kidx] = wts
    want_d, want_w = np.zeros((K, P, P // 2 + 1), np.complex128), np.zeros((K, P, P // 2 + 1))
    kernels.backproject2d(S.reshape(B, n, nh), Wt.reshape(B, n, nh), R, want_d, want_w, r + 1.0, 2, ref_index=idx)
    t0 = kernels.max_threads()
    try:
        for t in (1, 3):
            kernels.set_threads(t)
            D, W = np.zeros_like(want_d), np.zeros_like(want_w)
            kernels.backproject2d_at(vals, wts, R, idx, ky, kx, D, W, 2, cols=cols, refs=pred, pred_index=pidx)
            assert np.allclose(D, want_d, rtol=0, atol=1e-12 * np.abs(want_d).max())
            assert np.allclose(W, want_w, rtol=0, atol=1e-12 * want_w.max())
    finally:
        kernels.set_threads(t0)


def test_backproject2d_at_pairs_rows_of_one_rotation_exactly():
    """Rows whose second half repeats the first half's rotations into the second half of the
    accumulators (VDAM's two half sets) are splatted two at a time: the same sums, bit for bit, as
    each half in its own call (float32 accumulators, 1 and 3 threads; some entries of one row of a
    pair without weight, one whole row without weight); single-precision rows give the sums of the
    same rows in double."""
    from hpcem.core.fourier import coef_freqs, shell_index2

    rng = np.random.default_rng(11)
    n, K, h = 16, 4, 10                   # K accumulators: classes 0, 1 of half 1, 2, 3 of half 2
    P = 2 * n
    sh = shell_index2(n).ravel()
    kidx = np.flatnonzero(sh <= 6)
    ky, kx = coef_freqs(kidx, n)
    M = kidx.size
    R = rotation_2d(np.tile(rng.uniform(0, 360, h), 2))
    idx = np.r_[rng.integers(0, K // 2, h)]
    idx = np.r_[idx, idx + K // 2]
    vals = rng.standard_normal((2 * h, M)) + 1j * rng.standard_normal((2 * h, M))
    wts = rng.uniform(0.0, 2.0, (2 * h, M)) * (rng.uniform(size=(2 * h, M)) > 0.2)
    wts[h + 2] = 0.0
    pred = rand_c(rng, (3, M))
    pidx = rng.integers(0, 3, 2 * h)
    cols = np.argsort(kidx, kind="stable")
    t0 = kernels.max_threads()
    try:
        for t in (1, 3):
            kernels.set_threads(t)
            acc = [(np.zeros((K, P, P // 2 + 1), np.complex64), np.zeros((K, P, P // 2 + 1), np.float32))
                   for _ in range(2)]
            kernels.backproject2d_at(vals, wts, R, idx, ky, kx, *acc[0], 2, cols=cols, refs=pred, pred_index=pidx)
            for half in (slice(0, h), slice(h, 2 * h)):
                kernels.backproject2d_at(vals[half], wts[half], R[half], idx[half], ky, kx, *acc[1], 2, cols=cols,
                                         refs=pred, pred_index=pidx[half])
            assert np.abs(acc[0][1]).max() > 0
            assert np.array_equal(acc[0][0], acc[1][0]) and np.array_equal(acc[0][1], acc[1][1])
            # single-precision rows (VDAM's mini-batch sums): the double path's sums of the same (upcast) rows
            v32, w32 = vals.astype(np.complex64), wts.astype(np.float32)
            got = (np.zeros((K, P, P // 2 + 1), np.complex64), np.zeros((K, P, P // 2 + 1), np.float32))
            want = (np.zeros((K, P, P // 2 + 1), np.complex64), np.zeros((K, P, P // 2 + 1), np.float32))
            kernels.backproject2d_at(v32, w32, R, idx, ky, kx, *got, 2, cols=cols, refs=pred, pred_index=pidx)
            kernels.backproject2d_at(v32.astype(np.complex128), w32.astype(np.float64), R, idx, ky, kx, *want, 2,
                                     cols=cols, refs=pred, pred_index=pidx)
            assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    finally:
        kernels.set_threads(t0)


def test_backproject_is_thread_count_independent():
    rng = np.random.default_rng(5)
    n = 16
    y = rand_c(rng, (40, n, n // 2 + 1))
    A = random_rotations(40, rng)
    res = []
    t0 = kernels.max_threads()
    try:
        for t in (1, 2, 3):
            kernels.set_threads(t)
            D = np.zeros((32, 32, 17), np.complex128)
            W = np.zeros((32, 32, 17))
            kernels.backproject3d(y, None, A, D, W, n / 2, 2)
            res.append(D)
    finally:
        kernels.set_threads(t0)
    assert np.array_equal(res[0], res[1]) and np.array_equal(res[0], res[2])


# ---------------------------------------------------------------- physics
@pytest.mark.parametrize("n", [32, 33])
def test_projection_matches_real_space(n):
    rng = np.random.default_rng(n)
    V = blob_volume(n, rng, n_blobs=12, smin=1.5, smax=3.0)
    A = random_rotations(20, rng)
    imgs = ift2(Projector.from_volume(V).project(A), n)
    cors = [np.corrcoef(real_space_projection(V, A[i]).ravel(), imgs[i].ravel())[0, 1] for i in range(20)]
    print(f"n={n}: projection correlation min {min(cors):.5f} mean {np.mean(cors):.5f}")
    assert min(cors) > 0.99


def test_project2d_matches_real_space_rotation():
    n = 32
    rng = np.random.default_rng(3)
    img = blob_volume(n, rng, n_blobs=10, smin=1.5, smax=3.0).sum(0)
    R = rotation_2d(rng.uniform(0, 360, 8))
    out = ift2(Projector2D.from_images(img).project(R), n)
    c = np.arange(n) - n // 2
    y, x = np.meshgrid(c, c, indexing="ij")
    for b in range(8):
        r = np.stack([x, y], -1) @ R[b]  # R^T r
        ref = map_coordinates(img, [r[..., 1] + n // 2, r[..., 0] + n // 2], order=3, mode="constant")
        assert np.corrcoef(ref.ravel(), out[b].ravel())[0, 1] > 0.99


def test_reconstruction_from_noiseless_projections():
    n = 64
    rng = np.random.default_rng(2024)
    V = blob_volume(n, rng)
    A = random_rotations(5000, rng)
    slices = Projector.from_volume(V).project(A)
    bp = BackProjector(n)
    for s in range(0, 5000, 1000):  # batched inserts, as an E-step would do
        bp.insert(slices[s:s + 1000], None, A[s:s + 1000])
    rec = bp.reconstruct()
    f = fsc(rec, V)
    print("FSC to truth per shell:", np.array2string(f, precision=4, max_line_width=200))
    kmax = int(0.8 * n / 2)
    assert f[1:kmax + 1].min() >= 0.9
    assert np.linalg.norm(rec - V) / np.linalg.norm(V) < 0.1


def _c4():
    return [euler_to_matrix(0, 0, 90 * k) for k in range(4)]


def _d2():
    return [np.eye(3), np.diag([1.0, -1, -1]), np.diag([-1.0, 1, -1]), np.diag([-1.0, -1, 1])]


@pytest.mark.parametrize("group, rot_range", [("C4", 90.0), ("D2", 180.0)])
def test_symmetric_reconstruction(group, rot_range):
    """Viewing directions cover only the asymmetric unit's azimuths; symmetry fills the rest."""
    n = 40
    ops = _c4() if group == "C4" else _d2()
    rng = np.random.default_rng(9)
    V = blob_volume(n, rng, n_blobs=8, ops=ops)
    m = 1200
    A = euler_to_matrix(rng.uniform(0, rot_range, m), np.rad2deg(np.arccos(rng.uniform(-1, 1, m))),
                        rng.uniform(0, 360, m))
    slices = Projector.from_volume(V).project(A)
    bp = BackProjector(n)
    bp.insert(slices, None, A)
    rec_sym = bp.reconstruct(symmetry_ops=ops)
    rec_none = bp.reconstruct()
    f_sym, f_none = fsc(rec_sym, V), fsc(rec_none, V)
    kmax = int(0.8 * n / 2)
    print(f"{group}: min FSC to 0.8 Nyquist with symmetry {f_sym[1:kmax + 1].min():.4f}, "
          f"without {f_none[1:kmax + 1].min():.4f}")
    assert f_sym[1:kmax + 1].min() >= 0.9
    err_sym = np.linalg.norm(rec_sym - V) / np.linalg.norm(V)
    err_none = np.linalg.norm(rec_none - V) / np.linalg.norm(V)
    assert err_sym < 0.15 and err_sym < err_none
    # inserting every slice at A R for all R (the other way to impose symmetry) agrees
    bp2 = BackProjector(n)
    for R in ops:
        bp2.insert(slices, None, A @ R)
    rec_ins = bp2.reconstruct()
    assert fsc(rec_ins, rec_sym)[1:kmax + 1].min() > 0.98


def test_class_average_2d():
    n, K = 32, 2
    rng = np.random.default_rng(4)
    refs = np.stack([blob_volume(n, rng, n_blobs=8, smin=1.2, smax=2.5).sum(0) for _ in range(K)])
    B = 400
    idx = rng.integers(0, K, B)
    R = rotation_2d(rng.uniform(0, 360, B))
    imgs = Projector2D.from_images(refs).project(R, ref_index=idx)
    bp = BackProjector2D(n, K)
    bp.insert(imgs, None, R, ref_index=idx)
    avg = bp.reconstruct()
    for k in range(K):
        # pad-2 linear interpolation in both directions (and the never-interpolated DC term)
        # leaves a few per cent of error; a wrong rotation or class mix-up gives far more
        err = np.linalg.norm(avg[k] - refs[k]) / np.linalg.norm(refs[k])
        cor = np.corrcoef(avg[k].ravel(), refs[k].ravel())[0, 1]
        print(f"class {k}: relative error {err:.4f}, correlation {cor:.5f}")
        assert err < 0.12 and cor > 0.99


def test_tau2_regularisation_shrinks():
    """A small tau2 pulls the reconstruction towards zero; a huge one leaves it as is."""
    n = 24
    rng = np.random.default_rng(8)
    V = blob_volume(n, rng, n_blobs=6)
    A = random_rotations(600, rng)
    bp = BackProjector(n)
    bp.insert(Projector.from_volume(V).project(A), None, A)
    big = bp.reconstruct(tau2=np.full(n, 1e12))
    tiny = bp.reconstruct(tau2=np.full(n, 1e-12))
    assert np.linalg.norm(big - V) / np.linalg.norm(V) < 0.1
    assert np.linalg.norm(tiny) < 1e-3 * np.linalg.norm(V)


# ---------------------------------------------------------------- argument checks
def test_bad_arguments_are_reported():
    n, P = 8, 16
    vol = np.zeros((P, P, P // 2 + 1), np.complex64)
    A = np.eye(3)[None]
    with pytest.raises(kernels.KernelArgumentError, match="dtype"):
        kernels.project3d(vol.astype(np.complex128), A, n)
    with pytest.raises(kernels.KernelArgumentError, match="shape"):
        kernels.project3d(vol, A, 9)
    with pytest.raises(kernels.KernelArgumentError, match="rotations"):
        kernels.project3d(vol, np.eye(2)[None], n)
    D = np.zeros(vol.shape, np.complex128)
    with pytest.raises(kernels.KernelArgumentError, match="weight accumulator"):
        kernels.backproject3d(np.zeros((1, n, 5), np.complex64), None, A, D, np.zeros(vol.shape, np.float32))
    with pytest.raises(kernels.KernelArgumentError, match="contiguous"):
        kernels.backproject3d(np.zeros((1, n, 5), np.complex64), None, A, D[:, :, ::-1].copy()[:, ::-1],
                              np.zeros(vol.shape))
    with pytest.raises(kernels.KernelArgumentError, match="ref_index"):
        kernels.project2d(np.zeros((2, P, P // 2 + 1), np.complex64), np.eye(2)[None], n)
