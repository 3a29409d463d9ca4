"""Every hpcem job type a scheme would run, through the schemer (issue 14, part 2: "Jobs: every
hpcem job"): the other scheme tests run simulate, reconstruct, fsc, class2d, rank_classes,
initial_model and refine3d; this one runs the rest (import, class3d, abinitio, sml, deep2d,
mdcatch, and pick3d where torch is installed) at tiny sizes in one scheme, each reading the
output of the job before it through ``Schemes/<scheme>/<job>/`` names, and checks that the
scheme ends finished and each job's output is in its folder.  Sizes are for seconds, not for
results: nothing here measures quality (each job's own tests do)."""
import importlib.util
import os

import numpy as np
from acquisition_files import write_mdoc_movie
from scheme_helpers import make_scheme

from hpcem.cli.main import run_job
from hpcem.io.cryosparc import write_cs
from hpcem.io.star import read_star
from hpcem.workflow.scheme import Scheme

HAS_TORCH = importlib.util.find_spec("torch") is not None
SIM = "Schemes/all/sim/"
TINY3D = {"particle_diameter": "60", "offset_range": "2", "offset_step": "2", "j": "1", "random_seed": "2"}


def _cs_file(path, n=20, box=24):
    """A minimal cryoSPARC particle file (blob, CTF and pose fields, cryoSPARC's dtypes)."""
    rng = np.random.default_rng(0)
    write_cs(path, {"uid": np.arange(n, dtype="u8") + 11, "blob/path": np.full(n, b"J5/particles.mrcs", "S17"),
                    "blob/idx": np.arange(n, dtype="u4"), "blob/shape": np.full((n, 2), box, "u4"),
                    "blob/psize_A": np.full(n, 3.0, "f4"), "ctf/exp_group_id": np.zeros(n, "u4"),
                    "ctf/accel_kv": np.full(n, 300, "f4"), "ctf/cs_mm": np.full(n, 2.7, "f4"),
                    "ctf/amp_contrast": np.full(n, 0.1, "f4"), "ctf/df1_A": np.full(n, 15000, "f4"),
                    "ctf/df2_A": np.full(n, 14000, "f4"), "ctf/df_angle_rad": np.full(n, 0.5, "f4"),
                    "ctf/phase_shift_rad": np.zeros(n, "f4"),
                    "alignments3D/pose": rng.normal(size=(n, 3)).astype("f4"),
                    "alignments3D/shift": np.zeros((n, 2), "f4")})


def _jobs():
    parts = SIM + "particles.star"
    jobs = [
        ("sim", "hpcem.simulate", {"n": "120", "box": "24", "snr": "1", "seed": "3"}),
        ("imp", "hpcem.import", {"i": "input/J5_particles.cs", "o": "particles.star"}),
        ("cl3d", "hpcem.class3d", dict(TINY3D, i=parts, ref=SIM + "truth_class001.mrc", K="2", iter="2",
                                       ini_high="20", healpix_order="1", ctf="Yes")),
        ("ab", "hpcem.abinitio", dict(TINY3D, i=parts, ctf="Yes", offset_step=None, init_res="24", max_res="18",
                                      radwn_step="0.5", num_init_iters="4", num_final_iters="2", minisize_init="40",
                                      minisize_num_init_iters="2", minisize="40", batch="40")),
        ("sml", "hpcem.sml", {"i": parts, "K": "9", "iter": "2", "particle_diameter": "60", "random_seed": "1",
                              "j": "1"}),
        ("d2d", "hpcem.deep2d", {"i": parts, "map2d_K": "2", "map2d_iter": "2", "sml_K": "9", "sml_iter": "2",
                                 "psi_step": "30", "offset_range": "2", "particle_diameter": "60", "random_seed": "2",
                                 "ctf": "Yes", "j": "1"}),
        ("md", "hpcem.mdcatch", {"serialem": "frames", "cs": "2.7", "particle_diameter": "200"}),
    ]
    if HAS_TORCH:
        jobs += [
            ("tomo", "hpcem.simulate", {"mode": "tomo", "n_tomos": "3", "size": "32,32,16", "species": "2",
                                        "diameters": "70,40", "abundance": "2,1", "n_particles": "4", "snr": "1",
                                        "n_meta": "1", "n_test": "1", "seed": "2"}),
            ("pick", "hpcem.pick3d", {"action": "train", "i": "Schemes/all/tomo/tomograms.star",
                                      "labels": "Schemes/all/tomo/labels.star",
                                      "meta_set": "Schemes/all/tomo/clean.star", "diameters": "70,40",
                                      "method": "supervised", "steps": "2", "save_every": "2", "patch": "16",
                                      "widths": "4,4,4,4", "bottleneck": "8", "seed": "5", "j": "1"}),
        ]
    return [(n, t, {k: v for k, v in o.items() if v is not None}) for n, t, o in jobs]


# the file each job must leave in its folder
OUTPUTS = {"sim": "particles.star", "imp": "particles.star", "cl3d": "run_it002_class002.mrc",
           "ab": "run_class001.mrc", "sml": "run_data.star", "d2d": "run_data.star", "md": "movies.star",
           "tomo": "tomograms.star", "pick": "model.pt"}


def test_every_other_hpcem_job_type_through_the_schemer(tmp_path, capsys):
    os.makedirs(tmp_path / "input")
    _cs_file(str(tmp_path / "input" / "J5_particles.cs"))
    for i in range(2):
        write_mdoc_movie(str(tmp_path / "frames"), "movie_%04d" % i)
    jobs = _jobs()
    names = [j[0] for j in jobs]
    make_scheme(tmp_path, "all", operators=[("EXIT", "exit", "undefined", "undefined", "undefined")],
                jobs=[(n, "continue", t, o) for n, t, o in jobs],
                edges=list(zip(names, names[1:] + ["EXIT"])))
    cwd = os.getcwd()
    os.chdir(str(tmp_path))
    try:
        rc = run_job("schemer", {"scheme": "Schemes/all", "run": True})
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out
    s = Scheme.read(str(tmp_path / "Schemes" / "all"))
    failed = {n: (tmp_path / s.jobs[n].folder / "run.err").read_text()[-1500:] for n in names
              if s.jobs[n].folder and not (tmp_path / s.jobs[n].folder / OUTPUTS[n]).exists()}
    assert rc == 0 and not failed, (out[-3000:], failed)
    assert s.current == "EXIT" and all(s.jobs[n].started for n in names)
    for n, t, _ in jobs:
        folder = tmp_path / s.jobs[n].folder
        assert (folder / "RELION_JOB_EXIT_SUCCESS").exists() and (folder / OUTPUTS[n]).exists(), n
        assert " + %s: job %s finished" % (n, s.jobs[n].folder) in out
    assert len(read_star(str(tmp_path / s.jobs["imp"].folder / "particles.star"))["particles"]) == 20
    assert len(read_star(str(tmp_path / s.jobs["md"].folder / "movies.star"))["movies"]) == 2
