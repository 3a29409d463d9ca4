"""The shared E-step (hpcem.estep) against a brute-force numpy marginalisation.

* one batch (``estep_batch``): with every coarse hypothesis significant (frac = 1, no cap) the
  fine posteriors, the log-likelihoods, the best hypotheses and the M-step sums equal a
  brute-force computation over the whole fine grid (dense and sparse coarse passes, with and
  without a coarse coefficient prefix); with frac < 1 and a cap, the fine set is the children of
  the brute-force significant set (capped at the most probable, per group); remapped and dense
  accumulators;
* all of a rank's particles (``run_estep``) over the 2D in-plane space and the 3D projection space
  at odd and even boxes (7, 8), global and local searches: the per-particle results and sums equal
  the brute force over the space's own fine hypotheses.
"""
import numpy as np
import pytest

from hpcem.estep import RegularChildren, estep_batch, most_probable_dense, product_children

RTOL = 2e-4


def _rand_c(rng, *shape):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def _problem(rng, B=5, M=23, T=3, Jc=6, scale=0.05):
    """Particles near random fine hypotheses, so that posteriors are neither flat nor one-hot."""
    ctf = rng.uniform(0.3, 1.0, (B, M)).astype(np.float32)
    s_e = np.repeat(np.geomspace(scale, 50 * scale, B)[:, None], M, 1).astype(np.float32)  # flat to sharp
    s_a = rng.uniform(0.5, 2.0, (B, M)).astype(np.float32)
    ph_f = np.exp(1j * rng.uniform(0, 2 * np.pi, (4 * T, M))).astype(np.complex64)
    ph_c = ph_f[::4].copy()
    R_f = _rand_c(rng, 2 * Jc, M)
    R_c = R_f[::2].copy()
    ti, ji = rng.integers(0, 4 * T, B), rng.integers(0, 2 * Jc, B)
    X = (ctf * R_f[ji] * ph_f[ti] + 0.7 * _rand_c(rng, B, M)).astype(np.complex64)
    lpt_f = rng.normal(0, 0.3, (B, 4 * T))
    lpt_c = lpt_f[:, ::4].astype(np.float32)
    lpj_f = rng.normal(0, 0.3, 2 * Jc)
    lpj_c = lpj_f[::2].copy()
    ch_t = RegularChildren(np.arange(4 * T).reshape(T, 4))
    ch_j = RegularChildren(np.arange(2 * Jc).reshape(Jc, 2))
    return dict(X=X, ctf=ctf, s_e=s_e, s_a=s_a, phases_c=ph_c, phases_f=ph_f, refs_c=R_c, refs_f=R_f,
                children_t=ch_t, children_j=ch_j, lpt_c=lpt_c, lpt_f=lpt_f, lpj_c=lpj_c, lpj_f=lpj_f)


def _diff2(X, ctf, s, ph, R):
    """diff2 (B, T, J) = sum_k s |X conj(ph_t) - c R_j|^2, float64."""
    Xs = X.astype(np.complex128)[:, None, :] * np.conj(ph.astype(np.complex128))[None]       # (B, T, M)
    d = Xs[:, :, None, :] - (ctf[:, None, None, :] * R.astype(np.complex128)[None, None])      # (B, T, J, M)
    return (s[:, None, None, :] * np.abs(d) ** 2).sum(-1)


def _posterior(mlp_rows):
    """Weights and logZ of rows of -log p (lists of 1-D arrays)."""
    out_w, out_z = [], []
    for m in mlp_rows:
        a = -m
        z = a.max() + np.log(np.exp(a - a.max()).sum())
        out_w.append(np.exp(a - z))
        out_z.append(z)
    return out_w, np.array(out_z)


