"""The class ranker's features (hpcem.ml.features) and class2d's per-class accuracies, against
values computed by hand on synthetic images."""
import numpy as np
import pytest

from hpcem.ml import features as F


def test_moments_by_hand():
    img = np.zeros((1, 4, 4))
    img[0, 0, :] = [1, 2, 3, 4]
    mask = np.zeros((4, 4), bool)
    mask[0] = True
    mean, std, skew, kurt = F.moments(img, mask)[0]
    # values 1..4: mean 2.5, deviations +-0.5, +-1.5
    assert mean == pytest.approx(2.5)
    assert std == pytest.approx(np.sqrt((2 * 0.25 + 2 * 2.25) / 4))
    assert skew == pytest.approx(0.0, abs=1e-12)
    assert kurt == pytest.approx((2 * 0.5 ** 4 + 2 * 1.5 ** 4) * 4 / (2 * 0.25 + 2 * 2.25) ** 2)   # 1.64
    img[0, 0, :] = [0, 0, 0, 8]      # skewed: mean 2, deviations -2 (x3), +6
    m = F.moments(img, mask)[0]
    assert m[2] == pytest.approx((3 * -8 + 216) * 2 / (3 * 4 + 36) ** 1.5)
    empty = F.moments(img, np.zeros((4, 4), bool))[0]
    assert np.all(empty == 0)


def _disc(m, R, centre=(0, 0)):
    c = np.arange(m) - m // 2
    return (c[:, None] - centre[0]) ** 2 + (c[None, :] - centre[1]) ** 2 <= R ** 2


def test_protein_mask_islands_and_edge():
    m, R = 40, 16.0
    circle = _disc(m, R)
    lpf = np.zeros((2, m, m))
    lpf[0][_disc(m, 6)] = 1.0                    # the particle: covers the central disc (0.6 R)
    lpf[0][_disc(m, 1.5, (0, 12))] = 1.0          # an island away from the centre: scattered
    half = np.arange(m)[None, :] - m // 2 >= 0
    lpf[1][circle & half] = 1.0                   # class 2: half of the circle, touching the edge
    protein, scattered = F.protein_masks(lpf, circle, R)
    assert protein[0].sum() == _disc(m, 6).sum()
    assert scattered[0] == _disc(m, 1.5, (0, 12)).sum()
    assert scattered[1] == 0 and protein[1].sum() == (circle & half).sum()

def test_edge_signal_of_a_half_disc():
    """Protein over the half x >= 0 of the mask circle: the edge signal is the share of the
    outermost pixels (R - 1 < r <= R) with x >= 0, counted by hand."""
    m, R = 64, 20.0
    c = np.arange(m) - m // 2
    r = np.hypot(c[:, None], c[None, :])
    half = (c[None, :] >= 0) & (r <= R)
    img = np.where(half, 4.0, 0.0)[None]
    edge = (r > R - 1) & (r <= R)
    assert F.edge_signal(half[None], R)[0] == pytest.approx((edge & half).sum() / edge.sum())
    assert F.edge_signal(half[None], R)[0] == pytest.approx(65 / 128)        # 65 of the 128 edge pixels
    # through the whole image path: the 25 A low-pass moves the island's border by a pixel
    feats, _ = F.image_features(img, 4.0, R)
    assert feats[0, F.NAMES.index("edge_signal") - 5] == pytest.approx(65 / 128, abs=0.05)


