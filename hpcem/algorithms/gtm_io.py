"""Driver and files of the GTM (ROME SML) classification: memory plan, checkpoints,
RELION-style outputs.  Rank 0 is the only writer; every file is written atomically.

Outputs in ``outdir``:
    run_itNNN_gtm.h5      checkpoint after iteration NNN (W, beta, history, config, version)
    run_loglik.txt        iteration, log-likelihood, beta, non-empty classes, seconds
    run_classes.mrcs      eq 17 class averages (CTF-corrected, Wiener-type), K images
    run_data.star         input particles + rlnClassNumber + rlnMaxValueProbDistribution
                          + rlnLogLikeliContribution
    run_model.star        per class: rlnReferenceImage, rlnClassDistribution, latent coords
    run_classes.png       montage of the non-empty classes sorted by size
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pandas as pd

from .. import __version__
from ..errors import InputError
from ..io.atomic import atomic_write
from .gtm import GTM, GTMConfig, GTMState, memory_plan


def available_memory_bytes() -> int:
    """MemAvailable (or the cgroup limit when smaller) of this machine."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    for p in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            v = open(p).read().strip()
            if v.isdigit() and int(v) < (1 << 60):
                avail = min(avail or int(v), int(v))
        except OSError:
            pass
    return int(avail or (8 << 30))


def local_ranks(comm) -> int:
    for k in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"):
        v = os.environ.get(k, "")
        if v.isdigit() and int(v) > 0:
            return int(v)
    return comm.size


def check_memory(model: GTM, comm, log, limit_gb: float = 0.0) -> dict:
    Dl = model.d1 - model.d0
    plan = memory_plan(model.ps.n, model.K, Dl, model.M, model.n, model.cfg.chunk, model.cfg.pca_particles)
    have = limit_gb * (1 << 30) if limit_gb > 0 else available_memory_bytes() / local_ranks(comm)
    log("memory plan per rank (%d rank(s), %d of %d coefficients on rank 0):" % (comm.size, Dl, model.D))
    for k, v in plan.items():
        log("  %-55s %10.1f MiB" % (k, v / 2 ** 20))
    log("  %-55s %10.1f MiB" % ("available to this rank", have / 2 ** 20))
    if plan["total"] > 0.9 * have:
        need_nk = plan["distances / responsibilities (N x K float32)"]
        hint = ("the N x K responsibilities alone need %.1f GiB on every rank: use a smaller --K or "
                "split the particles (--classes for strategy II)" % (need_nk / 2 ** 30)
                if need_nk > 0.6 * have else
                "run on more ranks (mpiexec -n %d) or lower --maxres" % (comm.size * int(
                    math.ceil(plan["total"] / (0.9 * have)))))
        raise InputError("needs %.2f GiB per rank but %.2f GiB are available; %s" % (
            plan["total"] / 2 ** 30, have / 2 ** 30, hint), field="memory")
    return plan


# ----------------------------------------------------------------------------- checkpoints
def checkpoint_path(outdir: str, it: int) -> str:
    return os.path.join(outdir, "run_it%03d_gtm.h5" % it)


