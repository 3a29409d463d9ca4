"""relion_refine's result-changing options in hpcem, each against known truth:

* --norm recovers per-particle intensity factors (rlnNormCorrection), --scale an optics group's
  signal scale (rlnGroupScaleCorrection), from local searches around the true poses;
* --firstiter_cc aligns to a reference 1000x off the particles' greyscale as well as to one on it
  (without it the first iteration's poses are lost);
* --ctf_intact_first_peak, --no-zero_mask (noise fill), the phase-randomised masked FSC of
  --solvent_correct_fsc and the resampling of a reference of another pixel size (--ref_angpix).
"""
import os

import numpy as np

from hpcem.core.ctf import ctf2d
from hpcem.core.euler import angular_distance, euler_to_matrix
from hpcem.core.masks import soft_circular_mask, soft_spherical_mask
from hpcem.io.mrc import write_mrc
from hpcem.io.star import read_star, write_star


def _sim(tmp, N=600, snr=0.3, seed=5):
    from hpcem.simulate.particles import simulate_dataset
    from hpcem.simulate.write import write_dataset

    d = simulate_dataset(n=32, n_particles=N, snr=snr, ctf=True, seed=seed, model="blobs")
    paths = write_dataset(d, tmp)
    write_mrc(os.path.join(tmp, "ref.mrc"), d.volumes[0], d.angpix)
    return d, paths["particles"], os.path.join(tmp, "ref.mrc")


def _rescale_stack(star, factors):
    from hpcem.io.mrc import read_mrc

    stack = os.path.join(os.path.dirname(star), "particles.mrcs")
    imgs, apix = read_mrc(stack)
    write_mrc(stack, (imgs * factors[:, None, None]).astype(np.float32), apix, stack=True)


def _local(star, ref, out, extra=()):
    return ["class3d", "--i", star, "--ref", ref, "--o", out, "--K", 1, "--ctf", "--iter", 3, "--healpix_order", 2,
            "--sigma_ang", 2, "--offset_range", 1, "--offset_step", 1, "--ini_high", 12, "--j", 1] + list(extra)


def test_norm_recovers_per_particle_intensity_factors(tmp_path, run_hpcem):
    tmp = str(tmp_path)
    d, star, ref = _sim(tmp)
    a = np.random.default_rng(0).uniform(0.5, 2.0, len(d.images))
    _rescale_stack(star, a)
    run_hpcem(_local(star, ref, os.path.join(tmp, "n"), ["--norm"]))
    got = read_star(os.path.join(tmp, "n", "run_it003_data.star"))["particles"]["rlnNormCorrection"].to_numpy()
    r = np.corrcoef(got, a)[0, 1]
    rel = np.median(np.abs(got / np.mean(got) - a / np.mean(a)) / (a / np.mean(a)))
    print("norm: correlation with the true factors %.3f, median relative error %.3f" % (r, rel))
    assert r > 0.95 and rel < 0.1


def test_scale_recovers_an_optics_groups_signal_scale(tmp_path, run_hpcem):
    tmp = str(tmp_path)
    d, star, ref = _sim(tmp, snr=0.5)
    blocks = read_star(star)
    optics = blocks["optics"]
    two = optics.loc[[0, 0]].reset_index(drop=True)
    two["rlnOpticsGroup"], two["rlnOpticsGroupName"] = [1, 2], ["g1", "g2"]
    parts = blocks["particles"]
    g2 = np.arange(len(parts)) % 2 == 1
    parts["rlnOpticsGroup"] = np.where(g2, 2, 1)
    write_star(star, {"optics": two, "particles": parts})
    # group 2: signal 1.6x, noise unchanged (the images are the clean projections plus noise)
    from hpcem.io.mrc import read_mrc
    from hpcem.simulate.particles import simulate_projections

    stack = os.path.join(tmp, "particles.mrcs")
    _, apix = read_mrc(stack)
    A = euler_to_matrix(d.rot, d.tilt, d.psi)
    proj = simulate_projections(d.volumes, A, d.classes - 1, d.origins_A / d.angpix, d.ctf, d.angpix)
    noise_part = np.asarray(d.images) - proj
    imgs = np.where(g2[:, None, None], 1.6 * proj + noise_part, proj + noise_part).astype(np.float32)
    write_mrc(stack, imgs, apix, stack=True)
    run_hpcem(_local(star, ref, os.path.join(tmp, "s"), ["--scale"]))
    model = read_star(os.path.join(tmp, "s", "run_it003_model.star"))["model_groups"]
    s = model["rlnGroupScaleCorrection"].to_numpy()
    print("scale: group 2 / group 1 = %.3f (truth 1.6)" % (s[1] / s[0]))
    assert abs(s[1] / s[0] - 1.6) < 0.1


def _orientation_error(out, d):
    p = read_star(out)["particles"]
    A = euler_to_matrix(p["rlnAngleRot"].to_numpy(), p["rlnAngleTilt"].to_numpy(), p["rlnAnglePsi"].to_numpy())
    return float(np.median(angular_distance(A, euler_to_matrix(d.rot, d.tilt, d.psi))))


