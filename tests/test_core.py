"""Tests of hpcem.core numerics (CTF, sampling, symmetry, masks, filters, FSC) and plots."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
from scipy.spatial import cKDTree

from hpcem.core import ctf, euler, filters, fourier, fsc, masks, sampling, symmetry
from hpcem.errors import InputError


# ---------------------------------------------------------------- CTF

def _published_ctf(n, angpix, dU, dV, ang, kv, cs, Q, ps, B):
    """RELION's published expression, evaluated coefficient by coefficient in plain math:
    deltaf negative for underfocus, argument = K1 df u^2 + K2 u^4 - K5 - K3, ctf = -sin(argument)."""
    V = kv * 1e3
    lam = 12.2643247 / math.sqrt(V * (1.0 + V * 0.978466e-6))
    K1 = math.pi * lam
    K2 = math.pi / 2.0 * (cs * 1e7) * lam ** 3
    K3 = math.atan(Q / math.sqrt(1.0 - Q * Q))
    K4 = -B / 4.0
    K5 = math.radians(ps)
    df_avg = -(dU + dV) * 0.5
    df_dev = -(dU - dV) * 0.5
    az = math.radians(ang)
    out = np.empty((n, n // 2 + 1))
    for iy in range(n):
        ky = iy if iy <= (n - 1) // 2 else iy - n
        for ix in range(n // 2 + 1):
            X, Y = ix / (n * angpix), ky / (n * angpix)
            u2 = X * X + Y * Y
            df = df_avg + df_dev * math.cos(2.0 * (math.atan2(Y, X) - az))
            arg = K1 * df * u2 + K2 * u2 * u2 - K5 - K3
            val = -math.sin(arg)
            if B != 0.0:
                val *= math.exp(K4 * u2)
            out[iy, ix] = val
    return out


CTF_CASES = [
    # dU, dV, angle, kV, Cs, Q, phase shift, B
    (15000.0, 15000.0, 0.0, 300.0, 2.7, 0.1, 0.0, 0.0),
    (21000.0, 17500.0, 37.0, 300.0, 2.7, 0.1, 0.0, 0.0),
    (8000.0, 9500.0, -65.0, 200.0, 2.0, 0.07, 90.0, 0.0),
    (12000.0, 11000.0, 123.0, 300.0, 0.01, 0.15, 30.0, 80.0),
]


@pytest.mark.parametrize("n", [32, 33])
def test_ctf_matches_published_expression(n):
    angpix = 1.1
    ref = np.stack([_published_ctf(n, angpix, *c) for c in CTF_CASES])
    cols = np.array(CTF_CASES).T
    batch = ctf.ctf2d(n, angpix, *cols)
    assert batch.shape == (len(CTF_CASES), n, n // 2 + 1) and batch.dtype == np.float32
    assert np.abs(batch - ref).max() < 1e-5
    one = ctf.ctf2d(n, angpix, *CTF_CASES[2])
    assert one.shape == (n, n // 2 + 1)
    assert np.abs(one - ref[2]).max() < 1e-5
    # the astigmatic case really differs from its isotropic average (the test can fail)
    iso = ctf.ctf2d(n, angpix, 19250.0, 19250.0, 0.0, 300.0, 2.7, 0.1)
    assert np.abs(iso - ref[1]).max() > 0.1


@pytest.mark.parametrize("intact", [False, True])
def test_ctf_batch_is_blockwise_exact(intact):
    """ctf2d of a batch (computed in blocks of particles) equals each particle's CTF alone, bit for
    bit, with B-factors zero in some blocks and not in others."""
    rng = np.random.default_rng(3)
    B = 2 * ctf._BLOCK + 5
    bf = np.where(np.arange(B) < ctf._BLOCK, 0.0, rng.uniform(0, 100, B))
    cols = (rng.uniform(8000, 30000, B), rng.uniform(8000, 30000, B), rng.uniform(0, 180, B), 300.0, 2.7,
            0.1, rng.uniform(0, 30, B), bf)
    batch = ctf.ctf2d(40, 1.3, *cols, dtype=np.float64, intact_first_peak=intact)
    for i in (0, ctf._BLOCK - 1, ctf._BLOCK, B - 1):
        one = ctf.ctf2d(40, 1.3, *(c[i] if np.ndim(c) else c for c in cols), dtype=np.float64,
                        intact_first_peak=intact)
        assert np.array_equal(batch[i], one)
    assert np.array_equal(ctf.ctf2d(40, 1.3, *cols, intact_first_peak=intact), batch.astype(np.float32))


def test_ctf_from_columns():
    cols = {"rlnDefocusU": [15000.0, 21000.0], "rlnDefocusV": [15000.0, 17500.0],
            "rlnDefocusAngle": [0.0, 37.0], "rlnVoltage": 300.0, "rlnSphericalAberration": 2.7,
            "rlnAmplitudeContrast": 0.1}
    out = ctf.ctf_from_columns(24, 1.1, cols, indices=[1])
    assert out.shape == (1, 24, 13)
    assert np.abs(out[0] - _published_ctf(24, 1.1, *CTF_CASES[1])).max() < 1e-5


def test_ctf_sign_and_zeros():
    n, angpix, Q = 256, 1.0, 0.1
    # RELION's expression gives +Q at the origin (-sin(-K3)); no phase shift, no Cs
    c = ctf.ctf2d(n, angpix, 10000.0, 10000.0, 0.0, 300.0, 2.7, Q, dtype=np.float64)
    assert abs(c[0, 0] - Q) < 1e-12
    assert c[0, 1] > Q                        # rises towards +1 at low frequency for underfocus
    lam = ctf.electron_wavelength(300.0)
    assert abs(lam - 0.019687) < 1e-5         # 300 kV electrons: 0.01969 A

    def first_zero(dz):
        prof = ctf.ctf2d(n, angpix, dz, dz, 0.0, 300.0, 0.0, Q, dtype=np.float64)[0]
        i = int(np.nonzero(prof < 0)[0][0])
        return i - 1 + prof[i - 1] / (prof[i - 1] - prof[i])   # interpolated, cycles per box

    z1, z2 = first_zero(10000.0), first_zero(25000.0)
    assert z2 < z1
    # analytic first zero with Cs = 0: pi lam dz s^2 + atan(Q/sqrt(1-Q^2)) = pi
    for dz, z in ((10000.0, z1), (25000.0, z2)):
        s = math.sqrt((math.pi - math.asin(Q)) / (math.pi * lam * dz))
        assert abs(z - s * n * angpix) < 0.05
    # astigmatism: along the angle the defocus is dU, perpendicular dV
    a = ctf.ctf2d(n, angpix, 20000.0, 10000.0, 0.0, 300.0, 2.7, Q, dtype=np.float64)
    u = ctf.ctf2d(n, angpix, 20000.0, 20000.0, 0.0, 300.0, 2.7, Q, dtype=np.float64)
    v = ctf.ctf2d(n, angpix, 10000.0, 10000.0, 0.0, 300.0, 2.7, Q, dtype=np.float64)
    assert np.allclose(a[0, :], u[0, :]) and np.allclose(a[:, 0], v[:, 0])
    # a 90 degree phase shift turns the origin value into sin(pi/2 + asin Q) = sqrt(1 - Q^2)
    p = ctf.ctf2d(n, angpix, 10000.0, 10000.0, 0.0, 300.0, 2.7, Q, phase_shift=90.0, dtype=np.float64)
    assert abs(p[0, 0] - math.sqrt(1 - Q * Q)) < 1e-12
    with pytest.raises(ValueError):
        ctf.ctf2d(16, 1.0, 1e4, 1e4, 0.0, 300.0, 2.7, 1.0)


# ---------------------------------------------------------------- sampling

@pytest.mark.parametrize("order", range(8))
def test_healpix_equal_area(order):
    nside = 2 ** order
    rot, tilt = sampling.healpix_directions(order)
    assert rot.size == 12 * nside * nside
    assert rot.min() >= 0 and rot.max() < 360 and tilt.min() > 0 and tilt.max() < 180
    v = sampling.direction_vectors(rot, tilt)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0)
    assert np.linalg.norm(v.mean(axis=0)) < 1e-9                    # balanced on the sphere
    d, _ = cKDTree(v).query(v, k=2)
    assert d[:, 1].min() > 0.2 * np.deg2rad(58.6 / nside)            # all distinct
    nn = np.rad2deg(2 * np.arcsin(d[:, 1] / 2))
    if order >= 1:
        assert abs(nn.mean() / (58.6 / nside) - 1.0) < 0.05
    # equal area: z = cos(tilt) is uniform on [-1, 1] up to the ring spacing
    z = np.sort(v[:, 2])
    ecdf = (np.arange(z.size) + 0.5) / z.size
    assert np.abs(ecdf - (z + 1) / 2).max() < 0.2 / nside


def test_steps_inplane_translations():
    assert sampling.angular_step(2) == 15.0 and sampling.angular_step(3) == 7.5
    psi = sampling.inplane_angles(15.0)
    assert psi.size == 24 and psi[0] == 0 and psi[-1] == 345.0
    assert sampling.inplane_angles(7.0).size == 52
    t = sampling.translation_grid(5.0, 1.0)
    assert t.shape == (81, 2)                                        # lattice points in a disc of r 5
    assert np.any(np.all(t == 0, axis=1))
    assert np.all(np.hypot(t[:, 0], t[:, 1]) <= 5.0 + 1e-9)
    assert np.allclose(t.mean(axis=0), 0.0)
    t2 = sampling.translation_grid(6.0, 2.0)
    assert t2.shape == (29, 2) and np.allclose(np.sort(np.unique(t2[:, 0])), [-6, -4, -2, 0, 2, 4, 6])
    assert sampling.translation_grid(0.0, 1.0).shape == (1, 2)


@pytest.mark.parametrize("sym", ["C1", "C2", "C4", "C7", "D2", "D5", "T", "O", "I"])
def test_asymmetric_unit(sym):
    order = 4
    ops = symmetry.symmetry_ops(sym)
    G = ops.shape[0]
    rot, tilt = sampling.healpix_directions(order)
    full = sampling.direction_vectors(rot, tilt)
    arot, atilt, idx = sampling.asymmetric_directions(order, sym)
    assert np.allclose(arot, rot[idx]) and np.allclose(atilt, tilt[idx])
    # about 1/|G| of the sphere
    assert abs(arot.size * G / full.shape[0] - 1.0) < 0.08
    # symmetry mates of the kept directions cover the whole sphere to within one pixel
    mates = np.einsum("gij,nj->ngi", ops, sampling.direction_vectors(arot, atilt)).reshape(-1, 3)
    d, _ = cKDTree(mates).query(full)
    assert np.rad2deg(d.max()) < sampling.angular_step(order)
    # no two kept directions are symmetry mates of each other (beyond grid coincidences)
    if G > 1:
        tree = cKDTree(sampling.direction_vectors(arot, atilt))
        own = np.repeat(np.arange(arot.size), G)
        nonid = np.tile(np.arange(G) > 0, arot.size)
        dd, j = tree.query(mates)
        clash = (dd < 1e-6) & nonid & (j != own)
        assert clash.sum() <= 0.02 * arot.size
    if sym in ("C4", "C7"):
        n = int(sym[1:])
        assert arot.max() < 360.0 / n + 1e-9
    if sym == "D5":
        assert atilt.max() <= 90.0 + 1e-9 and arot.max() < 72.0 + 1e-9
    r3, t3, p3 = sampling.orientations_3d(order, sym)
    nd, npsi = sampling.grid_shape(order, sym)
    assert r3.size == nd * npsi == arot.size * 96
    assert np.allclose(r3[npsi * 3 + 5], arot[3]) and np.allclose(p3[npsi * 3 + 5], 5 * 3.75)


@pytest.mark.parametrize("sym", [None, "C3", "D2", "I"])
def test_local_neighbours_brute_force(sym):
    rng = np.random.default_rng(3)
    R = euler.random_rotations(40, rng)
    rot, tilt, psi = euler.matrix_to_euler(R)
    sigma, order = 3.0, 3
    off, idx, dist = sampling.local_neighbours(rot, tilt, psi, sigma, order, sym)
    grid = euler.euler_to_matrix(*sampling.orientations_3d(order, sym))
    ops = symmetry.symmetry_ops(sym)
    total = 0
    for i in range(R.shape[0]):
        d = np.min([euler.angular_distance(R[i] @ g, grid) for g in ops], axis=0)
        want = set(np.nonzero(d <= 3 * sigma + 1e-9)[0]) | {int(np.argmin(d))}
        got = idx[off[i]:off[i + 1]]
        assert set(got.tolist()) == want
        assert np.allclose(dist[off[i]:off[i + 1]], d[got], atol=1e-6)
        total += len(want)
    assert total > 2 * R.shape[0]


def test_oversample_directions():
    order = 3
    frot, ftilt, parent = sampling.oversample_directions(order)
    assert frot.size == 12 * 4 ** (order + 1)
    assert np.all(np.bincount(parent, minlength=12 * 4 ** order) == 4)
    crot, ctilt = sampling.healpix_directions(order)
    cos = np.sum(sampling.direction_vectors(frot, ftilt)
                 * sampling.direction_vectors(crot[parent], ctilt[parent]), axis=1)
    assert np.rad2deg(np.arccos(np.clip(cos, -1, 1))).max() < sampling.angular_step(order)


# ---------------------------------------------------------------- symmetry

@pytest.mark.parametrize("name,order", [("C1", 1), ("c2", 2), ("C5", 5), ("D2", 4), ("d7", 14),
                                        ("T", 12), ("o", 24), ("I", 60), ("i1", 60)])
def test_symmetry_groups(name, order):
    ops = symmetry.symmetry_ops(name)
    assert ops.shape == (order, 3, 3)
    assert np.allclose(ops[0], np.eye(3))
    assert np.allclose(np.einsum("gij,gkj->gik", ops, ops), np.eye(3), atol=1e-10)
    assert np.allclose(np.linalg.det(ops), 1.0)
    flat = ops.reshape(order, 9)
    assert cKDTree(flat).query(flat, k=min(2, order))[0].reshape(order, -1)[:, -1].min() > 1e-3 or order == 1
    prods = np.einsum("aij,bjk->abik", ops, ops).reshape(-1, 9)
    d, _ = cKDTree(flat).query(prods)
    assert d.max() < 1e-8                                               # closed
    if name.upper().startswith("C"):
        assert np.allclose(ops[:, 2, 2], 1.0)                           # about z
    if name.upper().startswith("D"):
        assert any(np.allclose(g, np.diag([1.0, -1.0, -1.0])) for g in ops)   # 2-fold along x
    if name in ("I",):
        phi = (1 + 5 ** 0.5) / 2
        axis = np.array([0.0, 1.0, phi]) / math.sqrt(1 + phi * phi)
        assert sum(np.allclose(g @ axis, axis) for g in ops) == 5


def test_symmetry_errors():
    for bad in ("X3", "D1", "C0", "", "C2.5", "icos"):
        with pytest.raises(InputError) as e:
            symmetry.symmetry_ops(bad)
        assert e.value.field == "--sym" and "--sym" in str(e.value)


# ---------------------------------------------------------------- masks

def test_masks_and_normalisation():
    m = masks.soft_circular_mask(64, 20.0, 6.0)
    c = 32
    assert m.shape == (64, 64) and m[c, c] == 1.0 and m[c, c + 20] == 1.0
    assert abs(m[c, c + 23] - 0.5) < 1e-6 and m[c, c + 26] == 0.0 and m[0, 0] == 0.0
    s = masks.soft_spherical_mask(33, 10.0, 4.0)
    assert s.shape == (33, 33, 33) and s[16, 16, 16] == 1 and abs(s[16, 16, 28] - 0.5) < 1e-6
    assert np.all(np.diff(m[c, c:]) <= 0)
    rng = np.random.default_rng(1)
    B, n, r = 7, 48, 18.0
    imgs = rng.normal(size=(B, n, n)) * rng.uniform(0.5, 4, size=(B, 1, 1)) + rng.uniform(-5, 5, (B, 1, 1))
    imgs[:, 14:34, 14:34] += 50.0                                       # particle inside the radius
    out = masks.normalise_background(imgs.astype(np.float32), r)
    yy, xx = np.mgrid[:n, :n] - n // 2
    bg = np.hypot(yy, xx) > r
    assert out.dtype == np.float32
    assert np.allclose(out[:, bg].mean(axis=1), 0.0, atol=1e-4)
    assert np.allclose(out[:, bg].std(axis=1), 1.0, atol=1e-4)
    assert np.all(out[:, n // 2, n // 2] > 5)                          # particle not used in the stats
    one = masks.normalise_background(imgs[2], r)
    assert np.allclose(one, out[2], atol=1e-4)
    filled = masks.apply_mask(imgs, m[8:56, 8:56], background="mean")
    assert filled.shape == imgs.shape


# ---------------------------------------------------------------- filters

def _full_grid_shell_means(power_full, n):
    f = np.fft.fftfreq(n, 1.0 / n)
    grids = np.meshgrid(*([f] * power_full.ndim), indexing="ij")
    sh = np.rint(np.sqrt(sum(g * g for g in grids))).astype(int).ravel()
    keep = sh <= n // 2
    s = np.bincount(sh[keep], weights=power_full.ravel()[keep], minlength=n // 2 + 1)
    c = np.bincount(sh[keep], minlength=n // 2 + 1)
    return s / c


@pytest.mark.parametrize("n", [16, 17])
def test_radial_average_equals_full_grid(n):
    rng = np.random.default_rng(n)
    img = rng.normal(size=(n, n))
    vol = rng.normal(size=(n, n, n))
    p2 = np.abs(fourier.ft2(img)) ** 2
    p3 = np.abs(fourier.ft3(vol)) ** 2
    r2 = filters.radial_average(p2)
    r3 = filters.radial_average(p3)
    ref2 = _full_grid_shell_means(np.abs(np.fft.fftn(np.fft.ifftshift(img))) ** 2, n)
    ref3 = _full_grid_shell_means(np.abs(np.fft.fftn(np.fft.ifftshift(vol))) ** 2, n)
    assert np.allclose(r2, ref2, rtol=1e-9) and np.allclose(r3, ref3, rtol=1e-9)
    stack = np.stack([p2, 2 * p2, 3 * p2])
    rs = filters.radial_average(stack, dims=2)
    assert rs.shape == (3, n // 2 + 1) and np.allclose(rs[2], 3 * r2)


def test_lowpass_highpass_bfactor():
    n, angpix = 32, 2.0
    rng = np.random.default_rng(5)
    vol = rng.normal(size=(n, n, n))
    res = 8.0                                          # shell n*angpix/res = 8
    lp = filters.lowpass(vol, res, angpix, width_shells=2)
    p0 = filters.radial_average(np.abs(fourier.ft3(vol)) ** 2)
    p1 = filters.radial_average(np.abs(fourier.ft3(lp)) ** 2)
    assert np.all(p1[10:] < 1e-20 * p0[10:])          # r >= cutoff + width/2 removed (shell 9.5: mixed)
    assert np.allclose(p1[:7], p0[:7], rtol=1e-9)      # untouched below cutoff - width/2
    assert 0.05 < p1[8] / p0[8] < 0.6
    hp = filters.highpass(vol, res, angpix, width_shells=2)
    assert np.allclose(lp + hp, vol, atol=1e-10)
    stack = rng.normal(size=(n, n, n)).astype(np.float32)          # n images of n x n
    lps = filters.lowpass(stack, res, angpix, dims=2)
    q0 = filters.radial_average(np.abs(fourier.ft2(stack)) ** 2, dims=2)
    q1 = filters.radial_average(np.abs(fourier.ft2(lps)) ** 2, dims=2)
    assert lps.dtype == np.float32 and q1.shape == (n, n // 2 + 1)
    assert np.all(q1[:, 10:] < 1e-8 * q0[:, 10:]) and np.allclose(q1[:, :7], q0[:, :7], rtol=1e-4)
    sh = filters.bfactor_sharpen(vol, -100.0, angpix)
    p2 = filters.radial_average(np.abs(fourier.ft3(sh)) ** 2)
    k = 12
    assert abs(p2[k] / p0[k] / np.exp(100.0 / 2 * (k / (n * angpix)) ** 2) - 1) < 0.1


# ---------------------------------------------------------------- FSC

def _blobs(n, rng, k=12):
    c = np.arange(n) - n // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    v = np.zeros((n, n, n))
    for _ in range(k):
        p = rng.uniform(-n / 4, n / 4, 3)
        v += np.exp(-((z - p[0]) ** 2 + (y - p[1]) ** 2 + (x - p[2]) ** 2) / (2 * 2.0 ** 2))
    return v


@pytest.mark.parametrize("n", [32, 33])
def test_fsc_identity_noise_and_snr(n):
    rng = np.random.default_rng(11)
    v = _blobs(n, rng)
    sh, c = fsc.fsc(v, v)
    assert sh.tolist() == list(range(n // 2 + 1)) and np.allclose(c, 1.0)
    _, c2 = fsc.fsc(v[n // 2], v[n // 2])                         # 2D
    assert np.allclose(c2, 1.0)
    a, b = rng.normal(size=(2, n, n, n))
    _, cn = fsc.fsc(a, b)
    counts = np.bincount(fourier.shell_index3(n).ravel())[: n // 2 + 1] * 2
    assert np.all(np.abs(cn[2:]) < 4.5 / np.sqrt(counts[2:]))
    assert abs(cn[2:].mean()) < 0.02
    # signal with a Gaussian spectrum + independent white noise: FSC = SNR / (1 + SNR)
    sig = filters._apply(rng.normal(size=(n, n, n)), 3, lambda r: np.exp(-r ** 2 / (2 * 6.0 ** 2)))
    sigma = 0.3
    x1 = sig + sigma * rng.normal(size=sig.shape)
    x2 = sig + sigma * rng.normal(size=sig.shape)
    _, cs = fsc.fsc(x1, x2)
    ks = np.arange(n // 2 + 1)
    # per-shell signal power over noise power (white noise: sigma^2 per coefficient, unnormalised FT)
    ps = filters.radial_average(np.abs(fourier.ft3(sig)) ** 2)
    snr = ps / (sigma ** 2 * n ** 3)
    theory = snr / (1 + snr)
    sel = ks >= 2
    err = np.abs(cs[sel] - theory[sel])
    assert np.all(err < 0.015 + 2.5 * (1 - theory[sel] ** 2) / np.sqrt(counts[sel]))
    assert err.mean() < 0.025          # vs ~0.09 for the wrong law 2 SNR / (1 + 2 SNR)
    assert theory[2] > 0.8 and theory[-1] < 0.05                   # the curve spans the range
    # half-grid sums equal full-grid sums
    A, Bf = np.fft.fftn(np.fft.ifftshift(x1)), np.fft.fftn(np.fft.ifftshift(x2))
    num = _full_grid_shell_means((A * Bf.conj()).real, n)
    den = np.sqrt(_full_grid_shell_means(np.abs(A) ** 2, n) * _full_grid_shell_means(np.abs(Bf) ** 2, n))
    assert np.allclose(cs, num / den, atol=1e-10)
    # a mask is applied to both
    m = masks.soft_spherical_mask(n, n / 3, 3)
    _, cm = fsc.fsc(x1, x2, mask=m)
    _, cref = fsc.fsc(x1 * m, x2 * m)
    assert np.allclose(cm, cref)


def test_resolution_at_and_table():
    n, angpix = 64, 1.5
    curve = np.array([1.0, 0.95, 0.8, 0.6, 0.4, 0.2, 0.1, 0.05, 0.0])
    r = fsc.resolution_at(curve, 0.5, n, angpix)
    assert abs(r - n * angpix / 3.5) < 1e-9
    r143 = fsc.resolution_at(curve, 0.143, n, angpix)
    assert abs(r143 - n * angpix / (5 + 0.057 / 0.1)) < 1e-9
    assert fsc.resolution_at(np.ones(9), 0.143, n, angpix) == n * angpix / 8
    assert fsc.resolution_at(np.r_[0.1, np.ones(8)], 0.143, n, angpix) == float("inf")
    t = fsc.fsc_table(np.arange(curve.size), curve, n, angpix)
    assert len(t) == curve.size and set(t.columns) == {"rlnSpectralIndex", "rlnResolution", "rlnAngstromResolution",
                      "rlnFourierShellCorrelation"}
    assert np.allclose(t["rlnResolution"][4], 4 / (n * angpix))
    assert np.allclose(t["rlnAngstromResolution"][4], n * angpix / 4)
    assert np.allclose(t["rlnFourierShellCorrelation"], curve) and t["rlnAngstromResolution"][0] == 999.0
    assert np.allclose(fsc.fsc_half_to_full([1.0, 0.143]), [1.0, math.sqrt(0.286 / 1.143)])
    assert np.allclose(fsc.fsc_true([0.9, 0.6, 0.5], [0.9, 0.2, 0.5], 1), [0.9, 0.5, 0.0])


def test_phase_randomise_keeps_low_shells():
    n = 24
    rng = np.random.default_rng(2)
    v = _blobs(n, rng) + 0.1 * rng.normal(size=(n, n, n))
    pr = fsc.phase_randomise(v, 6, rng)
    _, c = fsc.fsc(v, pr)
    assert np.all(c[:5] > 0.999) and np.abs(c[8:]).max() < 0.3


# ---------------------------------------------------------------- plots

def test_plots_write_png(tmp_path):
    from hpcem import plots
    rng = np.random.default_rng(0)
    sh = np.arange(33)
    p1 = plots.plot_fsc(tmp_path / "fsc.png", {"half maps": (sh, np.exp(-sh / 10.0)),
                                                "masked": (sh, np.exp(-sh / 12.0))}, 64, 1.2)
    p2 = plots.montage(tmp_path / "sub" / "classes.png", rng.normal(size=(7, 32, 32)),
                       labels=[f"{i}: 12%" for i in range(7)])
    p3 = plots.central_slices(tmp_path / "slices.png", _blobs(24, rng))
    for p in (p1, p2, p3):
        with open(p, "rb") as f:
            head = f.read(8)
        assert head == b"\x89PNG\r\n\x1a\n" and os.path.getsize(p) > 1000
    leftovers = [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]
    assert leftovers == []


def test_order_for_resolution_follows_the_resolution():
    from hpcem.core.sampling import angular_accuracy, order_for_resolution
    # 60 A radius: 30 A supports 28.6 deg, 2 x that = 57.3 < 60 -> order 1 (30 deg)
    assert abs(angular_accuracy(30.0, 60.0) - 28.648) < 1e-3
    assert order_for_resolution(30.0, 60.0) == 1
    assert order_for_resolution(10.0, 60.0) == 2      # 2 x 9.55 = 19.1 -> 15 deg
    assert order_for_resolution(5.0, 60.0) == 3       # 9.55 -> 7.5 deg
    assert order_for_resolution(float("inf"), 60.0) == 0
    assert order_for_resolution(1.0, 60.0, max_order=4) == 4
