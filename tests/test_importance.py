"""Importance-sampled quadrature over poses (seed 003, eqs 10-23; hpcem.kernels.importance,
hpcem.estep.importance) and the E-step's per-class posteriors (hpcem.estep.classes):

* the mixture distribution of eq 20 and its draws against a numpy reference: systematic draws
  give every point floor or ceil of N q draws, the properly weighted estimate is unbiased, the
  product of the drawn sets is the candidate list;
* per-class segments give the joint posterior and log-likelihood of the plain E-step when nothing
  is pruned;
* the E-step's log-likelihood with importance-sampled candidates is within 0.1% of the full
  quadrature's at s0 = 10, from the marginals of a previous E-step, evaluating a small fraction
  of the quadrature points.
"""
import numpy as np
import pytest

from hpcem import kernels


def _circle(M):
    th = np.linspace(0, 2 * np.pi, M, endpoint=False)
    return np.stack([np.cos(th), np.sin(th)], 1)


def _q_reference(prev, val, grid, kappa, inv_T, alpha):
    a = np.zeros(len(grid))
    vmax = val.max()
    for p, v in zip(prev, val):
        if v > 0:
            a += (v / vmax) ** inv_T * np.exp(kappa * (grid @ p - 1.0))
    return (1 - alpha) * a / a.sum() + alpha / len(grid)


def test_draws_follow_the_mixture(rng):
    M, S = 90, 40
    grid = _circle(M)
    kappa = np.log(2) / (1 - np.cos(2 * np.pi / M))
    prev = np.zeros((S, 3, 2))
    val = np.zeros((S, 3))
    for s in range(S):
        prev[s, :2] = grid[rng.integers(0, M, 2)]
        val[s, :2] = [1.0, rng.uniform(0.01, 1)]
    inv_T, alpha = np.full(S, 0.8), np.full(S, 0.05)
    d = kernels.is_draw(prev, val, grid, 0, kappa, inv_T, alpha, 10.0, np.arange(S, dtype=np.uint64))
    d2 = kernels.is_draw(prev, val, grid, 0, kappa, inv_T, alpha, 10.0, np.arange(S, dtype=np.uint64))
    assert np.array_equal(d.idx, d2.idx) and np.array_equal(d.lw, d2.lw)       # keyed: reproducible
    for s in range(S):
        q = _q_reference(prev[s], val[s], grid, kappa, inv_T[s], alpha[s])
        ess = 1.0 / np.sum(q ** 2)
        assert abs(d.ess[s] - ess) < 1e-9 * ess and d.n[s] == int(np.ceil(10.0 * ess))
        idx, lw = d.idx[d.offsets[s]:d.offsets[s + 1]], d.lw[d.offsets[s]:d.offsets[s + 1]]
        m = np.exp(lw) * d.n[s] * q[idx]                        # the draw counts
        assert np.allclose(m, np.round(m), atol=1e-6)
        expect = d.n[s] * q
        full = np.zeros(M)
        full[idx] = np.round(m)
        assert np.all(np.abs(full - expect) < 1.0 + 1e-9)      # systematic: floor or ceil of N q
    # unbiased: the mean of the properly weighted sums over many keys is the sum
    f = np.exp(-((np.arange(M) - 20.0) ** 2) / 30.0)
    est = []
    for k in range(400):
        e = kernels.is_draw(prev[:1], val[:1], grid, 0, kappa, inv_T[:1], alpha[:1], 10.0,
                            np.array([1000 + k], np.uint64))
        est.append(np.sum(np.exp(e.lw) * f[e.idx]))
    est = np.array(est)
    print("IS estimate %.4f +- %.4f, exact %.4f" % (est.mean(), est.std() / 20, f.sum()))
    assert abs(est.mean() - f.sum()) < 4 * est.std() / 20 + 1e-9


def test_candidates_are_the_product(rng):
    M = 12
    grid = _circle(M)
    prev = np.zeros((4, 1, 2))
    prev[:, 0] = grid[[1, 5, 7, 10]]
    val = np.ones((4, 1))
    kw = dict(kappa=20.0, inv_T=np.ones(4), alpha=np.full(4, 0.2), s0=2.0)
    d, p, t = (kernels.is_draw(prev, val, grid, 0, keys=np.arange(4, dtype=np.uint64) + 10 * i, **kw)
               for i in range(3))
    cls = np.array([0, 1, 0, 1])
    off, tt, jj, ex = kernels.is_candidates(d, p, t, cls, 2, M, M * M)
    assert off.tolist()[0] == 0 and off.size == 3
    for s in range(4):
        b = s // 2
        got = set()
        lo, hi = off[b], off[b + 1]
        for q in range(lo, hi):
            got.add((int(tt[q]), int(jj[q]), round(float(ex[q]), 9)))
        want = set()
        sl = lambda x: slice(x.offsets[s], x.offsets[s + 1])  # noqa: E731
        for a, la in zip(d.idx[sl(d)], d.lw[sl(d)]):
            for b_, lb in zip(p.idx[sl(p)], p.lw[sl(p)]):
                for c, lc in zip(t.idx[sl(t)], t.lw[sl(t)]):
                    want.add((int(c), int(cls[s] * M * M + a * M + b_), round(float(la + lb + lc), 9)))
        assert want <= got


