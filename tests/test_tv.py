"""The sparsity + total-variation regularised M-step (seed 002) through the real CLI, against the
known truth: `reconstruct --tv` (known poses), `refine3d --tv` (1 vs 2 ranks, --continue; the
full-size comparison with plain refine3d behind HPCEM_FULL_TESTS=1), `class3d --tv`, bad input.

Sizes: 1,000 pseudo-atomic particles at 64 px, SNR 0.05, CTF for the known-pose check (plain
reconstruct: FSC 0.5 to the truth at 8.4 A; --tv --tv_auto: at Nyquist, 6.0 A); the refine3d and
class3d checks reuse test_refine3d's small set (500 particles, 32 px, SNR 0.2) and back-project
with the Gaussian kernel (--bp_kernel gauss: 1 vs 2 ranks and --continue cover it too).
"""
import os

import numpy as np
import pytest

from hpcem.core.euler import angular_distance, euler_to_matrix
from hpcem.core.filters import lowpass
from hpcem.core.fsc import fsc, resolution_at
from hpcem.io.mrc import read_mrc, write_mrc
from hpcem.io.star import read_star


def _dataset(tmp, n, N, seed, snr, model):
    from hpcem.simulate.particles import simulate_dataset
    from hpcem.simulate.write import write_dataset

    d = simulate_dataset(n=n, n_particles=N, snr=snr, ctf=True, seed=seed, model=model)
    paths = write_dataset(d, tmp)
    ref = lowpass(np.asarray(d.volumes[0], np.float64), 30.0, d.angpix, dims=3).astype(np.float32)
    write_mrc(os.path.join(tmp, "ref.mrc"), ref, d.angpix)
    return d, paths["particles"], os.path.join(tmp, "ref.mrc")


# ---------------------------------------------------------------- known poses
@pytest.fixture(scope="module")
def atoms_1k(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("tv_atoms"))
    d, star, _ = _dataset(tmp, 64, 1000, seed=7, snr=0.05, model="atoms")
    return tmp, star, d


