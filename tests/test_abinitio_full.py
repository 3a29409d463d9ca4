"""Full-size checks of issue 12 (HPCEM_FULL_TESTS=1; hours on 2 cores):

* 10 random starts on 5,000 particles of a pseudo-atomic map (64 px, SNR 0.05, CTF): at least 9 of
  10 maps superpose on the truth (FSC 0.5 after --align) better than 4 px, and agree with each other;
* K = 3 on a mixture of three maps (--max_res 8): ARI >= 0.8 and each true map recovered (better than 5 px);
* K = 2 on two maps at 32 px (--max_res 9): importance sampling separates the classes as the full
  quadrature does, to ARI >= 0.8; K = 3 on one map plus 30% junk images: ARI >= 0.8;
* the map with importance sampling equals the map without within FSC > 0.99 up to the final
  resolution (the same random start);
* refine3d --importance_sampling: median orientation error and FSC to the truth within 5% of the
  full search's, the fraction of poses evaluated printed.
"""
import os

import numpy as np
import pytest

from hpcem.core.align3d import aligned_resolution
from hpcem.core.euler import angular_distance, euler_to_matrix
from hpcem.core.fsc import fsc, resolution_at
from hpcem.io.mrc import read_mrc
from hpcem.io.star import read_star

FULL = os.environ.get("HPCEM_FULL_TESTS") == "1"
pytestmark = pytest.mark.skipif(not FULL, reason="full-size ab initio checks: HPCEM_FULL_TESTS=1")
AB = ["--particle_diameter", 150, "--ctf"]


def _data(tmp, volumes, N, seed):
    from hpcem.simulate.particles import simulate_dataset
    from hpcem.simulate.write import write_dataset

    d = simulate_dataset(n=64, n_particles=N, angpix=3.0, snr=0.05, ctf=True, seed=seed, volumes=volumes)
    write_dataset(d, tmp)
    return d, os.path.join(tmp, "particles.star")


def _res(truth, vol):
    return aligned_resolution(truth, vol, 3.0)[0]


def test_ten_random_starts(tmp_path, run_hpcem):
    from hpcem.simulate.volumes import pseudo_atomic_volume

    truth = pseudo_atomic_volume(64, 3.0, seed=11).astype(np.float64)
    _, star = _data(str(tmp_path), [truth], 5000, 11)
    maps, res = [], []
    for seed in range(10):
        out = os.path.join(str(tmp_path), "s%d" % seed)
        run_hpcem(["abinitio", "--i", star, "--o", out + "/run", "--random_seed", seed] + AB)
        maps.append(read_mrc(os.path.join(out, "run_class001.mrc"))[0].astype(np.float64))
        res.append(_res(truth, maps[-1]))
    good = [m for m, r in zip(maps, res) if r < 12.0]
    agree = [_res(good[0], m) for m in good[1:]]
    print("FSC 0.5 to the truth per seed %s A; between runs %s A" % (np.round(res, 2), np.round(agree, 2)))
    assert len(good) >= 9 and max(agree) < 12.0


def test_three_maps(tmp_path, run_hpcem):
    from hpcem.metrics import adjusted_rand_index
    from hpcem.simulate.volumes import pseudo_atomic_volume

    truths = [pseudo_atomic_volume(64, 3.0, seed=s).astype(np.float64) for s in (21, 22, 23)]
    d, star = _data(str(tmp_path), truths, 6000, 12)
    out = os.path.join(str(tmp_path), "K3")
    # --max_res 8: with the TRUE maps held fixed, abinitio's E-step classifies this set (300 of its
    # particles) to ARI 0.53 / 0.64 / 0.74 at 12 A with HEALPix order 2 / 3 / 4 (the seed's quadrature),
    # 0.76 / 0.86 at 8 A with order 3 / 4 (bench/bench_abinitio_oracle.py): 0.8 is out of reach at 12 A
    run_hpcem(["abinitio", "--i", star, "--o", out + "/run", "--K", 3, "--random_seed", 1, "--max_res", 8] + AB)
    c = read_star(os.path.join(out, "run_data.star"))["particles"]["rlnClassNumber"].to_numpy()
    maps = [read_mrc(os.path.join(out, "run_class%03d.mrc" % (k + 1)))[0].astype(np.float64) for k in range(3)]
    res = [min(_res(t, m) for m in maps) for t in truths]
    ari = adjusted_rand_index(c, d.classes)
    print("K = 3: ARI %.3f, FSC 0.5 of the best class per true map %s A" % (ari, np.round(res, 2)))
    assert ari >= 0.8 and max(res) < 15.0