def test_firstiter_cc_aligns_to_a_reference_off_the_greyscale(tmp_path, run_hpcem):
    tmp = str(tmp_path)
    d, star, ref = _sim(tmp, N=400, snr=0.5)
    off = os.path.join(tmp, "ref_x1000.mrc")
    write_mrc(off, (d.volumes[0] * 1000.0).astype(np.float32), d.angpix)
    base = ["class3d", "--i", star, "--o", None, "--K", 1, "--ctf", "--iter", 1, "--healpix_order", 1,
            "--offset_range", 2, "--offset_step", 1, "--ini_high", 15, "--j", 1]
    err = {}
    for name, r, extra in (("cc_off", off, ["--firstiter_cc"]), ("cc_on", ref, ["--firstiter_cc"]),
                           ("ml_off", off, [])):
        args = list(base) + ["--ref", r] + extra
        args[args.index(None)] = os.path.join(tmp, name)
        run_hpcem(args)
        err[name] = _orientation_error(os.path.join(tmp, name, "run_it001_data.star"), d)
    print("median orientation error after one iteration (deg): %s" % err)
    assert err["cc_off"] < 20.0 and abs(err["cc_off"] - err["cc_on"]) < 2.0
    assert err["ml_off"] > 2.0 * err["cc_off"]


def test_ctf_intact_first_peak():
    args = (64, 2.0, 15000.0, 15000.0, 0.0, 300.0, 2.7, 0.1)
    c, ci = ctf2d(*args), ctf2d(*args, intact_first_peak=True)
    r = np.hypot(*np.meshgrid(np.fft.fftfreq(64) * 64, np.arange(33), indexing="ij"))
    peak = int(np.argmax(np.diff(c[0]) < 0))         # the first maximum along kx
    assert np.allclose(ci[0, :peak], 1.0)
    assert np.allclose(ci[r > peak + 1.5], c[r > peak + 1.5])


def test_noise_fill_outside_the_mask():
    from hpcem.estep.particles import fill_with_noise

    rng = np.random.default_rng(1)
    imgs = rng.normal(0.3, 2.0, (4, 48, 48)).astype(np.float32)
    mask = soft_circular_mask(48, 15, 4)
    out = fill_with_noise(imgs, mask, np.array([10, 11, 12, 13]))
    inside, outside = mask >= 1.0, mask < 1e-3
    assert np.allclose(out[:, inside], imgs[:, inside])
    assert abs(out[:, outside].std() - 2.0) < 0.1 and abs(out[:, outside].mean() - 0.3) < 0.1
    assert not np.allclose(out[:, outside], imgs[:, outside])
    again = fill_with_noise(imgs[2:], mask, np.array([12, 13]))      # seeded by particle index
    assert np.array_equal(again, out[2:])


def test_solvent_corrected_fsc_removes_the_masks_correlation():
    from hpcem.algorithms.map_em.solvent import masked_fsc
    from hpcem.core.filters import lowpass

    rng = np.random.default_rng(2)
    n = 48
    sig = np.zeros((n, n, n))
    sig[14:34, 16:32, 18:30] = 1.0
    sig = lowpass(sig, 12.0, 1.0, dims=3) * 200       # strong, 12 A signal cut by a tight mask
    h1, h2 = sig + rng.normal(0, 1, sig.shape), sig + rng.normal(0, 1, sig.shape)
    mask = soft_spherical_mask(n, 8, 2)
    raw = masked_fsc(h1, h2, mask, False)
    cor = masked_fsc(h1, h2, mask, True)
    # beyond the signal (shell 4 of 1 A/px) the masked halves share only the mask's convolution
    far = slice(10, n // 2)
    print("masked FSC at shells 10-24: raw %.3f, corrected %.3f" % (raw[far].mean(), cor[far].mean()))
    assert raw[far].mean() > 0.9 and abs(cor[far].mean()) < 0.2
    assert np.allclose(cor[:3], raw[:3])


def test_reference_of_another_pixel_size_is_resampled():
    from hpcem.io.resample import resample_volume

    def blob_map(n, apix):
        g = (np.arange(n) - n // 2) * apix
        z, y, x = np.meshgrid(g, g, g, indexing="ij")
        v = np.zeros((n, n, n))
        for c, s in (((10, 0, -5), 6.0), ((-8, 6, 4), 8.0), ((0, -12, 10), 5.0)):
            v += np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * s * s))
        return v

    src, want = blob_map(80, 1.5), blob_map(40, 3.0)
    got = resample_volume(src, 1.5, 40, 3.0)
    cc = np.corrcoef(got.ravel(), want.ravel())[0, 1]
    print("resampled 80 px x 1.5 A -> 40 px x 3 A: correlation %.5f, peak ratio %.3f" % (cc, got.max() / want.max()))
    assert cc > 0.999 and abs(got.max() / want.max() - 1) < 0.02
    got = resample_volume(blob_map(50, 3.0), 3.0, 40, 3.0)           # same pixel size: windowed
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.9999


def test_low_resolution_join_of_the_halves():
    from types import SimpleNamespace

    from hpcem.algorithms.map_em.halves import join_low_resolution
    from hpcem.recon.projector import BackProjector

    rng = np.random.default_rng(4)
    models = {}
    for h in (1, 2):
        bp = BackProjector(16, pad=2)
        bp.data[:] = rng.normal(size=bp.data.shape) + 1j * rng.normal(size=bp.data.shape)
        bp.weight[:] = rng.uniform(1, 2, bp.weight.shape)
        models[h] = SimpleNamespace(bps=[bp])
    before = {h: (m.bps[0].data.copy(), m.bps[0].weight.copy()) for h, m in models.items()}
    join_low_resolution(models, None, None, None, 3.0)
    low = models[1].bps[0].shell_index() <= 3.0
    for h in (1, 2):
        d, w = models[h].bps[0].data, models[h].bps[0].weight
        assert np.allclose(d[low], 0.5 * (before[1][0][low] + before[2][0][low]))
        assert np.allclose(w[low], 0.5 * (before[1][1][low] + before[2][1][low]))
        assert np.array_equal(d[~low], before[h][0][~low]) and np.array_equal(w[~low], before[h][1][~low])