def test_class_segments_equal_the_joint_posterior(rng):
    """frac = 1: per-class segments combined are the plain joint posterior (dense and sparse)."""
    from hpcem.estep import RegularChildren, estep_batch

    B, M, T, K, J1 = 6, 19, 3, 3, 5
    J = K * J1
    X = (rng.normal(size=(B, M)) + 1j * rng.normal(size=(B, M))).astype(np.complex64)
    R = (rng.normal(size=(J, M)) + 1j * rng.normal(size=(J, M))).astype(np.complex64)
    X[:] = R[rng.integers(0, J, B)] + 0.8 * X
    ctf = np.ones((B, M), np.float32)
    s = np.full((B, M), 0.3, np.float32)
    ph = np.exp(1j * rng.uniform(0, 2 * np.pi, (T, M))).astype(np.complex64)
    lpj = np.repeat(np.log([0.5, 0.3, 0.2]), J1)
    kw = dict(phases_c=ph, phases_f=ph, refs_c=R, refs_f=R, children_t=RegularChildren(np.arange(T)[:, None]),
              children_j=RegularChildren(np.arange(J)[:, None]), lpt_c=np.zeros((B, T), np.float32),
              lpt_f=np.zeros((B, T)), lpj_c=lpj, lpj_f=lpj, frac=1.0, maxsig=0)
    cand = (np.arange(B + 1) * T * J, np.tile(np.repeat(np.arange(T), J), B), np.tile(np.arange(J), B * T), None)
    for c in (None, cand):
        a = estep_batch(X, ctf, s, s, candidates=c, **kw)
        b = estep_batch(X, ctf, s, s, candidates=c, class_segments=K, **kw)
        assert np.allclose(a.logZ, b.logZ, atol=1e-6)
        wa = {(i, t, j): w for i, t, j, w in zip(a.pair_i, a.pair_t, a.pair_j, a.weight)}
        wb = {(i, t, j): w for i, t, j, w in zip(b.pair_i, b.pair_t, b.pair_j, b.weight)}
        common = set(wa) & set(wb)
        assert sum(wa.values()) - sum(wa[k] for k in common) < 1e-5 * B
        assert max(abs(wa[k] - wb[k]) for k in common) < 1e-5
        assert np.array_equal(a.best_j, b.best_j)
        post = b.class_post
        assert np.allclose(post.sum(1), 1.0)
        mix = estep_batch(X, ctf, s, s, candidates=c, class_segments=K,
                          class_mix=lambda r: 0.5 * r + 0.5 / K, **kw)
        assert np.allclose(mix.class_post, 0.5 * post + 0.5 / K) and np.allclose(mix.logZ, b.logZ)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    from hpcem.simulate.particles import simulate_dataset
    from hpcem.simulate.write import write_dataset

    tmp = str(tmp_path_factory.mktemp("is"))
    d = simulate_dataset(n=32, n_particles=160, angpix=3.75, snr=0.3, ctf=True, seed=5, model="atoms")
    write_dataset(d, tmp)
    return tmp, d


def _estep(parts, refs, order, tstep, r, cand, res, sigma2):
    from hpcem.algorithms.map_em.space3d import ProjectionSpace, Sampling3D
    from hpcem.estep import EStepOptions, TranslationSampling, run_estep

    n = parts.n
    sp = ProjectionSpace(Sampling3D(order, "C1", 0, 0), 1, n, np.eye(3)[None])
    sp.refs = refs[None].astype(np.float32)
    run_estep(parts, sp, TranslationSampling(3.0, tstep, 0), res, sigma2=sigma2, sigma_offset=6.0,
              log_class_prior=np.zeros(1), r_cur=r, radius_px=0.4 * n,
              opts=EStepOptions(frac=0.999, maxsig=0, coarse_factor=0, oversampling=0), candidates=cand,
              accumulate=False)
    return res["loglik"].copy()


