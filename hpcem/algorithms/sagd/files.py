"""State, files and log of ab initio SAGD (:class:`.abinitio.AbInitio`), written by rank 0, atomically.

Every ``--write_iter`` iterations and at the last: ``run_itNNN_classKKK.mrc``, ``run_itNNN_data.star``
(each particle's class and pose of its last visit), ``run_itNNN_model.star``, the central slices
``run_itNNN_classKKK.png``, the driver's checkpoint and optimiser STAR, and the log so far
(``run_log.star``: iteration, resolution, step size, fraction of quadrature points evaluated, epoch,
class shares; ``run_log.png``).  At the end (after one assignment pass of every particle against the
final maps, over the full quadrature): ``run_classKKK.mrc``, ``run_data.star``, ``run_classKKK.png``,
the log, and the fraction of quadrature points evaluated per resolution printed.
"""
from __future__ import annotations

import os
import time

import numpy as np
import pandas as pd

from ..map_em.iofiles import central_slices_png, model_blocks, write_data_star
from ..map_em.results import gather_results
from .model import POSES
from .sagd import SAG
from .schedule import Batches, quadrature


def _writes(a) -> bool:
    return a.it % a.config.write_iter == 0 or a.it >= a.sched.total


def _gather_sampler(a) -> dict | None:
    if a.sampler is None:
        return None
    parts = a.comm.allgather(a.sampler.state())
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def collect_state(a):
    """The whole state (collective; None between writes)."""
    if not _writes(a):
        return None
    st = {"iteration": a.it, "visits": a.visits, "phase": a.phase, "phase_start": a.phase_start, "maps": a.V,
          "pclass": a.pclass, "churn": a.churn, **a.step_factor.state(),
          "prior_scale": np.atleast_1d(a.prior.scale), "L": a.lip.L,
          "ls_searches": a.lip.searches, "noise_S": a.m.S, "noise_C": a.m.C,
          "sigma2": a.m.sigma2(), "results": gather_results(a.comm, a.m.res), "log": np.array(a.rows, np.float64),
          **a.sag.state(), **(a.split.state() if a.split is not None else {})}
    smp = _gather_sampler(a)
    if smp is not None:
        st["sampler"] = smp
    return st


def restore_state(a, st) -> None:
    a.it, a.visits = int(st["iteration"]), int(st["visits"])
    a.phase, a.phase_start = int(st["phase"]), int(st["phase_start"])
    a.batches = Batches(a.config.random_seed, a.N, a.sched.batch_size(a.phase_start), a.phase)
    a.sag = SAG.load(st)
    a.V = np.asarray(st["maps"], np.float64)
    a.pclass = np.asarray(st["pclass"], np.float64)
    a.churn = float(st["churn"]) if "churn" in st else 1.0
    a.step_factor.load(st)
    if a.split is not None:
        a.split.restore(st)
    a.prior.scale = np.asarray(st["prior_scale"], np.float64)
    a.lip.L, a.lip.searches = float(st["L"]), int(st["ls_searches"])
    a.m.S, a.m.C = np.asarray(st["noise_S"], np.float64), np.asarray(st["noise_C"], np.float64)
    for k in a.m.res:
        a.m.res[k] = np.asarray(st["results"][k])[a.m.lo:a.m.hi].astype(a.m.res[k].dtype)
    log = np.asarray(st["log"])
    a.rows = [list(r) for r in log] if log.size else []
    if a.sampler is not None and "sampler" in st:
        K, lo, hi = a.K, a.m.lo, a.m.hi
        a.sampler.load({k: (np.asarray(v)[lo:hi] if k == "tau_prev" else np.asarray(v)[lo * K:hi * K])
                        for k, v in st["sampler"].items()})


def _log_table(a, rows) -> dict:
    rows = np.asarray(rows, np.float64).reshape(-1, 5 + a.K)
    cols = {"hpcemIteration": rows[:, 0].astype(np.int64), "rlnCurrentResolution": rows[:, 1],
            "hpcemStepSize": rows[:, 2], "hpcemFractionEvaluated": rows[:, 3], "hpcemEpoch": rows[:, 4]}
    for k in range(a.K):
        cols["rlnClassDistribution%03d" % (k + 1)] = rows[:, 5 + k]
    return {"abinitio_log": pd.DataFrame(cols)}


def _write_log(a, root, rows) -> None:
    from ...io.star import write_star
    from ...plots import series

    write_star(root.path("log.star"), _log_table(a, rows))
    r = np.asarray(rows, np.float64).reshape(-1, 5 + a.K)
    if r.shape[0]:
        series(root.path("log.png"), r[:, 0], {"resolution (A)": r[:, 1], "fraction of quadrature evaluated": r[:, 3],
                                               "step size": r[:, 2]}, xlabel="iteration", log=True)


