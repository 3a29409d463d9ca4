"""3D initial model by VDAM (hpcem initial_model, seed 000 sections 3.1.2-3.1.5):

* the mini-batch estimate the VDAM step moves to, ``padded_to_volume(D / W)``, is the map;
* from random blobs, on particles of a pseudo-atomic map, the map found superposes on the truth
  (FSC after ``--align``), RELION's files are written every --grad_write_iter mini-batches and
  ``initial_model.mrc`` at the end;
* 1 vs 2 ranks and ``--continue`` give the same maps.

The issue's full-size checks (10 seeds at 64 px, D2, K = 3) run with HPCEM_FULL_TESTS=1.
"""
import os
import shutil

import numpy as np
import pytest

from hpcem.core.align3d import aligned_resolution
from hpcem.core.fsc import fsc, resolution_at
from hpcem.io.mrc import read_mrc
from hpcem.io.star import read_star
from hpcem.recon.projector import BackProjector, Projector, padded_to_volume

FULL = os.environ.get("HPCEM_FULL_TESTS") == "1"


def test_minibatch_estimate_is_the_map(rng):
    """padded_to_volume(D / W) of noise-free projections is the map (the estimate VDAM steps to)."""
    from scipy.spatial.transform import Rotation

    from hpcem.core.fourier import ft3
    from hpcem.simulate.volumes import pseudo_atomic_volume

    v = pseudo_atomic_volume(32, 3.0, seed=1).astype(np.float64)
    R = Rotation.random(3000, random_state=3).as_matrix()
    bp = BackProjector(32)
    bp.insert(Projector.from_volume(v).project(R), None, R)
    D, W = bp.completed()
    est = padded_to_volume(D / np.where(W > 0, W, 1.0), 32)
    _, curve = fsc(v, est)
    A, B = ft3(v), ft3(est)
    ratio = np.linalg.norm(B) / np.linalg.norm(A)
    print("FSC to the map at shells 4/8/12/15: %s, power ratio %.3f" % (np.round(curve[[4, 8, 12, 15]], 4), ratio))
    assert curve[1:16].min() > 0.98 and abs(ratio - 1.0) < 0.08     # measured 0.9987, 0.946 (voxel-wise D / W
    #                                                                 is ~5% low at the lowest shells)


def _write(tmp, N, n, snr, seed, K=1):
    from hpcem.simulate.particles import simulate_dataset
    from hpcem.simulate.write import write_dataset

    d = simulate_dataset(n=n, n_particles=N, angpix=3.0, snr=snr, n_classes=K, ctf=True, seed=seed,
                         model="atoms")
    write_dataset(d, tmp)
    return d, os.path.join(tmp, "particles.star")


IM = ["--particle_diameter", 90, "--ctf", "--random_seed", 1]


@pytest.fixture(scope="module")
def im_set(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("im"))
    d, star = _write(tmp, 2000, 40, 0.3, seed=5)
    return tmp, d, star


def _fsc_to_truth(truth, vol, angpix):
    res, _, al = aligned_resolution(truth, vol, angpix)
    return res, al.flipped


def test_initial_model_from_blobs(im_set, run_hpcem):
    tmp, d, star = im_set
    out = os.path.join(tmp, "IM")
    p = run_hpcem(["initial_model", "--i", star, "--o", out + "/run", "--iter", 60, "--grad_write_iter", 30] + IM)
    print(p.stdout[-2000:])
    assert "size" in p.stdout and "step" in p.stdout and "final pass" in p.stdout
    for it in (30, 60):
        for suffix in ("class001.mrc", "data.star", "model.star", "optimiser.star", "class001.png"):
            assert os.path.exists(os.path.join(out, "run_it%03d_%s" % (it, suffix)))
    assert not os.path.exists(os.path.join(out, "run_it020_class001.mrc"))
    vol = read_mrc(os.path.join(out, "initial_model.mrc"))[0]
    res, flipped = _fsc_to_truth(np.asarray(d.volumes[0], np.float64), vol, 3.0)
    print("initial model: FSC 0.5 at %.2f A against the truth after --align (hand flipped: %s)" % (res, flipped))
    assert res < 4 * 3.0       # measured 7.11 A