def _small_set(tmp, n_maps, junk=0.0):
    """32 px, 3.75 A/px, 800 particles at SNR 1 (CTF) of pseudo-atomic maps seeds 1.. (the K > 1
    cases small enough to run by hand), with a fraction ``junk`` replaced by junk images (class 0):
    hpcem.simulate.sets.small_set (the off-centre junk beyond abinitio's translation search)."""
    from hpcem.simulate.sets import small_set
    from hpcem.simulate.write import write_dataset

    d, vols = small_set(n_maps, junk)
    write_dataset(d, tmp)
    return d, vols, os.path.join(tmp, "particles.star")


# --max_res 9: with the TRUE maps held fixed, abinitio's E-step at the seed's quadrature classifies this
# set to ARI 0.83 at the default 12 A and 0.99-1.0 at 9 A (bench/bench_abinitio_oracle.py --set two), so
# at 12 A the target is out of reach of any update; at 9 A it tests the SAGD.  --high_lr_duration 40: the
# step decay shortened with the schedule (with the seed's 150, epsilon stays 2 for all 140 iterations and the
# classes, separated at iteration 80 (ARI 0.83, each map at 8.3 A), fall apart: ARI 0.00 at 120).
SMALL = ["--K", 2, "--particle_diameter", 96, "--ctf", "--random_seed", 1, "--num_init_iters", 20, "--radwn_step",
         0.5, "--num_final_iters", 100, "--class_anneal_start", 20, "--class_anneal_end", 40, "--max_res", 9,
         "--high_lr_duration", 40]


def _small_res(truth, vol):
    return aligned_resolution(truth, vol, 3.75)[0]


def test_two_maps_separate_with_importance_sampling(tmp_path, run_hpcem):
    """The small case of the K > 1 fault (32 px, 800 particles of two maps, SNR 1): with importance
    sampling the classes separate as with the full quadrature (before the fix: ARI 0.02 at
    iteration 80 with IS against 0.66 without), to the issue's ARI 0.8, each true map recovered
    (FSC 0.5 of its best class better than 4 px)."""
    from hpcem.metrics import adjusted_rand_index

    tmp = str(tmp_path)
    d, vols, star = _small_set(tmp, 2)
    ari, res = [], []
    for name, extra in (("is", []), ("full", ["--no-importance_sampling"])):
        out = os.path.join(tmp, name)
        run_hpcem(["abinitio", "--i", star, "--o", out + "/run"] + SMALL + extra)
        c = read_star(os.path.join(out, "run_data.star"))["particles"]["rlnClassNumber"].to_numpy()
        ari.append(adjusted_rand_index(c, d.classes))
        maps = [read_mrc(os.path.join(out, "run_class%03d.mrc" % k))[0].astype(np.float64) for k in (1, 2)]
        res.append(max(min(_small_res(t, m) for m in maps) for t in vols))
    print("K = 2 on two maps: ARI with importance sampling %.3f, full quadrature %.3f; worst true map's best "
          "class FSC 0.5 %.1f / %.1f A" % tuple(ari + res))
    assert ari[0] >= ari[1] - 0.05 and ari[0] >= 0.8 and max(res) < 4 * 3.75


