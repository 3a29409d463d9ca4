"""hpcem refine3d on simulated particles with known poses (CTF, SNR 0.05, C1), from a 30 A low-passed
truth as the reference:

* median orientation error (symmetry-aware angular distance) < 3 deg, median shift error < 1 px;
* the gold-standard resolution (half-map FSC 0.143) within 15% of the resolution where the final
  map's FSC against the truth crosses 0.5, and that resolution better than 3 x the pixel size;
* 1 rank and `mpiexec -n 2` (one rank per half) give the same maps and poses;
* bad input (a reference that is not a cube, or empty, or missing) fails up front naming the file and field.

Size: the recovery test runs the issue's 5,000 particles at 64 px of a pseudo-atomic map
(simulate model 'atoms', Wilson-like spectrum: the blob maps hold too little high-resolution power
for 3 x pixel) with RELION's default sampling schedule (HEALPix order 2 start, global searches
through order 3, local searches from order 4), --particle_diameter 120 (the map is ~100 A wide) and
--offset_range 2.  Known poses give 6.4 A (FSC 0.5 to the truth) on these data; refine3d reaches
6.73 A, gold-standard 6.13 A (9% apart), median shift error 0.31 px and a median orientation error
of 2.99 deg: ~10% of the particles stay > 20 deg off (the global search at SNR 0.05 misplaces them;
against the true map it would misplace ~2%) and the rest reach ~2.7 deg, so the < 3 deg assertion
passes with no margin.  It takes ~10 min on 2 idle cores, above what a CI test may take, so it
runs only with HPCEM_LONG_TESTS=1.
"""
import os

import numpy as np
import pytest

from hpcem.core.euler import angular_distance, euler_to_matrix
from hpcem.core.filters import lowpass
from hpcem.core.fsc import fsc, resolution_at
from hpcem.io.mrc import read_mrc, write_mrc
from hpcem.io.star import read_star

BOX, N_PARTICLES = 64, 5000


def _dataset(tmp, n, N, seed, snr=0.05, model="blobs"):
    from hpcem.simulate.particles import simulate_dataset
    from hpcem.simulate.write import write_dataset

    d = simulate_dataset(n=n, n_particles=N, snr=snr, ctf=True, seed=seed, model=model)
    paths = write_dataset(d, tmp)
    ref = lowpass(np.asarray(d.volumes[0], np.float64), 30.0, d.angpix, dims=3).astype(np.float32)
    write_mrc(os.path.join(tmp, "ref.mrc"), ref, d.angpix)
    return d, paths["particles"], os.path.join(tmp, "ref.mrc")


def _flags(star, ref, out, extra=(), schedule=("--healpix_order", 1, "--auto_local_healpix_order", 3)):
    return ["refine3d", "--i", star, "--ref", ref, "--o", out, "--ctf", "--ini_high", 30, "--sym", "C1",
            *schedule, "--offset_range", 2, "--offset_step", 1, "--random_seed", 1] + list(extra)


