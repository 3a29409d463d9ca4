"""VDAM (hpcem class2d --grad, seed 000 sections 3.1.2-3.1.5):

* the mini-batch schedule (sizes, step, T) follows the seed's defaults and limits;
* mini-batches cover every particle once per epoch, the same after a resume;
* one full-batch step with eta = 1, full trust and no gradient noise is the EM update D / W;
* inactive-class replacement picks the least and the most populated classes;
* on 10 projection classes, VDAM separates the classes (ARI against the truth), writes RELION's
  files every --grad_write_iter mini-batches, and 1 vs 2 ranks and --continue give the same result.
"""
import os
import shutil

import numpy as np
import pytest

from hpcem.algorithms.vdam.minibatch import batch_indices
from hpcem.algorithms.vdam import Moments, Schedule, replace_inactive, vdam_update
from hpcem.algorithms.vdam.update import fsc_weights, half_fsc
from hpcem.io.mrc import read_mrc
from hpcem.io.star import read_star
from hpcem.metrics import adjusted_rand_index


def test_schedule_defaults_and_limits():
    s = Schedule(100_000, 200, dim=2)
    assert s.sizes() == (500, 5000)
    assert s.batch_size(0) == 500 and s.batch_size(59) == 500
    assert s.batch_size(199) == 5000 and s.batch_size(160) == 5000
    assert 500 < s.batch_size(100) < 5000
    assert s.step(0) == pytest.approx(0.9) and s.step(199) == pytest.approx(0.3)
    assert s.fudge(0) == pytest.approx(1.0) and s.fudge(199) == pytest.approx(2.0)
    assert all(s.step(i) >= s.step(i + 1) for i in range(199))
    assert Schedule(5000, 200, dim=2).sizes() == (200, 1000)            # the minimums
    assert Schedule(10**7, 200, dim=2).sizes() == (10_000, 100_000)     # the maximums
    assert Schedule(10**7, 200, dim=3).sizes() == (5_000, 50_000)
    s3 = Schedule(100_000, 200, dim=3)
    assert s3.sizes() == (500, 10_000) and s3.step(199) == pytest.approx(0.5)
    assert Schedule(150, 10, dim=2).sizes() == (150, 150)                # never more than the set


