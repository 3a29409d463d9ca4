"""`hpcem import`: cryoSPARC .cs -> RELION 3.1 STAR. Round trip, a reconstruction that fixes the pose
and shift conventions, real cryoSPARC files (cryoDRGN's test data, when present), bad input, CLI."""
import os
import pickle

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from hpcem.core.euler import euler_to_matrix, matrix_to_euler, random_rotations
from hpcem.errors import InputError
from hpcem.io.cryosparc import cs_to_star, euler_to_rotvec, rotvec_to_euler, write_cs
from hpcem.io.mrc import write_mrc
from hpcem.io.particles import ParticleSet

REAL = "/work/realdata/cryodrgn-4.3.1/tests/data"


def angle_between(A, B):
    """Degrees between rotations (..., 3, 3), from ||A - B||_F = 2 sqrt(2) sin(angle / 2): stable for
    small angles, unlike arccos of the trace."""
    f = np.linalg.norm(np.asarray(A, np.float64) - np.asarray(B, np.float64), axis=(-2, -1))
    return np.rad2deg(2 * np.arcsin(np.clip(f / (2 * np.sqrt(2)), 0, 1)))


def documented_pose(rot, tilt, psi):
    """cryoSPARC pose of RELION angles, as pyem/cryoDRGN document it (RELION A = R(pose)^T), written
    without hpcem: A^T is scipy's intrinsic ZYZ rotation (rot, tilt, psi)."""
    return Rotation.from_euler("ZYZ", np.stack([rot, tilt, psi], -1), degrees=True).as_rotvec()


def particle_fields(n, box=32, angpix=3.0, exp=None, path=b"J5/extract/particles.mrcs"):
    """The blob/ctf fields of a cryoSPARC particle file, with cryoSPARC's dtypes."""
    return {"uid": np.arange(n, dtype="u8") * 7919 + 11, "blob/path": np.full(n, path, "S%d" % len(path)),
            "blob/idx": np.arange(n, dtype="u4"), "blob/shape": np.full((n, 2), box, "u4"),
            "blob/psize_A": np.full(n, angpix, "f4"),
            "ctf/exp_group_id": (np.zeros(n) if exp is None else exp).astype("u4"),
            "ctf/accel_kv": np.full(n, 300, "f4"), "ctf/cs_mm": np.full(n, 2.7, "f4"),
            "ctf/amp_contrast": np.full(n, 0.1, "f4"), "ctf/df1_A": np.full(n, 15000, "f4"),
            "ctf/df2_A": np.full(n, 14000, "f4"), "ctf/df_angle_rad": np.full(n, 0.5, "f4"),
            "ctf/phase_shift_rad": np.zeros(n, "f4")}


