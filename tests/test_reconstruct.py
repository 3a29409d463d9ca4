"""End-to-end foundation checks through the real CLI: simulate -> reconstruct -> fsc,
against the known truth, with 1 and 2 MPI ranks."""
import json

import numpy as np
import pytest

from hpcem.core.ctf import ctf2d
from hpcem.core.filters import radial_average
from hpcem.core.fourier import ft3
from hpcem.core.fsc import fsc, resolution_at
from hpcem.io.mrc import read_mrc
from hpcem.io.particles import ParticleSet


@pytest.fixture(scope="module")
def noisy_set(tmp_path_factory):
    """5,000 particles, 64 px, 3 A/px, CTF with defocus 0.5-2.5 um, SNR 0.1."""
    from hpcem.cli.main import main
    d = tmp_path_factory.mktemp("sim_noisy")
    assert main(["simulate", "--o", str(d), "--n", "5000", "--box", "64", "--snr", "0.1",
                 "--defocus", "5000", "25000", "--seed", "3"]) == 0
    return d


def predicted_fsc(truth, star, info, n_sample=500):
    """Expected FSC between a CTF-weighted reconstruction and the truth.

    Each coefficient of the reconstruction is sum(c X)/sum(c^2) over the ~N/(2k) slices
    that cross a voxel on shell k (N slices x 2 pi k ring samples over 4 pi k^2 voxels).
    Its noise variance is n^2 sigma^2 / sum(c^2) (unnormalised FFT of white noise), so
    SSNR(k) = S(k) * N/(2k) * <c^2>(k) / (n^2 sigma^2) with S the truth's shell power,
    and FSC_true = sqrt(SSNR / (1 + SSNR))."""
    n = truth.shape[0]
    N = info["n_particles"]
    S = radial_average(np.abs(ft3(truth.astype(np.float64))) ** 2, dims=3)
    ps = ParticleSet.read(star)
    idx = np.linspace(0, N - 1, n_sample).astype(int)
    p = ps.ctf_params(idx)
    c = ctf2d(n, ps.angpix, p["defocus_u"], p["defocus_v"], p["defocus_angle"], p["voltage"], p["cs"],
              p["amp_contrast"])
    c2 = radial_average((c.astype(np.float64) ** 2).mean(0), dims=2)
    k = np.maximum(np.arange(len(S)), 0.5)
    ssnr = S * (N / (2 * k)) * c2 / (n * n * info["noise_sigma"] ** 2)
    return np.sqrt(ssnr / (1 + ssnr))


def test_noiseless_reconstruction_fsc_to_truth(tmp_path, run_hpcem):
    run_hpcem(["simulate", "--o", tmp_path, "--n", "5000", "--box", "64", "--snr", "0", "--seed", "5"])
    run_hpcem(["reconstruct", "--i", tmp_path / "particles.star", "--o", tmp_path / "rec.mrc", "--ctf"])
    rec, angpix = read_mrc(tmp_path / "rec.mrc")
    truth, _ = read_mrc(tmp_path / "truth_class001.mrc")
    assert angpix == pytest.approx(3.0)
    shells, curve = fsc(rec, truth)
    lim = int(np.floor(0.8 * 32))
    print("noiseless FSC to truth, shells 0..%d:" % lim, np.round(curve[:lim + 1], 4))
    assert curve[1:lim + 1].min() >= 0.9


def test_ctf_snr01_resolution_matches_theory(noisy_set, run_hpcem):
    d = noisy_set
    run_hpcem(["reconstruct", "--i", d / "particles.star", "--o", d / "rec.mrc", "--ctf"])
    rec, angpix = read_mrc(d / "rec.mrc")
    truth, _ = read_mrc(d / "truth_class001.mrc")
    info = json.loads((d / "truth.json").read_text())
    _, curve = fsc(rec, truth)
    res = resolution_at(curve, 0.5, 64, angpix)
    pred = resolution_at(predicted_fsc(truth, str(d / "particles.star"), info), 0.5, 64, angpix)
    print("FSC=0.5 resolution vs truth: measured %.2f A, predicted from the SSNR %.2f A" % (res, pred))
    # The bound: within 10% of what the data can give (the SSNR prediction above);
    # a wrong CTF sign/convention, pose convention or shift sign costs far more.
    assert res <= 1.10 * pred
    assert res < 16.0


def test_two_ranks_equal_one_rank(noisy_set, run_hpcem, tmp_path):
    d = noisy_set
    run_hpcem(["reconstruct", "--i", d / "particles.star", "--o", tmp_path / "r1.mrc", "--ctf", "--sym", "C1"])
    p = run_hpcem(["reconstruct", "--i", d / "particles.star", "--o", tmp_path / "r2.mrc", "--ctf"], n_ranks=2)
    assert "2 rank(s)" in p.stdout
    a, _ = read_mrc(tmp_path / "r1.mrc")
    b, _ = read_mrc(tmp_path / "r2.mrc")
    rel = np.linalg.norm(a - b) / np.linalg.norm(a)
    print("1 vs 2 ranks relative difference: %.3g" % rel)
    assert rel < 1e-5