def test_batches_cover_each_epoch():
    N, sizes = 1000, [130] * 20
    starts = np.cumsum([0] + sizes[:-1])
    got = np.concatenate([batch_indices(4, N, int(s), b) for s, b in zip(starts, sizes)])
    for e in range(len(got) // N):
        assert np.array_equal(np.sort(got[e * N:(e + 1) * N]), np.arange(N))
    assert np.array_equal(batch_indices(4, N, 390, 130), got[390:520])   # a resume draws the same
    assert not np.array_equal(got[:N], got[N:2 * N])                    # a new order every epoch


def test_noise_free_full_step_is_the_wiener_update(rng):
    """With both half gradients equal (no gradient noise), full trust (FSC weight 1 below the
    floor shell, data weight ~1) and eta = 1, one step lands on the EM solution D / W."""
    K, n = 3, 16
    grid = (n, n // 2 + 1)
    V = rng.normal(size=(K,) + grid) + 1j * rng.normal(size=(K,) + grid)
    truth = rng.normal(size=(K,) + grid) + 1j * rng.normal(size=(K,) + grid)
    W = np.abs(rng.normal(size=(K,) + grid)) + 5.0
    D = np.stack([W * truth, W * truth])
    W2 = np.stack([W, W])
    shell = np.minimum(np.rint(np.hypot(*np.meshgrid(np.fft.fftfreq(n, 1 / n), np.arange(n // 2 + 1),
                                                     indexing="ij"))).astype(int), n // 2)
    mom = Moments.zeros(K, grid)
    tau2 = np.full((K, n // 2 + 1), 1e12)
    out = V.copy()
    fsc = vdam_update(out, D, W2, mom, np.ones(2), tau2, 1.0, n, shell, 1.0, n // 2)
    eps = 1e-3 * W.mean()
    expect = (D[0] + eps * V) / (W + eps)        # D / W up to the stability constant
    assert np.allclose(out, expect, rtol=1e-6, atol=1e-9)
    assert np.allclose(fsc[:, 1:], 1.0)          # the half estimates V + m_h are equal
    # the FSC weights: 1 below the floor shell, T s / (1 + T s) above
    fsc = half_fsc(np.stack([V, V + 0.5 * truth]))
    w = fsc_weights(fsc, 2.0, floor_shell=2)
    assert np.all(w[:, :3] == 1.0)
    s = np.clip(fsc[:, 5], 0, 0.999) / (1 - np.clip(fsc[:, 5], 0, 0.999))
    assert np.allclose(w[:, 5], 2 * s / (1 + 2 * s))


def test_replace_inactive():
    assert replace_inactive(np.array([0.3, 0.004, 0.5, 0.196]), 0.1) == (1, 2)
    assert replace_inactive(np.array([0.3, 0.03, 0.5, 0.17]), 0.1) is None
    assert replace_inactive(np.array([0.3, 0.004, 0.5, 0.196]), 0.0) is None


def _write(tmp, N, seed, snr=0.1, views=5):
    from hpcem.simulate.particles import simulate_dataset
    from hpcem.simulate.write import write_dataset

    d = simulate_dataset(n=48, n_particles=N, mode="2d", n_views=views, n_volumes=2, snr=snr, ctf=True, seed=seed)
    write_dataset(d, tmp)
    return d, os.path.join(tmp, "particles.star")


GRAD = ["--grad", "--K", 5, "--particle_diameter", 110, "--ctf", "--psi_step", 15, "--offset_range", 2,
        "--offset_step", 1, "--random_seed", 2, "--class_inactivity_threshold", 0.5]


@pytest.fixture(scope="module")
def vdam_set(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("vdam"))
    d, star = _write(tmp, 1500, seed=3)
    return tmp, d, star


def test_vdam_separates_classes(vdam_set, run_hpcem):
    tmp, d, star = vdam_set
    out = os.path.join(tmp, "G")
    p = run_hpcem(["class2d", "--i", star, "--o", out + "/run", "--iter", 60, "--grad_write_iter", 20] + GRAD)
    print(p.stdout[-2500:])
    assert "size" in p.stdout and "step" in p.stdout and "final pass" in p.stdout
    for it in (20, 40, 60):
        assert os.path.exists(os.path.join(out, "run_it%03d_classes.mrcs" % it))
        assert os.path.exists(os.path.join(out, "run_it%03d_optimiser.star" % it))
    assert not os.path.exists(os.path.join(out, "run_it030_classes.mrcs"))
    c = read_star(os.path.join(out, "run_it060_data.star"))["particles"]["rlnClassNumber"].to_numpy()
    ari = adjusted_rand_index(c, d.classes)
    print("VDAM ARI %.3f, sizes %s" % (ari, np.bincount(c)[1:]))
    assert c.min() >= 1
    assert ari >= 0.9      # measured 0.982


def test_vdam_ranks_and_continue(vdam_set, run_hpcem):
    tmp, d, star = vdam_set
    base = ["class2d", "--i", star, "--iter", 12, "--grad_write_iter", 6] + GRAD
    one, two, part = (os.path.join(tmp, x) for x in ("one", "two", "part"))
    run_hpcem(base + ["--o", one + "/run"])
    run_hpcem(base + ["--o", two + "/run"], n_ranks=2)
    shutil.copytree(one, part)                # resume mini-batch 7 on from the checkpoint of 6
    os.remove(os.path.join(part, "run_it012_classes.mrcs"))
    run_hpcem(["class2d", "--continue", os.path.join(part, "run_it006_optimiser.star")])
    r1 = read_mrc(os.path.join(one, "run_it012_classes.mrcs"))[0]
    c1 = read_star(os.path.join(one, "run_it012_data.star"))["particles"]["rlnClassNumber"].to_numpy()
    for other in (two, part):
        r2 = read_mrc(os.path.join(other, "run_it012_classes.mrcs"))[0]
        c2 = read_star(os.path.join(other, "run_it012_data.star"))["particles"]["rlnClassNumber"].to_numpy()
        rel = np.linalg.norm(r1 - r2) / np.linalg.norm(r1)
        print("%s: relative difference %.2e, %d assignments differ" % (other, rel, int((c1 != c2).sum())))
        assert rel < 1e-4
        assert (c1 != c2).sum() == 0


def test_vdam_replacement_keeps_classes_busy(vdam_set, run_hpcem):
    """K = 20 on 5 true classes: no class ends empty, and every true class is the majority of at
    least one class of purity >= 0.9."""
    tmp, d, star = vdam_set
    out = os.path.join(tmp, "K20")
    flags = list(GRAD)
    flags[flags.index("--K") + 1] = 20
    run_hpcem(["class2d", "--i", star, "--o", out + "/run", "--iter", 60, "--grad_write_iter", 60] + flags)
    c = read_star(os.path.join(out, "run_it060_data.star"))["particles"]["rlnClassNumber"].to_numpy()
    sizes = np.bincount(c, minlength=21)[1:]
    found = set()
    for k in np.flatnonzero(sizes):
        t = np.bincount(d.classes[c == k + 1])
        if t.max() >= 0.9 * sizes[k]:
            found.add(int(np.argmax(t)))
    print("class sizes %s; true classes found %s" % (sizes.tolist(), sorted(found)))
    assert sizes.min() >= 1
    assert found == set(np.unique(d.classes).tolist())


def test_vdam_final_em_iterations(vdam_set, run_hpcem):
    """--grad_em_iters 2: the last two of --iter are EM iterations over all particles (no final
    pass), classes as good as VDAM's, and a run resumed before them equals an uninterrupted one."""
    tmp, d, star = vdam_set
    base = ["class2d", "--i", star, "--iter", 24, "--grad_em_iters", 2, "--grad_write_iter", 22] + GRAD
    full, part = os.path.join(tmp, "em_full"), os.path.join(tmp, "em_part")
    p = run_hpcem(base + ["--o", full + "/run"])
    em_lines = [ln for ln in p.stdout.splitlines() if ln.startswith("EM it")]
    print("\n".join(em_lines))
    assert [ln.split()[2] for ln in em_lines] == ["23", "24"]
    assert "final pass" not in p.stdout
    c = read_star(os.path.join(full, "run_it024_data.star"))["particles"]["rlnClassNumber"].to_numpy()
    ari = adjusted_rand_index(c, d.classes)
    print("VDAM 22 + EM 2: ARI %.3f" % ari)
    assert ari >= 0.9
    shutil.copytree(full, part)
    os.remove(os.path.join(part, "run_it024_classes.mrcs"))
    run_hpcem(["class2d", "--continue", os.path.join(part, "run_it022_optimiser.star")])
    r1 = read_mrc(os.path.join(full, "run_it024_classes.mrcs"))[0]
    r2 = read_mrc(os.path.join(part, "run_it024_classes.mrcs"))[0]
    assert np.linalg.norm(r1 - r2) / np.linalg.norm(r1) < 1e-4


def test_residual_scatter_recovers_the_class_image():
    """VDAM's half sums (average2d.scatter_back of the residual around the rows' predictions, then
    padded_sums): from a reference 25% off the truth, the (class, psi) sums of the truth give the
    true image to within 3% (the resampling gather: 2.5%); half the rows empty."""
    from hpcem.core.euler import rotation_2d
    from hpcem.core.filters import lowpass
    from hpcem.core.fourier import ft2, shell_index2
    from hpcem.core.sampling import inplane_angles
    from hpcem.recon.average2d import padded_sums, rotate_back, scatter_back
    from hpcem.recon.projector import Projector2D
    from hpcem.simulate.volumes import pseudo_atomic_volume

    n, r, K = 64, 22, 3
    vol = pseudo_atomic_volume(n, 3.0, seed=1)
    imgs = np.stack([vol.sum(0), vol.sum(1), vol.sum(2)]).astype(np.float64)
    psi_f = (inplane_angles(12.0)[:, None] + np.array([-3.0, 3.0])[None]).ravel()
    J = len(psi_f)
    kidx = np.flatnonzero(shell_index2(n).ravel() <= r)
    rot, cls = rotation_2d(np.tile(psi_f, K)), np.repeat(np.arange(K), J)

    def rows_of(images):
        p = Projector2D.from_images(images, pad=2).project(rot, cls, r_max=r + 1.0)
        return p.reshape(K * J, -1)[:, kidx]

    rng = np.random.default_rng(0)
    w = rng.uniform(0.2, 1.0, K * J) * (rng.random(K * J) < 0.5)
    data = rows_of(imgs).astype(np.complex128) * w[:, None]
    wsum = np.repeat(w[:, None], kidx.size, axis=1)
    start = 0.8 * lowpass(imgs, 12.0, 3.0, dims=2)
    truth = ft2(imgs).reshape(K, -1)[:, kidx]
    V = ft2(start).reshape(K, -1)[:, kidx]
    Dres, W = padded_sums(scatter_back(data, wsum, kidx, psi_f, K, n, r, refs=rows_of(start)), r)
    est = V + Dres.reshape(K, -1)[:, kidx] / W.reshape(K, -1)[:, kidx]
    D, Wg = rotate_back(data, wsum, kidx, psi_f, K, n, r)
    gathered = D.reshape(K, -1)[:, kidx] / Wg.reshape(K, -1)[:, kidx]
    err = np.linalg.norm(est - truth, axis=1) / np.linalg.norm(truth, axis=1)
    err_g = np.linalg.norm(gathered - truth, axis=1) / np.linalg.norm(truth, axis=1)
    print("residual scatter %s, gather %s, start %.2f" % (np.round(err, 4), np.round(err_g, 4),
                                                          np.linalg.norm(V - truth) / np.linalg.norm(truth)))
    assert err.max() < 0.03 and err_g.max() < 0.03


def test_scatter_back_is_linear_in_the_rows():
    """scatter_back over 360 live rows equals the sum of its scatters over a random partition of
    the rows (the rows of each part only: the others' weights zero)."""
    from hpcem.core.fourier import shell_index2
    from hpcem.recon.average2d import scatter_back

    n, r, K, J = 32, 12, 3, 120
    kidx = np.flatnonzero(shell_index2(n).ravel() <= r)
    psi_f = np.arange(J) * 3.0
    rng = np.random.default_rng(5)
    data = rng.normal(size=(K * J, kidx.size)) + 1j * rng.normal(size=(K * J, kidx.size))
    wsum = rng.uniform(0.1, 1.0, (K * J, kidx.size))
    refs = rng.normal(size=(J, kidx.size)) + 1j * rng.normal(size=(J, kidx.size))
    part = rng.random(K * J) < 0.5
    whole = scatter_back(data, wsum, kidx, psi_f, K, n, r, refs=refs)
    a = scatter_back(data, wsum * part[:, None], kidx, psi_f, K, n, r, refs=refs)
    b = scatter_back(data, wsum * ~part[:, None], kidx, psi_f, K, n, r, refs=refs)
    for x, y, z in ((whole.data, a.data, b.data), (whole.weight, a.weight, b.weight)):
        assert np.abs(x).max() > 0
        assert np.abs(x - (y + z)).max() < 1e-5 * np.abs(x).max()


def test_fsc_shell_per_class_and_the_prior_weighted_mean():
    """Hand-computed: the last shell whose half-set FSC is >= 0.143, per class (initial_model's
    model.star) and of the prior-weighted mean (the E-step's limit), capped at r_cur."""
    from hpcem.algorithms.vdam.update import fsc_shell, mean_fsc_shell

    fsc = np.array([[1.0, 0.9, 0.5, 0.2, 0.1, 0.05],
                    [1.0, 0.9, 0.1, 0.05, 0.0, 0.0]])
    assert [fsc_shell(f, 5) for f in fsc] == [3, 1]
    assert mean_fsc_shell(fsc, [0.5, 0.5], 5) == 2      # mean 0.9, 0.3, 0.125, ...
    assert mean_fsc_shell(fsc, [1.0, 0.0], 5) == 3
    assert fsc_shell(fsc[0], 2) == 2


def test_split_merge_finds_the_split_pair_and_the_merged_class():
    """Split-merge (issue 11): one structure split over classes 0 and 2 (posteriors shared between
    them), two structures in class 1 (sharp posteriors): class 0 or 2 takes class 1's map; classes
    that each hold one structure, or a pair beside no large class, give no move."""
    from hpcem.algorithms.vdam.splitmerge import SplitMerge, propose

    rng = np.random.default_rng(0)
    split = rng.uniform(0.3, 0.7, 300)
    P_split = np.stack([split, np.full(300, 0.02), 1 - split], 1)          # structure A over classes 0, 2
    P_merged = np.tile([0.02, 0.96, 0.02], (600, 1))                         # structures B + C in class 1
    P = np.concatenate([P_split, P_merged])
    pclass = P.mean(0)
    assert propose(P.T @ P, pclass) in ((0, 1), (2, 1))
    sharp = np.repeat(np.eye(3) * 0.96 + 0.02, 300, axis=0)                  # one structure per class
    assert propose(sharp.T @ sharp, sharp.mean(0)) is None
    assert propose(P.T @ P, np.array([0.3, 0.35, 0.35])) is None             # class 1 no larger than the pair
    sm = SplitMerge(3, first=2, last=10)
    moves = [sm.step(it, P.T @ P, pclass) for it in range(12)]
    assert moves[:2] == [None, None] and moves[2] in ((0, 1), (2, 1)) and all(m is None for m in moves[3:])
    Q = P[:, [0, 2, 1]]                                  # the split pair is (0, 1), class 2 the large one
    assert propose(Q.T @ Q, Q.mean(0)) in ((0, 2), (1, 2))
    assert propose(Q.T @ Q, Q.mean(0), fresh=(1, 2)) is None      # a class of the last move takes no part
    sm2 = SplitMerge(3, first=0, last=100)
    a, b = sm2.step(0, P.T @ P, pclass)
    pair = tuple(sorted((a, b)))
    copies = np.zeros_like(P)                           # the move's two classes share their particles
    copies[:, list(pair)] = 0.5
    for it in range(1, 30):
        sm2.step(it, copies.T @ copies + 1e-3, pclass)
    assert sm2.fresh == (a, b)                           # still one pair: kept out of moves
    for it in range(30, 130):
        sm2.step(it, sharp.T @ sharp, sharp.mean(0))
    assert sm2.fresh == ()                               # parted
    back = SplitMerge(3, first=2, last=10)
    back.restore(sm.state())
    assert back.moves == 1 and back.since == sm.since and np.array_equal(back.overlap, sm.overlap)


def test_padded_estimate_2d_reads_the_box_out_of_the_unshifted_inverse(rng):
    """padded_estimate (2D) equals its definition spelled with ift2 (fftshift), the centre crop,
    the gridding correction and ft2 (ifftshift), bit for bit (odd and even boxes); the translation
    phases are handed out again for the same coefficients and recomputed for others."""
    from hpcem.core.fourier import ft2, ift2
    from hpcem.estep import TranslationSampling
    from hpcem.recon.projector import gridding_correction, padded_estimate, padded_shells

    for n in (16, 15):
        P = 2 * n
        D = rng.standard_normal((3, P, P // 2 + 1)) + 1j * rng.standard_normal((3, P, P // 2 + 1))
        W = rng.uniform(0.0, 2.0, (3, P, P // 2 + 1)) * (rng.uniform(size=(3, P, P // 2 + 1)) > 0.1)
        X, Wn = padded_estimate(D, W, n, 2, ndim=2)
        sh = padded_shells(P, 2, 2)
        cnt = np.maximum(np.bincount(sh.ravel()), 1)
        ws = np.stack([np.bincount(sh.ravel(), weights=w.ravel()) / cnt for w in W])
        o = P // 2 - n // 2
        v = ift2(D / np.where(W > 0, W + 1e-3 * ws[:, sh], 1.0), P)[..., o:o + n, o:o + n]
        assert np.array_equal(X, ft2(v / gridding_correction(n, P, 2)))
        assert Wn.shape == (3, n, n // 2 + 1)
    trans = TranslationSampling(3.0, 1.0)
    kidx = np.arange(40)
    a = trans.phases(16, kidx, 20)
    assert all(p is q for p, q in zip(a, trans.phases(16, kidx.copy(), 20)))
    b = trans.phases(16, kidx[:30], 20)
    assert b[1].shape == (len(trans.fine), 30) and not b[1].flags.writeable