# ---------------------------------------------------------------- 1. round trip
def test_round_trip_poses_shifts_and_optics_groups(tmp_path, rng):
    n = 500
    R = random_rotations(n, rng)
    R[:4] = [np.eye(3), np.diag([1.0, -1, -1]), np.diag([-1.0, 1, -1]), euler_to_matrix(30, 180, 40)]
    rot, tilt, psi = matrix_to_euler(R)          # includes both poles and rotations by pi
    origins = rng.uniform(-10, 10, (n, 2))
    f = particle_fields(n, angpix=1.5, exp=np.arange(n) % 2)
    f["alignments3D/pose"] = euler_to_rotvec(rot, tilt, psi).astype("f4")
    f["alignments3D/shift"] = (origins / 1.5).astype("f4")
    write_cs(tmp_path / "x.cs", f)
    t = cs_to_star(tmp_path / "x.cs")
    p = t["particles"]
    got = euler_to_matrix(p.rlnAngleRot, p.rlnAngleTilt, p.rlnAnglePsi)
    assert angle_between(got, R).max() < 0.01
    assert np.abs(p[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() - origins).max() < 1e-3
    assert len(t["optics"]) == 2 and sorted(p.rlnOpticsGroup.unique()) == [1, 2]
    assert (p.rlnOpticsGroup.to_numpy() == np.arange(n) % 2 + 1).all()
    assert p.rlnImageName[0] == "000001@J5/extract/particles.mrcs"
    # the module's inverse is the documented convention, and a 2D pose is the z rotation vector
    assert angle_between(euler_to_matrix(*rotvec_to_euler(documented_pose(rot, tilt, psi))), R).max() < 1e-6
    A2 = euler_to_matrix(*rotvec_to_euler(np.array([0.0, 0.0, 0.7])))
    assert angle_between(A2, euler_to_matrix(0, 0, np.rad2deg(0.7))) < 1e-9


# ---------------------------------------------------------------- 2. physics
@pytest.fixture(scope="module")
def sim_set(tmp_path_factory):
    from hpcem.simulate import simulate_dataset

    d = tmp_path_factory.mktemp("cs_sim")
    sim = simulate_dataset(n=32, n_particles=1500, angpix=3.0, snr=float("inf"), defocus=(8000, 20000),
                           astig=4000, max_shift_A=12.0, seed=7)
    write_mrc(d / "sim.mrcs", sim.images, 3.0, stack=True)
    return d, sim


def _reconstruct(ps):
    from hpcem.parallel.comm import SerialComm
    from hpcem.recon.reconstruct import reconstruct

    return reconstruct(ps, SerialComm(), ctf=True, verbose=False)


def _map_from_cs(d, sim, pose, shift_px, tag):
    from hpcem.io.star import write_star

    c, n = sim.ctf, len(sim.rot)
    f = particle_fields(n, 32, 3.0, path=b"sim.mrcs")
    f.update({"alignments3D/pose": pose.astype("f4"), "alignments3D/shift": shift_px.astype("f4"),
              "ctf/df1_A": c["defocus_u"].astype("f4"), "ctf/df2_A": c["defocus_v"].astype("f4"),
              "ctf/df_angle_rad": np.deg2rad(c["defocus_angle"]).astype("f4")})
    write_cs(d / (tag + ".cs"), f)
    write_star(d / (tag + ".star"), cs_to_star(d / (tag + ".cs")))
    return _reconstruct(ParticleSet.read(d / (tag + ".star"), ctf=True))


def test_reconstruction_from_converted_poses(sim_set):
    from hpcem.core.fsc import fsc, resolution_at

    d, sim = sim_set
    c = sim.ctf
    ref = _reconstruct(ParticleSet.from_arrays(
        sim.images, 3.0, rot=sim.rot, tilt=sim.tilt, psi=sim.psi, origins=sim.origins_A, amp_contrast=0.1,
        defocus_u=c["defocus_u"], defocus_v=c["defocus_v"], defocus_angle=c["defocus_angle"]))
    pose, shift = documented_pose(sim.rot, sim.tilt, sim.psi), sim.origins_A / 3.0
    lim = int(0.8 * 16)
    cases = {"documented": (pose, shift),
             "transposed rotation": (Rotation.from_rotvec(pose).inv().as_rotvec(), shift),
             "shift sign flipped": (pose, -shift)}
    for name, (p, s) in cases.items():
        m = _map_from_cs(d, sim, p, s, name.replace(" ", "_"))
        to_ref, to_truth = fsc(m, ref)[1], fsc(m, sim.volumes[0])[1]
        res = resolution_at(to_truth, 0.5, 32, 3.0)
        print("%-20s FSC to the true-pose map min(1..%d) %.4f, to truth %.4f, FSC=0.5 at %.2f A" % (
            name, lim, to_ref[1:lim + 1].min(), to_truth[1:lim + 1].min(), res))
        ok = to_ref[1:lim + 1].min() > 0.99 and to_truth[1:lim + 1].min() > 0.95 and res < 6.5
        assert ok == (name == "documented"), name


# ---------------------------------------------------------------- 3. real cryoSPARC files
real = pytest.mark.skipif(not os.path.isdir(REAL), reason="cryoDRGN test data not present")


@real
@pytest.mark.parametrize("name", ["cryosparc_P12_J24_001_particles.cs", "cryosparc_J2_particles_exported.cs",
                                  "empiar_10076_7.cs"])
def test_real_files_convert(name):
    raw = np.load(os.path.join(REAL, name))
    p = cs_to_star(os.path.join(REAL, name))["particles"]
    assert len(p) == len(raw)
    for col in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnDefocusU"):
        assert col not in p or np.isfinite(p[col]).all()
    assert not p.rlnImageName.str.contains(">").any()
    if "alignments2D/pose" in raw.dtype.names:
        diff = np.angle(np.exp(1j * (np.deg2rad(p.rlnAnglePsi) - raw["alignments2D/pose"])))
        assert np.abs(diff).max() < 1e-5
        assert (p.rlnClassNumber == raw["alignments2D/class"] + 1).all()


@real
def test_real_refinement_matches_cryodrgn_parse():
    """pose.cs.pkl is cryoDRGN's parse_pose_csparc -D 180 of this file: its rotation is RELION's A
    (cryoDRGN's R_from_relion builds A from rlnAngle*), its translation the shift in box fractions."""
    p = cs_to_star(os.path.join(REAL, "cryosparc_P12_J24_001_particles.cs"))["particles"]
    with open(os.path.join(REAL, "pose.cs.pkl"), "rb") as fh:
        rot, trans = pickle.load(fh)
    A = euler_to_matrix(p.rlnAngleRot, p.rlnAngleTilt, p.rlnAnglePsi)
    assert angle_between(A, rot).max() < 1e-3
    assert np.median(angle_between(np.swapaxes(A, 1, 2), rot)) > 10   # the transpose is far off
    px = p[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() / 2.95
    assert np.abs(px - trans * 180).max() < 1e-3


@real
def test_real_ctf_matches_relion_star_and_stack_reads(tmp_path):
    from hpcem.io.star import read_star, write_star

    t = cs_to_star(os.path.join(REAL, "empiar_10076_7.cs"), stack_dir=REAL)
    star = read_star(os.path.join(REAL, "empiar_10076_7.star"))[""]
    p = t["particles"]
    for col in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"):
        assert np.allclose(p[col], star[col], atol=0.06), col
    assert np.allclose(t["optics"][["rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"]].iloc[0],
                       star[["rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"]].iloc[0])
    assert [int(s.split("@")[0]) for s in p.rlnImageName] == [int(s.split("@")[0]) for s in star.rlnImageName]
    write_star(tmp_path / "e.star", t)
    ps = ParticleSet.read(tmp_path / "e.star", ctf=True)          # stacks validated
    assert ps.box == 320 and ps.angpix == pytest.approx(1.31, abs=1e-4)
    assert np.isfinite(ps.read_images([6])).all()


# ---------------------------------------------------------------- 4. bad input
def test_bad_input(tmp_path):
    f = particle_fields(4)
    del f["blob/path"]
    write_cs(tmp_path / "nopath.cs", f)
    with pytest.raises(InputError) as e:
        cs_to_star(tmp_path / "nopath.cs")
    assert e.value.file == str(tmp_path / "nopath.cs") and e.value.field == "blob/path"
    (tmp_path / "text.cs").write_text("data_\nloop_\n_rlnImageName\n")
    np.save(tmp_path / "plain.npy", np.zeros((4, 3)))
    for name in ("text.cs", "plain.npy"):
        with pytest.raises(InputError) as e:
            cs_to_star(tmp_path / name)
        assert e.value.file == str(tmp_path / name) and e.value.field == "format"
    f = particle_fields(4)
    f["alignments3D/pose"] = np.zeros((4, 4), "f4")
    write_cs(tmp_path / "pose4.cs", f)
    with pytest.raises(InputError, match="alignments3D/pose"):
        cs_to_star(tmp_path / "pose4.cs")
    f = particle_fields(4)
    write_cs(tmp_path / "main.cs", {"uid": f["uid"], "blob/path": f["blob/path"], "blob/idx": f["blob/idx"]})
    write_cs(tmp_path / "pt.cs", {k: v[:3] for k, v in f.items() if k != "blob/path"})
    with pytest.raises(InputError) as e:
        cs_to_star(tmp_path / "main.cs", tmp_path / "pt.cs")
    assert e.value.file == str(tmp_path / "pt.cs") and e.value.field == "uid"


# ---------------------------------------------------------------- 5. CLI
def test_cli_import_with_passthrough(tmp_path, capsys):
    from hpcem.cli.main import main
    from hpcem.io.star import read_star

    n, proj = 6, tmp_path / "proj"
    (proj / "J5" / "extract").mkdir(parents=True)
    write_mrc(proj / "J5" / "extract" / "particles.mrcs", np.zeros((n, 16, 16), np.float32), 1.5, stack=True)
    f = particle_fields(n, box=16, angpix=1.5, exp=np.array([3, 3, 3, 8, 8, 8]))
    f["location/micrograph_path"] = np.full(n, b"J2/motioncorrected/mic1.mrc", "S27")
    f["location/center_x_frac"] = np.linspace(0.1, 0.9, n).astype("f4")
    f["location/center_y_frac"] = np.full(n, 0.25, "f4")
    f["location/micrograph_shape"] = np.tile(np.array([4000, 6000], "u4"), (n, 1))
    f["alignments2D/pose"] = np.full(n, 1.0, "f4")            # an older 2D classification: the main
    f["alignments2D/shift"] = np.full((n, 2), 5.0, "f4")        # file's alignments3D win
    main_fields = {k: f[k] for k in ("uid", "blob/path", "blob/idx", "blob/shape", "blob/psize_A")}
    main_fields["alignments3D/pose"] = np.zeros((n, 3), "f4")
    main_fields["alignments3D/shift"] = np.tile(np.array([1.0, -2.0], "f4"), (n, 1))
    write_cs(tmp_path / "J24_particles.cs", main_fields)
    order = np.arange(n)[::-1]                       # the passthrough in another order
    write_cs(tmp_path / "P24_passthrough.cs", {k: v[order] for k, v in f.items() if k.split("/")[0] != "blob"})
    out = tmp_path / "out" / "particles.star"
    args = ["import", "--i", tmp_path / "J24_particles.cs", "--passthrough", tmp_path / "P24_passthrough.cs",
            "--o", out, "--stack_dir", proj]
    assert main([str(a) for a in args]) == 0
    ps = ParticleSet.read(out, ctf=True)
    assert sorted(g.name for g in ps.optics.values()) == ["exp_group_3", "exp_group_8"]
    assert ps.angpix == pytest.approx(1.5) and ps.box == 16
    assert (ps.optics_group_index() == [0, 0, 0, 1, 1, 1]).all()
    assert np.allclose(ps.origins_angst(), [[1.5, -3.0]] * n, atol=1e-5)
    assert np.allclose(ps.poses(), 0, atol=1e-6)
    assert np.allclose(ps.ctf_params()["defocus_angle"], np.rad2deg(0.5), atol=1e-4)
    t = ps.table
    assert np.allclose(t.rlnCoordinateX, np.linspace(0.1, 0.9, n) * 6000, atol=0.1)
    assert np.allclose(t.rlnCoordinateY, 1000, atol=0.1)
    assert t.rlnMicrographName[0] == str(proj / "J2/motioncorrected/mic1.mrc")
    # --angpix overrides blob/psize_A (shifts follow); bad input: one line, status 2, nothing written
    assert main([str(a) for a in args[:5] + ["--o", tmp_path / "o2.star", "--stack_dir", proj,
                                             "--angpix", "2.0"]]) == 0
    assert np.allclose(ParticleSet.read(tmp_path / "o2.star", validate_stacks=False).origins_angst()[0],
                       [2.0, -4.0], atol=1e-5)
    assert main([str(a) for a in args[:3] + ["--o", tmp_path / "noctf.star"]]) == 0   # no passthrough
    assert "rlnVoltage" not in read_star(tmp_path / "noctf.star")["optics"]
    capsys.readouterr()
    write_cs(tmp_path / "nopath.cs", {"uid": f["uid"], "blob/idx": f["blob/idx"]})
    assert main(["import", "--i", str(tmp_path / "nopath.cs"), "--o", str(tmp_path / "no.star")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nopath.cs" in err[0] and "blob/path" in err[0]
    assert not (tmp_path / "no.star").exists()