def write_iteration(a, root, state, stats) -> dict:
    if state is None:
        return {}
    from ...io.mrc import write_mrc
    from ...io.star import write_star

    it, n, angpix = int(state["iteration"]), a.n, float(a.ps.angpix)
    names = []
    for k in range(a.K):
        p = root.iteration(it, "class%03d.mrc" % (k + 1))
        write_mrc(p, state["maps"][k].astype(np.float32), angpix)
        names.append(os.path.basename(p))
    data = write_data_star(root.iteration(it, "data.star"), a.ps, state["results"], POSES)
    model = root.iteration(it, "model.star")
    write_star(model, model_blocks(3, n, angpix, names, state["pclass"], stats["resolution"], int(stats["r"]),
                                   state["sigma2"], None, a.m.sigma_offset, 1.0, stats.get("loglik", np.nan)))
    _write_log(a, root, state["log"])
    return {"model": model, "data": data}


def plot_iteration(a, root, state) -> None:
    if state is None:
        return
    it = int(state["iteration"])
    for k in range(a.K):
        central_slices_png(root.iteration(it, "class%03d.png" % (k + 1)), state["maps"][k],
                           "iteration %d, class %d: %.1f%%" % (it, k + 1, 100 * state["pclass"][k]))


def log_line(st) -> str:
    worst = st.get("reseed_from") == "worst"       # the map then comes from the worst-fit images, not class b
    if st["reseeded"] is None:
        rep = ""
    else:
        a, b = st["reseeded"]
        rep = "  class %d re-seeded from %s" % (a + 1, "the worst-fit images" if worst else "class %d" % (b + 1))
    if st.get("step_event"):
        rep += "  " + st["step_event"]
    if st.get("split") is not None:
        a, b = st["split"]
        rep += "  split-merge: class %d %s" % (
            a + 1, "re-seeded from the worst-fit images" if worst else "takes class %d's map" % (b + 1))
    if st.get("shared") is not None:
        J = st["shared"]
        rep += "  shared %s" % " ".join("%.3f" % J[i, j] for i in range(len(J)) for j in range(i + 1, len(J)))
    return ("it %4d  res %6.2f A  batch %3d  order %d psi %4.1f t %3.1f  step %.3g (eps %.3g, L %.3g%s)  "
            "evaluated %.2e  epoch %5.2f  classes %s%s  (%.1f s, E-step %.1f s)%s" % (
                st["iteration"], st["resolution"], st["batch"], st["order"], st["psi_step"], st["t_step"], st["step"],
                st["epsilon"], st["L"], ", %d evals" % st["evals"] if st["evals"] else "", st["evaluated"], st["epoch"],
                " ".join("%.2f" % p for p in st["pclass"]),
                " (changing %.3f)" % st["churn"] if len(st["pclass"]) > 1 else "", st["t_iter"], st["t_estep"], rep))


def fraction_per_resolution(rows) -> list:
    """[(resolution A, iterations, mean fraction of quadrature points evaluated)] from the log rows."""
    r = np.asarray(rows, np.float64)
    if r.size == 0:
        return []
    res = np.round(r[:, 1], 1)
    return [(float(v), int(np.sum(res == v)), float(np.mean(r[res == v, 3]))) for v in np.unique(res)[::-1]]


def final_pass_and_files(a, root) -> None:
    """Classes and poses of every particle against the final maps, then the final files (collective)."""
    from ...estep import FullGrid
    from ...io.mrc import write_mrc

    t0 = time.time()
    it = a.sched.total - 1
    quad, r = quadrature(a.sched.radius(it), a.m.radius_px), a.sched.shell(it)
    # the full quadrature, not the frozen sampler: with K = 2 the importance-sampled pass lost half of
    # the class agreement the final maps hold (DESIGN_NOTES, issue 12)
    allp = np.arange(a.m.idx.size)
    a.m.e_step(a.V, r, quad, allp, a.m.sigma2(), FullGrid(), None, accumulate=False, record=True)
    res = gather_results(a.comm, a.m.res)
    if a.comm.rank != 0:
        return
    angpix = float(a.ps.angpix)
    counts = np.bincount(np.asarray(res["class"], np.int64), minlength=a.K + 1)[1:]
    for k in range(a.K):
        write_mrc(root.path("class%03d.mrc" % (k + 1)), a.V[k].astype(np.float32), angpix)
        central_slices_png(root.path("class%03d.png" % (k + 1)), a.V[k],
                           "final class %d: %d particles" % (k + 1, counts[k]))
    write_data_star(root.path("data.star"), a.ps, res, POSES)
    _write_log(a, root, a.rows)
    a.log("final pass over all %d particles: %.1f s; classes %s" % (a.N, time.time() - t0,
                                                                    " ".join(str(c) for c in counts)))
    a.log("fraction of the quadrature points evaluated per resolution:")
    for res_A, nit, f in fraction_per_resolution(a.rows):
        a.log("  %7.2f A  %4d iterations  %.3e  (%.0fx fewer)" % (res_A, nit, f, 1.0 / max(f, 1e-300)))
    a.log("wrote %s" % root.path("class001.mrc"))
