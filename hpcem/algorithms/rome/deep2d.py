"""Deep 2D classification: reference-free MAP alignment, then GTM (ROME).

Stage 1 (``<outdir>/map2d/``): 2D classification (:class:`hpcem.algorithms.map_em.class2d.Class2D`) with a small
number of classes aligns every particle in-plane (rlnAnglePsi, rlnOriginXAngst/YAngst of
its most probable class); under MPI the particles are split across ranks.
Stage 2 (``<outdir>/sml/``): GTM (:func:`hpcem.algorithms.rome.sml.run_sml`) classifies the
particles, put into their MAP class frames with those poses (as ROME applies the MAP
alignment), into many classes; under MPI the Fourier coefficients are split across ranks.
Two modes:

* ``per_class`` (default): one GTM inside each MAP class, the K classes shared among the
  MAP classes in proportion to their populations (ROME's strategy II, "depending on the
  particle population of each class", applied to every class without intervention), in
  ``sml/classNNN/``.  Measured at the issue's size (20,000 particles, 30 conformation x
  view labels, K = 200) this is purer than one global manifold (0.885 against 0.784):
  a single smooth 2D latent sheet stretched over tens of distinct views puts many of its
  points between clusters, where they collect particles of several views.
* ``global``: ROME's strategy I as printed, one GTM over all aligned particles, in ``sml/``.

Stage 3: the final files in ``<outdir>``: ``run_classes.mrcs`` (eq 17 averages),
``run_data.star`` (MAP poses + rlnClassNumber of the GTM class, the MAP class kept as
``hpcemMapClassNumber``), ``run_model.star``, ``run_classes.png`` and ``run_loglik.txt``
(per-class mode: log-likelihood summed over the MAP classes, beta their particle-weighted
mean).

Resuming (``resume=True``): each stage restarts from its own newest checkpoint
(``map2d/run_itNNN_checkpoint.h5``, ``sml/[classNNN/]run_itNNN_gtm.h5``); a finished stage
is not repeated.  Both stages are deterministic given their seeds, so a resumed run ends
where an uninterrupted one does (up to float reduction order).
"""
from __future__ import annotations

import os
import shutil
import time

import numpy as np

from ...io.atomic import atomic_write
from ...runtime.checkpoint import load_checkpoint
from ...runtime.resume import newest_checkpoint

FINAL_FILES = ("classes.mrcs", "data.star", "model.star", "classes.png", "loglik.txt")


def newest(root, kind):
    """The newest checkpoint of ``kind`` written under ``root``, or None."""
    path = newest_checkpoint(root)
    return load_checkpoint(path, kind) if path else None


def _copy(src: str, dst: str) -> None:
    with atomic_write(dst) as tmp:
        shutil.copyfile(src, tmp)


def allocate_classes(sizes, K: int) -> np.ndarray:
    """GTM classes per MAP class for ``sml_mode="per_class"``: proportional to the class
    populations ``sizes`` (largest remainder, so they sum to K), at least 1 and at most the
    class's particle count.  Needs ``K >= len(sizes)``."""
    sizes = np.asarray(sizes, np.int64)
    if K < len(sizes):
        raise ValueError("K = %d < %d classes" % (K, len(sizes)))
    want = K * sizes / max(int(sizes.sum()), 1)
    k = np.clip(np.floor(want).astype(np.int64), 1, sizes)
    while k.sum() > K:           # the minimum of 1 overshot: take from the most over-served
        j = int(np.argmax(np.where(k > 1, k - want, -np.inf)))
        k[j] -= 1
    while k.sum() < K:           # largest remainder first, among classes that can take one more
        room = k < sizes
        if not room.any():
            break
        j = int(np.argmax(np.where(room, want - k, -np.inf)))
        k[j] += 1
    return k