def test_symmetric_reconstruction_cli(tmp_path, run_hpcem):
    """A D2-symmetric truth reconstructed with --sym D2 from few particles beats C1."""
    from hpcem.core.symmetry import symmetry_ops
    from hpcem.simulate import blob_volume, simulate_dataset
    from hpcem.simulate.write import write_dataset
    from scipy.ndimage import map_coordinates

    n = 48
    base = blob_volume(n, n_blobs=30, seed=2).astype(np.float64)
    c = np.arange(n) - n // 2
    zz, yy, xx = np.meshgrid(c, c, c, indexing="ij")
    r = np.stack([xx, yy, zz], axis=-1).reshape(-1, 3)
    sym = np.zeros(n ** 3)
    for R in symmetry_ops("D2"):
        q = r @ R  # sample V at R^T r
        sym += map_coordinates(base, [q[:, 2] + n // 2, q[:, 1] + n // 2, q[:, 0] + n // 2], order=3)
    vol = (sym.reshape(n, n, n) / 4).astype(np.float32)
    sim = simulate_dataset(n=n, n_particles=400, snr=0.5, volumes=[vol], seed=4)
    write_dataset(sim, str(tmp_path))
    for s in ("C1", "D2"):
        run_hpcem(["reconstruct", "--i", tmp_path / "particles.star", "--o", tmp_path / ("%s.mrc" % s),
                   "--ctf", "--sym", s])
    f = {s: fsc(read_mrc(tmp_path / ("%s.mrc" % s))[0], vol)[1] for s in ("C1", "D2")}
    r = {s: resolution_at(f[s], 0.5, n, sim.angpix) for s in f}
    print("FSC-0.5 resolution C1 %.2f A, D2 %.2f A" % (r["C1"], r["D2"]))
    assert r["D2"] < 0.9 * r["C1"]


def test_fsc_cli_prints_and_plots(noisy_set, run_hpcem, tmp_path):
    d = noisy_set
    if not (d / "rec.mrc").exists():
        run_hpcem(["reconstruct", "--i", d / "particles.star", "--o", d / "rec.mrc", "--ctf"])
    png = tmp_path / "fsc.png"
    p = run_hpcem(["fsc", d / "rec.mrc", d / "truth_class001.mrc", "--o", png, "--o_star", tmp_path / "fsc.star"])
    assert "resolution at FSC=0.143" in p.stdout and "resolution at FSC=0.5" in p.stdout
    assert png.stat().st_size > 5000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import starfile
    t = starfile.read(tmp_path / "fsc.star")
    assert "rlnFourierShellCorrelation" in t.columns and len(t) == 33


@pytest.mark.parametrize("case", ["missing_star", "no_image_name", "bad_sym", "neg_angpix", "nan_image"])
def test_cli_bad_input_one_line(case, tmp_path, run_hpcem):
    from hpcem.io.particles import write_particle_stack
    rng = np.random.default_rng(0)
    imgs = rng.normal(size=(4, 16, 16)).astype(np.float32)
    star = tmp_path / "p.star"
    write_particle_stack(star, imgs, 2.0, defocus_u=np.full(4, 1e4))
    args = ["reconstruct", "--i", star, "--o", tmp_path / "o.mrc", "--ctf"]
    field = None
    if case == "missing_star":
        args[2] = tmp_path / "nope.star"
        field = "nope.star"
    elif case == "no_image_name":
        txt = star.read_text().replace("_rlnImageName", "_rlnImageNameX")
        star.write_text(txt)
        field = "rlnImageName"
    elif case == "bad_sym":
        args += ["--sym", "X7"]
        field = "--sym"
    elif case == "neg_angpix":
        txt = star.read_text()
        import re
        txt = re.sub(r"(opticsGroup1\s+1\s+)(\S+)", lambda m: m.group(1) + m.group(2), txt)
        t = __import__("starfile").read(star)
        t["optics"]["rlnImagePixelSize"] = -2.0
        __import__("starfile").write(t, star, overwrite=True)
        field = "rlnImagePixelSize"
    elif case == "nan_image":
        import mrcfile
        with mrcfile.open(tmp_path / "p.mrcs", "r+") as m:
            m.data[2, 3, 3] = np.nan
        args += ["--check_images"]
        field = "p.mrcs"
    p = run_hpcem(args, check=False)
    assert p.returncode == 2, p.stderr
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in p.stderr, p.stderr
    assert field in err[0]
    assert not (tmp_path / "o.mrc").exists()


def test_pseudo_atomic_model_reconstruction(tmp_path, run_hpcem):
    """The protein-like simulator model: Wilson-like spectrum (power falls by < 10^3 from shell 4
    to Nyquist, unlike smooth blobs), and noiseless reconstruction >= 0.9 FSC to 0.8 Nyquist."""
    from hpcem.simulate.volumes import pseudo_atomic_volume
    v = pseudo_atomic_volume(48, 3.0, seed=1)
    S = radial_average(np.abs(ft3(v.astype(np.float64))) ** 2, dims=3)
    assert S[4] / S[24] < 1e3
    run_hpcem(["simulate", "--o", tmp_path, "--n", "3000", "--box", "48", "--snr", "0", "--model", "atoms",
               "--seed", "1"])
    run_hpcem(["reconstruct", "--i", tmp_path / "particles.star", "--o", tmp_path / "rec.mrc", "--ctf"])
    rec, _ = read_mrc(tmp_path / "rec.mrc")
    truth, _ = read_mrc(tmp_path / "truth_class001.mrc")
    np.testing.assert_allclose(truth, v, atol=1e-5)
    _, curve = fsc(rec, truth)
    print("pseudo-atomic noiseless FSC:", np.round(curve[:20], 3))
    assert curve[1:int(0.8 * 24) + 1].min() >= 0.9


def test_mixed_pixel_sizes_reconstruct_like_one_group(tmp_path, run_hpcem):
    """Issue 10: 3,000 particles of two optics groups (3 A/px at 48 px, 2.4 A/px at 60 px: the same
    144 A field of view of the same pseudo-atomic map) reconstruct on the first group's grid as
    well as 3,000 particles of one group."""
    import pandas as pd

    from hpcem.io.star import read_star, write_star
    from hpcem.simulate.particles import simulate_dataset
    from hpcem.simulate.write import write_dataset

    from hpcem.simulate.volumes import pseudo_atomic_model, render_atoms

    atoms = pseudo_atomic_model(48, 3.0, seed=5)          # one physical map, rendered on both grids
    sets = {}
    for name, n, apix, seed, N in (("g1", 48, 3.0, 11, 1500), ("g2", 60, 2.4, 12, 1500), ("one", 48, 3.0, 13, 3000)):
        vol = render_atoms(n, apix, atoms)
        sim = simulate_dataset(n=n, n_particles=N, angpix=apix, snr=0.01, seed=seed, volumes=[vol])
        sets[name] = write_dataset(sim, str(tmp_path / name))
    blocks = {k: read_star(sets[k]["particles"]) for k in ("g1", "g2")}
    optics = pd.concat([blocks["g1"]["optics"], blocks["g2"]["optics"]], ignore_index=True)
    optics["rlnOpticsGroup"] = [1, 2]
    optics["rlnOpticsGroupName"] = ["g1", "g2"]
    parts = []
    for g, k in ((1, "g1"), (2, "g2")):
        t = blocks[k]["particles"].copy()
        t["rlnOpticsGroup"] = g
        t["rlnImageName"] = t["rlnImageName"].str.replace("@", "@%s/" % k)
        parts.append(t)
    mixed = tmp_path / "mixed.star"
    write_star(mixed, {"optics": optics, "particles": pd.concat(parts, ignore_index=True)})
    truth, apix = read_mrc(sets["g1"]["truth_maps"][0])
    res = {}
    for name, star in (("mixed", mixed), ("one", sets["one"]["particles"])):
        out = tmp_path / ("%s.mrc" % name)
        run_hpcem(["reconstruct", "--i", star, "--o", out, "--ctf"], cwd=str(tmp_path))
        vol, _ = read_mrc(out)
        assert vol.shape == (48, 48, 48)
        _, c = fsc(vol, truth)
        res[name] = (resolution_at(c, 0.5, 48, apix), resolution_at(c, 0.143, 48, apix))
    print("FSC 0.5 / 0.143 to the truth: mixed groups %.2f / %.2f A, one group %.2f / %.2f A" % (res["mixed"] + res["one"]))
    assert res["mixed"][0] <= 1.05 * res["one"][0] and res["mixed"][1] <= 1.05 * res["one"][1]


def test_each_independent_coefficient_is_inserted_once():
    """One image at the identity pose: its slice is the kz = 0 plane, every sample lands on a voxel
    (pad 2), and after the Friedel completion each voxel of the plane inside the radius holds weight
    1, on the kx = 0 line too (inserting both (0, ky) and its mate (0, -ky) gave 2 there)."""
    from hpcem.recon.projector import BackProjector
    from hpcem.recon.reconstruct import backproject_particles

    n = 16

    class OneImage:
        box, angpix = n, 2.0

        def read_images(self, idx):
            return np.random.default_rng(0).normal(size=(len(idx), n, n)).astype(np.float32)

        def origins_px(self, idx):
            return np.zeros((len(idx), 2))

        def poses(self, idx):
            return np.zeros(len(idx)), np.zeros(len(idx)), np.zeros(len(idx))

    bp = BackProjector(n, pad=2)
    backproject_particles(OneImage(), np.arange(1), bp, ctf=False)
    _, W = bp.completed()
    k = np.arange(1, n // 2)
    assert np.allclose(W[0, 2 * k, 0], 1.0) and np.allclose(W[0, -2 * k, 0], 1.0)   # the kx = 0 line
    d = np.arange(1, 6)                                                            # |(d, d)| < n/2
    assert np.allclose(W[0, 0, 2 * k], 1.0) and np.allclose(W[0, 2 * d, 2 * d], 1.0)
