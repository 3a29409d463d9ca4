"""ROME statistical-manifold-learning classification (:class:`SML`, on the one job driver) and its
files.  Rank 0 is the only writer; every file is written atomically.

Outputs (``<root>`` = the output rootname):
    <root>_itNNN_gtm.h5         checkpoint after iteration NNN (hpcem.runtime.checkpoint schema)
    <root>_itNNN_optimiser.star  RELION's pointer to it (``--continue`` takes either)
    <root>_loglik.txt           iteration, log-likelihood, beta, non-empty classes, seconds
    <root>_classes.mrcs         eq 17 class averages (CTF-corrected, Wiener-type), K images
    <root>_data.star            input particles + rlnClassNumber + rlnMaxValueProbDistribution
                                + rlnLogLikeliContribution
    <root>_model.star           per class: rlnReferenceImage, rlnClassDistribution, latent coords
    <root>_classes.png          montage of the non-empty classes sorted by size
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pandas as pd

from ...errors import InputError
from ...io.atomic import atomic_write
from ...runtime.memory import MemoryPlan
from ...runtime.device import HOST
from .gtm import GTM, GTMState
from .gtm_data import memory_plan

NK_ITEM = "distances / responsibilities (N x K float32)"


class SML:
    kind = "sml"
    checkpoint_name = "gtm.h5"
    memory_detail = True

    def __init__(self, ps, cfg, comm, log=print, device=HOST):
        self.ps, self.config, self.comm, self.log = ps, cfg, comm, log
        self.model = GTM(ps, comm, cfg, log=log, device=device)
        m = self.model
        log("GTM: %d particles, box %d, K = %d (latent grid %s), M = %d basis functions (sigma %.3g), "
            "%d coefficients (shells %d..%g), %d rank(s)" % (
                ps.n, m.n, m.K, "x".join(map(str, m.shape)), m.M, m.sigma, m.D, cfg.min_shell, m.max_shell,
                comm.size))
        self.st = None
        self.out = None

    def memory_plan(self):
        m, comm = self.model, self.comm
        items = memory_plan(self.ps.n, m.K, m.d1 - m.d0, m.M, m.n, self.config.chunk, self.config.pca_particles)
        items.pop("total")

        def hint(have):
            if items[NK_ITEM] > 0.6 * have:
                return ("the N x K responsibilities alone need %.1f GiB on every rank: use a smaller --K or split "
                        "the particles (--classes for strategy II)" % (items[NK_ITEM] / 2 ** 30))
            need = sum(items.values())
            return "run on more ranks (mpiexec -n %d) or lower --maxres" % (comm.size * int(math.ceil(need / (0.9 * have))))
        return MemoryPlan(items, what="%d of %d coefficients on rank 0" % (m.d1 - m.d0, m.D), hint=hint)

    def prepare(self):
        self.model.load()

    def initialise(self):
        self.st = self.model.initialise()

    def restore(self, st):
        m = self.model
        W = np.asarray(st["W"])
        if int(st["n_particles"]) != self.ps.n or int(st["box"]) != m.n or \
                not np.array_equal(st["selection"], m.sel_all) or W.shape[0] != m.M:
            raise InputError("the checkpoint does not match this data set / configuration", field="--continue")
        self.st = GTMState(W=m.local_W(W), beta=float(st["beta"]), iteration=int(st["iteration"]),
                           history=json.loads(st["history_json"]))

    def done(self):
        return self.st.iteration >= self.config.iters

    def e_step(self):
        return self.model.e_step(self.st)      # the pixel blocks' distances are reduced inside

    def reduce(self, acc):
        pass

    def m_step(self, acc):
        R, logZ, rdelta, kmax, rmax, ll = acc
        old = self.st
        self.st = self.model.m_step(old, R, rdelta)
        sizes = np.bincount(self.model.device.get(kmax), minlength=self.model.K)
        rec = {"iteration": self.st.iteration, "loglik": ll, "beta": old.beta, "beta_new": self.st.beta,
               "nonempty": int((sizes > 0).sum())}
        self.st.history = list(old.history) + [rec]
        return rec

    def state(self):
        W_full = self.model.gather_W(self.st.W)
        if self.comm.rank != 0:
            return {"iteration": self.st.iteration}
        return {"iteration": self.st.iteration, "W": W_full, "beta": self.st.beta,
                "history_json": json.dumps(self.st.history), "n_particles": self.ps.n, "box": self.model.n,
                "scale": self.model.scale, "selection": self.model.sel_all}

    def write(self, root, state, stats):
        stats["seconds"] = stats["t_iter"]
        self.st.history[-1]["seconds"] = stats["t_iter"]
        write_loglik(root, self.st.history)
        return {}

    def plot(self, root, state, stats):
        pass

    def log_line(self, rec):
        return "  iter %3d  loglik %.6e  1/beta %.4g -> %.4g  non-empty classes %d  (%.2f s)" % (
            rec["iteration"], rec["loglik"], 1 / rec["beta"], 1 / rec["beta_new"], rec["nonempty"], rec["t_iter"])

    def finish(self, root):
        """The final assignment with the final W (one more E-step, no update), the eq 17 class
        averages, and the files (rank 0)."""
        m, comm = self.model, self.comm
        R, logZ, _rd, kmax, rmax, ll = (m.device.get(x) for x in m.e_step(self.st))
        self.log("final E-step: loglik %.6e" % ll)
        averages = m.class_averages(R, self.st.beta)
        paths = {}
        if comm.rank == 0:
            paths = write_outputs(root, self.ps, m, self.st, averages, kmax, rmax, logZ)
            write_loglik(root, self.st.history)
        comm.barrier()
        self.out = {"classes": kmax + 1, "rmax": rmax, "logZ": logZ, "loglik": ll, "history": self.st.history,
                    "averages": averages, "paths": paths, "K": m.K}


def write_outputs(root, ps, model: GTM, st: GTMState, averages, kmax, rmax, logZ) -> dict:
    from ...io.mrc import write_mrc
    from ...io.star import write_star
    from ...plots import montage

    K = model.K
    paths = {"classes": root.path("classes.mrcs"), "data": root.path("data.star"),
             "model": root.path("model.star"), "montage": root.path("classes.png")}
    write_mrc(paths["classes"], averages, ps.angpix, stack=True)
    ps.with_columns(rlnClassNumber=(kmax + 1).astype(np.int64), rlnMaxValueProbDistribution=rmax.astype(np.float64),
                    rlnLogLikeliContribution=logZ.astype(np.float64)).write(paths["data"])
    sizes = np.bincount(kmax, minlength=K)
    cls_name = os.path.basename(paths["classes"])
    model_tab = pd.DataFrame({
        "rlnReferenceImage": ["%06d@%s" % (k + 1, cls_name) for k in range(K)],
        "rlnClassDistribution": sizes / max(ps.n, 1),
        "rlnClassNumberOfParticles": sizes.astype(np.int64),
    })
    for l in range(model.X.shape[1]):
        model_tab["hpcemLatentCoord%d" % (l + 1)] = model.X[:, l]
    general = pd.DataFrame({"rlnNrClasses": [K], "rlnLogLikelihood": [st.history[-1]["loglik"] if st.history else 0.0],
                            "hpcemGtmBeta": [st.beta], "hpcemGtmIterations": [st.iteration],
                            "hpcemGtmLatentShape": ["x".join(map(str, model.shape))],
                            "hpcemGtmBasisFunctions": [model.M]})
    write_star(paths["model"], {"model_general": general, "model_classes": model_tab})
    order = [k for k in np.argsort(-sizes, kind="stable") if sizes[k] > 0]
    montage(paths["montage"], averages[order], labels=["%d (%d)" % (k + 1, sizes[k]) for k in order])
    return paths


def write_loglik(root, history: list) -> str:
    path = root.path("loglik.txt")
    with atomic_write(path) as tmp:
        with open(tmp, "w") as f:
            f.write("# iteration  loglik  beta  nonempty_classes  seconds\n")
            for r in history:
                f.write("%4d %.8e %.6e %6d %.3f\n" % (r["iteration"], r["loglik"], r["beta"], r["nonempty"],
                                                      r.get("seconds", 0.0)))
    return path


def run_sml(ps, comm, cfg, root, log=print, restart=None, job=None, memory_limit=None, device=HOST) -> dict:
    """Classify ``ps`` (poses applied) into cfg.K classes, writing into ``root``; returns the
    summary (classes (N,), rmax, logZ, loglik, history, averages on rank 0, paths, K)."""
    from ...runtime.driver import run_iterations

    algo = SML(ps, cfg, comm, log, device=device)
    run_iterations(algo, root, comm, log, restart=restart, job=job, memory_limit=memory_limit)
    return algo.out
