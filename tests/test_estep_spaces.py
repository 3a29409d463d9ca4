"""``run_estep`` over a rank's particles, for the 2D in-plane space and the 3D projection space, at
odd and even boxes, against a brute-force marginalisation over the space's own fine hypotheses
(every coarse hypothesis significant, no cap: the children of all coarse hypotheses are the whole
fine grid), for a global search and a local search, with and without oversampling (without, the
fine grid is the coarse one: each hypothesis once)."""
import dataclasses

import numpy as np
import pytest

from hpcem.algorithms.map_em.results import new_results
from hpcem.algorithms.map_em.space2d import InPlaneSpace
from hpcem.algorithms.map_em.space3d import ProjectionSpace, Sampling3D
from hpcem.core.euler import euler_to_matrix
from hpcem.estep import EStepOptions, FourierParticles, LocalSearch, TranslationSampling, coefficients, run_estep
from hpcem.estep.rank import noise_weights
from hpcem.io.particles import ParticleSet
from hpcem.parallel.comm import SerialComm
from hpcem.recon.projector import BackProjector

OPTS = EStepOptions(frac=1.0, maxsig=0, coarse_factor=0.0)


def _particles(rng, n, space, B=4, noise=0.5, oversampling=1):
    """Particles made from the space's own fine hypotheses (a random class, orientation and fine
    translation each, CTF) plus white noise, so that posteriors are peaked at a known truth."""
    from hpcem.core.ctf import ctf_from_params
    from hpcem.core.fourier import ift2, shift_phases

    angpix, nh = 3.0, n // 2 + 1
    ps0 = ParticleSet.from_arrays(np.zeros((B, n, n), np.float32), angpix, defocus_u=rng.uniform(8e3, 2e4, B),
                                  defocus_angle=rng.uniform(0, 90, B))
    c = ctf_from_params(n, angpix, ps0.ctf_params()).reshape(B, -1)
    kidx = np.arange(n * nh)
    _, refs_f = space.begin(kidx, kidx.size, n, n, True)
    trans = TranslationSampling(1.0, 1.0, oversampling)
    jt, tt = rng.integers(0, space.K * space.Jf1, B), rng.integers(0, trans.fine.shape[0], B)
    R = refs_f(jt) if callable(refs_f) else refs_f[jt]
    X = c * R * shift_phases(n, trans.fine[tt]).reshape(B, -1)
    imgs = ift2(X.reshape(B, n, nh), n)
    imgs += rng.normal(0, noise * imgs.std(), imgs.shape)
    ps = ParticleSet.from_arrays(imgs.astype(np.float32), angpix, defocus_u=ps0.ctf_params()["defocus_u"],
                                 defocus_angle=ps0.ctf_params()["defocus_angle"])
    parts = FourierParticles(ps, np.arange(B), np.ones((n, n), np.float32), True, SerialComm())
    parts.load()
    sigma2 = np.full((parts.G, parts.nsh), n * n * (noise * imgs.std()) ** 2 * 16.0)   # flatter than true:
    # every coarse hypothesis keeps a probability above float32's range (log range < 40), peaks remain
    return ps, parts, trans, sigma2, jt


def _brute(parts, space, trans, res, sigma2, sigma_offset, lpk, r_cur, extra=None):
    """Posteriors over all (fine t, fine j) of every particle: (w (B, Tf, Jf), logZ, fine refs)."""
    kidx = coefficients(parts.shell, r_cur)
    M = kidx.size
    _, refs_f = space.begin(kidx, M, r_cur + 1.0, r_cur + 1.0, True)
    Jf = space.K * space.Jf1
    R = np.asarray(refs_f(np.arange(Jf)) if callable(refs_f) else refs_f, np.complex128)
    o_px = np.stack([res["ox"], res["oy"]], 1) / parts.ps.angpix
    X, c = parts.batch(np.arange(parts.size), kidx, o_px)
    s_e, s_a = noise_weights(sigma2, parts.hw[kidx], parts.shell[kidx])
    s_e, s_a = s_e[parts.groups], s_a[parts.groups]
    _, phf = trans.phases(parts.n, kidx)
    Y = X.astype(np.complex128)[:, None, :] * np.conj(phf.astype(np.complex128))[None]          # (B, Tf, M)
    d = Y[:, :, None, :] - c[:, None, None, :] * R[None, None]
    lp = -(s_e[:, None, None, :] * np.abs(d) ** 2).sum(-1)
    lp += trans.log_prior(o_px, sigma_offset, parts.ps.angpix)[1][:, :, None]
    lp += np.repeat(lpk, space.Jf1)[None, None, :]
    if extra is not None:
        lp = lp + extra
    z = np.logaddexp.reduce(lp.reshape(lp.shape[0], -1), axis=1)
    w = np.exp(lp - z[:, None, None])
    sums = np.einsum("btj,bm,btm->jm", w, c * s_a, Y), np.einsum("btj,bm->jm", w, c * c * s_a)
    return w, z, kidx, sums, o_px