def _brute_fine(p, keep_pairs):
    """Brute-force fine posteriors over the listed fine pairs per particle (dict i -> [(t, j)])."""
    d2 = _diff2(p["X"], p["ctf"], p["s_e"], p["phases_f"], p["refs_f"])
    rows, pairs = [], []
    for i in range(p["X"].shape[0]):
        tj = np.array(sorted(keep_pairs[i]))
        rows.append(d2[i, tj[:, 0], tj[:, 1]] - p["lpt_f"][i, tj[:, 0]] - p["lpj_f"][tj[:, 1]])
        pairs.append(tj)
    w, z = _posterior(rows)
    return pairs, w, z


def _brute_sums(p, pairs, w, frac):
    """M-step sums of each particle's fine pairs holding ``frac`` of its mass."""
    X, ctf, s_a, ph, R = (p[k].astype(np.complex128) if np.iscomplexobj(p[k]) else p[k].astype(np.float64)
                          for k in ("X", "ctf", "s_a", "phases_f", "refs_f"))
    J, M = R.shape
    data, wsum, noise = np.zeros((J, M), complex), np.zeros((J, M)), np.zeros(X.shape)
    for i in range(X.shape[0]):
        o = np.argsort(-w[i], kind="stable")
        keep = o[:np.searchsorted(np.cumsum(w[i][o]), frac * (1 - 1e-12)) + 1] if frac < 1 else o
        for q in keep:
            t, j = pairs[i][q]
            y = X[i] * np.conj(ph[t])
            data[j] += w[i][q] * ctf[i] * s_a[i] * y
            wsum[j] += w[i][q] * ctf[i] ** 2 * s_a[i]
            noise[i] += w[i][q] * np.abs(y - ctf[i] * R[j]) ** 2
    return data, wsum, noise


def _dense_sums(res, J, M):
    data, wsum = np.zeros((J, M), complex), np.zeros((J, M))
    data[res.uniq_j], wsum[res.uniq_j] = res.data, res.wsum
    return data, wsum


def _check(res, p, pairs, w, z, frac):
    B = p["X"].shape[0]
    np.testing.assert_allclose(res.logZ, z, rtol=RTOL, atol=1e-3)
    best = [pairs[i][np.argmax(w[i])] for i in range(B)]
    assert np.array_equal(res.best_t, [b[0] for b in best]) and np.array_equal(res.best_j, [b[1] for b in best])
    np.testing.assert_allclose(res.pmax, [w[i].max() for i in range(B)], rtol=RTOL)
    data, wsum, noise = _brute_sums(p, pairs, w, frac)
    d, ws = _dense_sums(res, *p["refs_f"].shape)
    np.testing.assert_allclose(d, data, rtol=1e-3, atol=1e-4 * np.abs(data).max())
    np.testing.assert_allclose(ws, wsum, rtol=1e-3, atol=1e-4 * np.abs(wsum).max())
    np.testing.assert_allclose(res.noise, noise, rtol=1e-3, atol=1e-4 * np.abs(noise).max())


@pytest.mark.parametrize("M", [17, 24])
def test_all_significant_equals_brute_force_over_the_fine_grid(rng, M):
    """frac = 1, no cap: the children of all coarse hypotheses are the whole fine grid."""
    p = _problem(rng, M=M)
    res = estep_batch(**p, frac=1.0, maxsig=0)
    B, Tf, Jf = p["X"].shape[0], p["phases_f"].shape[0], p["refs_f"].shape[0]
    full = {i: [(t, j) for t in range(Tf) for j in range(Jf)] for i in range(B)}
    pairs, w, z = _brute_fine(p, full)
    _check(res, p, pairs, w, z, 1.0)
    np.testing.assert_allclose(np.bincount(res.pair_i, weights=res.weight, minlength=B), 1.0, rtol=1e-5)


