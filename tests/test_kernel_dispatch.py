"""hpcem.kernels as one dispatcher: every kernel rejects bad arguments with KernelArgumentError
naming the kernel and the argument; the backend helpers; and the device posteriors' selection
(numpy-agnostic code) run on numpy against the CPU kernel."""
import os
import re
import types

import numpy as np
import pytest

from hpcem import kernels
from hpcem.kernels import KernelArgumentError, _backend
from hpcem.kernels._checks import Args
from hpcem.kernels.marginalise import _dense_posteriors

n, P, PH = 8, 16, 9          # box, padded box, padded half width
B, T, J, M = 3, 4, 5, 6      # marginalisation sizes
K, D, NP = 7, 5, 9           # GTM: latent points, pixels, particles


def c64(rng, *shape):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def f32(rng, *shape):
    return rng.uniform(0.1, 1.0, shape).astype(np.float32)


def rot3(k):
    return np.repeat(np.eye(3)[None], k, axis=0)


def rot2(k):
    return np.repeat(np.eye(2)[None], k, axis=0)


# every kernel with a fresh set of good arguments (in-place ones are written to)
def good_args(kernel):
    rng = np.random.default_rng(0)
    marg = dict(X=c64(rng, B, M), ctf=f32(rng, B, M), s=f32(rng, B, M), phases=c64(rng, T, M),
                refs=c64(rng, J, M))
    pairs = dict(pair_i=np.array([0, 2, 1]), pair_t=np.array([3, 0, 1]), pair_j=np.array([4, 0, 2]))
    table = {
        "project3d": dict(vol_ft_pad=c64(rng, P, P, PH), rotations=rot3(2), n=n),
        "project2d": dict(ref_ft_pad=c64(rng, 3, P, PH), rotations2d=rot2(4), n=n,
                          ref_index=np.array([0, 1, 2, 0])),
        "backproject3d": dict(slices=c64(rng, 2, n, n // 2 + 1), weights=None, rotations=rot3(2),
                              data_acc=np.zeros((P, P, PH), np.complex128),
                              weight_acc=np.zeros((P, P, PH))),
        "backproject2d": dict(slices=c64(rng, 2, n, n // 2 + 1), weights=f32(rng, 2, n, n // 2 + 1),
                              rotations2d=rot2(2), data_acc=np.zeros((2, P, PH), np.complex64),
                              weight_acc=np.zeros((2, P, PH), np.float32), ref_index=[1, 0]),
        "symmetrise3d": dict(data_acc=c64(rng, P, P, PH).astype(np.complex128),
                             weight_acc=rng.random((P, P, PH)), ops=rot3(2)),
        "coarse_diff2": dict(marg),
        "pair_diff2": dict(marg, **pairs),
        "posteriors": dict(diff2=f32(rng, B, T, J), logprior_t=f32(rng, B, T),
                           logprior_j=f32(rng, J), frac=0.9),
        "segment_posteriors": dict(minus_logp=rng.random(6), offsets=np.array([0, 2, 2, 6])),
        "accumulate": dict(marg, **pairs, weight=f32(rng, 3),
                           data_acc=np.zeros((J, M), np.complex64), weight_acc=np.zeros((J, M), np.float32),
                           noise_acc=np.zeros((B, M), np.float32)),
        "gtm_solve": dict(Phi=f32(rng, K, 3), G=f32(rng, K, D), H=c64(rng, K, D), lam=0.1),
        "gtm_distances": dict(Z=f32(rng, NP, 3 * D), Ymat=f32(rng, K, 3 * D)),
        "gtm_responsibilities": dict(delta=f32(rng, NP, K), a=rng.random(NP), beta=0.5),
        "gtm_accumulate": dict(R=f32(rng, NP, K), Z=f32(rng, NP, 3 * D)),
    }
    return getattr(kernels, kernel), table[kernel]


def strided(a):
    """The same values, not C-contiguous."""
    return np.repeat(a, 2, axis=-1)[..., ::2]


# (kernel, argument, label in the message, how to spoil it)
BAD_DTYPE = [
    ("project3d", "vol_ft_pad", "vol_ft_pad", lambda a: a.astype(np.complex128)),
    ("project2d", "ref_ft_pad", "ref_ft_pad", lambda a: a.astype(np.complex128)),
    ("project2d", "ref_index", "ref_index", lambda a: a.astype(np.float64)),
    ("backproject3d", "slices", "slices", lambda a: a.astype(np.complex128)),
    ("backproject3d", "data_acc", "data accumulator", lambda a: a.real.copy()),
    ("backproject3d", "weight_acc", "weight accumulator", lambda a: a.astype(np.float32)),
    ("backproject2d", "weights", "weights", lambda a: a.astype(np.int32)),
    ("backproject2d", "weight_acc", "weight accumulator", lambda a: a.astype(np.float64)),
    ("symmetrise3d", "weight_acc", "weight accumulator", lambda a: a.astype(np.float32)),
    ("coarse_diff2", "X", "X", lambda a: a.astype(np.complex128)),
    ("coarse_diff2", "ctf", "ctf", lambda a: a.astype(np.float64)),
    ("coarse_diff2", "s", "s", lambda a: a.astype(np.float16)),
    ("coarse_diff2", "phases", "phases", lambda a: a.real.copy()),
    ("coarse_diff2", "refs", "refs", lambda a: a.astype(np.complex128)),
    ("pair_diff2", "pair_j", "pair_j", lambda a: a.astype(np.float32)),
    ("posteriors", "diff2", "diff2", lambda a: a.astype(np.float64)),
    ("posteriors", "logprior_t", "logprior_t", lambda a: a.astype(np.float64)),
    ("posteriors", "logprior_j", "logprior_j", lambda a: a.astype(np.float64)),
    ("segment_posteriors", "minus_logp", "minus_logp", lambda a: a.astype(np.int64)),
    ("segment_posteriors", "offsets", "offsets", lambda a: a.astype(np.float64)),
    ("accumulate", "weight", "weight", lambda a: a.astype(np.float64)),
    ("accumulate", "data_acc", "data_acc", lambda a: a.real.copy()),
    ("accumulate", "noise_acc", "noise_acc", lambda a: a.astype(np.float64)),
    ("gtm_solve", "Phi", "Phi", lambda a: a.astype(np.float64)),
    ("gtm_solve", "H", "H", lambda a: a.astype(np.complex128)),
    ("gtm_distances", "Ymat", "Ymat", lambda a: a.astype(np.float64)),
    ("gtm_responsibilities", "delta", "delta", lambda a: a.astype(np.float64)),
    ("gtm_accumulate", "R", "R", lambda a: a.astype(np.float64)),
]

BAD_SHAPE = [
    ("project3d", "vol_ft_pad", "vol_ft_pad", lambda a: a[:, :, :-1].copy()),
    ("project3d", "rotations", "rotations", lambda a: rot2(2)),
    ("project2d", "ref_ft_pad", "ref_ft_pad", lambda a: a[:, :-1].copy()),
    ("project2d", "ref_index", "ref_index", lambda a: a[:3].copy()),
    ("project2d", "rotations2d", "rotations2d", lambda a: rot3(4)),
    ("backproject3d", "slices", "slices", lambda a: a[:, :, :-1].copy()),
    ("backproject3d", "rotations", "rotations", lambda a: rot3(3)),
    ("backproject3d", "data_acc", "data accumulator", lambda a: a[:-1].copy()),
    ("backproject2d", "weights", "weights", lambda a: a[:, :3].copy()),
    ("backproject2d", "weight_acc", "weight accumulator", lambda a: a[:1].copy()),
    ("symmetrise3d", "weight_acc", "weight accumulator", lambda a: a[:, :, :-1].copy()),
    ("symmetrise3d", "ops", "ops", lambda a: rot2(2)),
    ("coarse_diff2", "ctf", "ctf", lambda a: a[:, :-1].copy()),
    ("coarse_diff2", "s", "s", lambda a: a[:-1].copy()),
    ("coarse_diff2", "phases", "phases", lambda a: a[:, :-1].copy()),
    ("coarse_diff2", "refs", "refs", lambda a: a[:, :-1].copy()),
    ("coarse_diff2", "X", "X", lambda a: a[0].copy()),
    ("pair_diff2", "pair_t", "pair_i, pair_t, pair_j", lambda a: a[:2].copy()),
    ("posteriors", "logprior_t", "logprior_t", lambda a: a[:, :-1].copy()),
    ("posteriors", "logprior_j", "logprior_j", lambda a: a[:-1].copy()),
    ("segment_posteriors", "offsets", "offsets", lambda a: a[:-1].copy()),
    ("accumulate", "weight", "weight", lambda a: a[:2].copy()),
    ("accumulate", "weight_acc", "weight_acc", lambda a: a[:-1].copy()),
    ("accumulate", "noise_acc", "noise_acc", lambda a: a[:, :-1].copy()),
    ("gtm_solve", "G", "G", lambda a: a[:-1].copy()),
    ("gtm_solve", "H", "H", lambda a: a[:, :-1].copy()),
    ("gtm_distances", "Ymat", "Ymat", lambda a: a[:, :-1].copy()),
    ("gtm_responsibilities", "a", "a", lambda a: a[:-1].copy()),
    ("gtm_accumulate", "Z", "Z", lambda a: a[:-1].copy()),
]

# arrays that are written in place (never copied) or large projection inputs: strided rejected
BAD_LAYOUT = [
    ("project3d", "vol_ft_pad", "vol_ft_pad"),
    ("project2d", "ref_ft_pad", "ref_ft_pad"),
    ("backproject3d", "slices", "slices"),
    ("backproject3d", "data_acc", "data accumulator"),
    ("backproject2d", "weight_acc", "weight accumulator"),
    ("symmetrise3d", "data_acc", "data accumulator"),
    ("accumulate", "data_acc", "data_acc"),
    ("accumulate", "weight_acc", "weight_acc"),
    ("accumulate", "noise_acc", "noise_acc"),
    ("gtm_responsibilities", "delta", "delta"),
]

# read-only inputs of the marginalisation and GTM families: strided ones are copied
COPIED = [("coarse_diff2", "X"), ("coarse_diff2", "phases"), ("pair_diff2", "refs"),
          ("posteriors", "diff2"), ("gtm_solve", "H"), ("gtm_distances", "Z"), ("gtm_accumulate", "R")]


def _raises(kernel, arg, label, value):
    fn, kw = good_args(kernel)
    kw[arg] = value(kw[arg]) if callable(value) else value
    with pytest.raises(KernelArgumentError, match="^" + re.escape(f"{kernel}: {label}")) as e:
        fn(**kw)
    return str(e.value)


@pytest.mark.parametrize("kernel", sorted({c[0] for c in BAD_DTYPE + BAD_SHAPE}))
def test_good_arguments_pass(kernel):
    fn, kw = good_args(kernel)
    fn(**kw)


@pytest.mark.parametrize("kernel,arg,label,spoil", BAD_DTYPE, ids=[f"{c[0]}-{c[1]}" for c in BAD_DTYPE])
def test_bad_dtype_names_the_argument(kernel, arg, label, spoil):
    msg = _raises(kernel, arg, label, spoil)
    assert "dtype" in msg or "integer" in msg


@pytest.mark.parametrize("kernel,arg,label,spoil", BAD_SHAPE, ids=[f"{c[0]}-{c[1]}" for c in BAD_SHAPE])
def test_bad_shape_names_the_argument(kernel, arg, label, spoil):
    _raises(kernel, arg, label, spoil)


@pytest.mark.parametrize("kernel,arg,label", BAD_LAYOUT, ids=[f"{c[0]}-{c[1]}" for c in BAD_LAYOUT])
def test_non_contiguous_is_rejected(kernel, arg, label):
    assert "contiguous" in _raises(kernel, arg, label, strided)


@pytest.mark.parametrize("kernel,arg", COPIED)
def test_non_contiguous_inputs_are_copied(kernel, arg):
    fn, kw = good_args(kernel)
    want = fn(**kw)
    kw[arg] = strided(kw[arg])
    assert not kw[arg].flags.c_contiguous
    got = fn(**kw)
    if isinstance(want, kernels.Posteriors):
        got, want = got.weight, want.weight
    np.testing.assert_array_equal(got, want)


def test_error_type_and_values():
    assert issubclass(KernelArgumentError, TypeError) and issubclass(KernelArgumentError, ValueError)
    ro = np.zeros((P, P, PH), np.complex128)
    ro.flags.writeable = False
    assert "writeable" in _raises("backproject3d", "data_acc", "data accumulator", ro)
    _raises("posteriors", "frac", "frac", 0.0)
    _raises("segment_posteriors", "frac", "frac", 1.5)
    _raises("project3d", "r_max", "r_max", -1.0)
    _raises("project3d", "n", "n", 0)
    _raises("project2d", "ref_index", "ref_index", np.array([0, 1, 3, 0]))
    _raises("project2d", "ref_index", "ref_index", None)
    _raises("pair_diff2", "pair_t", "pair_t", np.array([0, T, 1]))
    _raises("coarse_diff2", "mode", "mode", 2)
    _raises("gtm_solve", "lam", "lam", -1.0)
    _raises("gtm_responsibilities", "beta", "beta", 0.0)
    _raises("project3d", "vol_ft_pad", "vol_ft_pad", [[0j]])
    with pytest.raises(KernelArgumentError, match="^set_threads: n"):
        kernels.set_threads(0)
    # an argument error from the compiled code itself comes back as KernelArgumentError
    d = np.zeros((1, 1, 1), np.float32)
    with pytest.raises(KernelArgumentError, match="frac"):
        _backend.core("marg_posteriors", d, np.zeros((1, 1), np.float32), np.zeros(1, np.float32), 2.0)


# ----------------------------------------------------------------------------- backend helpers
class FakeCupyArray:
    """Looks like a cupy array to the dispatcher (its type's module is cupy's)."""

    dtype, shape, ndim = np.dtype(np.float32), (2, 2), 2


FakeCupyArray.__module__ = "cupy._core.core"


def test_array_namespace_and_is_cupy():
    a, fake = np.zeros(3), FakeCupyArray()
    assert kernels.is_cupy(fake) and not kernels.is_cupy(a) and not kernels.is_cupy([1.0])
    assert kernels.array_namespace(a, np.ones(2)) is np
    assert kernels.array_namespace(a, None) is np
    with pytest.raises(KernelArgumentError, match="mixing"):
        kernels.array_namespace(a, fake)
    with pytest.raises(KernelArgumentError, match="mixing"):
        kernels.array_namespace(fake, None, a)
    # in a kernel call the message names the arguments on each side
    fn, kw = good_args("coarse_diff2")
    kw["ctf"] = fake
    with pytest.raises(KernelArgumentError, match=r"^coarse_diff2: mixing .*cupy: ctf;"):
        fn(**kw)
    fn, kw = good_args("pair_diff2")
    kw["pair_i"] = fake
    with pytest.raises(KernelArgumentError, match="^pair_diff2: pair_i: a cupy array among numpy"):
        fn(**kw)


def test_cupy_inputs_without_cuda_build(monkeypatch):
    monkeypatch.setattr(_backend, "_cuda", None)
    assert kernels.has_cuda() is False
    fake = FakeCupyArray()
    with pytest.raises(KernelArgumentError, match="^gtm_distances: .*hpcem._cuda was not built"):
        kernels.gtm_distances(fake, fake)


def test_to_host_has_cuda_threads():
    a = np.arange(4.0)
    assert kernels.to_host(a) is a
    h = kernels.to_host([1, 2])
    assert isinstance(h, np.ndarray) and h.tolist() == [1, 2]
    assert isinstance(kernels.has_cuda(), bool)
    t0 = kernels.max_threads()
    assert isinstance(t0, int) and t0 >= 1
    from hpcem import _core
    from hpcem.core.fourier import fft_workers
    try:
        kernels.set_threads(1)
        assert kernels.max_threads() == 1
        assert _core.blas_threads() in (1, -1)       # --j also bounds OpenBLAS's threads (-1: other BLAS)
        kernels.set_threads(2)
        assert _core.blas_threads() in (2, -1) and fft_workers() == 2
    finally:
        kernels.set_threads(t0)



def test_job_threads_default_share_the_node(monkeypatch):
    """--j 0: $OMP_NUM_THREADS when set, else this process's cores over the ranks on its node."""
    from hpcem.cli.common import set_threads

    class Node:
        def node_size(self):
            return 2

    cores = len(os.sched_getaffinity(0))
    t0 = kernels.max_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert set_threads(0, Node()) == max(1, cores // 2) == kernels.max_threads()
        assert set_threads(0) == cores
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert set_threads(0, Node()) == 3 == kernels.max_threads()
        assert set_threads(5, Node()) == 5 == kernels.max_threads()
    finally:
        kernels.set_threads(t0)

# ----------------------------------------------------------------------------- device posteriors
def model_logsumexp(d, lt, lj, logZ, pmax, arg, prob):
    """numpy model of cuda/marginalise.cu k_logsumexp on one chunk of particles."""
    lp = ((lt[:, :, None].astype(np.float64) + lj.astype(np.float64)) - d).reshape(d.shape[0], -1)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        lpn = np.where(np.isnan(lp), -np.inf, lp)
        mx = lpn.max(axis=1)
        arg[:] = np.where(mx > -np.finfo(np.float64).max, lpn.argmax(axis=1), -1)
        ok = (arg >= 0) & np.isfinite(mx)
        v = lp - mx[:, None]
        e = np.where(ok[:, None] & (v > -50.0), np.exp(v), 0.0)
        s = e.sum(axis=1)
        inv = np.where(ok, 1.0 / s, 0.0)
        logZ[:] = np.where(ok, mx + np.log(s), -np.inf)
    pmax[:] = inv
    prob[:] = e * inv[:, None]


def numpy_logsumexp(d, lt, lj):
    """The device posteriors' dense step, on numpy (see model_logsumexp)."""
    def lse(i0, i1, logZ, pmax, arg, prob):
        model_logsumexp(d[i0:i1], lt[i0:i1], lj, logZ, pmax, arg, prob)
    return lse


def _compare(d, lt, lj, frac, chunk_rows=2):
    Bn, Tn, Jn = d.shape
    cpu = kernels.posteriors(d, lt, lj, frac)
    dev = _dense_posteriors(np, Bn, Tn, Jn, frac, numpy_logsumexp(d, lt, lj),
                            chunk_bytes=8 * Tn * Jn * chunk_rows)
    for f in ("argmax_t", "argmax_j", "nsig", "offsets", "t_idx", "j_idx"):
        np.testing.assert_array_equal(getattr(dev, f), getattr(cpu, f), err_msg=f)
        assert getattr(dev, f).dtype == getattr(cpu, f).dtype, f
    np.testing.assert_allclose(dev.logZ, cpu.logZ, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dev.pmax, cpu.pmax, rtol=1e-12)
    np.testing.assert_allclose(dev.weight, cpu.weight, rtol=1e-6)
    assert dev.weight.dtype == np.float32
    return cpu


def test_device_posteriors_selection_matches_cpu():
    rng = np.random.default_rng(2)
    Bn, Tn, Jn = 7, 7, 11
    d = rng.uniform(0, 8, (Bn, Tn, Jn)).astype(np.float32)
    d[1, 3, 4] = -30.0                              # one dominant hypothesis
    d[2] = np.inf                                   # no posterior at all
    d[3, 0, 0] = -45.0                              # the rest just above the exp(-50) cut
    lt = rng.normal(0, 1, (Bn, Tn)).astype(np.float32)
    lj = rng.normal(0, 1, Jn).astype(np.float32)
    for frac in (0.999, 0.9, 0.5, 1e-3, 1.0):
        cpu = _compare(d, lt, lj, frac)
        assert cpu.nsig[2] == 0 and cpu.argmax_t[2] == -1
    # all tied (flat priors): ceil(frac * T * J) of them, the first in (t, j) order
    flat = np.full((2, Tn, Jn), 5.0, np.float32)
    for frac in (0.999, 0.9, 0.5, 0.013, 1.0):
        cpu = _compare(flat, np.zeros((2, Tn), np.float32), np.zeros(Jn, np.float32), frac)
        assert cpu.nsig[0] == int(np.ceil(frac * Tn * Jn))
    # many candidates per particle (the CPU's quickselect path), one chunk
    big = (rng.standard_normal((2, 25, 400)) * 2).astype(np.float32)
    _compare(big, np.zeros((2, 25), np.float32), np.zeros(400, np.float32), 0.95, chunk_rows=4)


def test_device_posteriors_pair_i_and_empty():
    d = np.zeros((0, 2, 3), np.float32)
    P0 = _dense_posteriors(np, 0, 2, 3, 0.9, numpy_logsumexp(d, np.zeros((0, 2), np.float32),
                                                             np.zeros(3, np.float32)))
    assert P0.offsets.tolist() == [0] and P0.weight.shape == (0,) and P0.pair_i.shape == (0,)
    rng = np.random.default_rng(5)
    d = rng.uniform(0, 3, (4, 3, 5)).astype(np.float32)
    P = kernels.posteriors(d, np.zeros((4, 3), np.float32), np.zeros(5, np.float32), 0.8)
    assert np.array_equal(P.pair_i, np.repeat(np.arange(4), P.nsig))


def test_posteriors_device_branch_wiring(monkeypatch):
    """posteriors()' GPU branch with a numpy-backed stand-in for cupy and for the
    marg_logsumexp binding (same argument order as cuda/marginalise_bind.cpp)."""
    fake_xp = types.ModuleType("fake_cupy")
    fake_xp.__dict__.update({k: getattr(np, k) for k in dir(np) if not k.startswith("__")})
    calls = []

    def fake_cuda(name, *args):
        assert name == "marg_logsumexp"
        d, lt, lj, Bc, Tc, Jc, logZ, pmax, arg, prob = args
        assert d.shape == (Bc, Tc, Jc) and lt.shape == (Bc, Tc) and prob.shape == (Bc, Tc * Jc)
        calls.append(Bc)
        model_logsumexp(d, lt, lj, logZ, pmax, arg, prob)

    rng = np.random.default_rng(11)
    d = rng.uniform(0, 6, (5, 3, 7)).astype(np.float32)
    lt, lj = rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=7).astype(np.float32)
    cpu = kernels.posteriors(d, lt, lj, 0.9)
    monkeypatch.setattr(_backend, "args_for", lambda kernel, **arrays: Args(kernel, fake_xp))
    monkeypatch.setattr(_backend, "cuda", fake_cuda)
    dev = kernels.posteriors(d, lt, lj, 0.9)
    assert calls == [5]
    for f in ("argmax_t", "argmax_j", "nsig", "offsets", "t_idx", "j_idx"):
        np.testing.assert_array_equal(getattr(dev, f), getattr(cpu, f), err_msg=f)
    np.testing.assert_allclose(dev.weight, cpu.weight, rtol=1e-6)
    np.testing.assert_allclose(dev.logZ, cpu.logZ, rtol=1e-12)
