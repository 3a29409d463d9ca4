"""The communication model of issue 16 (hpcem.parallel.commmodel): the fit recovers known link
parameters, the MAP workload's bytes are those class2d really reduces, and the predictions behave
(compute-bound -> ~100%, bandwidth-bound -> under 50%, named collective)."""
import numpy as np
import pytest

from hpcem.parallel import commmodel as cm
from hpcem.parallel.comm import SerialComm


@pytest.mark.parametrize("op", ["Allreduce", "Reduce_scatter", "Allgatherv"])
def test_fit_recovers_alpha_beta(op):
    true = cm.Link(alpha=20e-6, beta=1 / 2e9)
    sizes = 1024 * 4.0 ** np.arange(8)
    t = np.array([cm.collective_time(op, s, 4, true) for s in sizes])
    t *= 1 + 0.02 * np.random.default_rng(0).standard_normal(t.size)
    fit = cm.fit_link(op, sizes, t, 4)
    assert fit.alpha == pytest.approx(true.alpha, rel=0.1)
    assert fit.beta == pytest.approx(true.beta, rel=0.1)


def test_collective_formulas():
    link = cm.Link(1e-5, 1e-9)
    assert cm.collective_time("Allreduce", 1e6, 1, link) == 0.0
    # ring allreduce moves 2 (p-1)/p of the array in 2 log2 p steps
    assert cm.collective_time("Allreduce", 1e6, 8, link) == pytest.approx(6e-5 + 2 * 7 / 8 * 1e-3)
    assert cm.coefficients_within(8, 0) == 1 and cm.coefficients_within(64, 32) > 0.5 * np.pi * 32 ** 2


class CountingComm(SerialComm):
    """One rank that records what class2d hands to each collective."""

    def __init__(self):
        self.seen = []

    def allreduce_(self, arr):
        self.seen.append(("Allreduce", arr.nbytes))
        return arr

    def reduce_scatter_rows(self, arr):
        self.seen.append(("Reduce_scatter", arr.nbytes))
        return arr


def test_map_workload_bytes_are_class2ds_own(tmp_path):
    from hpcem.algorithms.map_em.class2d import Class2D, Class2DConfig
    from hpcem.io.particles import ParticleSet
    from hpcem.simulate.particles import simulate_dataset

    d = simulate_dataset(n=24, n_particles=60, mode="2d", n_views=3, n_volumes=1, snr=1.0, ctf=False, seed=2)
    ps = ParticleSet.from_arrays(d.images, d.angpix)
    cfg = Class2DConfig(K=3, iters=1, ctf=False, psi_step=30.0, offset_range=1.0, offset_step=1.0, random_seed=1)
    comm = CountingComm()
    m = Class2D(ps, cfg, comm, log=lambda *a: None)
    m.prepare()
    m.initialise()
    comm.seen.clear()
    acc = m.e_step()
    m.reduce(acc)
    seen = {}
    for op, nb in comm.seen:
        seen.setdefault(op, []).append(nb)
    w = cm.map_workload(60, 24, 3, m.space.Jf1, m.trans.T, cm.coefficients_within(24, m.r_cur))
    for op in ("Reduce_scatter", "Allreduce"):
        per_call, calls = w.collectives[op]
        big = sorted(seen[op])[-calls:]              # the sums (the rest: small statistics)
        print(op, "measured", big, "model", per_call * calls)
        assert sum(big) == pytest.approx(per_call * calls, rel=1e-9)


def test_predictions_name_the_collective_that_breaks_efficiency():
    w = cm.gtm_workload(100_000, 1000, 3 * 6000).calibrated(100.0)
    intra = {"Allgatherv": cm.Link(1e-5, 1e-10)}
    lines, rows = cm.table(w, [1, 10, 1000], 1, intra)
    assert rows[0]["efficiency"] == pytest.approx(1.0)
    assert rows[1]["efficiency"] > 0.9                    # compute-bound
    assert rows[2]["efficiency"] < 0.5 and rows[2]["worst"] == "Allgatherv"
    assert any("under 50% (Allgatherv)" in ln for ln in lines)
    fast = cm.predict(w, 10, 1, intra, speedup=100.0)
    assert fast["efficiency"] < rows[1]["efficiency"]     # faster ranks: communication matters more