def _per_class_gtm(aligned, map_classes, sml_cfg, comm, sml_root, root, resume: bool, log, job: dict,
                   memory_limit) -> dict:
    """GTM inside every MAP class (ROME strategy II applied to all classes): class c gets
    K_c of the sml_cfg.K classes in proportion to its size (:func:`allocate_classes`) and
    its own run in ``sml/classNNN`` (checkpoints, files; pixels split across ranks as
    always).  The combined classes are numbered MAP class by MAP class; the combined files
    are written to ``root``."""
    from .sml import run_sml

    labels, sizes = np.unique(map_classes, return_counts=True)
    Ks = allocate_classes(sizes, sml_cfg.K)
    N = aligned.n
    assign, rmax, logZ = np.zeros(N, np.int64), np.zeros(N), np.zeros(N)
    averages, history, model_rows = [], {}, []
    offset, total_ll = 0, 0.0
    biggest = int(labels[np.argmax(sizes)])   # its run logs in full: memory plan, PCA, iterations
    for c, n_c, K_c in zip(labels, sizes, Ks):
        idx = np.flatnonzero(map_classes == c)
        sub_root = sml_root.sub("class%03d" % c)
        gres = newest(sub_root, "sml") if resume else None
        t = time.time()
        sub_log = (lambda *m, c=c: log("   [MAP class %d] %s" % (c, " ".join(str(x) for x in m)))) \
            if c == biggest else (lambda *m: None)
        out = run_sml(aligned.subset(idx), comm, sml_cfg.replace(K=int(K_c)), sub_root, log=sub_log, restart=gres,
                      job=dict(job, map_class=int(c)), memory_limit=memory_limit)
        log("   MAP class %3d: %5d particles -> %3d GTM classes, %d non-empty, loglik %.6e%s (%.1f s)" % (
            c, n_c, K_c, len(np.unique(out["classes"])), out["loglik"],
            " (resumed at iteration %d)" % gres.iteration if gres else "", time.time() - t))
        assign[idx] = offset + out["classes"] - 1
        rmax[idx] = out["rmax"]
        logZ[idx] = out["logZ"]
        total_ll += out["loglik"]
        averages.append(out["averages"])
        for r in out["history"]:
            h = history.setdefault(r["iteration"], {"iteration": r["iteration"], "loglik": 0.0, "beta": 0.0,
                                                     "nonempty": 0, "seconds": 0.0})
            h["loglik"] += r["loglik"]
            h["beta"] += r["beta"] * n_c / N          # particle-weighted mean noise precision
            h["nonempty"] += r["nonempty"]
            h["seconds"] += r.get("seconds", 0.0)
        model_rows += [(int(c), k + 1) for k in range(K_c)]
        offset += int(K_c)
    averages = np.concatenate(averages, axis=0) if comm.rank == 0 else None   # rank 0 only
    hist = [history[i] for i in sorted(history)]
    if comm.rank == 0:
        _write_combined(root, aligned, assign, rmax, logZ, averages, model_rows, hist)
    comm.barrier()
    return {"classes": assign + 1, "rmax": rmax, "loglik": total_ll, "history": hist, "averages": averages,
            "K": offset, "class_sizes": sizes, "gtm_classes_per_map_class": Ks}


def _write_combined(root, aligned, assign, rmax, logZ, averages, model_rows, hist) -> None:
    import pandas as pd

    from ...io.mrc import write_mrc
    from ...io.star import write_star
    from ...plots import montage
    from .sml import write_loglik

    K = averages.shape[0]
    classes = root.path("classes.mrcs")
    write_mrc(classes, averages, aligned.angpix, stack=True)
    aligned.with_columns(rlnClassNumber=assign + 1, rlnMaxValueProbDistribution=rmax,
                         rlnLogLikeliContribution=logZ).write(root.path("data.star"))
    sizes = np.bincount(assign, minlength=K)
    tab = pd.DataFrame({"rlnReferenceImage": ["%06d@%s" % (k + 1, os.path.basename(classes)) for k in range(K)],
                        "rlnClassDistribution": sizes / max(aligned.n, 1),
                        "rlnClassNumberOfParticles": sizes.astype(np.int64),
                        "hpcemMapClassNumber": [r[0] for r in model_rows],
                        "hpcemGtmSubClass": [r[1] for r in model_rows]})
    general = pd.DataFrame({"rlnNrClasses": [K], "rlnLogLikelihood": [hist[-1]["loglik"] if hist else 0.0],
                            "hpcemSmlMode": ["per_class"], "hpcemMapClasses": [len(set(r[0] for r in model_rows))]})
    write_star(root.path("model.star"), {"model_general": general, "model_classes": tab})
    order = [k for k in np.argsort(-sizes, kind="stable") if sizes[k] > 0]
    montage(root.path("classes.png"), averages[order], labels=["%d (%d)" % (k + 1, sizes[k]) for k in order])
    write_loglik(root, hist)