def _brute_coarse_kept(p, frac, maxsig, groups=1, mc=None, extra_c=None):
    """Coarse pairs kept per particle: the significant set, capped at the maxsig most probable
    per group for particles whose set is larger."""
    mc = p["X"].shape[1] if mc is None else mc
    d2 = _diff2(p["X"][:, :mc], p["ctf"][:, :mc], p["s_e"][:, :mc], p["phases_c"][:, :mc], p["refs_c"][:, :mc])
    lp = -d2 + p["lpt_c"][:, :, None] + p["lpj_c"][None, None, :]
    if extra_c is not None:
        lp = lp + extra_c[:, None, :]
    B, T, J = lp.shape
    kept, nsigs = {}, []
    for i in range(B):
        flat = lp[i].ravel()
        pr = np.exp(flat - flat.max())
        pr /= pr.sum()
        o = np.argsort(-pr, kind="stable")
        nsig = int(np.searchsorted(np.cumsum(pr[o]), frac) + 1)
        nsigs.append(nsig)
        if maxsig and nsig > maxsig:
            Jg = J // groups
            sel = []
            for g in range(groups):
                cols = np.arange(g * Jg, (g + 1) * Jg)
                sub = lp[i][:, cols].ravel()
                top = np.argsort(-sub, kind="stable")[:min(nsig, maxsig)]
                sel += [(q // Jg, cols[q % Jg]) for q in top]
        else:
            sel = [divmod(int(q), J) for q in o[:nsig]]
        kept[i] = sel
    return kept, np.array(nsigs)


def _fine_of(p, kept):
    """The fine children (t, j) of the kept coarse pairs, per particle."""
    out = {}
    for i, sel in kept.items():
        out[i] = [(tf, jf) for t, j in sel for tf in p["children_t"].table[t] for jf in p["children_j"].table[j]]
    return out


@pytest.mark.parametrize("groups", [1, 2])
def test_significant_set_cap_and_coarse_prefix(rng, groups):
    p = _problem(rng, B=6, M=20, T=3, Jc=8, scale=0.02)
    frac, maxsig, mc = 0.95, 4, 12
    res = estep_batch(**p, frac=frac, maxsig=maxsig, groups=groups, mc=mc)
    kept, nsig = _brute_coarse_kept(p, frac, maxsig, groups, mc)
    assert (nsig > maxsig).any() and ((nsig > 1) & (nsig <= maxsig)).any(), nsig   # the cap acts on some only
    assert np.array_equal(res.nsig, nsig)
    pairs, w, z = _brute_fine(p, _fine_of(p, kept))
    _check(res, p, pairs, w, z, frac)


def test_sparse_candidates_with_extra_prior(rng):
    p = _problem(rng, B=4, M=19, T=2, Jc=7)
    B, T, Jc = 4, 2, 7
    cand = {i: sorted(set(map(tuple, np.stack([rng.integers(0, T, 6), rng.integers(0, Jc, 6)], 1).tolist())))
            for i in range(B)}
    extra = {i: rng.normal(0, 0.5, len(cand[i])) for i in range(B)}
    off = np.concatenate([[0], np.cumsum([len(cand[i]) for i in range(B)])])
    t_idx = np.concatenate([[c[0] for c in cand[i]] for i in range(B)])
    j_idx = np.concatenate([[c[1] for c in cand[i]] for i in range(B)])
    res = estep_batch(**dict(p, refs_c=lambda idx: p["refs_c"][idx]), frac=1.0, maxsig=0,
                      candidates=(off, t_idx, j_idx, np.concatenate([extra[i] for i in range(B)])))
    fine, ex = {}, {}
    for i in range(B):
        fine[i] = []
        for (t, j), e in zip(cand[i], extra[i]):
            for tf in p["children_t"].table[t]:
                for jf in p["children_j"].table[j]:
                    fine[i].append((tf, jf))
                    ex[(i, tf, jf)] = e
    pairs, _, _ = _brute_fine(p, fine)
    d2 = _diff2(p["X"], p["ctf"], p["s_e"], p["phases_f"], p["refs_f"])
    rows = [np.array([d2[i, t, j] - p["lpt_f"][i, t] - p["lpj_f"][j] - ex[(i, t, j)] for t, j in pairs[i]])
            for i in range(B)]
    w, z = _posterior(rows)
    _check(res, p, pairs, w, z, 1.0)


def test_remap_and_dense_accumulators(rng):
    p = _problem(rng, B=5, M=16, T=2, Jc=6)
    Jf, M = p["refs_f"].shape
    base = estep_batch(**p, frac=0.99, maxsig=0)
    data, wsum = np.zeros((Jf, M), np.complex128), np.zeros((Jf, M))
    dense = estep_batch(**p, frac=0.99, maxsig=0, acc_into=(data, wsum))
    d, ws = _dense_sums(base, Jf, M)
    np.testing.assert_allclose(data, d, rtol=1e-5, atol=1e-6 * np.abs(d).max())
    np.testing.assert_allclose(wsum, ws, rtol=1e-5, atol=1e-6 * np.abs(ws).max())
    np.testing.assert_allclose(dense.noise, base.noise, rtol=1e-5)
    # remap: every particle's sums go to hypothesis (j + 2 i) % Jf; the noise keeps the evaluated reference
    rem = estep_batch(**p, frac=0.99, maxsig=0, remap_j=lambda pi, pj: (pj + 2 * pi) % Jf)
    want = np.zeros((Jf, M), complex)
    for i, t, j, w in zip(base.pair_i, base.pair_t, base.pair_j, base.weight):
        want[(j + 2 * i) % Jf] += w * p["ctf"][i] * p["s_a"][i] * p["X"][i] * np.conj(p["phases_f"][t])
    got = np.zeros((Jf, M), complex)
    got[rem.uniq_j] = rem.data
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    np.testing.assert_allclose(rem.noise, base.noise, rtol=1e-5)


def test_cap_is_per_particle_not_per_batch(rng):
    """A particle's kept hypotheses do not depend on the other particles of its batch."""
    p = _problem(rng, B=6, M=20, T=3, Jc=8, scale=0.01)
    whole = estep_batch(**p, frac=0.95, maxsig=3)
    for i in range(6):
        one = estep_batch(**{k: (v[i:i + 1] if k in ("X", "ctf", "s_e", "s_a", "lpt_c", "lpt_f") else v)
                             for k, v in p.items()}, frac=0.95, maxsig=3)
        m = whole.pair_i == i
        assert np.array_equal(one.pair_t, whole.pair_t[m]) and np.array_equal(one.pair_j, whole.pair_j[m])
        np.testing.assert_allclose(one.noise[0], whole.noise[i], rtol=1e-6)


def test_most_probable_dense_and_children_reference(rng):
    d2 = rng.uniform(0, 5, (3, 2, 6)).astype(np.float32)
    lpt, lpj = np.zeros((3, 2), np.float32), np.zeros(6, np.float32)
    i, t, j = most_probable_dense(d2, lpt, lpj, np.array([1, 5, 2]), 2, groups=2)
    for b in range(3):
        for g in range(2):
            sub = d2[b][:, 3 * g:3 * g + 3].ravel()
            want = sorted(np.argsort(sub, kind="stable")[:min(2, [1, 5, 2][b])])
            got = sorted(t[(i == b) & (j // 3 == g)] * 3 + j[(i == b) & (j // 3 == g)] % 3)
            assert got == [int(q) for q in want]
    pi, pt, pj, parent = product_children(np.array([0, 0, 1]), np.array([0, 1, 1]), np.array([2, 0, 1]),
                                          RegularChildren([[0, 1], [2, 3]]),
                                          RegularChildren([[0, 0], [1, 2], [3, 4], [5, 5]]))
    assert pi.tolist() == [0] * 8 + [1] * 4
    assert pt.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3]
    assert pj.tolist() == [3, 4, 3, 4, 0, 0, 0, 0, 1, 2, 1, 2]
    assert parent.tolist() == [0] * 4 + [1] * 4 + [2] * 4