def test_initial_model_em_iterations_after_the_mini_batches(im_set, run_hpcem):
    """--grad_em_iters 2 (RELION's flag), given to --continue after test_initial_model_from_blobs's 60
    mini-batches: iterations 61-62 are class3d's EM over all particles (no final pass), and the
    map reconstructed from every particle is nearer the truth than the last VDAM step's."""
    tmp, d, star = im_set
    src = os.path.join(tmp, "IM", "run_it060_optimiser.star")
    if not os.path.exists(src):
        test_initial_model_from_blobs(im_set, run_hpcem)
    out = os.path.join(tmp, "EM")
    p = run_hpcem(["initial_model", "--continue", src, "--iter", 62, "--grad_em_iters", 2, "--o", out + "/run"])
    em = [x for x in p.stdout.splitlines() if x.startswith("EM it ")]
    assert [int(x.split()[2]) for x in em] == [61, 62], p.stdout[-1500:]
    assert "final pass" not in p.stdout
    truth = np.asarray(d.volumes[0], np.float64)
    fsc = [aligned_resolution(truth, read_mrc(f)[0].astype(np.float64), 3.0)
           for f in (os.path.join(tmp, "IM", "run_it060_class001.mrc"), os.path.join(out, "run_it062_class001.mrc"))]
    mid = [float(np.mean(c[10:19])) for _, c, _ in fsc]     # 12-6.3 A
    print("FSC to the truth: VDAM at 60 %.2f A (mean over 12-6.3 A %.3f), after 2 EM iterations %.2f A (%.3f)"
          % (fsc[0][0], mid[0], fsc[1][0], mid[1]))
    assert mid[1] > mid[0]


def test_initial_model_ranks_and_continue(im_set, run_hpcem):
    """Also across an --auto_sampling order change (0 -> 1 after the first mini-batch, capped at
    --max_healpix_order 1) and into an EM iteration (--grad_em_iters 1): the order is part of the
    checkpoint, so the continued run samples as the uninterrupted one; the memory plan is made for
    order 1 from the start.  A --healpix_order (and --grad_em_iters) given to --continue replaces
    the checkpoint's."""
    tmp, d, star = im_set
    base = ["initial_model", "--i", star, "--iter", 6, "--grad_write_iter", 3, "--sym", "D2",
            "--healpix_order", 0, "--auto_sampling", "--max_healpix_order", 1, "--grad_em_iters", 1] + IM
    one, two, part = (os.path.join(tmp, x) for x in ("one", "two", "part"))
    p = run_hpcem(base + ["--o", one + "/run"])
    orders = [int(x.split("order")[1].split()[0]) for x in p.stdout.splitlines() if x.startswith("batch")]
    assert orders[0] == 0 and orders[1:] == [1] * 4, orders
    assert [x.split()[2] for x in p.stdout.splitlines() if x.startswith("EM it ")] == ["6"]
    plan = [x for x in p.stdout.splitlines() if "memory estimate" in x]
    assert plan and "at order 1" in plan[0], plan     # planned at the finest order the run reaches
    run_hpcem(base + ["--o", two + "/run"], n_ranks=2)
    shutil.copytree(one, part)
    os.remove(os.path.join(part, "run_it006_class001.mrc"))
    run_hpcem(["initial_model", "--continue", os.path.join(part, "run_it003_optimiser.star")])
    r1 = read_mrc(os.path.join(one, "run_it006_class001.mrc"))[0]
    for other in (two, part):
        r2 = read_mrc(os.path.join(other, "run_it006_class001.mrc"))[0]
        rel = np.linalg.norm(r1 - r2) / np.linalg.norm(r1)
        print("%s: relative difference %.2e" % (other, rel))
        assert rel < 1e-4
    assert os.path.exists(os.path.join(one, "initial_model.mrc"))
    chg = os.path.join(tmp, "chg")            # a new --healpix_order given to --continue is used
    shutil.copytree(part, chg)
    p = run_hpcem(["initial_model", "--continue", os.path.join(chg, "run_it003_optimiser.star"), "--iter", 4,
                   "--healpix_order", 2, "--grad_em_iters", 0, "--o", chg + "/more"])
    orders = [int(x.split("order")[1].split()[0]) for x in p.stdout.splitlines() if x.startswith("batch")]
    assert orders == [2], orders