def test_image_features_of_a_bump():
    """A smooth bump a cos^2(pi r / 2 rho) (rho = 9 px, 4 A/px: no resampling), mask radius 15 px,
    zero elsewhere.  The protein island holds the whole bump plus the rim that the 25 A low-pass
    spreads above the threshold, so: protein sum = the bump's sum, protein mean = that sum over the
    island's area, solvent and ring exactly 0, no scattered or edge signal, relative signal =
    protein sum; the low-passed maximum is the bump's (little above 25 A in it)."""
    m, R, a, rho = 48, 15.0, 3.0, 9.0
    c = np.arange(m) - m // 2
    r = np.hypot(c[:, None], c[None, :])
    bump = np.where(r < rho, a * np.cos(0.5 * np.pi * r / rho) ** 2, 0.0)
    feats, sums = F.image_features(bump[None], 4.0, R)
    f = dict(zip(F.NAMES[5:23], feats[0]))
    assert sums[0, 0] == pytest.approx(bump.sum(), rel=1e-3)     # but its faintest edge pixels
    area = sums[0, 0] / f["protein_mean"]
    assert 0.9 * (r < rho).sum() <= area < (r <= R).sum() and area == pytest.approx(round(area))
    assert [f[k] for k in ("ring_mean", "ring_std", "scattered_signal", "edge_signal")] == [0.0] * 4
    assert abs(f["solvent_mean"]) < 1e-3 and f["solvent_std"] < 0.01
    assert sums[0, 1] == pytest.approx(bump.sum() - sums[0, 0], abs=1e-9)
    assert sums[0, 2] == pytest.approx(sums[0, 0] - f["solvent_mean"] * area)
    assert f["lowpass_max"] == pytest.approx(a, rel=0.1)
    assert f["protein_skew"] > 0                    # most of the island is low rim, few high pixels


def test_metadata_features_and_job_normalisation():
    f = F.metadata_features([2.0], [3.0], [10.0], [100], box=40, angpix=3.0)[0]
    assert f == pytest.approx([2.0, 3.0, 0.1, 0.01 / np.log(100), 10.0 / 120.0])
    z = F._zscore(np.array([1.0, 2.0, 3.0]))
    assert z == pytest.approx([-np.sqrt(1.5), 0.0, np.sqrt(1.5)])
    assert np.all(F._zscore(np.ones(3)) == 0)


def test_fourier_resize_keeps_values():
    from hpcem.io.resample import fourier_resize

    c = np.arange(48) - 24
    g = np.exp(-(c[:, None] ** 2 + c[None, :] ** 2) / (2 * 6.0 ** 2))
    small = fourier_resize(g[None], 24)[0]            # pixel twice as large: sigma 3 px
    c2 = np.arange(24) - 12
    assert np.abs(small - np.exp(-(c2[:, None] ** 2 + c2[None, :] ** 2) / (2 * 3.0 ** 2))).max() < 1e-3
    assert fourier_resize(np.full((1, 30, 30), 2.5), 64) == pytest.approx(np.full((1, 64, 64), 2.5))


