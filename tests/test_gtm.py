"""GTM (ROME statistical manifold learning): kernels against numpy, the class-frame
alignment, and `hpcem sml` on simulated conformations (purity, 1 vs 2 ranks, --continue)."""
import os

import numpy as np
import pytest

from hpcem.metrics import purity
from hpcem.kernels import gtm_accumulate, gtm_distances, gtm_responsibilities, gtm_solve


# ----------------------------------------------------------------------------- kernels
@pytest.mark.parametrize("K,M,D,lam", [(7, 3, 5, 0.5), (30, 8, 33, 0.01), (64, 17, 16, 1e-3)])
def test_gtm_solve_matches_numpy(K, M, D, lam):
    rng = np.random.default_rng(K + M + D)
    Phi = rng.random((K, M)).astype(np.float32)
    Phi[:, -1] = 1.0
    G = rng.random((K, D)).astype(np.float32)
    H = (rng.normal(size=(K, D)) + 1j * rng.normal(size=(K, D))).astype(np.complex64)
    W = gtm_solve(Phi, G, H, lam, chunk=7)
    P = Phi.astype(np.float64)
    ref = np.stack([np.linalg.solve(P.T @ (G[:, d, None] * P) + lam * np.eye(M), P.T @ H[:, d])
                    for d in range(D)], axis=1)
    assert W.shape == (M, D) and W.dtype == np.complex64
    assert np.abs(W - ref).max() <= 2e-5 * np.abs(ref).max()


def test_gtm_solve_checks():
    Phi = np.ones((4, 2), np.float32)
    with pytest.raises(TypeError):
        gtm_solve(Phi.astype(np.float64), np.ones((4, 3), np.float32), np.ones((4, 3), np.complex64), 1.0)
    with pytest.raises(ValueError):
        gtm_solve(Phi, np.ones((5, 3), np.float32), np.ones((5, 3), np.complex64), 1.0)
    with pytest.raises(ValueError):
        gtm_solve(Phi, np.ones((4, 3), np.float32), np.ones((4, 3), np.complex64), -1.0)


def test_estep_distances_and_responsibilities_match_numpy():
    rng = np.random.default_rng(5)
    N, K, D, beta = 37, 11, 23, 0.7
    t = (rng.normal(size=(N, D)) + 1j * rng.normal(size=(N, D))).astype(np.complex64)
    c = rng.uniform(-1, 1, (N, D)).astype(np.float32)
    y = (rng.normal(size=(K, D)) + 1j * rng.normal(size=(K, D))).astype(np.complex64) * 0.5
    h = rng.choice([1.0, 2.0], D).astype(np.float32)
    # layouts documented in hpcem.kernels.gtm
    Z = np.empty((N, 3 * D), np.float32)
    Z[:, 0:2 * D:2], Z[:, 1:2 * D:2], Z[:, 2 * D:] = (h * c * t).real, (h * c * t).imag, h * c * c
    Y = np.empty((K, 3 * D), np.float32)
    Y[:, 0:2 * D:2], Y[:, 1:2 * D:2], Y[:, 2 * D:] = -2 * y.real, -2 * y.imag, np.abs(y) ** 2
    a = (h * np.abs(t) ** 2).sum(1).astype(np.float64)
    ref = (h * np.abs(t[:, None, :].astype(np.complex128) - c[:, None, :] * y[None]) ** 2).sum(-1)
    delta = gtm_distances(Z, Y, block=8)
    assert np.allclose(a[:, None] + delta, ref, rtol=1e-4, atol=1e-3)
    lp = -0.5 * beta * ref
    mx = lp.max(1, keepdims=True)
    logZ_ref = (mx + np.log(np.exp(lp - mx).sum(1, keepdims=True)))[:, 0]
    R_ref = np.exp(lp - logZ_ref[:, None])
    logZ, rdelta, kmax, rmax = gtm_responsibilities(delta, a, beta)
    assert np.allclose(delta, R_ref, atol=2e-4)          # overwritten with responsibilities
    assert np.allclose(delta.sum(1), 1.0, atol=1e-5)
    assert np.allclose(logZ, logZ_ref, rtol=1e-5, atol=1e-3)
    assert np.allclose(rdelta, (R_ref * ref).sum(1), rtol=1e-4)
    assert np.array_equal(kmax, ref.argmin(1))
    assert np.allclose(rmax, R_ref.max(1), atol=2e-4)
    RZ = gtm_accumulate(delta, Z, block=5)
    assert np.allclose(RZ, delta.T.astype(np.float64) @ Z, rtol=1e-5, atol=1e-4)


def test_latent_grid_and_basis():
    from hpcem.algorithms.rome.gtm_data import basis_functions, latent_shape

    assert latent_shape(50, 2) == (5, 10) and latent_shape(1000, 2) == (25, 40)
    assert latent_shape(27, 3) == (3, 3, 3) and latent_shape(7, 1) == (7,)
    Phi, X, mu, sigma = basis_functions((5, 10), 0, 1.0)
    assert Phi.shape == (50, len(mu) + 1) and np.all(Phi[:, -1] == 1.0)
    assert X.shape == (50, 2) and sigma > 0 and np.all(Phi > 0) and Phi[:, :-1].max() <= 1.0


