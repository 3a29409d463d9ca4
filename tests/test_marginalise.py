"""Marginalisation kernels (hpcem.kernels.marginalise) against float64 numpy references."""
import numpy as np
import pytest

from hpcem import kernels as mg
from hpcem.core import fourier


def cplx(rng, *shape):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def make_inputs(rng, B, T, J, M):
    X = cplx(rng, B, M)
    R = cplx(rng, J, M)
    ph = np.exp(1j * rng.uniform(0, 2 * np.pi, (T, M))).astype(np.complex64)
    c = rng.uniform(-1, 1, (B, M)).astype(np.float32)
    s = rng.uniform(0.2, 2.0, (B, M)).astype(np.float32)
    return X, c, s, ph, R


# ------------------------------------------------------------------ numpy references (f64)
def ref_diff2_full(X, c, s, ph, R):
    X, c, s, ph, R = (a.astype(np.complex128 if np.iscomplexobj(a) else np.float64)
                      for a in (X, c, s, ph, R))
    # resid[i,t,j,k] = X_ik conj(ph_tk) - c_ik R_jk
    resid = X[:, None, None, :] * np.conj(ph)[None, :, None, :] - c[:, None, None, :] * R[None, None]
    return np.einsum("ik,itjk->itj", s, np.abs(resid) ** 2)


def ref_diff2_pairs(X, c, s, ph, R, pi, pt, pj):
    out = np.empty(len(pi))
    for p, (i, t, j) in enumerate(zip(pi, pt, pj)):
        r = X[i].astype(np.complex128) * np.conj(ph[t].astype(np.complex128)) - c[i].astype(
            np.float64) * R[j].astype(np.complex128)
        out[p] = np.sum(s[i].astype(np.float64) * np.abs(r) ** 2)
    return out


def ref_posterior(lp):
    """lp: unnormalised log posteriors (n,) -> (logZ, probabilities)."""
    m = lp.max()
    logZ = m + np.log(np.exp(lp - m).sum())
    return logZ, np.exp(lp - logZ)


def check_significant(p_ref, idx, w, frac):
    """idx/w: the kernel's significant set; p_ref: reference probabilities (flat)."""
    idx = np.asarray(idx)
    assert len(np.unique(idx)) == len(idx)
    np.testing.assert_allclose(w, p_ref[idx], rtol=1e-4, atol=1e-7)
    assert p_ref[idx].sum() >= frac - 1e-6                      # reaches frac
    assert p_ref[idx].sum() - p_ref[idx].min() < frac + 1e-6    # minimal
    outside = np.setdiff1d(np.arange(p_ref.size), idx)
    if outside.size:                                           # it is the top of the list
        assert p_ref[idx].min() >= p_ref[outside].max() - 1e-7


