"""Alignment of a map to the axes of a point group (hpcem.core.symalign), against known transforms."""
import itertools
import time

import numpy as np
import pytest

from hpcem.core.align3d import transform_volume
from hpcem.core.euler import random_rotations
from hpcem.core.filters import lowpass
from hpcem.core.masks import soft_spherical_mask
from hpcem.core.symalign import align_to_symmetry, symmetrise
from hpcem.core.symmetry import axis_rotation, symmetry_ops
from hpcem.simulate.volumes import pseudo_atomic_volume

N, ANGPIX = 64, 3.0
NO_SHIFT = np.zeros(3)


def _low(v):
    """``v`` low-passed to 8 A (the spline interpolations blur these sharp maps beyond that)."""
    return lowpass(np.asarray(v, np.float64), 8.0, ANGPIX)


def _cc(a, b):
    """Correlation of two (low-passed) maps inside a sphere of radius 0.4 n."""
    inside = soft_spherical_mask(N, 0.4 * N, 0.0) > 0.5
    return float(np.corrcoef(a[inside], b[inside])[0, 1])


def _centre_of_mass(v):
    """(x, y, z) of the centre of mass of the positive density, from the box centre."""
    w = np.clip(v, 0, None)
    c = np.arange(N) - N // 2
    return np.array([w.sum((0, 1)) @ c, w.sum((0, 2)) @ c, w.sum((1, 2)) @ c]) / w.sum()


def _truth(sym, seed):
    """A ``sym``-symmetric map in the group's standard frame: a pseudo-atomic map moved off the
    centre and symmetrised, then shifted to put its centre of mass at the box centre (which, for
    Cn, fixes the position along the axis that the symmetry leaves free)."""
    v = pseudo_atomic_volume(N, ANGPIX, seed=seed, radius_frac=0.2)
    v = transform_volume(v, np.eye(3), (5.0, -3.0, 2.0))
    truth = symmetrise(v, symmetry_ops(sym))
    return transform_volume(truth, np.eye(3), -_centre_of_mass(truth))


def _moved(truth, seed, noise=0.3):
    """``truth`` rotated at random, shifted by up to 3 px per axis, plus white noise."""
    rng = np.random.default_rng(seed)
    R, t = random_rotations(1, rng)[0], rng.uniform(-3.0, 3.0, 3)
    moved = transform_volume(truth, R, t)
    return moved + noise * moved.std() * rng.normal(size=moved.shape)


def _assert_non_spherical(truth, seed):
    low = _low(truth)
    for R in random_rotations(3, np.random.default_rng(seed)):
        assert _cc(low, _low(transform_volume(truth, R, NO_SHIFT))) < 0.9


def _signed_permutations():
    """The 24 rotations that permute and sign the x, y, z axes (D2's frame ambiguity)."""
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            P = np.eye(3)[list(perm)] * np.array(signs)[:, None]
            if np.linalg.det(P) > 0:
                out.append(P)
    return out


def _best_cc_d2(result, truth):
    low = _low(result)
    return max(_cc(low, _low(transform_volume(truth, P, NO_SHIFT, order=1))) for P in _signed_permutations())


def _best_cc_c4(result, truth):
    """Best correlation over C4's frame ambiguity: rotations about z (2-degree steps over the 90
    that C4 leaves distinct) with and without the 180-degree flip about x."""
    low, truth_low = _low(result), _low(truth)
    best = -1.0
    for flip in (np.eye(3), axis_rotation((1, 0, 0), 180.0)):
        for angle in np.arange(0.0, 90.0, 2.0):
            R = axis_rotation((0, 0, 1), angle) @ flip
            best = max(best, _cc(low, transform_volume(truth_low, R, NO_SHIFT, order=1)))
    return best


def _align(moved, sym):
    t0 = time.time()
    res = align_to_symmetry(moved, sym)
    return res, time.time() - t0


def _check_result(res, moved):
    """The documented relations between the fields of the result."""
    assert res.rotation.shape == (3, 3) and np.allclose(res.rotation @ res.rotation.T, np.eye(3), atol=1e-8)
    assert np.allclose(res.aligned, transform_volume(moved, res.rotation, res.shift), atol=1e-5)


@pytest.mark.parametrize("sym,best_cc", [("D2", _best_cc_d2), ("C4", _best_cc_c4)])
def test_align_to_symmetry(sym, best_cc):
    truth = _truth(sym, seed=5)
    _assert_non_spherical(truth, seed=1)
    moved = _moved(truth, seed=7)
    res, dt = _align(moved, sym)
    _check_result(res, moved)
    match = best_cc(res.symmetrised, truth)
    unaligned = best_cc(symmetrise(moved, symmetry_ops(sym)), truth)    # what the search must fix
    asym, dt_asym = _align(pseudo_atomic_volume(N, ANGPIX, seed=105), sym)
    print("%s: %.1f s, score %.3f, correlation with the truth %.3f (unaligned %.3f); "
          "asymmetric map: %.1f s, score %.3f" % (sym, dt, res.score, match, unaligned, dt_asym, asym.score))
    assert match >= 0.95
    assert unaligned < 0.9
    assert res.score >= 0.95
    assert asym.score < 0.8


def test_align_c1_is_identity():
    v = pseudo_atomic_volume(N, ANGPIX, seed=3)
    res = align_to_symmetry(v, "C1")
    assert np.array_equal(res.rotation, np.eye(3)) and np.array_equal(res.shift, NO_SHIFT)
    assert res.score == 1.0
    assert np.array_equal(res.aligned, v) and np.array_equal(res.symmetrised, v)


def test_symmetrise_is_invariant():
    ops = symmetry_ops("D3")
    v = pseudo_atomic_volume(N, ANGPIX, seed=4)
    s = symmetrise(v, ops)
    low = _low(s)
    assert _cc(_low(symmetrise(s, ops)), low) > 0.999
    for g in ops[1:]:
        assert _cc(_low(transform_volume(s, g, NO_SHIFT)), low) > 0.999
        assert _cc(_low(transform_volume(v, g, NO_SHIFT)), _low(v)) < 0.9          # v itself is not
    assert _cc(_low(transform_volume(s, axis_rotation((0, 0, 1), 60.0), NO_SHIFT)), low) < 0.9  # not D6