def test_class_frame_alignment_and_ctf():
    """Aligned noise-free particles equal CTF(class frame) x the true centred projection."""
    from hpcem.algorithms.rome.gtm_data import aligned_ctf, aligned_transforms
    from hpcem.core.ctf import ctf2d
    from hpcem.core.fourier import ft2, radius2
    from hpcem.io.particles import ParticleSet
    from hpcem.simulate import simulate_dataset

    n = 48
    sim = simulate_dataset(n=n, n_particles=30, mode="2d", n_views=2, snr=np.inf, ctf=True, astig=3000, seed=3)
    ps = ParticleSet.from_arrays(sim.images, sim.angpix, defocus_u=sim.ctf["defocus_u"],
                                 defocus_v=sim.ctf["defocus_v"], defocus_angle=sim.ctf["defocus_angle"],
                                 rot=sim.rot, tilt=sim.tilt, psi=sim.psi, origins=sim.origins_A)
    idx = np.arange(ps.n)
    T = aligned_transforms(ps, idx, np.ones((n, n), np.float32))
    C = aligned_ctf(ps, idx, True)
    truth = ft2(sim.projections[sim.classes - 1].astype(np.float32))
    m = radius2(n) < n / 3
    err = np.abs(T[:, m] - (C * truth)[:, m]).sum() / np.abs((C * truth)[:, m]).sum()
    p = ps.ctf_params()
    Cwrong = ctf2d(n, ps.angpix, p["defocus_u"], p["defocus_v"], p["defocus_angle"] - sim.psi,
                   p["voltage"], p["cs"], p["amp_contrast"])
    err_wrong = np.abs(T[:, m] - (Cwrong * truth)[:, m]).sum() / np.abs((Cwrong * truth)[:, m]).sum()
    assert err < 0.05 and err_wrong > 2 * err


# ----------------------------------------------------------------------------- end to end
def narrow_view_conformations(outdir, n=64, N=2400, snr=0.05, spread=6.0, seed=0, angpix=3.0):
    """3 conformations, views within ~spread*sqrt(2) degrees of one side view, random psi and
    shifts, CTF, SNR 0.05; written with the true poses (the 'aligned' input)."""
    from hpcem.core.euler import euler_to_matrix
    from hpcem.io.particles import write_particle_stack
    from hpcem.simulate.particles import simulate_projections
    from hpcem.simulate.volumes import conformations

    rng = np.random.default_rng(seed)
    vols = conformations(n, 3, seed=seed)
    classes = rng.permutation(np.arange(N) % 3)
    rot = rng.uniform(-spread, spread, N)
    tilt = 90.0 + rng.uniform(-spread, spread, N)
    psi = rng.uniform(-180, 180, N)
    r, ph = np.sqrt(rng.uniform(0, 1, N)) * 2.0, rng.uniform(0, 2 * np.pi, N)
    origins = np.stack([r * np.cos(ph), r * np.sin(ph)], 1)
    dmean, da = rng.uniform(5000, 25000, N), rng.uniform(0, 1000, N)
    ctf = {"defocus_u": dmean + da / 2, "defocus_v": dmean - da / 2, "defocus_angle": rng.uniform(-180, 180, N),
           "voltage": np.full(N, 300.0), "cs": np.full(N, 2.7), "amp_contrast": np.full(N, 0.1),
           "phase_shift": np.zeros(N)}
    clean = simulate_projections(vols, euler_to_matrix(rot, tilt, psi), classes, origins, ctf, angpix)
    c = np.arange(n) - n // 2
    disc = (c[:, None] ** 2 + c[None, :] ** 2) <= (0.35 * n) ** 2
    sigma = np.sqrt(clean[:, disc].var(axis=1).mean() / snr)
    imgs = clean + rng.normal(0, sigma, clean.shape).astype(np.float32)
    star = os.path.join(outdir, "particles.star")
    write_particle_stack(star, imgs, angpix, defocus_u=ctf["defocus_u"], defocus_v=ctf["defocus_v"],
                         defocus_angle=ctf["defocus_angle"], rot=rot, tilt=tilt, psi=psi,
                         origins=origins * angpix)
    return star, classes + 1


@pytest.fixture(scope="module")
def conf_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("gtm_data")
    star, truth = narrow_view_conformations(str(d))
    return star, truth


def _read(outdir):
    from hpcem.io.mrc import read_mrc
    from hpcem.io.star import read_star

    data = read_star(os.path.join(outdir, "run_data.star"))["particles"]
    avg, _ = read_mrc(os.path.join(outdir, "run_classes.mrcs"))
    model = read_star(os.path.join(outdir, "run_model.star"))
    return data, avg, model