def test_reconstruct_tv_beats_plain_reconstruct(atoms_1k, run_hpcem):
    tmp, star, d = atoms_1k
    out = {k: os.path.join(tmp, "%s.mrc" % k) for k in ("plain", "tv")}
    run_hpcem(["reconstruct", "--i", star, "--o", out["plain"], "--ctf"])
    p = run_hpcem(["reconstruct", "--i", star, "--o", out["tv"], "--ctf", "--tv", "--tv_auto"])
    assert "TV: data" in p.stdout and "alpha" in p.stdout
    png = os.path.join(tmp, "tv_tv.png")
    assert os.path.getsize(png) > 5000
    n, apix = 64, d.angpix
    curves = {k: fsc(read_mrc(v)[0], d.volumes[0])[1] for k, v in out.items()}
    shell = {k: n * apix / resolution_at(c, 0.5, n, apix) for k, c in curves.items()}
    lo = int(np.ceil(0.3 * n / 2))
    print("FSC-0.5 shell plain %.2f, tv %.2f; FSC at shells %d..32:\n plain %s\n tv    %s" % (
        shell["plain"], shell["tv"], lo, np.round(curves["plain"][lo:], 3), np.round(curves["tv"][lo:], 3)))
    assert np.all(curves["tv"][lo:n // 2 + 1] > curves["plain"][lo:n // 2 + 1])
    assert shell["tv"] >= shell["plain"] + 1.0


@pytest.mark.mpi
def test_reconstruct_tv_two_ranks_equal_one(atoms_1k, run_hpcem, tmp_path):
    tmp, star, _ = atoms_1k
    a_path = os.path.join(tmp, "tv.mrc")
    if not os.path.exists(a_path):
        run_hpcem(["reconstruct", "--i", star, "--o", a_path, "--ctf", "--tv", "--tv_auto"])
    b_path = str(tmp_path / "tv2.mrc")
    run_hpcem(["reconstruct", "--i", star, "--o", b_path, "--ctf", "--tv", "--tv_auto"], n_ranks=2)
    a, b = read_mrc(a_path)[0], read_mrc(b_path)[0]
    rel = np.linalg.norm(a - b) / np.linalg.norm(a)
    print("1 vs 2 ranks, --tv: relative difference %.3g" % rel)
    assert rel < 1e-3


def test_tv_without_eps_or_auto_is_one_input_error(atoms_1k, run_hpcem, tmp_path):
    _, star, _ = atoms_1k
    p = run_hpcem(["reconstruct", "--i", star, "--o", tmp_path / "x.mrc", "--tv"], check=False)
    err = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(err) == 1 and "--tv_eps" in err[0] and "--tv_auto" in err[0]
    p = run_hpcem(["reconstruct", "--i", star, "--o", tmp_path / "x.mrc", "--bp_kernel", "cubic"], check=False)
    assert p.returncode == 2 and "--bp_kernel" in p.stderr
    assert not (tmp_path / "x.mrc").exists()


# ---------------------------------------------------------------- refine3d, class3d (small)
@pytest.fixture(scope="module")
def small(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("tv_small"))
    _, star, ref = _dataset(tmp, 32, 500, seed=3, snr=0.2, model="blobs")
    return tmp, star, ref


def _refine(star, ref, out, iters=2, extra=()):
    return ["refine3d", "--i", star, "--ref", ref, "--o", out, "--ctf", "--ini_high", 30, "--sym", "C1",
            "--iter", iters, "--healpix_order", 1, "--auto_local_healpix_order", 2, "--offset_range", 2,
            "--offset_step", 1, "--particle_diameter", 80, "--random_seed", 1, "--tv", "--tv_auto",
            "--tv_iters", 60, "--bp_kernel", "gauss"] + list(extra)


@pytest.fixture(scope="module")
def refine_one_rank(small, tmp_path_factory):
    from conftest import hpcem_cli
    import subprocess

    tmp, star, ref = small
    out = os.path.join(tmp, "R1")
    cmd, env = hpcem_cli(_refine(star, ref, out))
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stderr[-3000:]
    return out, p.stdout


def test_refine3d_tv_logs_terms_and_writes_slices(refine_one_rank):
    out, log = refine_one_rank
    assert "TV M-step" in log and "TV 1: data" in log and "TV 2: data" in log and "TV final" in log
    final = log[log.index("final: "):]
    assert "TV 1:" not in final and "TV final: data" in final
    assert "residual" in log
    assert os.path.getsize(os.path.join(out, "run_class001_tv.png")) > 5000


@pytest.mark.mpi
def test_refine3d_tv_one_vs_two_ranks(small, refine_one_rank, run_hpcem):
    tmp, star, ref = small
    out2 = os.path.join(tmp, "R2")
    run_hpcem(_refine(star, ref, out2), n_ranks=2)
    out1, _ = refine_one_rank
    for f in ("run_class001.mrc", "run_half1_class001_unfil.mrc", "run_half2_class001_unfil.mrc"):
        a, b = read_mrc(os.path.join(out1, f))[0], read_mrc(os.path.join(out2, f))[0]
        assert np.abs(a - b).max() <= 1e-3 * np.abs(a).max(), f
    A = [euler_to_matrix(*(read_star(os.path.join(o, "run_data.star"))["particles"][c].to_numpy()
                           for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"))) for o in (out1, out2)]
    assert np.mean(angular_distance(A[0], A[1]) < 1e-3) > 0.99


def test_refine3d_tv_continue_equals_uninterrupted(small, refine_one_rank, run_hpcem):
    tmp, star, ref = small
    part = os.path.join(tmp, "Rpart")
    run_hpcem(_refine(star, ref, part, iters=1))
    run_hpcem(["refine3d", "--continue", os.path.join(part, "run_it001_optimiser.star"), "--iter", 2])
    a = read_mrc(os.path.join(refine_one_rank[0], "run_class001.mrc"))[0]
    b = read_mrc(os.path.join(part, "run_class001.mrc"))[0]
    assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()


def test_class3d_tv_runs_and_writes_slices(small, run_hpcem):
    tmp, star, ref = small
    out = os.path.join(tmp, "C3")
    p = run_hpcem(["class3d", "--i", star, "--ref", ref, "--o", out, "--ctf", "--K", 2, "--iter", 2,
                   "--ini_high", 30, "--healpix_order", 1, "--offset_range", 2, "--particle_diameter", 80,
                   "--tv", "--tv_auto", "--tv_iters", 30, "--bp_kernel", "gauss"])
    assert "TV 1: data" in p.stdout and "TV 2: data" in p.stdout
    for k in (1, 2):
        assert os.path.getsize(os.path.join(out, "run_it002_class%03d_tv.png" % k)) > 5000
        assert not os.path.exists(os.path.join(out, "run_it001_class%03d_tv.png" % k))


def _edge_to_core(a, b, truth, angpix):
    """Low-passed to 15 A, the least-squares scale of map a on map b at the particle's edge
    (r 7-10 px, where the trilinear and Gaussian gridding corrections differ by ~15%) over that in
    its core (r < 4 px), both where the truth has density."""
    al, bl = (lowpass(np.asarray(x, np.float64), 15.0, angpix, dims=3) for x in (a, b))
    n = truth.shape[0]
    r = np.sqrt(np.sum((np.indices(truth.shape) - n // 2) ** 2, 0))
    sig = np.abs(truth) > 0.1 * np.abs(truth).max()
    scale = [np.sum(al[m] * bl[m]) / np.sum(bl[m] ** 2) for m in (sig & (r >= 7) & (r < 10), sig & (r < 4))]
    return scale[0] / scale[1]


def test_refine3d_gauss_final_map_has_the_gauss_gridding_correction(small, run_hpcem):
    """refine3d --bp_kernel gauss: the final map, from both halves' sums, is corrected for the
    Gaussian kernel's attenuation like its unfiltered halves and `reconstruct --bp_kernel gauss` of
    its poses.  Before the halves' sums were added through `summed_backprojector` (which keeps the
    kernel) the final map took the trilinear correction: edge/core 0.92 against the halves' mean
    and 0.85 against reconstruct (now 1.01 and 0.93)."""
    tmp, star, ref = small
    out = os.path.join(tmp, "G1")
    run_hpcem(["refine3d", "--i", star, "--ref", ref, "--o", out, "--ctf", "--ini_high", 30, "--sym", "C1",
               "--iter", 1, "--healpix_order", 1, "--auto_local_healpix_order", 2, "--offset_range", 2,
               "--offset_step", 1, "--particle_diameter", 80, "--random_seed", 1, "--bp_kernel", "gauss"])
    rec = os.path.join(tmp, "G1_reconstruct.mrc")
    run_hpcem(["reconstruct", "--i", os.path.join(out, "run_data.star"), "--o", rec, "--ctf", "--bp_kernel", "gauss"])
    final = read_mrc(os.path.join(out, "run_class001.mrc"))[0]
    halves = 0.5 * sum(read_mrc(os.path.join(out, "run_half%d_class001_unfil.mrc" % h))[0] for h in (1, 2))
    truth = read_mrc(os.path.join(tmp, "truth_class001.mrc"))[0]
    vs_halves = _edge_to_core(final, halves, truth, 3.0)
    vs_reconstruct = _edge_to_core(final, read_mrc(rec)[0], truth, 3.0)
    print("final map edge/core scale: against its halves %.3f, against reconstruct %.3f" % (vs_halves, vs_reconstruct))
    assert abs(vs_halves - 1.0) < 0.04
    assert vs_reconstruct > 0.9


# ---------------------------------------------------------------- full size (gated)
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("HPCEM_FULL_TESTS") != "1",
                    reason="full size (4,000 particles at 64 px, two refinements): set HPCEM_FULL_TESTS=1")
def test_refine3d_tv_beats_plain_full_size(tmp_path, run_hpcem):
    """4,000 pseudo-atomic particles, 64 px, SNR 0.05, CTF, from the truth low-passed to 30 A: --tv
    --tv_auto gives a better FSC-0.5 to the truth than plain refine3d, its gold-standard resolution is
    within 15% of that figure, and its median orientation error is not worse.  Measured (these data and
    flags, 1 thread each, the machine loaded): plain 6.93 A to the truth, gold-standard 6.19 A, 3.25 deg,
    12 iterations, 4,681 s; --tv 6.00 A (Nyquist), gold-standard 6.00 A, 2.40 deg, 15 iterations,
    5,517 s of which 250 s in the regularised M-step."""
    tmp = str(tmp_path)
    d, star, ref = _dataset(tmp, 64, 4000, seed=11, snr=0.05, model="atoms")
    At = euler_to_matrix(d.rot, d.tilt, d.psi)
    res = {}
    for name, extra in (("plain", []), ("tv", ["--tv", "--tv_auto"])):
        out = os.path.join(tmp, name)
        run_hpcem(["refine3d", "--i", star, "--ref", ref, "--o", out, "--ctf", "--ini_high", 30, "--sym", "C1",
                   "--offset_range", 2, "--offset_step", 1, "--random_seed", 1, "--particle_diameter", 120] + extra)
        vol = read_mrc(os.path.join(out, "run_class001.mrc"))[0]
        truth = resolution_at(fsc(vol, d.volumes[0])[1], 0.5, 64, d.angpix)
        model = read_star(os.path.join(out, "run_model.star"))
        gold = float(np.asarray(model["model_general"]["rlnFinalResolution"]).ravel()[0])
        p = read_star(os.path.join(out, "run_data.star"))["particles"]
        A = euler_to_matrix(p["rlnAngleRot"].to_numpy(), p["rlnAngleTilt"].to_numpy(), p["rlnAnglePsi"].to_numpy())
        res[name] = (truth, gold, float(np.median(angular_distance(A, At))))
        print("%s: FSC(truth)=0.5 at %.2f A, gold-standard %.2f A, median orientation error %.2f deg" % (
            (name,) + res[name]))
    assert res["tv"][0] < res["plain"][0]
    assert abs(res["tv"][1] - res["tv"][0]) / res["tv"][0] < 0.15
    assert res["tv"][2] <= res["plain"][2]


def test_regularise_a_noisy_map_nearer_the_truth():
    """TVReconstructor.regularise (initial_model --tv's step on each VDAM map): the penalised map
    nearest a noisy map, in the metric of its data weights, is nearer the truth than the noisy map
    and keeps it where the weights are large."""
    from hpcem.recon.tv import TVReconstructor, TVSettings
    from hpcem.simulate.volumes import pseudo_atomic_volume

    v = lowpass(pseudo_atomic_volume(32, 3.0, seed=4).astype(np.float64), 9.0, 3.0, dims=3)
    noisy = v + np.random.default_rng(0).normal(0.0, 0.5 * v.std(), v.shape)
    W = np.ones((32, 32, 17), np.float32)
    rec = TVReconstructor(TVSettings(auto=True, iters=60))
    x = rec.regularise(noisy, W, prev=noisy)
    err = [float(np.linalg.norm(a - v) / np.linalg.norm(v)) for a in (noisy, x)]
    strong = rec.regularise(noisy, 1e3 * W, prev=noisy)      # the scale of W cancels (section 2.5)
    print("relative error to the truth: noisy %.3f, regularised %.3f" % tuple(err))
    assert err[1] < 0.7 * err[0] and np.allclose(strong, x, atol=1e-3 * np.abs(x).max())