def _poses(star):
    p = read_star(star)["particles"]
    A = euler_to_matrix(p["rlnAngleRot"].to_numpy(), p["rlnAngleTilt"].to_numpy(), p["rlnAnglePsi"].to_numpy())
    o = np.stack([p["rlnOriginXAngst"].to_numpy(), p["rlnOriginYAngst"].to_numpy()], 1)
    return A, o


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("HPCEM_LONG_TESTS") != "1", reason="long (5,000 particles at 64 px): set HPCEM_LONG_TESTS=1")
def test_refine3d_recovers_poses_and_resolution(tmp_path, run_hpcem):
    tmp = str(tmp_path)
    d, star, ref = _dataset(tmp, BOX, N_PARTICLES, seed=11, model="atoms")
    out = os.path.join(tmp, "Refine3D")
    p = run_hpcem(_flags(star, ref, out, ["--particle_diameter", 120], schedule=()))
    print(p.stdout[-3000:])
    A, o = _poses(os.path.join(out, "run_data.star"))
    At = euler_to_matrix(d.rot, d.tilt, d.psi)
    ang = angular_distance(A, At)          # C1 from a low-passed truth: no global ambiguity
    shift = np.hypot(*(o - d.origins_A).T) / d.angpix
    vol, _ = read_mrc(os.path.join(out, "run_class001.mrc"))
    _, c_true = fsc(vol, d.volumes[0])
    res_true = resolution_at(c_true, 0.5, BOX, d.angpix)
    blocks = read_star(os.path.join(out, "run_model.star"))
    res_gold = float(np.asarray(blocks["model_general"]["rlnFinalResolution"]).ravel()[0])
    print("median orientation error %.2f deg, median shift error %.2f px, gold-standard %.2f A, "
          "FSC(truth)=0.5 at %.2f A" % (np.median(ang), np.median(shift), res_gold, res_true))
    assert np.median(ang) < 3.0
    assert np.median(shift) < 1.0
    assert abs(res_gold - res_true) / res_true < 0.15
    assert res_true < 3.0 * d.angpix
    for f in ("run_half1_class001_unfil.mrc", "run_half2_class001_unfil.mrc", "run_fsc.star", "run_fsc.png"):
        assert os.path.exists(os.path.join(out, f)), f


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("r3d_small"))
    d, star, ref = _dataset(tmp, 32, 500, seed=3, snr=0.2)
    return tmp, star, ref


SMALL = ["--iter", 3, "--healpix_order", 1, "--auto_local_healpix_order", 2, "--offset_range", 2, "--particle_diameter", 80]


def test_refine3d_one_vs_two_ranks(small, run_hpcem):
    tmp, star, ref = small
    outs = {}
    for nr in (1, 2):
        out = os.path.join(tmp, "R%d" % nr)
        run_hpcem(_flags(star, ref, out, SMALL), n_ranks=nr)
        outs[nr] = out
    for h in (1, 2):
        a, _ = read_mrc(os.path.join(outs[1], "run_half%d_class001_unfil.mrc" % h))
        b, _ = read_mrc(os.path.join(outs[2], "run_half%d_class001_unfil.mrc" % h))
        assert np.abs(a - b).max() <= 1e-3 * np.abs(a).max()
    A1, o1 = _poses(os.path.join(outs[1], "run_data.star"))
    A2, o2 = _poses(os.path.join(outs[2], "run_data.star"))
    assert np.mean(angular_distance(A1, A2) < 1e-3) > 0.99
    assert np.mean(np.hypot(*(o1 - o2).T) < 1e-3) > 0.99


def test_refine3d_continue_same_result(small, run_hpcem):
    tmp, star, ref = small
    full = os.path.join(tmp, "C_full")
    run_hpcem(_flags(star, ref, full, SMALL))
    part = os.path.join(tmp, "C_part")
    run_hpcem(_flags(star, ref, part, SMALL[:1] + [1] + SMALL[2:]))
    run_hpcem(["refine3d", "--continue", os.path.join(part, "run_it001_optimiser.star"), "--iter", 3])
    a, _ = read_mrc(os.path.join(full, "run_class001.mrc"))
    b, _ = read_mrc(os.path.join(part, "run_class001.mrc"))
    assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()


def test_refine3d_bad_input(small, run_hpcem, tmp_path):
    tmp, star, ref = small
    bad = str(tmp_path / "bad.mrc")
    write_mrc(bad, np.ones((24, 24, 12), np.float32), 3.0)      # not a cube
    p = run_hpcem(_flags(star, bad, str(tmp_path / "o")), check=False)
    assert p.returncode == 2 and "bad.mrc" in p.stderr and "box" in p.stderr
    write_mrc(bad, np.zeros((24, 24, 24), np.float32), 3.0)     # empty
    p = run_hpcem(_flags(star, bad, str(tmp_path / "o")), check=False)
    assert p.returncode == 2 and "bad.mrc" in p.stderr and "empty" in p.stderr
    p = run_hpcem(_flags(star, str(tmp_path / "missing.mrc"), str(tmp_path / "o")), check=False)
    assert p.returncode == 2 and "missing.mrc" in p.stderr
