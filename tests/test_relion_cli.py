"""relion_refine command lines, pasted from RELION jobs' note.txt with `relion_refine` replaced by
`hpcem class2d/class3d/refine3d`, parse unchanged: RELION's result-changing flags become hpcem's
settings, the I/O and hardware tuning flags are taken off with one note each, and any other
unknown flag is one error naming it and the nearest flag.  One 2D command runs end to end."""
import os
import shlex

import pytest

from hpcem.cli.main import job_module, parse_command
from hpcem.errors import InputError

RELION_2D = ('class2d --i particles.star --o Class2D/job005/run --K 50 --iter 25 --tau2_fudge 2 '
             '--particle_diameter 150 --ctf --zero_mask --flatten_solvent --norm --scale --psi_step 12 '
             '--offset_range 5 --offset_step 2 --oversampling 1 --pool 30 --dont_combine_weights_via_disc --j 4 '
             '--gpu ""')
RELION_3D = ('class3d --o Class3D/job016/run --i Select/job014/particles.star --ref InitialModel/job015/run_it150_class001.mrc '
             '--firstiter_cc --ini_high 50 --dont_combine_weights_via_disc --preread_images --pool 3 --pad 2 '
             '--skip_gridding --ctf --ctf_intact_first_peak --iter 25 --tau2_fudge 4 --particle_diameter 200 --K 4 '
             '--flatten_solvent --zero_mask --oversampling 1 --healpix_order 2 --offset_range 5 --offset_step 2 '
             '--sym C1 --norm --scale --j 6 --gpu "0:1" --pipeline_control Class3D/job016/')
RELION_REFINE = ('refine3d --o Refine3D/job019/run --auto_refine --split_random_halves --i Select/job018/particles.star '
                 '--ref Class3D/job016/run_it025_class001.mrc --ref_angpix 1.244 --firstiter_cc --ini_high 50 '
                 '--dont_combine_weights_via_disc --scratch_dir /ssd --pool 3 --pad 2 --ctf --particle_diameter 200 '
                 '--flatten_solvent --zero_mask --solvent_mask MaskCreate/job020/mask.mrc --solvent_correct_fsc --low_resol_join_halves 40 '
                 '--oversampling 1 --healpix_order 2 --auto_local_healpix_order 4 --offset_range 5 --offset_step 2 '
                 '--sym D2 --norm --scale --j 8 --gpu "" --dont_check_norm --pipeline_control Refine3D/job019/')
RELION_LOCAL = ('refine3d --o Refine3D/job030/run --auto_refine --split_random_halves --i particles.star '
                '--ref map.mrc --ini_high 8 --pad 1 --ctf --particle_diameter 180 --flatten_solvent --zero_mask '
                '--oversampling 1 --healpix_order 4 --sigma_ang 1.66667 --offset_range 3 --offset_step 1.5 '
                '--auto_local_healpix_order 4 --sym C1 --j 1')


def _params(line):
    job, values, notes = parse_command(shlex.split(line))
    return job_module(job).Params(**job_module(job).Params.named(values)), notes


def test_relion_2d_command_line():
    p, notes = _params(RELION_2D)
    assert (p.K, p.iters, p.tau2_fudge, p.particle_diameter, p.psi_step) == (50, 25, 2.0, 150.0, 12.0)
    assert (p.offset_range, p.offset_step, p.oversampling, p.j) == (5.0, 2.0, 1, 4)
    assert p.ctf and p.zero_mask and p.flatten_solvent and p.norm and p.scale
    assert p.o == "Class2D/job005/run"
    noted = sorted(n.split(":")[0] for n in notes)
    assert noted == ["--dont_combine_weights_via_disc", "--pool"]
    assert p.gpu == ""          # RELION's --gpu "": every visible device (hpcem.runtime.device)


def test_relion_3d_command_lines():
    p, notes = _params(RELION_3D)
    assert (p.K, p.healpix_order, p.sym, p.ini_high) == (4, 2, "C1", 50.0)
    assert p.firstiter_cc and p.skip_gridding and p.ctf_intact_first_peak and p.norm and p.scale
    assert {n.split(":")[0] for n in notes} == {"--dont_combine_weights_via_disc", "--preread_images", "--pool",
                                                "--pad", "--pipeline_control"}
    assert p.gpu == "0:1"
    p, notes = _params(RELION_REFINE)
    assert p.sym == "D2" and p.ref_angpix == 1.244 and p.solvent_correct_fsc
    assert p.solvent_mask == "MaskCreate/job020/mask.mrc" and p.auto_local_healpix_order == 4
    assert p.low_resol_join_halves == 40.0
    assert {"--auto_refine", "--split_random_halves", "--scratch_dir", "--dont_check_norm"} <= \
        {n.split(":")[0] for n in notes}
    p, _ = _params(RELION_LOCAL)
    assert p.sigma_ang == pytest.approx(1.66667) and p.healpix_order == 4


def test_relion_command_with_no_zero_mask_and_hpcem_negations():
    p, _ = _params("class2d --i p.star --o o --K 3 --no-zero_mask --no-flatten_solvent")
    assert not p.zero_mask and not p.flatten_solvent
    p, _ = _params("class2d --i p.star --o o --K 3")
    assert p.zero_mask and p.flatten_solvent and not p.norm and not p.scale


@pytest.mark.parametrize("line, bad, near", [
    ("class2d --i p.star --o o --tau2_fudg 2", "--tau2_fudg", "--tau2_fudge"),
    ("class3d --i p.star --o o --helix", "--helix", None),
    ("refine3d --i p.star --o o --auto_refine --ctf_phase_flipped", "--ctf_phase_flipped", None),
    ("class2d --i p.star --o o --auto_refine", "--auto_refine", None),   # implied only by refine3d
])
def test_unknown_flag_is_one_line_with_the_nearest(line, bad, near):
    with pytest.raises(InputError) as e:
        parse_command(shlex.split(line))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(bad + ":") and "nearest hpcem" in msg
    if near:
        assert msg.endswith("--help lists them)") and ("flag: %s " % near) in msg


def test_relion_2d_command_runs(tmp_path, run_hpcem):
    from hpcem.io.star import read_star
    from hpcem.simulate.particles import simulate_dataset
    from hpcem.simulate.write import write_dataset

    d = simulate_dataset(n=32, n_particles=300, snr=0.2, mode="2d", n_classes=3, ctf=True, seed=3)
    star = write_dataset(d, str(tmp_path))["particles"]
    line = RELION_2D.replace("particles.star", star).replace("--K 50", "--K 3").replace("--iter 25", "--iter 2")
    line = line.replace("--particle_diameter 150", "--particle_diameter 80").replace("--j 4", "--j 1")
    p = run_hpcem(shlex.split(line), cwd=str(tmp_path))
    assert "--pool: ignored" in p.stdout
    assert "--gpu: " in p.stdout        # the device decision, one line (here: why the CPU runs)
    data = read_star(os.path.join(str(tmp_path), "Class2D/job005/run_it002_data.star"))["particles"]
    assert "rlnNormCorrection" in data and abs(data["rlnNormCorrection"].mean() - 1.0) < 1e-6
    model = read_star(os.path.join(str(tmp_path), "Class2D/job005/run_it002_model.star"))
    assert "rlnGroupScaleCorrection" in model["model_groups"]