# ------------------------------------------------------------------ coarse_diff2
@pytest.mark.parametrize("B,T,J,M", [(5, 7, 11, 37), (4, 8, 12, 36), (1, 1, 1, 1), (3, 9, 40, 130)])
def test_coarse_diff2_matches_numpy(B, T, J, M):
    rng = np.random.default_rng(B * 1000 + M)
    X, c, s, ph, R = make_inputs(rng, B, T, J, M)
    ref = ref_diff2_full(X, c, s, ph, R)
    for bp in (0, 1, 2):
        for mode in (0, 1):
            D = mg.coarse_diff2(X, c, s, ph, R, block_particles=bp, mode=mode)
            assert D.shape == (B, T, J) and D.dtype == np.float32
            # float32 cancellation error scales with A_i + Q_ij, not with diff2 itself
            np.testing.assert_allclose(D, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_coarse_diff2_input_checks():
    rng = np.random.default_rng(1)
    X, c, s, ph, R = make_inputs(rng, 2, 3, 4, 5)
    with pytest.raises(TypeError):
        mg.coarse_diff2(X.astype(np.complex128), c, s, ph, R)
    with pytest.raises(ValueError):
        mg.coarse_diff2(X, c[:, :4], s, ph, R)
    with pytest.raises(ValueError):
        mg.coarse_diff2(X, c, s, ph[:, :4], R)
    # non-contiguous input is accepted (copied) and gives the same answer
    X2 = np.repeat(X, 2, axis=1)[:, ::2]
    np.testing.assert_allclose(mg.coarse_diff2(X2, c, s, ph, R), mg.coarse_diff2(X, c, s, ph, R))


# ------------------------------------------------------------------ posteriors
def test_posteriors_match_numpy_and_significant_set_is_minimal():
    rng = np.random.default_rng(2)
    B, T, J = 6, 7, 11
    d = rng.uniform(0, 8, (B, T, J)).astype(np.float32)
    d[0] = 5.0                                   # all tied: ties must still give a minimal set
    d[1, 3, 4] = -30.0                           # one dominant hypothesis
    lt = rng.normal(0, 1, (B, T)).astype(np.float32)
    lj = rng.normal(0, 1, J).astype(np.float32)
    for frac in (0.999, 0.9, 0.5, 1e-3):
        P = mg.posteriors(d, lt, lj, frac)
        assert P.offsets[0] == 0 and P.offsets[-1] == len(P.weight) == P.nsig.sum()
        for i in range(B):
            lp = (-d[i].astype(np.float64) + lt[i, :, None] + lj[None, :]).ravel()
            logZ, p = ref_posterior(lp)
            assert abs(P.logZ[i] - logZ) < 1e-9 * max(1.0, abs(logZ))
            np.testing.assert_allclose(P.pmax[i], p.max(), rtol=1e-10)
            assert P.argmax_t[i] * J + P.argmax_j[i] == np.argmax(p)
            sl = slice(P.offsets[i], P.offsets[i + 1])
            idx = P.t_idx[sl].astype(np.int64) * J + P.j_idx[sl]
            check_significant(p, idx, P.weight[sl], frac)
            assert np.all(np.diff(idx) > 0)                    # in (t, j) order
        assert P.nsig[1] == 1 and P.pmax[1] > 0.999
        # all hypotheses tied (flat priors): exactly ceil(frac * T * J) of them
        flat = mg.posteriors(d[:1], np.zeros((1, T), np.float32), np.zeros(J, np.float32), frac)
        assert flat.nsig[0] == int(np.ceil(frac * T * J))
        np.testing.assert_allclose(flat.weight, 1.0 / (T * J), rtol=1e-6)


def test_posteriors_sum_to_one_with_frac_one():
    rng = np.random.default_rng(3)
    d = rng.uniform(0, 3, (3, 5, 9)).astype(np.float32)
    P = mg.posteriors(d, np.zeros((3, 5), np.float32), np.zeros(9, np.float32), 1.0)
    assert np.all(P.nsig == 45)
    sums = np.add.reduceat(P.weight.astype(np.float64), P.offsets[:-1])
    np.testing.assert_allclose(sums, 1.0, rtol=1e-6)
    assert np.all(P.pair_i == np.repeat(np.arange(3), 45))


def test_posteriors_large_grid_selection():
    # many candidates per particle exercises the quickselect (not only the small sort)
    rng = np.random.default_rng(4)
    B, T, J = 2, 25, 400
    d = (rng.standard_normal((B, T, J)) * 2).astype(np.float32)
    lt = np.zeros((B, T), np.float32)
    lj = np.zeros(J, np.float32)
    P = mg.posteriors(d, lt, lj, 0.95)
    for i in range(B):
        logZ, p = ref_posterior(-d[i].astype(np.float64).ravel())
        sl = slice(P.offsets[i], P.offsets[i + 1])
        check_significant(p, P.t_idx[sl].astype(np.int64) * J + P.j_idx[sl], P.weight[sl], 0.95)
        assert P.nsig[i] > 100


# ------------------------------------------------------------------ pairs
def random_pairs(rng, B, T, J, P):
    return (rng.integers(0, B, P), rng.integers(0, T, P), rng.integers(0, J, P))


@pytest.mark.parametrize("B,T,J,M", [(5, 7, 11, 37), (4, 6, 10, 600)])
def test_pair_diff2_matches_numpy(B, T, J, M):
    rng = np.random.default_rng(M)
    X, c, s, ph, R = make_inputs(rng, B, T, J, M)
    pi, pt, pj = random_pairs(rng, B, T, J, 53)
    got = mg.pair_diff2(X, c, s, ph, R, pi, pt, pj)
    assert got.dtype == np.float32 and got.shape == (53,)
    np.testing.assert_allclose(got, ref_diff2_pairs(X, c, s, ph, R, pi, pt, pj), rtol=1e-4)
    # few pairs take the ungrouped path
    np.testing.assert_allclose(mg.pair_diff2(X, c, s, ph, R, pi[:3], pt[:3], pj[:3]),
                               ref_diff2_pairs(X, c, s, ph, R, pi[:3], pt[:3], pj[:3]), rtol=1e-4)
    assert mg.pair_diff2(X, c, s, ph, R, [], [], []).shape == (0,)
    with pytest.raises(ValueError):
        mg.pair_diff2(X, c, s, ph, R, [0], [T], [0])
    with pytest.raises(ValueError):
        mg.pair_diff2(X, c, s, ph, R, [0, 1], [0], [0])


def test_gemm_path_equals_pair_path():
    rng = np.random.default_rng(5)
    B, T, J, M = 6, 9, 17, 203
    X, c, s, ph, R = make_inputs(rng, B, T, J, M)
    D = mg.coarse_diff2(X, c, s, ph, R)
    pi, pt, pj = (a.ravel() for a in np.meshgrid(np.arange(B), np.arange(T), np.arange(J),
                                                   indexing="ij"))
    Dp = mg.pair_diff2(X, c, s, ph, R, pi, pt, pj)
    A = np.sum(s * np.abs(X) ** 2, axis=1)
    np.testing.assert_allclose(D.ravel(), Dp, rtol=1e-4, atol=1e-5 * A.max())


def test_segment_posteriors_match_numpy():
    rng = np.random.default_rng(6)
    sizes = [5, 0, 1, 40, 13, 200]
    offs = np.concatenate([[0], np.cumsum(sizes)])
    m = rng.uniform(0, 10, offs[-1])
    m[offs[4]:offs[5]] = 2.5                        # ties
    for dtype in (np.float64, np.float32):
        for frac in (0.999, 0.8):
            S = mg.segment_posteriors(m.astype(dtype), offs, frac)
            for i, n in enumerate(sizes):
                sl = slice(offs[i], offs[i + 1])
                if n == 0:
                    assert S.nsig[i] == 0 and S.argmax[i] == -1 and np.isneginf(S.logZ[i])
                    continue
                logZ, p = ref_posterior(-m[sl].astype(dtype).astype(np.float64))
                assert abs(S.logZ[i] - logZ) < 1e-9 * max(1, abs(logZ))
                np.testing.assert_allclose(S.weight[sl], p, rtol=1e-5, atol=1e-12)
                np.testing.assert_allclose(S.weight[sl].sum(), 1.0, rtol=1e-5)
                assert S.argmax[i] == offs[i] + np.argmax(p)
                np.testing.assert_allclose(S.pmax[i], p.max(), rtol=1e-10)
                idx = np.flatnonzero(S.significant[sl])
                assert len(idx) == S.nsig[i]
                check_significant(p, idx, S.weight[sl][idx], frac)
    with pytest.raises(ValueError):
        mg.segment_posteriors(m, offs[:-1], 0.9)


# ------------------------------------------------------------------ accumulate
@pytest.mark.parametrize("dt", [(np.complex64, np.float32), (np.complex128, np.float64),
                                (np.complex128, np.float32)])
def test_accumulate_matches_numpy(dt):
    rng = np.random.default_rng(7)
    B, T, J, M = 5, 7, 11, 37
    X, c, s, ph, R = make_inputs(rng, B, T, J, M)
    P = 80
    pi, pt, pj = random_pairs(rng, B, T, J, P)
    w = rng.uniform(0, 1, P).astype(np.float32)
    w[::7] = 0.0
    data0 = cplx(rng, J, M).astype(dt[0])
    wt0 = rng.uniform(0, 1, (J, M)).astype(dt[1])
    noise0 = rng.uniform(0, 1, (B, M)).astype(np.float32)
    data, wacc, noise = data0.copy(), wt0.copy(), noise0.copy()
    mg.accumulate(X, c, s, ph, R, pi, pt, pj, w, data, wacc, noise)
    # reference, pair by pair in float64
    rd, rw, rn = data0.astype(np.complex128), wt0.astype(np.float64), noise0.astype(np.float64)
    X64, c64, s64, ph64, R64 = (X.astype(np.complex128), c.astype(np.float64),
                                s.astype(np.float64), ph.astype(np.complex128),
                                R.astype(np.complex128))
    for p in range(P):
        i, t, j, wp = pi[p], pt[p], pj[p], float(w[p])
        xs = X64[i] * np.conj(ph64[t])
        rd[j] += wp * c64[i] * s64[i] * xs
        rw[j] += wp * c64[i] ** 2 * s64[i]
        rn[i] += wp * np.abs(xs - c64[i] * R64[j]) ** 2
    np.testing.assert_allclose(data, rd, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(wacc, rw, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(noise, rn, rtol=1e-4, atol=1e-5)


def test_accumulate_rejects_copies():
    rng = np.random.default_rng(8)
    X, c, s, ph, R = make_inputs(rng, 2, 3, 4, 5)
    good = (np.zeros((4, 5), np.complex64), np.zeros((4, 5), np.float32),
            np.zeros((2, 5), np.float32))
    args = (X, c, s, ph, R, [0], [1], [2], np.ones(1, np.float32))
    with pytest.raises(TypeError):
        mg.accumulate(*args, good[0], good[1], np.zeros((2, 5), np.float64))
    with pytest.raises(ValueError):
        mg.accumulate(*args, np.zeros((5, 4), np.complex64).T, good[1], good[2])
    with pytest.raises(ValueError):
        mg.accumulate(*args, good[0], np.zeros((3, 5), np.float32), good[2])
    mg.accumulate(*args, *good)
    assert np.count_nonzero(good[0][2]) > 0 and np.count_nonzero(good[0][:2]) == 0


# ------------------------------------------------------------------ planted truth
def test_planted_truth_recovers_translation_and_reference():
    rng = np.random.default_rng(9)
    n = 24
    r2 = fourier.radius2(n)
    mask = r2 <= n // 3
    M = int(mask.sum())
    herm = 0.5 * fourier.hermitian_weights2(n)[mask]
    shifts = np.array([(x, y) for y in range(-2, 3) for x in range(-2, 3)], float)
    ph = fourier.shift_phases(n, shifts)[:, mask]                        # (T, M)
    T, J, B = len(shifts), 13, 40
    R = (cplx(rng, J, M) * 3).astype(np.complex64)
    sigma2 = np.full(M, 4.0)
    true_t = rng.integers(0, T, B)
    true_j = rng.integers(0, J, B)
    ctf = rng.uniform(0.3, 1.0, (B, M)).astype(np.float32)
    noise = np.sqrt(sigma2 / 2) * (rng.standard_normal((B, M)) + 1j * rng.standard_normal((B, M)))
    # the particle is c R_j moved by +shift; X conj(ph_t) moves it back
    X = (ctf * R[true_j] * ph[true_t] + noise).astype(np.complex64)
    s = np.broadcast_to((herm / sigma2).astype(np.float32), (B, M)).copy()
    D = mg.coarse_diff2(X, ctf, s, ph, R)
    P = mg.posteriors(D, np.zeros((B, T), np.float32), np.zeros(J, np.float32))
    assert np.all(P.argmax_t == true_t)
    assert np.all(P.argmax_j == true_j)
    assert np.all(P.pmax > 0.5)
    # the best hypothesis' diff2 is the noise energy: about sum(herm) (chi-square mean)
    best = D[np.arange(B), true_t, true_j]
    assert abs(best.mean() / herm.sum() - 1.0) < 0.1


def test_coarse_diff2_single_thread_same_result():
    rng = np.random.default_rng(10)
    X, c, s, ph, R = make_inputs(rng, 7, 5, 9, 50)
    D2 = mg.coarse_diff2(X, c, s, ph, R, block_particles=2)
    n = mg.max_threads()
    try:
        mg.set_threads(1)
        D1 = mg.coarse_diff2(X, c, s, ph, R, block_particles=3)
    finally:
        mg.set_threads(n)
    np.testing.assert_allclose(D1, D2, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(D1, ref_diff2_full(X, c, s, ph, R), rtol=1e-4, atol=1e-3)