def test_map_and_junk_separate(tmp_path, run_hpcem):
    """K = 3 (the issue's case) on one map plus 30% junk images (every kind of hpcem.simulate.junk):
    the classes separate particles from junk with ARI >= 0.8 and the particles' class recovers the
    map.  No single junk class holds every junk kind here: with the true map held fixed K = 2 reaches
    ARI 0.35 at most; K = 3 with the true map and a run's two junk classes 0.84-0.89 (a perfect
    partition with the junk split in two: 0.90-0.92); from scratch seeds 1 / 2 / 3 gave 0.78 / 0.13 /
    0.91 before the carbon edges' fixed height (c0b04f7), seed 1 0.875 after it (issue 12, twelfth
    pass).  The off-centre junk lies beyond the translation search (hpcem.simulate.sets; before the
    ninth pass most of it was a particle for the aligner)."""
    from hpcem.metrics import adjusted_rand_index

    tmp = str(tmp_path)
    d, vols, star = _small_set(tmp, 1, junk=0.3)
    out = os.path.join(tmp, "junk")
    run_hpcem(["abinitio", "--i", star, "--o", out + "/run", "--K", 3] + SMALL[2:])      # SMALL[:2]: --K 2
    c = read_star(os.path.join(out, "run_data.star"))["particles"]["rlnClassNumber"].to_numpy()
    ari = adjusted_rand_index(c, d.classes)
    maps = [read_mrc(os.path.join(out, "run_class%03d.mrc" % k))[0].astype(np.float64) for k in (1, 2, 3)]
    res = min(_small_res(vols[0], m) for m in maps)
    print("K = 3 on one map + 30%% junk: ARI %.3f, best class FSC 0.5 to the map %.1f A" % (ari, res))
    assert ari >= 0.8 and res < 4 * 3.75


def test_importance_sampling_equals_full_quadrature(tmp_path, run_hpcem):
    from hpcem.simulate.volumes import pseudo_atomic_volume

    truth = pseudo_atomic_volume(64, 3.0, seed=11).astype(np.float64)
    _, star = _data(str(tmp_path), [truth], 5000, 11)
    maps = []
    for name, extra in (("is", []), ("full", ["--no-importance_sampling"])):
        out = os.path.join(str(tmp_path), name)
        run_hpcem(["abinitio", "--i", star, "--o", out + "/run", "--random_seed", 3] + AB + extra)
        maps.append(read_mrc(os.path.join(out, "run_class001.mrc"))[0].astype(np.float64))
    a, b = maps
    curve = aligned_resolution(a, b, 3.0)[1]
    r_final = int(64 * 3.0 / 12.0)
    print("IS vs full quadrature: FSC up to the final shell %d: min %.4f" % (r_final, curve[:r_final + 1].min()))
    assert curve[:r_final + 1].min() > 0.99


def test_refine3d_with_importance_sampling(tmp_path, run_hpcem):
    from hpcem.core.filters import lowpass
    from hpcem.io.mrc import write_mrc
    from hpcem.simulate.volumes import pseudo_atomic_volume

    tmp = str(tmp_path)
    truth = pseudo_atomic_volume(64, 3.0, seed=11).astype(np.float64)
    d, star = _data(tmp, [truth], 5000, 11)
    write_mrc(os.path.join(tmp, "ref.mrc"), lowpass(truth, 30.0, 3.0, dims=3).astype(np.float32), 3.0)
    At = euler_to_matrix(d.rot, d.tilt, d.psi)
    err, res = [], []
    for name, extra in (("grid", []), ("is", ["--importance_sampling"])):
        out = os.path.join(tmp, name)
        p = run_hpcem(["refine3d", "--i", star, "--ref", os.path.join(tmp, "ref.mrc"), "--o", out + "/run", "--ctf",
                       "--ini_high", 30, "--sym", "C1", "--particle_diameter", 150, "--random_seed", 1] + extra)
        print("\n".join(l for l in p.stdout.splitlines() if "evaluated" in l)[-1500:])
        q = read_star(os.path.join(out, "run_data.star"))["particles"]
        A = euler_to_matrix(q["rlnAngleRot"].to_numpy(), q["rlnAngleTilt"].to_numpy(), q["rlnAnglePsi"].to_numpy())
        err.append(float(np.median(angular_distance(A, At))))
        res.append(resolution_at(fsc(read_mrc(os.path.join(out, "run_class001.mrc"))[0], truth)[1], 0.5, 64, 3.0))
    print("median orientation error %s deg, FSC 0.5 to the truth %s A (full, IS)"
          % (np.round(err, 2), np.round(res, 2)))
    assert err[1] <= 1.05 * err[0] + 0.1 and res[1] <= 1.05 * res[0]