def test_noise_std_from_sigma2():
    """White noise of pixel variance v, masked by m, has E|N|^2 = v sum(m^2) per coefficient."""
    import pandas as pd

    from hpcem.core.masks import soft_circular_mask
    from hpcem.ml.classjob import _noise_std

    n, radius, v = 40, 15.0, 2.3
    msq = float((soft_circular_mask(n, radius) ** 2).sum())
    model = {"model_optics_group_1": pd.DataFrame({"rlnSigma2Noise": np.full(n // 2 + 1, v * msq)})}
    assert _noise_std(model, n, radius) == pytest.approx(np.sqrt(v))


def _delta_loglik(ref, moved, w_shell):
    """sum over the independent coefficients of w(shell) |F - F'|^2 (direct, full FFTs)."""
    n = ref.shape[-1]
    d = np.fft.fft2(np.fft.ifftshift(ref - moved))
    k = np.fft.fftfreq(n) * n
    shell = np.rint(np.hypot(k[:, None], k[None, :])).astype(int)
    w = np.where(shell < w_shell.size, w_shell[np.minimum(shell, w_shell.size - 1)], 0.0)
    return 0.5 * float((np.abs(d) ** 2 * w).sum())


def test_expected_accuracies_against_direct_shifts_and_rotations():
    """The accuracies are the first grid steps at which the log-likelihood ratio of the moved
    reference exceeds -ln 0.01, checked against moving the image directly (Fourier shift, and a
    smooth image rotated by spline interpolation)."""
    from scipy.ndimage import rotate, shift

    from hpcem.algorithms.map_em.class_accuracy import P_001, ROT_GRID, SHIFT_GRID, expected_accuracies

    n, angpix = 48, 3.0
    c = np.arange(n) - n // 2
    y, x = c[:, None], c[None, :]
    ref = np.exp(-((x - 6) ** 2 + y ** 2) / 18.0) + 0.7 * np.exp(-((x + 4) ** 2 + (y - 5) ** 2) / 12.0)
    nsh = n // 2 + 1
    sigma2, ctf2 = np.full(nsh, 40.0), np.linspace(1.0, 0.3, nsh)
    w = np.zeros(nsh)
    w[1:nsh] = ctf2[1:] / sigma2[1:]
    rot, trans = expected_accuracies(ref[None], sigma2, ctf2, nsh - 1, angpix)
    s = trans[0] / angpix
    i = int(np.flatnonzero(np.isclose(SHIFT_GRID, s))[0])
    direct = lambda d: 0.5 * (_delta_loglik(ref, shift(ref, (0, d), order=5, mode="wrap"), w)  # noqa: E731
                              + _delta_loglik(ref, shift(ref, (d, 0), order=5, mode="wrap"), w))
    assert direct(s) > P_001 * 0.95 and (i == 0 or direct(SHIFT_GRID[i - 1]) < P_001 * 1.05)
    j = int(np.flatnonzero(np.isclose(ROT_GRID, rot[0]))[0])
    by_rot = lambda a: _delta_loglik(ref, rotate(ref, a, reshape=False, order=5), w)  # noqa: E731
    assert by_rot(rot[0]) > P_001 * 0.9 and (j == 0 or by_rot(ROT_GRID[j - 1]) < P_001 * 1.1)
    # weaker signal (10x the noise): less accurate alignment
    rot2, trans2 = expected_accuracies(ref[None], 10 * sigma2, ctf2, nsh - 1, angpix)
    assert rot2[0] > rot[0] and trans2[0] > trans[0]


def test_junk_kinds_geometry():
    """Junk images without CTF have the geometry their kind promises, in units of one particle's
    projected density (the map's total mass is the same in every projection)."""
    from hpcem.simulate.junk import junk_images
    from hpcem.simulate.volumes import pseudo_atomic_volume

    n = 32
    vol = pseudo_atomic_volume(n, 3.0, seed=3, radius_frac=0.25)
    kinds = ["noise"] * 2 + ["offcentre"] * 4 + ["cut"] * 4 + ["aggregate"] * 4 + ["contaminant"] * 2
    img = junk_images(kinds, vol, 3.0, None, np.random.default_rng(0)).astype(np.float64)
    mass = float(vol.sum())
    c = np.arange(n) - n // 2
    pos = np.maximum(img, 0)
    cy = (pos.sum(2) * c).sum(1) / pos.sum((1, 2)).clip(1e-30)
    cx = (pos.sum(1) * c).sum(1) / pos.sum((1, 2)).clip(1e-30)
    off = np.hypot(cx, cy) / n
    total = img.sum((1, 2)) / mass
    assert np.all(img[:2] == 0)
    assert np.all(off[2:6] > 0.12) and np.all(total[2:6] > 0.8)          # off-centre, still in the box
    inner = np.hypot(c[:, None], c[None, :]) <= 0.35 * n                   # a typical mask
    assert np.all(off[6:10] > 0.3) and np.all(img[6:10][:, inner].sum(1) / mass < 0.5)  # at the box edge
    assert total[6:10].min() < 0.75                                         # (cut unless near a diagonal)
    assert np.all(total[10:14] > 2.5) and np.all(off[10:14] < 0.15)        # 4-8 particles, clumped
    assert np.all(img[14:].max((1, 2)) > 2 * np.abs(img[2:6]).max())      # dense spheres


def test_carbon_and_ice_as_bright_as_promised():
    """Film edges, ice and contaminants stay within the few particle-spreads their kinds promise
    (here at 32 px the old carbon reached 25 spreads),
    wherever the edge falls: an edge outside the particle disc once got its step scaled to the
    disc's near-zero spread, 1 carbon image in 7 up to 10^5 times the particles' power, which
    flattened the noise estimate of a whole set and collapsed class2d (stop 36)."""
    from hpcem.simulate.junk import _disc_std, _particles, junk_images
    from hpcem.simulate.volumes import pseudo_atomic_volume
    from hpcem.recon.projector import Projector

    n = 32
    vol = pseudo_atomic_volume(n, 3.0, seed=3, radius_frac=0.25)
    ctx = {"n": n, "projector": Projector.from_volume(vol)}
    proj_std = float(_disc_std(_particles(ctx, 16, np.random.default_rng(0)), n, 0.35 * n).mean())
    for kind, top in (("carbon", 4.0), ("ice", 16.0), ("contaminant", 10.0)):   # box RMS; the disc: 4, 8, 5
        img = junk_images([kind] * 120, vol, 3.0, None, np.random.default_rng(5)).astype(np.float64)
        rms = img.std(axis=(1, 2)) / proj_std
        assert rms.max() < top and np.median(rms) > 0.2, (kind, rms.max(), np.median(rms))


def test_offcentre_range_beyond_the_search():
    """The off-centre kind's shifts follow ``offcentre`` (the ranker's default 0.2-0.35 box unchanged),
    are recorded per image, and the ab initio sets put them beyond abinitio's translation search by
    two thirds of the particle's radius (issue 12, ninth pass)."""
    from hpcem.algorithms.sagd.config import AbInitioConfig
    from hpcem.simulate.junk import OFFCENTRE, junk_images
    from hpcem.simulate.sets import offcentre_beyond
    from hpcem.simulate.volumes import pseudo_atomic_volume

    n = 32
    vol = pseudo_atomic_volume(n, 3.75, seed=1)
    kinds = ["offcentre"] * 6 + ["cut"] * 3 + ["noise"]
    lo, hi = offcentre_beyond(AbInitioConfig().offset_range)
    assert OFFCENTRE == (0.2, 0.35) and abs(lo * n - (6.0 + 6.4)) < 1e-9 and hi == 0.45
    for rng_range in (OFFCENTRE, (lo, hi)):
        r = np.full(len(kinds), np.nan)
        img = junk_images(kinds, vol, 3.75, None, np.random.default_rng(1), rng_range, r)
        assert np.all((r[:6] >= rng_range[0] * n) & (r[:6] <= rng_range[1] * n))
        assert np.all((r[6:9] >= 0.4 * n) & (r[6:9] <= 0.5 * n)) and np.isnan(r[9]) and np.all(img[9] == 0)


def test_noise_unit_at_the_trained_sampling():
    """The features' noise unit is the particles' per-pixel noise at the nearest trained pixel size
    (2.6-3.6 A/px): unchanged inside, scaled as binning would outside (issue 14, stop 35).  So a class
    average at 1.3 A/px (128 px, noise sigma s) and the same average binned 2x (64 px, 2.6 A/px, the
    binned particles' noise s / 2) give the same image features."""
    from hpcem.io.resample import fourier_resize

    assert F.noise_unit(2.0, 3.0) == 2.0 and F.noise_unit(2.0, 2.6) == 2.0 and F.noise_unit(2.0, 3.6) == 2.0
    assert F.noise_unit(2.0, 1.3) == pytest.approx(1.0) and F.noise_unit(2.0, 7.2) == pytest.approx(4.0)
    n, s, R = 128, 3.0, 45.0
    c = np.arange(n) - n // 2
    img = (4.0 * np.exp(-(c[:, None] ** 2 + (c[None, :] - 8) ** 2) / (2 * 14.0 ** 2)))[None]
    fine, _ = F.image_features(img / F.noise_unit(s, 1.3), 1.3, R)
    coarse, _ = F.image_features(fourier_resize(img, n // 2) / F.noise_unit(s / 2, 2.6), 2.6, R / 2)
    assert fine[0] == pytest.approx(coarse[0], rel=0.02, abs=1e-3)
    assert fine[0, 3] == pytest.approx(4.0 / 1.5, rel=0.2)      # low-passed peak: 4 / (3 x 1.3 / 2.6)