def test_importance_sampled_loglik_within_a_thousandth(small_set):
    """From the marginals of an E-step against the map low-passed to 12 A, the E-step against the
    map itself: log-likelihoods with s0 = 10 within 0.1% of the full quadrature's."""
    import os

    from hpcem.algorithms.map_em.results import new_results
    from hpcem.core.filters import lowpass
    from hpcem.core.masks import soft_circular_mask
    from hpcem.estep import FourierParticles
    from hpcem.estep.importance import ImportanceSampler
    from hpcem.io.particles import ParticleSet
    from hpcem.parallel.comm import SerialComm

    tmp, d = small_set
    ps = ParticleSet.read(os.path.join(tmp, "particles.star"))
    parts = FourierParticles(ps, np.arange(ps.n), soft_circular_mask(ps.box, 12.8, 5.0), True, SerialComm())
    parts.load()
    truth = np.asarray(d.volumes[0], np.float64)
    res0 = new_results(ps.n, ("rot", "tilt", "psi"), 1)
    IS = ImportanceSampler(np.arange(ps.n), 1, s0=10.0, seed=3)
    IS.position(2000, 0)                   # marginals of a late epoch (alpha 0.05, T 1.25)
    _estep(parts, lowpass(truth, 12.0, 3.75, dims=3), 2, 1.0, 8, IS, {k: v.copy() for k, v in res0.items()},
           parts.img_power)
    assert IS.fraction == 1.0              # no marginals yet: the dense pass
    IS.frozen, IS.force_dense = True, True  # forced (abinitio while K > 1 classes move): the full quadrature
    IS.reset_counts()
    full = _estep(parts, truth, 2, 1.0, 8, IS, {k: v.copy() for k, v in res0.items()}, parts.img_power)
    assert IS.fraction == 1.0
    IS.force_dense = False
    IS.reset_counts()
    est = _estep(parts, truth, 2, 1.0, 8, IS, {k: v.copy() for k, v in res0.items()}, parts.img_power)
    rel = np.abs(est - full) / np.abs(full)
    print("IS at s0 = 10: %.4f of the quadrature points, log-likelihood relative error mean %.2e max %.2e "
          "(%.3f nats mean)" % (IS.fraction, rel.mean(), rel.max(), np.abs(est - full).mean()))
    assert IS.fraction < 0.05
    assert rel.mean() < 1e-3 and np.percentile(rel, 95) < 1e-3


def test_importance_sampled_class_posteriors(tmp_path):
    """K = 2 (two different maps, class segments): from the marginals of an E-step against the maps
    low-passed to 12 A, the importance-sampled E-step against the maps classifies as the full
    quadrature does (ARI 1 against the truth), log-likelihoods within 0.2 nats, class weights
    within 0.1%."""
    import os

    from hpcem.algorithms.map_em.results import new_results
    from hpcem.algorithms.map_em.space3d import ProjectionSpace, Sampling3D
    from hpcem.core.filters import lowpass
    from hpcem.core.masks import soft_circular_mask
    from hpcem.estep import EStepOptions, FourierParticles, FullGrid, TranslationSampling, run_estep
    from hpcem.estep.importance import ImportanceSampler
    from hpcem.io.particles import ParticleSet
    from hpcem.metrics import adjusted_rand_index
    from hpcem.parallel.comm import SerialComm
    from hpcem.simulate.particles import simulate_dataset
    from hpcem.simulate.volumes import pseudo_atomic_volume
    from hpcem.simulate.write import write_dataset

    vols = [pseudo_atomic_volume(32, 3.75, seed=s).astype(np.float64) for s in (1, 2)]
    d = simulate_dataset(n=32, n_particles=120, angpix=3.75, snr=1.0, ctf=True, seed=5, volumes=vols, n_classes=2,
                         model="atoms")
    write_dataset(d, str(tmp_path))
    ps = ParticleSet.read(os.path.join(str(tmp_path), "particles.star"))
    parts = FourierParticles(ps, np.arange(ps.n), soft_circular_mask(ps.box, 12.8, 5.0), True, SerialComm())
    parts.load()

    def estep(refs, cand):
        sp = ProjectionSpace(Sampling3D(2, "C1", 0, 0), 2, 32, np.eye(3)[None])
        sp.refs = np.asarray(refs, np.float32)
        res = new_results(ps.n, ("rot", "tilt", "psi"), 1)
        sums = run_estep(parts, sp, TranslationSampling(3.0, 1.0, 0), res, sigma2=parts.img_power, sigma_offset=6.0,
                         log_class_prior=np.full(2, -np.log(2)), r_cur=8, radius_px=12.8,
                         opts=EStepOptions(frac=0.999, maxsig=0, coarse_factor=0, oversampling=0), candidates=cand,
                         accumulate=False, class_segments=True)
        return res, sums.class_weight

    full, wf = estep(vols, FullGrid())
    IS = ImportanceSampler(np.arange(ps.n), 2, s0=10.0, seed=3)
    IS.position(2000, 0)
    estep([lowpass(v, 12.0, 3.75, dims=3) for v in vols], IS)
    IS.frozen = True
    IS.reset_counts()
    est, wi = estep(vols, IS)
    dl = np.abs(est["loglik"] - full["loglik"])
    ari = (adjusted_rand_index(full["class"], d.classes), adjusted_rand_index(est["class"], d.classes))
    print("K = 2: IS %.4f of the points; ARI full %.3f, IS %.3f; log-likelihood difference mean %.3f max %.3f nats"
          % (IS.fraction, ari[0], ari[1], dl.mean(), dl.max()))
    assert IS.fraction < 0.1 and ari == (1.0, 1.0) and dl.max() < 0.2
    assert np.allclose(wi, wf, rtol=1e-3)