SML = ["--K", "50", "--ctf", "--random_seed", "1"]


@pytest.mark.slow
@pytest.mark.mpi
def test_sml_purity_ranks_and_continue(conf_data, tmp_path, run_hpcem):
    star, truth = conf_data
    o1, o2, oc = str(tmp_path / "r1"), str(tmp_path / "r2"), str(tmp_path / "rc")
    run_hpcem(["sml", "--i", star, "--o", o1, "--iter", "15"] + SML)
    d1, a1, m1 = _read(o1)
    cls1 = d1["rlnClassNumber"].to_numpy()
    pur = purity(cls1, truth)
    print("SML K=50 purity %.3f, %d non-empty classes" % (pur, len(np.unique(cls1))))
    assert pur >= 0.9
    assert len(np.unique(cls1)) >= 25                      # the particles spread over the manifold
    assert a1.shape == (50, 64, 64) and np.all(np.isfinite(a1))
    assert np.all((d1["rlnMaxValueProbDistribution"] > 0) & (d1["rlnMaxValueProbDistribution"] <= 1))
    sizes = m1["model_classes"]["rlnClassNumberOfParticles"].to_numpy()
    assert sizes.sum() == len(truth) and np.allclose(m1["model_classes"]["rlnClassDistribution"].sum(), 1.0)
    assert os.path.exists(os.path.join(o1, "run_classes.png"))
    ll = np.loadtxt(os.path.join(o1, "run_loglik.txt"))[:, 1]
    assert np.all(np.diff(ll) > -1e-6 * np.abs(ll[:-1]))   # EM (ECM) never decreases the likelihood

    # 2 ranks: pixels split, same result up to float reduction order
    run_hpcem(["sml", "--i", star, "--o", o2, "--iter", "15"] + SML, n_ranks=2)
    d2, a2, _ = _read(o2)
    agree = np.mean(d2["rlnClassNumber"].to_numpy() == cls1)
    print("1 vs 2 ranks: class agreement %.4f, max avg diff %.2e" % (
        agree, np.abs(a2 - a1).max() / np.abs(a1).max()))
    assert agree >= 0.99
    assert np.abs(a2 - a1).max() <= 1e-2 * np.abs(a1).max()
    # 3 ranks: an uneven pixel split (and oversubscribed cores on CI)
    o3 = str(tmp_path / "r3")
    run_hpcem(["sml", "--i", star, "--o", o3, "--iter", "15"] + SML, n_ranks=3)
    d3, a3, _ = _read(o3)
    agree3 = np.mean(d3["rlnClassNumber"].to_numpy() == cls1)
    print("1 vs 3 ranks: class agreement %.4f" % agree3)
    assert agree3 >= 0.99
    assert np.abs(a3 - a1).max() <= 1e-2 * np.abs(a1).max()

    # --continue from iteration 8 reaches the same result as the uninterrupted run
    run_hpcem(["sml", "--i", star, "--o", oc, "--iter", "8"] + SML)
    run_hpcem(["sml", "--continue", os.path.join(oc, "run_it008_gtm.h5"), "--iter", "15"])
    dc, ac, _ = _read(oc)
    assert np.array_equal(dc["rlnClassNumber"].to_numpy(), cls1)
    assert np.allclose(ac, a1, rtol=1e-4, atol=1e-5 * np.abs(a1).max())
    llc = np.loadtxt(os.path.join(oc, "run_loglik.txt"))
    assert llc.shape[0] == 15 and np.allclose(llc[:, 1], np.loadtxt(os.path.join(o1, "run_loglik.txt"))[:, 1])


def test_sml_strategy2_and_bad_input(conf_data, tmp_path, run_hpcem):
    """--classes sub-classifies each selected class on its own; bad flags fail in one line."""
    from hpcem.io.particles import ParticleSet

    star, truth = conf_data
    ps = ParticleSet.read(star).subset(np.arange(600))
    ps = ps.with_columns(rlnClassNumber=truth[:600])
    sub = os.path.join(os.path.dirname(star), "with_classes.star")  # stack names relative to it
    ps.write(sub)
    out = str(tmp_path / "s2")
    run_hpcem(["sml", "--i", sub, "--o", out, "--classes", "1,3", "--K", "9", "--iter", "3", "--ctf"])
    for c in (1, 3):
        d, a, _ = _read(os.path.join(out, "class%03d" % c))
        assert len(d) == int(np.sum(truth[:600] == c)) and a.shape[0] == 9
    assert not os.path.exists(os.path.join(out, "class002"))
    p = run_hpcem(["sml", "--i", sub, "--o", out, "--K", "0"], check=False)
    assert p.returncode == 2 and "--K" in p.stderr
    p = run_hpcem(["sml", "--i", sub, "--o", out, "--K", "20", "--memory_gb", "0.001"], check=False)
    assert p.returncode == 2 and "GiB" in p.stderr