def test_initial_model_final_pass_one_order_finer_for_classes(im_set, run_hpcem):
    """K > 1: the final pass (or by default the EM iterations that replace it, 4 but at most --iter - 1:
    here 2) classifies every
    particle one HEALPix order finer than the mini-batches (where the resolution reached supports
    it), the memory plan made for it; --final_healpix_order sets it; K = 1 keeps the mini-batches'
    order."""
    tmp, d, star = im_set
    base = ["initial_model", "--i", star, "--iter", 3, "--grad_write_iter", 3, "--healpix_order", 0] + IM
    p = run_hpcem(base + ["--K", 2, "--o", os.path.join(tmp, "em") + "/run"])    # K > 1: EM iterations
    assert "EM iterations 2-3 over all 2000 particles at order 1" in p.stdout, p.stdout[-1500:]
    assert "final pass" not in p.stdout and len([x for x in p.stdout.splitlines() if x.startswith("EM it ")]) == 2
    base += ["--grad_em_iters", 0]
    p = run_hpcem(base + ["--K", 2, "--o", os.path.join(tmp, "f2") + "/run"])
    assert "final pass over all 2000 particles at order 1" in p.stdout, p.stdout[-1500:]
    assert "at order 1)" in [x for x in p.stdout.splitlines() if "memory estimate" in x][0]
    assert [int(x.split("order")[1].split()[0]) for x in p.stdout.splitlines() if x.startswith("batch")] == [0] * 3
    c = read_star(os.path.join(tmp, "f2", "run_it003_data.star"))["particles"]
    assert set(np.unique(c["rlnClassNumber"])) <= {1, 2} and len(c) == 2000
    p = run_hpcem(base + ["--K", 2, "--final_healpix_order", 0, "--o", os.path.join(tmp, "f0") + "/run"])
    assert "final pass over all 2000 particles at order 0" in p.stdout
    p = run_hpcem(base + ["--o", os.path.join(tmp, "f1") + "/run"])
    assert "final pass over all 2000 particles at order 0" in p.stdout


@pytest.mark.skipif(not FULL, reason="full-size initial-model checks: HPCEM_FULL_TESTS=1")
def test_initial_model_ten_seeds(tmp_path, run_hpcem):
    """64 px, SNR 0.05, 5000 particles, C1: >= 9 of 10 seeds give FSC 0.5 better than 4 px."""
    d, star = _write(str(tmp_path), 5000, 64, 0.05, seed=11)
    truth = np.asarray(d.volumes[0], np.float64)
    good, hands = 0, 0
    for seed in range(10):
        out = os.path.join(str(tmp_path), "s%d" % seed)
        run_hpcem(["initial_model", "--i", star, "--o", out + "/run", "--particle_diameter", 150, "--ctf",
                   "--random_seed", seed, "--grad_write_iter", 200])
        res, flipped = _fsc_to_truth(truth, read_mrc(os.path.join(out, "initial_model.mrc"))[0], 3.0)
        print("seed %d: FSC 0.5 %.2f A, hand flipped %s" % (seed, res, flipped))
        good += res < 4 * 3.0
        hands += not flipped
    print("%d of 10 better than 4 px; right hand in %d" % (good, hands))
    assert good >= 9


def _in_symmetry_frame(truth, vol):
    """FSC-0.5 resolution (pixels of the 64 box at 3 A/px: A) of ``vol`` against ``truth`` in the
    symmetry frame: the best over the frame's own ambiguity (the 24 rotations of the octahedral
    group, which permute the D2 axes, and the hand: the mirror of z about the box centre, which
    keeps the symmetry centre; align3d's ``b[::-1]`` mirrors about c - 1/2), with no translation
    or fine rotation."""
    from hpcem.core.align3d import transform_volume
    from hpcem.core.symmetry import symmetry_ops

    n = vol.shape[0]
    best = np.inf
    for v in (vol, np.roll(vol[::-1], 1, axis=0)):
        for g in symmetry_ops("O"):
            _, curve = fsc(truth, transform_volume(v, g, np.zeros(3), order=1))
            best = min(best, resolution_at(curve, 0.5, n, 3.0))
    return best


@pytest.mark.skipif(not FULL, reason="full-size initial-model checks: HPCEM_FULL_TESTS=1")
def test_initial_model_d2_in_the_symmetry_frame(tmp_path, run_hpcem):
    """A D2 map, C1 VDAM then --sym D2: the symmetrised map is the truth in the symmetry frame."""
    from hpcem.core.symalign import symmetrise
    from hpcem.core.symmetry import symmetry_ops
    from hpcem.simulate.particles import simulate_dataset
    from hpcem.simulate.volumes import pseudo_atomic_volume
    from hpcem.simulate.write import write_dataset

    truth = symmetrise(pseudo_atomic_volume(64, 3.0, seed=11), symmetry_ops("D2")).astype(np.float64)
    d = simulate_dataset(n=64, n_particles=5000, angpix=3.0, snr=0.05, ctf=True, seed=11, volumes=[truth])
    write_dataset(d, str(tmp_path))
    out = os.path.join(str(tmp_path), "D2")
    run_hpcem(["initial_model", "--i", os.path.join(str(tmp_path), "particles.star"), "--o", out + "/run",
               "--particle_diameter", 150, "--ctf", "--sym", "D2", "--random_seed", 1, "--grad_write_iter", 200])
    res = _in_symmetry_frame(truth, read_mrc(os.path.join(out, "initial_model.mrc"))[0].astype(np.float64))
    print("D2: FSC 0.5 against the truth in the symmetry frame %.2f A" % res)
    assert res < 4 * 3.0