def _map_alignment(ps, map_cfg, comm, map_root, resume: bool, log, job):
    """Stage 1: run (or resume) the MAP alignment; returns (its final checkpoint, seconds, done before)."""
    from ...runtime.driver import run_iterations
    from ..map_em.class2d import Class2D, Class2DConfig

    t0 = time.time()
    ck = newest(map_root, "class2d") if resume else None
    if ck is not None:
        map_cfg = Class2DConfig.from_dict(ck.config).replace(iters=max(map_cfg.iters, ck.iteration))
    if ck is not None and ck.iteration >= map_cfg.iters:
        log("== stage 1 already done (%s)" % ck.path)
        return ck, time.time() - t0, True
    log("== stage 1: MAP alignment, K = %d, %d iterations%s -> %s" % (
        map_cfg.K, map_cfg.iters, " (from iteration %d)" % ck.iteration if ck else "", map_root.folder))
    run_iterations(Class2D(ps, map_cfg, comm, log), map_root, comm, log, restart=ck, job=job)
    comm.barrier()
    return newest(map_root, "class2d"), time.time() - t0, False


def deep_classify_2d(ps, map_cfg, sml_cfg, comm, root, resume: bool = False, log=print,
                     job: dict | None = None, memory_limit=None, sml_mode: str = "per_class") -> dict:
    """Deep classification of ``ps``: MAP alignment (``map_cfg``, a Class2DConfig) into
    ``<folder>/map2d``, GTM (``sml_cfg``, a GTMConfig) into ``<folder>/sml``, final files under
    ``root`` (an OutputRoot).  ``sml_mode="global"`` is ROME's strategy I as printed (one GTM over
    all aligned particles); ``"per_class"`` runs one GTM inside each MAP class with K shared in
    proportion to the class sizes (strategy II over every class, automatically).  Returns the
    GTM summary plus ``map_classes`` (N,), ``t_map``, ``t_sml`` (seconds of this call's stages)
    and ``map_iterations``."""
    from .sml import run_sml

    if sml_mode not in ("per_class", "global"):
        raise ValueError("sml_mode must be 'per_class' or 'global'")
    map_root, sml_root = root.sub("map2d"), root.sub("sml")
    if comm.rank == 0:
        map_root.makedirs()
        sml_root.makedirs()
    comm.barrier()
    job = dict(job or {})
    ck, t_map, map_done = _map_alignment(ps, map_cfg, comm, map_root, resume, log, job)
    res = ck.state["results"]
    map_classes = np.asarray(res["class"], np.int64)
    aligned = ps.with_columns(
        rlnAnglePsi=np.asarray(res["psi"], np.float64), rlnOriginXAngst=np.asarray(res["ox"], np.float64),
        rlnOriginYAngst=np.asarray(res["oy"], np.float64), hpcemMapClassNumber=map_classes)
    if comm.rank == 0:
        aligned.write(root.file("aligned.star"))
    log("   MAP alignment: %d particles in %d non-empty classes (iteration %d, %.1f s)" % (
        ps.n, len(np.unique(map_classes)), ck.iteration, t_map))

    t0 = time.time()
    gtm_resume = resume and map_done   # GTM checkpoints count only when made from the final alignment
    job_sml = dict(job, stage="deep2d/sml")
    if sml_mode == "per_class":
        log("== stage 2: GTM inside each of the %d MAP classes, K = %d in all, %d iterations -> %s/classNNN" % (
            len(np.unique(map_classes)), sml_cfg.K, sml_cfg.iters, sml_root.folder))
        out = _per_class_gtm(aligned, map_classes, sml_cfg, comm, sml_root, root, gtm_resume, log, job_sml,
                             memory_limit)
    else:
        gres = newest(sml_root, "sml") if gtm_resume else None
        if gres is not None:
            sml_cfg = type(sml_cfg).from_dict(gres.config).replace(iters=max(sml_cfg.iters, gres.iteration))
        log("== stage 2: GTM, K = %d, %d iterations%s -> %s" % (
            sml_cfg.K, sml_cfg.iters, " (from iteration %d)" % gres.iteration if gres else "", sml_root.folder))
        out = run_sml(aligned, comm, sml_cfg, sml_root, log=log, restart=gres, job=job_sml, memory_limit=memory_limit)
        if comm.rank == 0:   # stage 3: the final files
            for name in FINAL_FILES:
                if os.path.exists(sml_root.path(name)):
                    _copy(sml_root.path(name), root.path(name))
        comm.barrier()
    t_sml = time.time() - t0
    log("== deep2d: %d particles -> %d non-empty of %d classes (MAP %.1f s, GTM %.1f s); wrote %s_*" % (
        ps.n, len(np.unique(out["classes"])), out["K"], t_map, t_sml, root.rootname))
    out.update(map_classes=map_classes, t_map=t_map, t_sml=t_sml, map_iterations=ck.iteration)
    return out
