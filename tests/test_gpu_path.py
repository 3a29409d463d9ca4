"""The device code path of ``--gpu`` (issue 16).

Without a GPU (this machine, CI) the path is run on the emulated GPU of
:mod:`hpcem.kernels.emulated` (``HPCEM_GPU_EMULATE=1``): device arrays that refuse to mix with host
arrays, as cupy's do, the CPU kernels, and every host<->device copy counted.  The jobs must give the
CPU's results on it (same class assignments, maps equal to float rounding) and must not copy
particles across the bus after loading them.  Where a real GPU, cupy and ``hpcem._cuda`` are
present, the last test runs class2d on it against the CPU (marked ``gpu``; skipped otherwise).
"""
import glob
import os
import sys

import numpy as np
import pytest

from hpcem.cli.main import main
from hpcem.errors import InputError
from hpcem.io.mrc import read_mrc
from hpcem.io.star import read_star
from hpcem.kernels.emulated import TRAFFIC, xp as emu
from hpcem.runtime.device import HOST, device_of_rank, parse_ids, select_device, why_no_gpu

sys.path.insert(0, os.path.dirname(__file__))
from test_class2d import SMALL, _classes, _write  # noqa: E402


def test_gpu_values_and_rank_assignment():
    assert parse_ids("") is None and parse_ids('""') is None          # every visible device
    assert parse_ids("0,1") == [0, 1] and parse_ids("0:1") == [0, 1] and parse_ids("2") == [2]
    with pytest.raises(InputError, match="--gpu"):
        parse_ids("gpu0")
    assert [device_of_rank([0, 1], r) for r in range(5)] == [0, 1, 0, 1, 0]
    assert [device_of_rank([3], r) for r in range(3)] == [3, 3, 3]
    assert select_device(None) is HOST


@pytest.mark.skipif(why_no_gpu() is None, reason="a usable GPU is present")
def test_gpu_without_a_device_says_so_once_and_runs_on_the_cpu(monkeypatch):
    monkeypatch.delenv("HPCEM_GPU_EMULATE", raising=False)
    lines = []
    assert select_device("0,1", None, lines.append) is HOST
    assert len(lines) == 1 and lines[0].startswith("--gpu: ") and lines[0].endswith("running on the CPU")


def test_emulated_arrays_refuse_host_arrays_like_cupy():
    TRAFFIC.reset()
    a = emu.asarray(np.arange(6.0))
    assert TRAFFIC.h2d_bytes == 48
    with pytest.raises(TypeError):
        a + np.ones(6)
    with pytest.raises(TypeError):
        np.asarray(a)
    assert float((a * 2).sum()) == 30.0
    assert np.array_equal(a.get(), np.arange(6.0)) and TRAFFIC.d2h_bytes == 48