def test_equal_signal_volumes_put_every_map_at_the_set_snr():
    """In a mixture of maps of different mass, the set's SNR is their mean; scaled by
    equal_signal_volumes each map's particles carry the same signal (within 3%)."""
    from hpcem.simulate.particles import _signal_variance, equal_signal_volumes, simulate_dataset
    from hpcem.simulate.volumes import pseudo_atomic_volume

    maps = [pseudo_atomic_volume(32, 6.0, seed=s).astype(np.float64) for s in (21, 22, 23)]

    def per_map(vols):
        d = simulate_dataset(n=32, n_particles=900, angpix=6.0, snr=0, ctf=True, seed=4, volumes=vols)
        im = np.asarray(d.images)
        return np.array([_signal_variance(im[d.classes == k + 1]) for k in range(3)])

    plain, equal = per_map(maps), per_map(equal_signal_volumes(maps, 6.0))
    print("signal variance per map: plain %s, scaled %s" % (np.round(plain, 3), np.round(equal, 3)))
    assert plain.max() / plain.min() > 1.5            # map 22 has about half the others' mass
    assert equal.max() / equal.min() < 1.03


@pytest.mark.skipif(not FULL, reason="full-size initial-model checks: HPCEM_FULL_TESTS=1")
def test_initial_model_three_maps(tmp_path, run_hpcem):
    """K = 3 on a mixture of three different maps: each found (FSC 0.5 better than 5 px after
    --align), classes agree with the truth (ARI >= 0.8).  Each map's particles as the K = 1
    criterion's: 5,000 at SNR 0.05 (equal_signal_volumes: map 22 has half the others' mass, and in
    a plain mixture sits at SNR 0.033, where K = 1 fails on its own particles, VDAM and SAGD alike;
    2,000 per map are too few even for K = 1: DESIGN_NOTES, issue 11 stops 29-30).  320 mini-batches:
    at 200 the classes are still converging (stop 31: ARI 0.33 at 200, 0.59 at 320 with the same
    seed; the final pass one order finer lifts it).  With --split_merge (default, stop 33) this run
    gave ARI 0.773 (0.672 without), every map 10.9-12.3 A; EM iterations in place of the final pass
    (--grad_em_iters, stop 34) lift it: from scratch with 2 of them 0.836, maps 7.8-8.1 A; continued
    from the stop-33 run's 320 mini-batches, 0.837 after 2, 0.865 after 4 (the default: the run is
    the same as with 2 through mini-batch 316)."""
    from hpcem.metrics import adjusted_rand_index
    from hpcem.simulate.particles import equal_signal_volumes, simulate_dataset
    from hpcem.simulate.volumes import pseudo_atomic_volume
    from hpcem.simulate.write import write_dataset

    truths = equal_signal_volumes([pseudo_atomic_volume(64, 3.0, seed=s).astype(np.float64) for s in (21, 22, 23)],
                                  3.0)
    d = simulate_dataset(n=64, n_particles=15000, angpix=3.0, snr=0.05, ctf=True, seed=12, volumes=truths)
    write_dataset(d, str(tmp_path))
    out = os.path.join(str(tmp_path), "K3")
    run_hpcem(["initial_model", "--i", os.path.join(str(tmp_path), "particles.star"), "--o", out + "/run",
               "--particle_diameter", 150, "--ctf", "--K", 3, "--random_seed", 1, "--iter", 320,
               "--grad_write_iter", 320])
    c = read_star(os.path.join(out, "run_it320_data.star"))["particles"]["rlnClassNumber"].to_numpy()
    ari = adjusted_rand_index(c, d.classes)
    maps = [read_mrc(os.path.join(out, "initial_model_class%03d.mrc" % (k + 1)))[0] for k in range(3)]
    res = [min(_fsc_to_truth(t, m, 3.0)[0] for m in maps) for t in truths]
    per_class = read_star(os.path.join(out, "run_it320_model.star"))["model_classes"]["rlnEstimatedResolution"]
    print("K = 3: ARI %.3f, FSC 0.5 of the best class per true map %s A, half-set resolution per class %s A"
          % (ari, np.round(res, 2), np.round(np.asarray(per_class, float), 2)))
    assert ari >= 0.8 and max(res) < 5 * 3.0