def write_checkpoint(path: str, model: GTM, st: GTMState, W_full: np.ndarray, extra: dict) -> None:
    import h5py

    with atomic_write(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["hpcem_version"] = __version__
            f.attrs["config"] = json.dumps(model.cfg.to_dict())
            f.attrs["extra"] = json.dumps(extra, default=str)
            f.attrs["iteration"] = st.iteration
            f.attrs["beta"] = st.beta
            f.attrs["history"] = json.dumps(st.history)
            f.attrs["n_particles"] = model.ps.n
            f.attrs["box"] = model.n
            f.attrs["scale"] = model.scale
            f.create_dataset("W", data=W_full)
            f.create_dataset("selection", data=model.sel_all)


def read_checkpoint(path: str) -> dict:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return {"config": json.loads(f.attrs["config"]), "extra": json.loads(f.attrs["extra"]),
                    "iteration": int(f.attrs["iteration"]), "beta": float(f.attrs["beta"]),
                    "history": json.loads(f.attrs["history"]), "n_particles": int(f.attrs["n_particles"]),
                    "box": int(f.attrs["box"]), "W": f["W"][...], "selection": f["selection"][...],
                    "version": str(f.attrs["hpcem_version"])}
    except (OSError, KeyError) as exc:
        raise InputError("cannot read the GTM checkpoint (%s)" % exc, file=path, field="--continue") from None


# ----------------------------------------------------------------------------- outputs
def write_outputs(outdir: str, ps, model: GTM, st: GTMState, averages, kmax, rmax, logZ) -> dict:
    from ..io.mrc import write_mrc
    from ..io.star import write_star
    from ..plots import montage

    K = model.K
    paths = {}
    paths["classes"] = os.path.join(outdir, "run_classes.mrcs")
    write_mrc(paths["classes"], averages, ps.angpix, stack=True)
    out = ps.with_columns(rlnClassNumber=(kmax + 1).astype(np.int64),
                          rlnMaxValueProbDistribution=rmax.astype(np.float64),
                          rlnLogLikeliContribution=logZ.astype(np.float64))
    paths["data"] = os.path.join(outdir, "run_data.star")
    out.write(paths["data"])
    sizes = np.bincount(kmax, minlength=K)
    model_tab = pd.DataFrame({
        "rlnReferenceImage": ["%06d@run_classes.mrcs" % (k + 1) for k in range(K)],
        "rlnClassDistribution": sizes / max(ps.n, 1),
        "rlnClassNumberOfParticles": sizes.astype(np.int64),
    })
    for l in range(model.X.shape[1]):
        model_tab["hpcemLatentCoord%d" % (l + 1)] = model.X[:, l]
    general = pd.DataFrame({"rlnNrClasses": [K], "rlnLogLikelihood": [st.history[-1]["loglik"] if st.history else 0.0],
                            "hpcemGtmBeta": [st.beta], "hpcemGtmIterations": [st.iteration],
                            "hpcemGtmLatentShape": ["x".join(map(str, model.shape))],
                            "hpcemGtmBasisFunctions": [model.M]})
    paths["model"] = os.path.join(outdir, "run_model.star")
    write_star(paths["model"], {"model_general": general, "model_classes": model_tab})
    order = [k for k in np.argsort(-sizes, kind="stable") if sizes[k] > 0]
    paths["montage"] = os.path.join(outdir, "run_classes.png")
    montage(paths["montage"], averages[order], labels=["%d (%d)" % (k + 1, sizes[k]) for k in order])
    return paths


def write_loglik(outdir: str, history: list) -> str:
    path = os.path.join(outdir, "run_loglik.txt")
    with atomic_write(path) as tmp:
        with open(tmp, "w") as f:
            f.write("# iteration  loglik  beta  nonempty_classes  seconds\n")
            for r in history:
                f.write("%4d %.8e %.6e %6d %.3f\n" % (r["iteration"], r["loglik"], r["beta"],
                                                      r["nonempty"], r["seconds"]))
    return path


# ----------------------------------------------------------------------------- driver
def run_gtm(ps, comm, cfg: GTMConfig, outdir: str, log=print, resume: dict | None = None,
            memory_limit_gb: float = 0.0, extra: dict | None = None) -> dict:
    """Classify ``ps`` (poses applied) into cfg.K classes; write the outputs to ``outdir``.

    ``resume``: a :func:`read_checkpoint` dict; the run continues from its iteration up to
    ``cfg.iters``; ``extra`` is stored in every checkpoint. Returns a summary dict (on every rank)."""
    model = GTM(ps, comm, cfg, log=log)
    log("GTM: %d particles, box %d, K = %d (latent grid %s), M = %d basis functions (sigma %.3g), "
        "%d coefficients (shells %d..%g), %d rank(s)" % (
            ps.n, model.n, model.K, "x".join(map(str, model.shape)), model.M, model.sigma, model.D,
            cfg.min_shell, model.max_shell, comm.size))
    plan = check_memory(model, comm, log, memory_limit_gb)
    if comm.rank == 0:
        os.makedirs(outdir, exist_ok=True)
    model.load()
    if resume is not None:
        if resume["n_particles"] != ps.n or resume["box"] != model.n or \
                not np.array_equal(resume["selection"], model.sel_all) or resume["W"].shape[0] != model.M:
            raise InputError("the checkpoint does not match this data set / configuration",
                             field="--continue")
        st = GTMState(W=model.local_W(resume["W"]), beta=resume["beta"], iteration=resume["iteration"],
                      history=list(resume["history"]))
        log("continuing from iteration %d" % st.iteration)
    else:
        st = model.initialise()
    R = kmax = rmax = logZ = None
    while st.iteration < cfg.iters:
        st, R, kmax, rmax, logZ, rec = model.iterate(st)
        log("  iter %3d  loglik %.6e  1/beta %.4g -> %.4g  non-empty classes %d  (%.2f s)" % (
            rec["iteration"], rec["loglik"], 1 / rec["beta"], 1 / rec["beta_new"], rec["nonempty"],
            rec["seconds"]))
        W_full = model.gather_W(st.W)
        if comm.rank == 0:
            write_checkpoint(checkpoint_path(outdir, st.iteration), model, st, W_full,
                             dict(extra or {}, memory_plan=plan))
            write_loglik(outdir, st.history)
    # final assignment with the final W (one more E-step, no update)
    R, logZ, _rd, kmax, rmax, ll = model.e_step(st)
    log("final E-step: loglik %.6e" % ll)
    averages = model.class_averages(R, st.beta)
    paths = {}
    if comm.rank == 0:
        paths = write_outputs(outdir, ps, model, st, averages, kmax, rmax, logZ)
        write_loglik(outdir, st.history)
    comm.barrier()
    return {"classes": kmax + 1, "rmax": rmax, "logZ": logZ, "loglik": ll, "history": st.history,
            "averages": averages, "paths": paths, "K": model.K}