@pytest.mark.skipif(why_no_gpu() is None, reason="a usable GPU is present")
def test_benches_say_why_they_measure_nothing_here(tmp_path):
    import subprocess

    bench = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
    p = subprocess.run([sys.executable, os.path.join(bench, "bench_gpu.py")], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.startswith("bench_gpu: no GPU measured here: ") and "\n" == p.stdout[-1:]
    assert p.stdout.count("\n") == 1
    p = subprocess.run([sys.executable, os.path.join(bench, "bench_scaling.py"), "--ranks", "4096"], capture_output=True,
                       text=True, cwd=str(tmp_path))
    assert p.returncode == 0 and "4096 ranks: skipped" in p.stdout and "nothing measured" in p.stdout


@pytest.mark.parametrize("frac", [0.5, 0.999, 1.0])
def test_segment_posteriors_device_path_equals_cpu(frac):
    """The array-code segment_posteriors (cupy's and the emulator's path) against the C++ one:
    empty segments, all -inf segments, ties, underflowing tails."""
    from hpcem.kernels import segment_posteriors
    from hpcem.kernels.marginalise import _segments_xp

    rng = np.random.default_rng(3)
    cnt = rng.integers(0, 40, 200)
    cnt[:3] = (0, 1, 5)
    off = np.concatenate([[0], np.cumsum(cnt)]).astype(np.int64)
    m = rng.normal(0, 3, off[-1]) + rng.integers(0, 2, off[-1]) * 60.0
    m[off[2]:off[3]] = np.inf                     # a segment without a finite posterior
    m[off[5]:off[5] + 2] = m[off[5]]              # a tie at the maximum
    cpu = segment_posteriors(m, off, frac)
    for dev in (_segments_xp(np, m, off, frac), segment_posteriors(emu.asarray(m), emu.asarray(off), frac)):
        get = (lambda a: a.get()) if not isinstance(dev.weight, np.ndarray) else np.asarray
        assert np.array_equal(get(dev.argmax), cpu.argmax) and np.array_equal(get(dev.nsig), cpu.nsig)
        assert np.array_equal(get(dev.significant), cpu.significant)
        assert np.allclose(get(dev.weight), cpu.weight, rtol=1e-6, atol=1e-12)
        assert np.allclose(get(dev.logZ), cpu.logZ, rtol=1e-12) and np.allclose(get(dev.pmax), cpu.pmax, rtol=1e-12)


@pytest.fixture(scope="module")
def data2d(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("gpu2d"))
    d, star = _write(tmp, 40, 300, seed=5)
    return tmp, star


@pytest.fixture(scope="module")
def cpu2d(data2d):
    """The CPU class2d run (2 iterations) both emulated-GPU class2d tests compare against, made once."""
    tmp, star = data2d
    out = os.path.join(tmp, "cpu")
    with pytest.MonkeyPatch.context() as mp:
        traffic = _class2d(star, out, 2, False, mp)
    return out, traffic


def _class2d(star, out, iters, gpu, monkeypatch):
    if gpu:
        monkeypatch.setenv("HPCEM_GPU_EMULATE", "1")
    TRAFFIC.reset()
    args = ["class2d", "--i", star, "--o", out, "--iter", str(iters)] + [str(a) for a in SMALL]
    assert main(args + (["--gpu"] if gpu else [])) == 0
    monkeypatch.delenv("HPCEM_GPU_EMULATE", raising=False)
    return TRAFFIC.snapshot()


def test_class2d_on_the_emulated_gpu_equals_cpu_and_keeps_particles_there(data2d, cpu2d, monkeypatch):
    tmp, star = data2d
    (cpu, cpu_traffic), dev1, dev2 = cpu2d, *(os.path.join(tmp, x) for x in ("dev1", "dev2"))
    assert cpu_traffic["h2d_bytes"] == 0
    t1 = _class2d(star, dev1, 1, True, monkeypatch)
    t2 = _class2d(star, dev2, 2, True, monkeypatch)
    r1, c1 = _classes(cpu, 2)
    r2, c2 = _classes(dev2, 2)
    rel = np.linalg.norm(r1 - r2) / np.linalg.norm(r1)
    print("emulated GPU vs CPU: class averages rel. difference %.2e, %d assignments differ; traffic %s"
          % (rel, int((c1 != c2).sum()), t2))
    assert rel < 1e-4 and np.array_equal(c1, c2)
    # the second iteration's copies: references, phases, priors and a few numbers per particle,
    # not the particles (300 x 40 x 21 complex64 transforms and float32 CTFs, 3 MB); apart from
    # them, segment_posteriors (no device path yet) sends each batch's pair scores through the host
    particles = 300 * 40 * 21 * 12
    it2_h2d = t2["h2d_bytes"] - t1["h2d_bytes"]
    it2_trip = t2["round_trip_h2d"] - t1["round_trip_h2d"]
    print("h2d bytes: first run %d, the second iteration alone %d (particles %d); segment_posteriors' host "
          "round trips in it %d" % (t1["h2d_bytes"], it2_h2d, particles, it2_trip))
    assert t1["h2d_bytes"] > particles
    assert 0 < it2_h2d - it2_trip < particles / 4


def test_class2d_two_ranks_on_the_emulated_gpu_equal_one_cpu_rank(data2d, cpu2d, run_hpcem):
    tmp, star = data2d
    cpu = cpu2d[0]
    out = os.path.join(tmp, "dev_r2")
    run_hpcem(["class2d", "--i", star, "--o", out, "--iter", 2, "--gpu"] + SMALL, n_ranks=2,
              env=dict(os.environ, HPCEM_GPU_EMULATE="1"))
    r1, c1 = _classes(cpu, 2)
    r2, c2 = _classes(out, 2)
    assert np.linalg.norm(r1 - r2) / np.linalg.norm(r1) < 1e-4 and np.array_equal(c1, c2)


def test_class2d_grad_on_the_emulated_gpu_equals_cpu(data2d, monkeypatch):
    """class2d --grad (VDAM mini-batches, slots of half sets) on the device path."""
    tmp, star = data2d
    outs = {}
    for gpu in (False, True):
        outs[gpu] = os.path.join(tmp, "grad_%s" % ("dev" if gpu else "cpu"))
        if gpu:
            monkeypatch.setenv("HPCEM_GPU_EMULATE", "1")
        args = ["class2d", "--i", star, "--o", outs[gpu], "--iter", "3", "--grad"] + [str(a) for a in SMALL]
        assert main(args + (["--gpu"] if gpu else [])) == 0
        monkeypatch.delenv("HPCEM_GPU_EMULATE", raising=False)
    r1, c1 = _classes(outs[False], 3)
    r2, c2 = _classes(outs[True], 3)
    assert np.linalg.norm(r1 - r2) <= 1e-4 * np.linalg.norm(r1) and np.array_equal(c1, c2)


@pytest.fixture(scope="module")
def data3d(tmp_path_factory):
    from test_class3d import _dataset

    tmp = str(tmp_path_factory.mktemp("gpu3d"))
    d, star, ref = _dataset(tmp, 24, 150, seed=5, snr=0.2)
    return tmp, star, ref


def _job(which, star, ref, out):
    common = ["--i", star, "--ctf"]
    return {
        "class3d": ["class3d", "--ref", ref, "--o", out, "--K", "2", "--ini_high", "30", "--offset_range", "2",
                    "--offset_step", "1", "--random_seed", "2", "--particle_diameter", "60", "--healpix_order", "1",
                    "--iter", "2"],
        "refine3d": ["refine3d", "--ref", ref, "--o", out, "--ini_high", "30", "--healpix_order", "1",
                     "--auto_local_healpix_order", "2", "--offset_range", "2", "--offset_step", "1", "--iter", "2",
                     "--particle_diameter", "60"],
        "sml": ["sml", "--o", out, "--K", "9", "--iter", "3"],
        "initial_model": ["initial_model", "--o", out, "--iter", "3", "--K", "1", "--particle_diameter", "60"],
        "reconstruct": ["reconstruct", "--o", out + ".mrc"],
    }[which] + common


def _maps(which, out):
    if which == "reconstruct":
        return [read_mrc(out + ".mrc")[0]]
    pattern = {"class3d": "run_it002_class*.mrc", "refine3d": "run_it002_half*_class001.mrc",
               "sml": "run_classes.mrcs", "initial_model": "run_it003_class001.mrc"}[which]
    files = sorted(glob.glob(os.path.join(out, pattern)))
    assert files, (out, pattern)
    return [read_mrc(f)[0] for f in files]


def _assignments(which, out):
    if which in ("class3d", "sml"):
        name = "run_it002_data.star" if which == "class3d" else "run_data.star"
        return read_star(os.path.join(out, name))["particles"]["rlnClassNumber"].to_numpy()
    return None


@pytest.mark.parametrize("which", ["class3d", "refine3d", "initial_model", "sml", "reconstruct"])
def test_jobs_on_the_emulated_gpu_equal_cpu(data3d, which, monkeypatch):
    tmp, star, ref = data3d
    outs = {}
    for gpu in (False, True):
        outs[gpu] = os.path.join(tmp, "%s_%s" % (which, "dev" if gpu else "cpu"))
        if gpu:
            monkeypatch.setenv("HPCEM_GPU_EMULATE", "1")
        TRAFFIC.reset()
        assert main(_job(which, star, ref, outs[gpu]) + (["--gpu", "0"] if gpu else [])) == 0
        monkeypatch.delenv("HPCEM_GPU_EMULATE", raising=False)
    assert TRAFFIC.h2d_bytes > 0           # the device path ran
    for a, b in zip(_maps(which, outs[False]), _maps(which, outs[True])):
        assert np.linalg.norm(a - b) <= 1e-4 * np.linalg.norm(a)
    ca, cb = _assignments(which, outs[False]), _assignments(which, outs[True])
    if ca is not None:
        assert np.array_equal(ca, cb)


@pytest.mark.gpu
@pytest.mark.skipif(why_no_gpu() is not None, reason="no usable GPU: %s" % why_no_gpu())
def test_class2d_on_the_gpu_equals_cpu(data2d, monkeypatch):
    """The real device (cupy arrays, hpcem._cuda kernels) against the CPU: class averages within
    float tolerance, assignments equal but for a few borderline particles (counted)."""
    tmp, star = data2d
    monkeypatch.delenv("HPCEM_GPU_EMULATE", raising=False)
    outs = {}
    for gpu in (False, True):
        outs[gpu] = os.path.join(tmp, "real_%s" % ("gpu" if gpu else "cpu"))
        args = ["class2d", "--i", star, "--o", outs[gpu], "--iter", "2"] + [str(a) for a in SMALL]
        assert main(args + (["--gpu", "0"] if gpu else [])) == 0
    r1, c1 = _classes(outs[False], 2)
    r2, c2 = _classes(outs[True], 2)
    rel = np.linalg.norm(r1 - r2) / np.linalg.norm(r1)
    print("GPU vs CPU class2d: rel. difference %.2e, %d of %d assignments differ" % (rel, (c1 != c2).sum(), c1.size))
    assert rel < 1e-4 and (c1 != c2).mean() <= 0.02