def _check_results(res, w, z, space, trans, o_px, angpix):
    B = w.shape[0]
    second = np.sort(w.reshape(B, -1), axis=1)[:, -2]
    assert (w.reshape(B, -1).max(1) > 2 * second).any()      # some posteriors are peaked: the bests mean something
    flat = w.reshape(B, -1).argmax(1)
    bt, bj = np.unravel_index(flat, w.shape[1:])
    np.testing.assert_allclose(res["loglik"], z, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(res["pmax"], w.reshape(B, -1).max(1), rtol=1e-3)
    assert np.array_equal(res["class"], space.class_of(bj) + 1)
    for k, v in space.poses(bj).items():
        np.testing.assert_allclose(res[k], v, atol=1e-6)
    o = trans.new_origins_A(o_px, bt, angpix)
    np.testing.assert_allclose(np.stack([res["ox"], res["oy"]], 1), o, atol=1e-6)


def _setup(rng, n, space, oversampling=1):
    ps, parts, trans, sigma2, truth = _particles(rng, n, space, oversampling=oversampling)
    res = new_results(parts.size, space.pose_keys, first_class=1)
    res["truth"] = truth
    return ps, parts, trans, res, sigma2


@pytest.mark.parametrize("n, oversampling", [(7, 1), (8, 1), (8, 0)])
def test_inplane_space_global_search(rng, n, oversampling):
    space = InPlaneSpace(2, 60.0, oversampling, n)
    space.refs = _smooth(rng, (2, n, n), 2)
    ps, parts, trans, res, sigma2 = _setup(rng, n, space, oversampling)
    res.pop("truth")
    assert np.unique(space.psi_f).size == space.psi_f.size and np.unique(trans.fine, axis=0).shape == trans.fine.shape
    lpk = np.log([0.3, 0.7])
    r_cur = n // 2
    w, z, kidx, (D, W), o_px = _brute(parts, space, trans, res, sigma2, 4.0, lpk, r_cur)
    sums = run_estep(parts, space, trans, res, sigma2=sigma2, sigma_offset=4.0, log_class_prior=lpk, r_cur=r_cur,
                     radius_px=n / 2, opts=dataclasses.replace(OPTS, class_overlap=True))
    _check_results(res, w, z, space, trans, o_px, ps.angpix)
    np.testing.assert_allclose(space.data, D, rtol=2e-3, atol=1e-4 * np.abs(D).max())
    np.testing.assert_allclose(space.wsum, W, rtol=2e-3, atol=1e-4 * np.abs(W).max())
    np.testing.assert_allclose(sums.class_weight, w.sum((0, 1)).reshape(2, -1).sum(1), rtol=1e-4)
    pk = w.sum(1).reshape(len(w), 2, -1).sum(2)           # each particle's class posterior
    np.testing.assert_allclose(sums.class_overlap, pk.T @ pk, rtol=1e-3, atol=1e-6)   # split-merge's shared mass


def _space3d(rng, n, K=2, oversampling=1):
    samp = Sampling3D(0, "C1", 60.0, oversampling)
    space = ProjectionSpace(samp, K, n, np.eye(3)[None])
    space.refs = _smooth(rng, (K, n, n, n), 3)
    return space


def _smooth(rng, shape, dims):
    from hpcem.core.filters import lowpass

    return lowpass(rng.standard_normal(shape), 3.0 * 3.0, 3.0, dims=dims).astype(np.float32)


def _backprojected(space, D, W, kidx, r_max):
    """Brute-force sums (Jf, M) back-projected per class, each independent coefficient once (the
    kx = 0 line holds both Friedel mates of each coefficient: only one is inserted)."""
    from hpcem.core.fourier import friedel_unique

    n, nn = space.n, space.n * (space.n // 2 + 1)
    once = friedel_unique(n).ravel()[kidx]
    out = []
    for k in range(space.K):
        bp = BackProjector(n)
        rows = np.arange(k * space.Jf1, (k + 1) * space.Jf1)
        Df, Wf = np.zeros((rows.size, nn), np.complex64), np.zeros((rows.size, nn), np.float32)
        Df[:, kidx], Wf[:, kidx] = D[rows] * once, W[rows] * once
        A = euler_to_matrix(*space.samp.fine_euler(np.arange(space.Jf1))).astype(np.float32)
        bp.insert(Df.reshape(-1, n, n // 2 + 1), Wf.reshape(-1, n, n // 2 + 1), A, r_max=r_max)
        out.append(bp)
    return out


@pytest.mark.parametrize("n, oversampling", [(7, 1), (8, 1), (7, 0)])
def test_projection_space_global_search(rng, n, oversampling):
    space = _space3d(rng, n, oversampling=oversampling)
    ps, parts, trans, res, sigma2 = _setup(rng, n, space, oversampling)
    res.pop("truth")
    lpk = np.log([0.4, 0.6])
    r_cur = n // 2
    w, z, kidx, (D, W), o_px = _brute(parts, space, trans, res, sigma2, 4.0, lpk, r_cur)
    run_estep(parts, space, trans, res, sigma2=sigma2, sigma_offset=4.0, log_class_prior=lpk, r_cur=r_cur,
              radius_px=n / 2, opts=OPTS)
    _check_results(res, w, z, space, trans, o_px, ps.angpix)
    for bp, ref in zip(space.bps, _backprojected(space, D, W, kidx, r_cur + 1.0)):
        np.testing.assert_allclose(bp.data, ref.data, rtol=2e-3, atol=2e-4 * np.abs(ref.data).max())
        np.testing.assert_allclose(bp.weight, ref.weight, rtol=2e-3, atol=2e-4 * np.abs(ref.weight).max())


@pytest.mark.parametrize("n", [7, 8])
def test_projection_space_local_search(rng, n):
    """Candidates within 3 sigma of each particle's pose (and its class), Gaussian angular prior
    on the coarse parent inherited by the children."""
    space = _space3d(rng, n, K=1)
    ps, parts, trans, res, sigma2 = _setup(rng, n, space)
    for k, v in space.poses(res.pop("truth")).items():      # near the truth (the local search's premise)
        res[k][:] = v + rng.uniform(-15, 15, 4)
    sigma, lpk, r_cur = 40.0, np.zeros(1), n // 2
    off, oi, dist = space.neighbours(res, sigma, 3.0)
    # brute force: the fine children of the candidates, each with its parent's angular prior
    extra = np.full((4, trans.fine.shape[0], space.Jf1), -np.inf)
    for i in range(4):
        for j1, d in zip(oi[off[i]:off[i + 1]], dist[off[i]:off[i + 1]]):
            _, fine = space.children.expand(np.array([j1]))
            extra[i, :, fine] = -d ** 2 / (2 * sigma ** 2)
    w, z, kidx, _, o_px = _brute(parts, space, trans, dict(res), sigma2, 4.0, lpk, r_cur, extra=extra)
    run_estep(parts, space, trans, res, sigma2=sigma2, sigma_offset=4.0, log_class_prior=lpk, r_cur=r_cur,
              radius_px=n / 2, opts=OPTS, candidates=LocalSearch(sigma))
    _check_results(res, w, z, space, trans, o_px, ps.angpix)
