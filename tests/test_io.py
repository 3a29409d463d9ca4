"""Tests for hpcem.io: atomic writes, MRC, STAR and ParticleSet (RELION semantics)."""
from __future__ import annotations

import pickle
import shutil
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from hpcem.errors import InputError
from hpcem.io import (MrcStack, ParticleSet, atomic_write, read_mrc, read_star, write_mrc,
                      write_particle_stack, write_star)

FIXTURES = Path(__file__).parent / "fixtures"
BOX = 12


def stack_values(n, box=BOX, offset=0.0):
    """Stack whose image k is filled with offset + k + a small ramp (identifiable images)."""
    ramp = np.arange(box * box, dtype=np.float32).reshape(box, box) / 1000.0
    return np.stack([np.float32(offset + k) + ramp for k in range(n)]).astype(np.float32)


def assert_input_error(excinfo, file_part, field):
    err = excinfo.value
    assert type(err) is InputError
    msg = str(err)
    assert "\n" not in msg
    assert file_part in msg, msg
    assert field in msg, msg
    assert err.field is not None and field in err.field
    assert file_part in err.file


# --------------------------------------------------------------------------- atomic
def test_atomic_write_success_and_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_write(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".out.txt.tmp-")
        tmp.write_text("new")
        assert target.read_text() == "old"  # untouched until success
    assert target.read_text() == "new"
    with pytest.raises(RuntimeError):
        with atomic_write(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


# --------------------------------------------------------------------------- MRC
@pytest.mark.parametrize("dtype,mode", [(np.int8, 0), (np.int16, 1), (np.float32, 2),
                                        (np.uint16, 6), (np.float16, 12)])
def test_mrc_modes_round_trip(tmp_path, dtype, mode):
    rng = np.random.default_rng(mode)
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        data = rng.integers(max(info.min, -1000), min(info.max, 1000), size=(3, 10, 10)).astype(dtype)
    else:
        data = rng.normal(size=(3, 10, 10)).astype(dtype)
    path = tmp_path / "x.mrcs"
    write_mrc(path, data, 1.25, dtype=dtype)
    with mrcfile.open(path, permissive=False) as m:
        assert int(m.header.mode) == mode
        assert m.is_image_stack()
    out, angpix = read_mrc(path)
    assert out.dtype == np.float32 and out.shape == (3, 10, 10)
    assert angpix == pytest.approx(1.25)
    np.testing.assert_array_equal(out, data.astype(np.float32))


def test_mrc_read_files_written_by_mrcfile(tmp_path):
    # a mode-6 file written by plain mrcfile (not by hpcem) reads back the same
    data = np.arange(2 * 8 * 8, dtype=np.uint16).reshape(2, 8, 8) * 7
    p = tmp_path / "plain.mrc"
    with mrcfile.new(p) as m:
        m.set_data(data)
        m.voxel_size = 3.5
    out, angpix = read_mrc(p)
    np.testing.assert_array_equal(out, data.astype(np.float32))
    assert angpix == pytest.approx(3.5)


def test_mrc_stack_volume_image_float16(tmp_path):
    rng = np.random.default_rng(1)
    vol = rng.normal(size=(8, 8, 8)).astype(np.float32)
    write_mrc(tmp_path / "v.mrc", vol, 2.0)
    with mrcfile.open(tmp_path / "v.mrc") as m:
        assert m.is_volume() and m.voxel_size.z == pytest.approx(2.0)
    out, a = read_mrc(tmp_path / "v.mrc")
    np.testing.assert_array_equal(out, vol)
    img = vol[0]
    write_mrc(tmp_path / "i.mrc", img, 0.9)
    out, a = read_mrc(tmp_path / "i.mrc")
    assert out.shape == (8, 8) and a == pytest.approx(0.9)
    np.testing.assert_array_equal(out, img)
    # a 3D array with stack=True under a .mrc name is a stack
    write_mrc(tmp_path / "s.mrc", vol, 1.0, stack=True)
    with mrcfile.open(tmp_path / "s.mrc") as m:
        assert m.is_image_stack()
    # a 2D image written as .mrcs is a stack of one
    write_mrc(tmp_path / "one.mrcs", img, 1.0)
    assert MrcStack(tmp_path / "one.mrcs").shape == (1, 8, 8)
    # float16 on request: values rounded to half precision
    write_mrc(tmp_path / "h.mrc", vol, 2.0, dtype=np.float16)
    out, _ = read_mrc(tmp_path / "h.mrc")
    np.testing.assert_array_equal(out, vol.astype(np.float16).astype(np.float32))
    assert not np.array_equal(out, vol)


def test_mrcstack_lazy_subset_equals_full(tmp_path):
    data = stack_values(20, box=16)
    p = tmp_path / "big.mrcs"
    write_mrc(p, data, 1.1)
    st = MrcStack(p)
    assert st.shape == (20, 16, 16) and st.n == 20 and st.box == 16
    assert st.angpix == pytest.approx(1.1)
    full = st.read()
    np.testing.assert_array_equal(full, data)
    for idx in ([3], [0, 19], [7, 2, 7, 11], np.arange(4, 9), [19, 0, 5]):
        sub = st.read(idx)
        assert sub.dtype == np.float32 and sub.shape == (len(idx), 16, 16)
        np.testing.assert_array_equal(sub, full[np.asarray(idx)])
    with pytest.raises(InputError) as ei:
        st.read([20])
    assert_input_error(ei, "big.mrcs", "image index")
    st.close()


def _truncated(tmp_path):
    p = tmp_path / "trunc.mrcs"
    write_mrc(p, stack_values(4), 1.0)
    raw = p.read_bytes()
    p.write_bytes(raw[:-100])
    return p


def test_mrc_bad_inputs(tmp_path):
    with pytest.raises(InputError) as ei:
        read_mrc(tmp_path / "nothere.mrc")
    assert_input_error(ei, "nothere.mrc", "file")
    p = _truncated(tmp_path)
    for fn in (read_mrc, MrcStack):
        with pytest.raises(InputError) as ei:
            fn(p)
        assert_input_error(ei, "trunc.mrcs", "size")
    # unsupported mode: complex64 (mode 4) written by mrcfile
    c = tmp_path / "complex.mrc"
    with mrcfile.new(c) as m:
        m.set_data(np.zeros((4, 4), np.complex64))
    with pytest.raises(InputError) as ei:
        read_mrc(c)
    assert_input_error(ei, "complex.mrc", "mode")
    # non-square stack
    ns = tmp_path / "rect.mrcs"
    write_mrc(ns, np.zeros((2, 8, 10), np.float32), 1.0)
    with pytest.raises(InputError) as ei:
        MrcStack(ns)
    assert_input_error(ei, "rect.mrcs", "nx/ny")
    assert read_mrc(ns)[0].shape == (2, 8, 10)  # plain reads of rectangular data are fine
    # not an MRC file
    junk = tmp_path / "junk.mrc"
    junk.write_bytes(b"x" * 2000)
    with pytest.raises(InputError) as ei:
        read_mrc(junk)
    assert_input_error(ei, "junk.mrc", "header")


# --------------------------------------------------------------------------- STAR
def test_star_round_trip_with_plain_starfile(tmp_path):
    optics = pd.DataFrame({"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
                           "rlnImagePixelSize": [1.34], "rlnImageSize": [64]})
    parts = pd.DataFrame({"rlnImageName": ["000001@a.mrcs", "000002@a.mrcs"],
                          "rlnDefocusU": [12345.678, 23456.5], "rlnOpticsGroup": [1, 1]})
    general = {"rlnReferenceDimensionality": 3, "rlnPixelSize": 1.34, "rlnTau2FudgeFactor": 4.0}
    sig = pd.DataFrame({"rlnSpectralIndex": [0, 1, 2], "rlnSigma2Noise": [1.5e-9, 2.25e-5, 3.0]})
    p = tmp_path / "out.star"
    write_star(p, {"optics": optics, "data_particles": parts, "model_general": general,
                   "model_sigma2": sig})
    text = p.read_text()
    for s in ("data_optics", "data_particles", "data_model_general", "data_model_sigma2",
              "_rlnImagePixelSize #3", "_rlnImageName #1"):
        assert s in text
    plain = starfile.read(p)
    assert plain["optics"]["rlnImagePixelSize"].iloc[0] == pytest.approx(1.34)
    assert list(plain["particles"]["rlnImageName"]) == ["000001@a.mrcs", "000002@a.mrcs"]
    np.testing.assert_allclose(plain["particles"]["rlnDefocusU"], [12345.678, 23456.5])
    back = read_star(p)
    assert set(back) == {"optics", "particles", "model_general", "model_sigma2"}
    assert back["model_general"]["rlnTau2FudgeFactor"].iloc[0] == pytest.approx(4.0)
    np.testing.assert_allclose(back["model_sigma2"]["rlnSigma2Noise"], [1.5e-9, 2.25e-5, 3.0],
                               rtol=1e-9)


def test_star_bad_inputs(tmp_path):
    with pytest.raises(InputError) as ei:
        read_star(tmp_path / "none.star")
    assert_input_error(ei, "none.star", "file")
    g = tmp_path / "garbage.star"
    g.write_text("this is not { a star file\n")
    with pytest.raises(InputError) as ei:
        read_star(g)
    assert_input_error(ei, "garbage.star", "format")


def test_single_block_normalised_to_dict(tmp_path):
    p = tmp_path / "one.star"
    p.write_text("data_\n\nloop_\n_rlnImageName #1\n_rlnDefocusU #2\n000001@x.mrcs 1000.0\n")
    d = read_star(p)
    assert list(d) == [""] and d[""]["rlnDefocusU"].iloc[0] == 1000.0


# --------------------------------------------------------------------------- fixtures
def _setup_relion30(tmp_path):
    root = tmp_path / "old"
    (root / "Particles").mkdir(parents=True)
    shutil.copy(FIXTURES / "relion30_particles.star", root / "particles.star")
    write_mrc(root / "Particles" / "mic1.mrcs", stack_values(3, offset=100), 1.4)
    write_mrc(root / "Particles" / "mic2.mrcs", stack_values(2, offset=200), 1.4)
    return root


def _setup_relion31(tmp_path, star_sub="Select/job010"):
    proj = tmp_path / "proj"
    mov = proj / "Extract" / "job007" / "Movies"
    mov.mkdir(parents=True)
    (proj / star_sub).mkdir(parents=True, exist_ok=True)
    shutil.copy(FIXTURES / "relion31_particles.star", proj / star_sub / "particles.star")
    write_mrc(mov / "mic1.mrcs", stack_values(2, offset=100), 1.4)
    write_mrc(mov / "mic2.mrcs", stack_values(3, offset=200), 1.4)
    return proj, proj / star_sub / "particles.star"


def test_relion30_fixture(tmp_path, monkeypatch):
    root = _setup_relion30(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # stacks only resolvable from the STAR file's folder
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ps = ParticleSet.read(root / "particles.star")
    msgs = [str(x.message) for x in w]
    assert len(msgs) == 1, msgs
    assert "3.0" in msgs[0] and "onvert" in msgs[0]
    assert ps.n == 4 and ps.box == BOX
    assert ps.angpix == pytest.approx(1.4)  # 7.0 um * 1e4 / 50000
    assert list(ps.optics) == [1]
    g = ps.optics[1]
    assert (g.voltage, g.cs, g.amp_contrast, g.box) == (300.0, 2.7, 0.1, BOX)
    np.testing.assert_allclose(ps.origins_px(), [[1.5, -2.0], [0.0, 3.0], [-1.0, 0.5], [2.0, 2.0]])
    np.testing.assert_allclose(ps.table["rlnOriginXAngst"], [2.1, 0.0, -1.4, 2.8])
    c = ps.ctf_params()
    np.testing.assert_allclose(c["defocus_u"], [15000, 15100, 21000, 21050])
    np.testing.assert_allclose(c["defocus_v"], [14500, 14600, 20500, 20550])
    np.testing.assert_allclose(c["defocus_angle"], [30.5, 31.0, -45.0, -44.0])
    np.testing.assert_allclose(c["voltage"], 300.0)
    np.testing.assert_allclose(c["angpix"], 1.4)
    rot, tilt, psi = ps.poses()
    np.testing.assert_allclose(rot, [10, 40, -70, 170])
    np.testing.assert_allclose(psi, [30, 60, -90, 110])
    np.testing.assert_array_equal(ps.class_numbers(), [1, 2, 1, 2])
    np.testing.assert_array_equal(ps.random_subset(), [1, 2, 1, 2])
    np.testing.assert_array_equal(ps.optics_group_index(), [0, 0, 0, 0])
    imgs = ps.read_images()
    # 000001@mic1, 000003@mic1, 000002@mic2, 000001@mic2
    np.testing.assert_allclose(imgs[:, 0, 0], [100, 102, 201, 200])
    np.testing.assert_array_equal(imgs[1], stack_values(3, offset=100)[2])
    assert list(ps.table["rlnMicrographName"]) == ["mic1.mrc", "mic1.mrc", "mic2.mrc", "mic2.mrc"]
    # written back as RELION 3.1: optics + particles, origins in Angstrom, no warning on re-read
    out = tmp_path / "old" / "converted.star"
    ps.write(out)
    plain = starfile.read(out)
    assert plain["optics"]["rlnImagePixelSize"].iloc[0] == pytest.approx(1.4)
    assert plain["optics"]["rlnImageSize"].iloc[0] == BOX
    assert "rlnOriginX" not in plain["particles"].columns
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = ParticleSet.read(out)
    np.testing.assert_allclose(again.origins_px(), ps.origins_px())


def test_relion30_needs_pixel_size(tmp_path):
    p = tmp_path / "nopix.star"
    write_mrc(tmp_path / "s.mrcs", stack_values(2), 1.0)
    p.write_text("data_\nloop_\n_rlnImageName\n_rlnDefocusU\n_rlnOriginX\n"
                 "000001@s.mrcs 10000 2.0\n000002@s.mrcs 11000 1.0\n")
    with pytest.warns(UserWarning):
        with pytest.raises(InputError) as ei:
            ParticleSet.read(p)
    assert_input_error(ei, "nopix.star", "rlnImagePixelSize")
    with pytest.warns(UserWarning):
        ps = ParticleSet.read(p, angpix=2.5)
    assert ps.angpix == 2.5
    np.testing.assert_allclose(ps.origins_px()[:, 0], [2.0, 1.0])
    np.testing.assert_allclose(ps.table["rlnOriginXAngst"], [5.0, 2.5])


def test_relion31_fixture_cwd_resolution(tmp_path, monkeypatch):
    proj, star = _setup_relion31(tmp_path)
    monkeypatch.chdir(proj)  # names are relative to the project folder, not the STAR folder
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ps = ParticleSet.read(star, ctf=True)
    assert ps.n == 5 and ps.box == BOX and ps.angpix == pytest.approx(1.4)
    assert sorted(ps.optics) == [1, 2]
    g1, g2 = ps.optics[1], ps.optics[2]
    assert (g1.name, g1.voltage, g1.cs, g1.amp_contrast) == ("opticsGroup1", 300.0, 2.7, 0.1)
    assert (g2.name, g2.voltage, g2.cs, g2.amp_contrast) == ("krios2", 200.0, 0.01, 0.07)
    assert not g1.ctf_data_are_ctf_premultiplied
    np.testing.assert_array_equal(ps.optics_group_index(), [0, 0, 1, 1, 0])
    c = ps.ctf_params()
    np.testing.assert_allclose(c["voltage"], [300, 300, 200, 200, 300])
    np.testing.assert_allclose(c["cs"], [2.7, 2.7, 0.01, 0.01, 2.7])
    np.testing.assert_allclose(c["amp_contrast"], [0.1, 0.1, 0.07, 0.07, 0.1])
    np.testing.assert_allclose(c["phase_shift"], [0, 0, 90, 45, 0])
    np.testing.assert_allclose(c["bfactor"], [0, 0, -50, -60, 0])
    np.testing.assert_allclose(c["defocus_v"], [11800, 11900, 24000, 24100, 12900])
    sub = ps.ctf_params([2, 0])
    np.testing.assert_allclose(sub["defocus_u"], [25000, 12000])
    np.testing.assert_allclose(ps.origins_px(), [[2, -1], [0, 3], [-5, 0.5], [1, 1], [0, 0]])
    rot, tilt, psi = ps.poses([0, 3])
    np.testing.assert_allclose(rot, [10, 170])
    np.testing.assert_allclose(tilt, [20, 100])
    np.testing.assert_array_equal(ps.class_numbers(), [1, 2, 3, 1, 2])
    np.testing.assert_array_equal(ps.random_subset(), [1, 2, 1, 2, 1])
    np.testing.assert_allclose(ps.read_images()[:, 0, 0], [101, 100, 202, 200, 201])
    clone = pickle.loads(pickle.dumps(ps))  # picklable with open stacks (sent across MPI ranks)
    np.testing.assert_array_equal(clone.read_images([2]), ps.read_images([2]))
    assert list(ps.table.columns)[:3] == ["rlnCoordinateX", "rlnCoordinateY", "rlnImageName"]
    assert len(ps.table.columns) == 17
    # subset / with_columns / write keep names and values
    s = ps.subset([4, 1])
    assert list(s.table["rlnImageName"]) == ["000002@Extract/job007/Movies/mic2.mrcs",
                                             "000001@Extract/job007/Movies/mic1.mrcs"]
    np.testing.assert_allclose(s.read_images()[:, 0, 0], [201, 100])
    np.testing.assert_array_equal(s.optics_group_index(), [0, 0])
    w = ps.with_columns(rlnClassNumber=np.array([5, 4, 3, 2, 1]), rlnLogLikeliContribution=1.5)
    np.testing.assert_array_equal(w.class_numbers(), [5, 4, 3, 2, 1])
    np.testing.assert_array_equal(ps.class_numbers(), [1, 2, 3, 1, 2])  # original unchanged
    out = proj / "Class3D" / "run_it001_data.star"
    out.parent.mkdir()
    w.write(out)
    plain = starfile.read(out)
    assert list(plain["optics"]["rlnOpticsGroupName"]) == ["opticsGroup1", "krios2"]
    assert list(plain["particles"]["rlnImageName"]) == list(ps.table["rlnImageName"])
    np.testing.assert_allclose(plain["particles"]["rlnLogLikeliContribution"], 1.5)
    back = ParticleSet.read(out)
    np.testing.assert_array_equal(back.class_numbers(), [5, 4, 3, 2, 1])
    np.testing.assert_allclose(back.read_images(), ps.read_images())


def test_relion31_star_folder_resolution_and_cwd_precedence(tmp_path, monkeypatch):
    # STAR file in the project folder, run from elsewhere: resolved from the STAR folder
    proj, star = _setup_relion31(tmp_path, star_sub=".")
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    ps = ParticleSet.read(star)
    np.testing.assert_allclose(ps.read_images()[:, 0, 0], [101, 100, 202, 200, 201])
    # a stack at the same relative path under the cwd wins (RELION looks there first)
    mov = other / "Extract" / "job007" / "Movies"
    mov.mkdir(parents=True)
    write_mrc(mov / "mic1.mrcs", stack_values(2, offset=500), 1.4)
    write_mrc(mov / "mic2.mrcs", stack_values(3, offset=600), 1.4)
    ps2 = ParticleSet.read(star)
    np.testing.assert_allclose(ps2.read_images()[:, 0, 0], [501, 500, 602, 600, 601])
    # absolute paths work from anywhere
    absname = [f"{n.split('@')[0]}@{proj / n.split('@')[1]}" for n in ps.table["rlnImageName"]]
    ps3 = ps2.with_columns(rlnImageName=absname)
    np.testing.assert_allclose(ps3.read_images()[:, 0, 0], [101, 100, 202, 200, 201])


def test_written_names_resolve_from_the_project(tmp_path, monkeypatch):
    # names relative to the STAR's own folder (as hpcem simulate writes them) are rewritten on
    # writing, so a data STAR in another job's folder still finds the stacks from the project
    sim = tmp_path / "sim"
    sim.mkdir()
    p = _write_simple(sim, n_images=3, stack="parts.mrcs")
    write_mrc(sim / "parts.mrcs", stack_values(3, offset=10), 1.0)
    monkeypatch.chdir(tmp_path)
    ps = ParticleSet.read(p)
    job = tmp_path / "Class2D" / "job001"
    job.mkdir(parents=True)
    ps.subset([2, 0]).write(job / "run_it001_data.star")
    again = ParticleSet.read(job / "run_it001_data.star")
    assert list(again.table["rlnImageName"]) == ["000003@sim/parts.mrcs", "000001@sim/parts.mrcs"]
    np.testing.assert_allclose(again.read_images()[:, 0, 0], [12, 10])
    # outside the project: absolute; names that resolve from the project stay as they are
    monkeypatch.chdir(job)
    ParticleSet.read(p).write(job / "abs.star")
    assert read_star(job / "abs.star")["particles"]["rlnImageName"].iloc[0] == "000001@%s" % (sim / "parts.mrcs")
    monkeypatch.chdir(tmp_path)
    again.write(job / "same.star")
    assert list(read_star(job / "same.star")["particles"]["rlnImageName"]) == list(again.table["rlnImageName"])


# --------------------------------------------------------------------------- bad inputs
def _write_simple(tmp_path, optics_extra=None, particles=None, n_images=3, box=BOX, name="p.star",
                  stack="s.mrcs", stack_shape=None):
    shape = stack_shape or (n_images, box, box)
    write_mrc(tmp_path / stack, np.ones(shape, np.float32), 1.0)
    optics = {"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
              "rlnImagePixelSize": [1.0], "rlnImageSize": [box], "rlnVoltage": [300.0],
              "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1]}
    optics.update(optics_extra or {})
    parts = {"rlnImageName": [f"{i + 1:06d}@{stack}" for i in range(n_images)],
             "rlnOpticsGroup": [1] * n_images, "rlnDefocusU": [10000.0] * n_images}
    parts.update(particles or {})
    p = tmp_path / name
    write_star(p, {"optics": pd.DataFrame(optics), "particles": pd.DataFrame(parts)})
    return p


def _raises(path, field, file_part=None, **kw):
    with pytest.raises(InputError) as ei:
        ParticleSet.read(path, **kw)
    assert_input_error(ei, file_part or Path(path).name, field)
    return str(ei.value)


def test_bad_star_inputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _raises(tmp_path / "missing.star", "file")
    p = tmp_path / "noname.star"
    write_star(p, {"optics": pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [1.0]}),
                   "particles": pd.DataFrame({"rlnDefocusU": [1.0]})})
    _raises(p, "rlnImageName")
    msg = _raises(_write_simple(tmp_path, particles={"rlnOpticsGroup": [1, 3, 1]}, name="og.star"),
                  "rlnOpticsGroup")
    assert "3" in msg
    _raises(_write_simple(tmp_path, {"rlnImagePixelSize": [0.0]}, name="zero.star"),
            "rlnImagePixelSize")
    _raises(_write_simple(tmp_path, {"rlnImagePixelSize": [-1.2]}, name="neg.star"),
            "rlnImagePixelSize")


def test_bad_stack_inputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = _write_simple(tmp_path, name="ms.star")
    (tmp_path / "s.mrcs").unlink()
    msg = _raises(p, "rlnImageName")
    assert "s.mrcs" in msg
    p = _write_simple(tmp_path, particles={"rlnImageName": ["000001@s.mrcs", "000004@s.mrcs",
                                                            "000002@s.mrcs"]}, name="idx.star")
    msg = _raises(p, "rlnImageName", file_part="s.mrcs")
    assert "index 4 " in msg  # one past the 3 images: the boundary
    # box mismatch: optics says 12, stack has 10
    p = _write_simple(tmp_path, stack_shape=(3, 10, 10), name="box.star")
    _raises(p, "rlnImageSize", file_part="s.mrcs")
    # non-square images
    p = _write_simple(tmp_path, stack_shape=(3, 12, 14), name="rect.star", stack="rect.mrcs")
    _raises(p, "nx/ny", file_part="rect.mrcs")
    # truncated stack is caught while reading the STAR, before any images are read
    p = _write_simple(tmp_path, name="tr.star", stack="tr.mrcs")
    (tmp_path / "tr.mrcs").write_bytes((tmp_path / "tr.mrcs").read_bytes()[:-50])
    _raises(p, "size", file_part="tr.mrcs")
    # malformed image name
    p = _write_simple(tmp_path, particles={"rlnImageName": ["000001@s.mrcs", "abc@s.mrcs",
                                                            "000000@s.mrcs"]}, name="nm.star")
    _raises(p, "rlnImageName")


def test_mixed_optics_groups(tmp_path, monkeypatch):
    """Issue 10: optics groups of different pixel and box sizes are read onto the first group's grid
    (a stack that disagrees with its group's rlnImageSize is still refused)."""
    monkeypatch.chdir(tmp_path)
    two = {"rlnOpticsGroupName": ["a", "b"], "rlnOpticsGroup": [1, 2],
           "rlnImagePixelSize": [1.0, 1.0], "rlnImageSize": [BOX, 2 * BOX], "rlnVoltage": [300, 300],
           "rlnSphericalAberration": [2.7, 2.7], "rlnAmplitudeContrast": [0.1, 0.1]}
    p = _write_simple(tmp_path, two, particles={"rlnOpticsGroup": [1, 2, 1]}, name="boxes.star")
    msg = _raises(p, "rlnImageSize", file_part="s.mrcs")
    assert "optics group 2" in msg
    two.update(rlnImageSize=[BOX, BOX], rlnImagePixelSize=[1.0, 1.3])
    p = _write_simple(tmp_path, two, particles={"rlnOpticsGroup": [1, 2, 1]}, name="pix.star")
    with pytest.warns(UserWarning, match="resampled"):
        ps = ParticleSet.read(p)
    assert (ps.box, ps.angpix) == (BOX, 1.0) and ps.read_images().shape == (3, BOX, BOX)


def _blob_image(n, angpix):
    """Two Gaussians (sigma 4 and 2.5 A) well inside a 40 x 1.5 A box: band-limited, no edges."""
    c = (np.arange(n) - n // 2) * angpix
    x, y = np.meshgrid(c, c, indexing="xy")
    return (np.exp(-((x - 3) ** 2 + (y + 5) ** 2) / (2 * 4.0 ** 2))
            + 0.5 * np.exp(-((x + 7) ** 2 + (y - 2) ** 2) / (2 * 2.5 ** 2))).astype(np.float32)


@pytest.mark.parametrize("m, pg, n, p", [(48, 1.24, 48, 1.25), (32, 1.5, 48, 1.0), (60, 1.0, 40, 1.5), (40, 1.25, 48, 1.25)])
def test_resample_onto_the_common_grid(m, pg, n, p):
    """A smooth image sampled at (m, pg) resampled to (n, p) equals the image sampled at (n, p)."""
    from hpcem.io.resample import resample

    got = resample(_blob_image(m, pg)[None], pg, n, p)[0]
    want = _blob_image(n, p)
    assert np.abs(got - want).max() <= 0.006 * want.max()
    assert abs(got.sum() - want.sum()) <= 0.01 * want.sum()


def test_ctf_columns(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = _write_simple(tmp_path, name="ok.star")
    ps = ParticleSet.read(p, ctf=True)
    c = ps.ctf_params()
    # optional columns get RELION's defaults
    np.testing.assert_allclose(c["defocus_v"], c["defocus_u"])
    np.testing.assert_allclose(c["defocus_angle"], 0.0)
    np.testing.assert_allclose(c["phase_shift"], 0.0)
    np.testing.assert_allclose(c["bfactor"], 0.0)
    assert set(c) == {"defocus_u", "defocus_v", "defocus_angle", "voltage", "cs", "amp_contrast",
                      "phase_shift", "bfactor", "angpix"}
    # no poses / origins: zeros
    assert all(np.all(a == 0) for a in ps.poses())
    assert ps.origins_px().shape == (3, 2) and np.all(ps.origins_px() == 0)
    assert ps.random_subset() is None and ps.class_numbers() is None
    # rlnDefocusU missing: fine without ctf, an error with ctf=True
    q = tmp_path / "nodef.star"
    blocks = read_star(p)
    write_star(q, {"optics": blocks["optics"],
                   "particles": blocks["particles"].drop(columns="rlnDefocusU")})
    nodef = ParticleSet.read(q)
    nodef.validate()
    with pytest.raises(InputError) as ei:
        nodef.validate(ctf=True)
    assert_input_error(ei, "nodef.star", "rlnDefocusU")
    _raises(q, "rlnDefocusU", ctf=True)
    with pytest.raises(InputError) as ei:
        ParticleSet.read(q).ctf_params()
    assert_input_error(ei, "nodef.star", "rlnDefocusU")
    # voltage missing from the optics group
    r = tmp_path / "novolt.star"
    write_star(r, {"optics": blocks["optics"].drop(columns="rlnVoltage"),
                   "particles": blocks["particles"]})
    _raises(r, "rlnVoltage", ctf=True)
    # NaN defocus
    s = tmp_path / "nandef.star"
    write_star(s, {"optics": blocks["optics"],
                   "particles": blocks["particles"].assign(rlnDefocusU=[1e4, np.nan, 1e4])})
    _raises(s, "rlnDefocusU", ctf=True)


@pytest.mark.filterwarnings("ignore:Data array contains NaN")
def test_check_images_nan(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = stack_values(6)
    data[4, 3, 5] = np.nan
    write_mrc(tmp_path / "nan.mrcs", data, 1.0)
    parts = pd.DataFrame({"rlnImageName": [f"{i:06d}@nan.mrcs" for i in (1, 2, 3, 5, 6)],
                          "rlnOpticsGroup": 1})
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [1.0], "rlnImageSize": [BOX]})
    write_star(tmp_path / "nan.star", {"optics": optics, "particles": parts})
    ps = ParticleSet.read(tmp_path / "nan.star")  # reading does not scan pixels
    with pytest.raises(InputError) as ei:
        ps.check_images(chunk=2)
    assert_input_error(ei, "nan.mrcs", "image")
    assert "image 5 " in str(ei.value) and "NaN" in str(ei.value)
    ps.subset([0, 1, 2, 4]).check_images()  # clean subset passes
    with pytest.raises(InputError):
        ps.check_images(sample=5)


# --------------------------------------------------------------------------- simulator helper
def test_write_particle_stack(tmp_path):
    rng = np.random.default_rng(3)
    n = 7
    imgs = rng.normal(size=(n, 16, 16)).astype(np.float32)
    du = rng.uniform(8000, 20000, n)
    rot, tilt, psi = rng.uniform(-180, 180, n), rng.uniform(0, 180, n), rng.uniform(-180, 180, n)
    orig = rng.uniform(-5, 5, (n, 2))
    sub = np.arange(n) % 2 + 1
    star = tmp_path / "sim" / "particles.star"
    star.parent.mkdir()
    ps = write_particle_stack(star, imgs, 1.6, defocus_u=du, defocus_v=du * 0.95, defocus_angle=20.0,
                              voltage=200.0, cs=1.4, amp_contrast=0.07, rot=rot, tilt=tilt, psi=psi,
                              origins=orig, random_subset=sub)
    assert (tmp_path / "sim" / "particles.mrcs").is_file()
    plain = starfile.read(star)
    o = plain["optics"]
    assert o["rlnOpticsGroupName"].iloc[0] == "opticsGroup1" and o["rlnOpticsGroup"].iloc[0] == 1
    for col, val in (("rlnMicrographOriginalPixelSize", 1.6), ("rlnVoltage", 200.0),
                     ("rlnSphericalAberration", 1.4), ("rlnAmplitudeContrast", 0.07),
                     ("rlnImagePixelSize", 1.6), ("rlnImageSize", 16),
                     ("rlnImageDimensionality", 2)):
        assert o[col].iloc[0] == pytest.approx(val), col
    assert plain["particles"]["rlnImageName"].iloc[2] == "000003@particles.mrcs"
    np.testing.assert_array_equal(ps.read_images(), imgs)
    assert ps.box == 16 and ps.angpix == pytest.approx(1.6)
    c = ps.ctf_params()
    np.testing.assert_allclose(c["defocus_u"], du, rtol=1e-9)
    np.testing.assert_allclose(c["defocus_v"], du * 0.95, rtol=1e-9)
    np.testing.assert_allclose(c["defocus_angle"], 20.0)
    np.testing.assert_allclose(ps.poses()[1], tilt, rtol=1e-8, atol=1e-7)
    np.testing.assert_allclose(ps.origins_px(), orig / 1.6, rtol=1e-8, atol=1e-8)
    np.testing.assert_array_equal(ps.random_subset(), sub)
    # in memory, then written with its stack
    mem = ParticleSet.from_arrays(imgs, 1.6, defocus_u=du)
    np.testing.assert_array_equal(mem.read_images([6, 0]), imgs[[6, 0]])
    mem.subset([1, 3]).write(tmp_path / "sim" / "mem.star")
    back = ParticleSet.read(tmp_path / "sim" / "mem.star")
    np.testing.assert_array_equal(back.read_images(), imgs[[1, 3]])
    np.testing.assert_allclose(back.ctf_params()["defocus_u"], du[[1, 3]], rtol=1e-9)


def test_pre2014_mrc_without_map_id_is_read_with_one_warning(tmp_path):
    """Issue 10: stacks written by older programs lack the 'MAP ' identifier; RELION reads them.
    hpcem reads them with one warning when the header's sizes and mode account for the file size,
    and still refuses a file whose header does not (field 'header')."""
    data = np.random.default_rng(0).normal(size=(3, 16, 16)).astype(np.float32)
    good = tmp_path / "old.mrcs"
    write_mrc(good, data, 1.5)
    raw = bytearray(good.read_bytes())
    raw[208:212] = b"\x00\x00\x00\x00"        # the 'MAP ' identifier
    raw[212:216] = b"\x00\x00\x00\x00"        # and the machine stamp, as such files have
    good.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="no 'MAP ' identifier"):
        got, apix = read_mrc(good)
    assert np.array_equal(got, data) and apix == pytest.approx(1.5)
    assert np.array_equal(MrcStack(good).read([2, 0]), data[[2, 0]])
    bad = tmp_path / "short.mrcs"
    bad.write_bytes(bytes(raw[:-100]))       # no identifier and 100 bytes missing
    with pytest.raises(InputError) as ei:
        read_mrc(bad)
    assert_input_error(ei, "short.mrcs", "header")


def test_non_numeric_value_in_a_numeric_column(tmp_path, monkeypatch):
    """Issue 10: one line naming the file, the column and the row (no traceback)."""
    monkeypatch.chdir(tmp_path)
    p = _write_simple(tmp_path, particles={"rlnAngleTilt": ["10.0", "abc", "30"]}, name="nan.star")
    msg = _raises(p, "rlnAngleTilt")
    assert "row 2" in msg and "'abc'" in msg
