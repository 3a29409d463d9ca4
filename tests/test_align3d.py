"""Map superposition (hpcem.core.align3d) and `hpcem fsc --align`, against known transforms."""
import re

import numpy as np
import pytest

from hpcem.core import align3d
from hpcem.core.filters import lowpass
from hpcem.core.euler import angular_distance, euler_to_matrix, random_rotations
from hpcem.core.fsc import fsc, resolution_at
from hpcem.io.mrc import read_mrc, write_mrc
from hpcem.simulate.volumes import pseudo_atomic_model, render_atoms

ANGPIX = 3.0


def _pair(n, seed, flip, noise=0.1):
    """(a, b, R, t) of one asymmetric pseudo-atomic model drawn in two frames such that
    ``a(x) = b'(R^T (x - c - t) + c)`` with ``b' = b[::-1]`` if ``flip`` (R uniform random, t up to
    3 px per axis), each map plus white noise of ``noise`` times its standard deviation."""
    rng = np.random.default_rng(seed)
    atoms = pseudo_atomic_model(n, ANGPIX, seed=seed)
    R = random_rotations(1, rng)[0]
    t = rng.uniform(-3.0, 3.0, 3)
    a = render_atoms(n, ANGPIX, atoms)
    b = render_atoms(n, ANGPIX, (atoms - t * ANGPIX) @ R)        # atoms at R^T (p - t)
    if flip:
        b = b[::-1]
    sd = a.std()
    a = a + noise * sd * rng.normal(size=a.shape)
    b = b + noise * sd * rng.normal(size=b.shape)
    return a.astype(np.float32), b.astype(np.float32), R, t


def _res05(a, b):
    n = a.shape[-1]
    return resolution_at(fsc(a, b)[1], 0.5, n, ANGPIX)


def test_transform_volume_convention():
    """The documented convention, without any search: the true transform superposes b onto a
    (compared at 10 A, below which the spline interpolation of these sharp maps loses detail)."""
    def cc(x, y):
        return np.corrcoef(lowpass(x, 10.0, ANGPIX).ravel(), lowpass(y, 10.0, ANGPIX).ravel())[0, 1]

    for flip in (False, True):
        a, b, R, t = _pair(48, 3, flip, noise=0.0)
        assert cc(a, align3d.transform_volume(b, R, t, flip)) > 0.99
        assert cc(a, align3d.transform_volume(b, R.T, t, flip)) < 0.8
        assert cc(a, align3d.transform_volume(b, R, -t, flip)) < 0.8
        assert cc(a, align3d.transform_volume(b, R, t, not flip)) < 0.8


@pytest.mark.parametrize("n,seed,flip", [(64, 11, False), (48, 12, True)])
def test_align_recovers_rotation_shift_hand(n, seed, flip):
    a, b, R, t = _pair(n, seed, flip)
    al = align3d.align_maps(a, b)
    err = float(angular_distance(al.rotation, R))
    print("n %d flip %s: rotation error %.2f deg, shift error %s px, hand %s, score %.3f / %.3f"
          % (n, flip, err, np.round(al.shift - t, 2), al.flipped, al.score, al.score_other_hand))
    assert err < 3.0
    assert np.linalg.norm(al.shift - t) < 1.0
    assert al.flipped == flip
    assert al.score > al.score_other_hand + 0.1
    assert np.allclose(euler_to_matrix(*al.euler), al.rotation, atol=1e-6)
    exact = align3d.transform_volume(b, R, t, flip)                  # the true transform
    aligned = align3d.apply_alignment(b, al)
    assert _res05(a, aligned) <= 1.05 * _res05(a, exact)
    assert np.all(fsc(a, aligned)[1] >= fsc(a, exact)[1] - 0.02)     # shell by shell, up to Nyquist
    assert _res05(a, b) > 5.0 * _res05(a, exact)                     # unaligned: far worse


def test_fsc_cli_align(tmp_path, run_hpcem):
    n = 48
    a, b, R, t = _pair(n, 21, True)
    write_mrc(tmp_path / "a.mrc", a, ANGPIX)
    write_mrc(tmp_path / "b.mrc", b, ANGPIX)
    out = tmp_path / "out.mrc"
    p = run_hpcem(["fsc", tmp_path / "a.mrc", tmp_path / "b.mrc", "--align", "--o_aligned", out,
                   "--o", tmp_path / "fsc.png"])
    m = re.search(r"align: rot (\S+) tilt (\S+) psi (\S+) deg, shift x (\S+) y (\S+) z (\S+) A, "
                  r"hand flipped: (yes|no)", p.stdout)
    assert m, p.stdout
    rot, tilt, psi, sx, sy, sz = (float(v) for v in m.groups()[:6])
    assert float(angular_distance(euler_to_matrix(rot, tilt, psi), R)) < 3.0
    assert np.linalg.norm(np.array([sx, sy, sz]) / ANGPIX - t) < 1.0
    assert m.group(7) == "yes"
    aligned, apix = read_mrc(out)
    assert aligned.shape == a.shape and apix == pytest.approx(ANGPIX)
    assert np.corrcoef(a.ravel(), aligned.ravel())[0, 1] > 0.9
    printed = float(re.search(r"resolution at FSC=0.5:\s+(\S+) A", p.stdout).group(1))
    assert printed <= 1.05 * _res05(a, align3d.transform_volume(b, R, t, True))
    assert (tmp_path / "fsc.png").exists()


def test_fsc_cli_o_aligned_needs_align(tmp_path, run_hpcem):
    a, b, _, _ = _pair(32, 1, False)
    write_mrc(tmp_path / "a.mrc", a, ANGPIX)
    write_mrc(tmp_path / "b.mrc", b, ANGPIX)
    p = run_hpcem(["fsc", tmp_path / "a.mrc", tmp_path / "b.mrc", "--o_aligned", tmp_path / "x.mrc"], check=False)
    assert p.returncode != 0 and "--align" in (p.stdout + p.stderr)
    assert not (tmp_path / "x.mrc").exists()
