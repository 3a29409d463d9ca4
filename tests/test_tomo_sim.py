"""The tilt kernels, weighted back-projection and the tomogram simulator against known truth."""
import numpy as np
import pytest

from hpcem import kernels
from hpcem.recon.tomogram import (RADIAL_CUTOFF, RADIAL_FALLOFF, tilt_angles,
                                  weighted_backprojection, wedge_mask)
from hpcem.simulate.tomo import TomoSettings, simulate_tomogram


def _tilt_project_ref(vol, angles, W):
    """numpy reference of the projection (voxel-driven linear spread)."""
    nz, ny, nx = vol.shape
    z, x = np.meshgrid(np.arange(nz) - nz // 2, np.arange(nx) - nx // 2, indexing="ij")
    out = np.zeros((len(angles), ny, W))
    for t, a in enumerate(angles):
        u = x * np.cos(a) + z * np.sin(a) + W // 2
        u0 = np.floor(u).astype(int)
        f = u - u0
        for col, wt in ((u0, 1 - f), (u0 + 1, f)):
            ok = (col >= 0) & (col < W)
            for iy in range(ny):
                np.add.at(out[t, iy], col[ok], (wt * vol[:, iy, :])[ok])
    return out


@pytest.mark.parametrize("shape,W", [((7, 5, 9), 9), ((8, 4, 16), 20)])
def test_tilt_kernels_reference_and_adjoint(shape, W, rng):
    vol = rng.normal(size=shape).astype(np.float32)
    ang = np.deg2rad(np.array([-60.0, -17.0, 0.0, 33.0, 60.0]))
    got = kernels.tilt_project(vol, ang, W)
    assert np.abs(got - _tilt_project_ref(vol.astype(np.float64), ang, W)).max() < 1e-4
    img = rng.normal(size=got.shape).astype(np.float32)
    back = kernels.tilt_backproject(img, ang, np.zeros(shape, np.float32))
    lhs, rhs = np.vdot(got.astype(np.float64), img), np.vdot(vol.astype(np.float64), back)
    assert abs(lhs - rhs) < 1e-4 * abs(lhs)


def test_tilt_kernels_thread_independent(rng):
    vol = rng.normal(size=(20, 6, 24)).astype(np.float32)
    ang = np.deg2rad(tilt_angles(60, 5))
    n0 = kernels.max_threads()
    try:
        kernels.set_threads(1)
        a = kernels.tilt_project(vol, ang, 24)
        b = kernels.tilt_backproject(a, ang, np.zeros_like(vol))
        kernels.set_threads(2)
        assert np.array_equal(a, kernels.tilt_project(vol, ang, 24))
        assert np.array_equal(b, kernels.tilt_backproject(a, ang, np.zeros_like(vol)))
    finally:
        kernels.set_threads(n0)
    with pytest.raises(kernels.KernelArgumentError, match="angles"):
        kernels.tilt_backproject(a, ang[:-1], np.zeros_like(vol))


def _cc(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float(np.vdot(a, b) / np.sqrt(np.vdot(a, a) * np.vdot(b, b)))


def test_single_particle_tomogram_matches_wedge_filtered_map():
    """One particle, no noise, no CTF: the tomogram is the map seen through the tilt range (the
    missing-wedge mask times WBP's radial fall-off) to correlation > 0.95 at slope 1, and its
    correlation with the full map is the one that filter predicts (to 0.08: the ramp filter keeps
    only part of the zero-u-frequency line that the ideal mask keeps)."""
    st = TomoSettings(shape=(48, 64, 64), diameters=(200.0,), abundance=(1.0,), n_particles=1, snr=float("inf"),
                      ctf=False, missed=0.0, seed=3)
    sim = simulate_tomogram(st, 0)
    F = np.fft.rfftn(sim.density.astype(np.float64))
    kz = np.fft.fftfreq(48)[:, None, None]
    kx = np.fft.rfftfreq(64)[None, None, :]
    k = np.sqrt(kx ** 2 + kz ** 2)
    edge = np.where(k > RADIAL_CUTOFF, np.exp(-0.5 * ((k - RADIAL_CUTOFF) / RADIAL_FALLOFF) ** 2), 1.0)
    expected = np.fft.irfftn(F * wedge_mask(st.shape, 60.0) * edge, s=st.shape, axes=(0, 1, 2))
    inside = np.s_[8:40, 16:48, 16:48]
    t, e, d = sim.tomogram[inside], expected[inside], sim.density[inside]
    assert _cc(t, e) > 0.95
    slope = np.vdot(t - t.mean(), e - e.mean()) / np.vdot(e - e.mean(), e - e.mean())
    assert abs(slope - 1.0) < 0.1
    assert abs(_cc(t, d) - _cc(e, d)) < 0.08
    assert _cc(e, d) < 0.9                          # the wedge is a real loss, not a no-op


def test_missing_wedge_where_expected(rng):
    """Noise back-projected from +-60 degrees: no power in the wedge around kz (every ky)."""
    shape = (64, 32, 64)
    ang = tilt_angles(60, 3)
    tomo = weighted_backprojection(rng.normal(size=(len(ang), 32, 64)).astype(np.float32), ang, shape)
    P = np.abs(np.fft.rfftn(tomo)) ** 2
    kz = np.fft.fftfreq(64)[:, None, None]
    ky = np.fft.fftfreq(32)[None, :, None]
    kx = np.fft.rfftfreq(64)[None, None, :]
    phi = np.degrees(np.arctan2(np.abs(kz), np.abs(kx)))
    band = (np.sqrt(kx ** 2 + kz ** 2) > 0.05) & (np.sqrt(kx ** 2 + kz ** 2) < 0.3) & (np.abs(ky) < 0.4)
    band = np.broadcast_to(band, P.shape)
    phi = np.broadcast_to(phi, P.shape)
    sampled, wedge = P[band & (phi < 50)].mean(), P[band & (phi > 70)].mean()
    assert wedge < 0.03 * sampled
    for iy in (0, 5, 12):                           # the same at every ky
        sl = P[:, iy]
        assert sl[band[:, iy] & (phi[:, iy] > 70)].mean() < 0.05 * sl[band[:, iy] & (phi[:, iy] < 50)].mean()


def test_labels_coincide_with_truth():
    from scipy import ndimage

    st = TomoSettings(shape=(48, 80, 80), diameters=(120.0, 70.0, 40.0), abundance=(4.0, 3.0, 3.0),
                      n_particles=20, snr=1.0, missed=0.3, seed=5)
    sim = simulate_tomogram(st, 0)
    radii = st.radii()
    for s in (1, 2, 3):
        n = int(np.sum(sim.classes == s))
        assert n == st.counts()[s - 1]
        assert np.sum(~sim.kept & (sim.classes == s)) == int(np.rint(0.3 * n))
    centre = np.rint(sim.coords).astype(int)
    at = sim.sphere_labels[centre[:, 2], centre[:, 1], centre[:, 0]]
    assert np.array_equal(at, np.where(sim.kept, sim.classes, 0))
    lab, n_comp = ndimage.label(sim.sphere_labels > 0)
    assert n_comp == int(sim.kept.sum())
    cents = np.array(ndimage.center_of_mass(np.ones_like(lab), lab, range(1, n_comp + 1)))[:, ::-1]
    d = np.linalg.norm(cents[:, None] - sim.coords[sim.kept][None], axis=-1)
    assert np.all(d.min(1) < 0.5)
    # shape labels: inside the particle of the same species, covering most of its density
    z, y, x = np.nonzero(sim.shape_labels)
    pts, cls = np.stack([x, y, z], 1), sim.shape_labels[z, y, x]
    dist = np.linalg.norm(pts[:, None] - sim.coords[None], axis=-1)
    nearest = dist.argmin(1)
    assert np.all(sim.classes[nearest] == cls)
    assert np.all(dist.min(1) <= radii[cls - 1] + 1e-6)
    mass = np.clip(sim.density, 0, None)
    assert mass[sim.shape_labels > 0].sum() > 0.7 * mass.sum()
