"""Deep 2D classification: reference-free MAP alignment, then GTM (ROME).

Stage 1 (``<outdir>/map2d/``): :func:`hpcem.algorithms.map_em.classify_2d` with a small
number of classes aligns every particle in-plane (rlnAnglePsi, rlnOriginXAngst/YAngst of
its most probable class); under MPI the particles are split across ranks.
Stage 2 (``<outdir>/sml/``): :func:`hpcem.algorithms.gtm_io.run_gtm` classifies the
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

import glob
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np

from ..io.atomic import atomic_write

FINAL_FILES = ("run_classes.mrcs", "run_data.star", "run_model.star", "run_classes.png", "run_loglik.txt")


def newest(pattern: str):
    """(iteration, path) of the newest ``run_itNNN_*`` file matching ``pattern``, or (0, None)."""
    best = (0, None)
    for p in glob.glob(pattern):
        m = re.search(r"run_it(\d+)_", os.path.basename(p))
        if m and int(m.group(1)) > best[0]:
            best = (int(m.group(1)), p)
    return best


def portable_names(ps):
    """``ps`` with every rlnImageName readable from anywhere: names that resolve from the
    working directory (RELION's project-relative names) are kept, others become absolute."""
    if ps.star_path is None or "rlnImageName" not in ps.table.columns:
        return ps
    names = ps.table["rlnImageName"].astype(str)
    parts = names.str.split("@", n=1, expand=True)
    if parts.shape[1] < 2 or parts[1].isna().any():
        return ps
    star_dir = Path(ps.star_path).parent
    fixed = {}
    for s in parts[1].unique():
        p = Path(s)
        if p.is_absolute() or (Path.cwd() / p).is_file():
            fixed[s] = s
        else:
            fixed[s] = str((star_dir / p).resolve())
    if all(fixed[s] == s for s in fixed):
        return ps
    return ps.with_columns(rlnImageName=(parts[0] + "@" + parts[1].map(fixed)).to_numpy())


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


def _per_class_gtm(aligned, map_classes, sml_cfg, comm, sml_dir: str, outdir: str, resume: bool, log,
                   extra: dict, memory_limit_gb: float) -> dict:
    """GTM inside every MAP class (ROME strategy II applied to all classes): class c gets
    K_c of the sml_cfg.K classes in proportion to its size (:func:`allocate_classes`) and
    its own run in ``sml_dir/classNNN`` (checkpoints, files; pixels split across ranks as
    always).  The combined classes are numbered MAP class by MAP class; the combined files
    are written to ``outdir``."""
    from dataclasses import replace

    from .gtm_io import read_checkpoint, run_gtm

    labels, sizes = np.unique(map_classes, return_counts=True)
    Ks = allocate_classes(sizes, sml_cfg.K)
    N = aligned.n
    assign, rmax, logZ = np.zeros(N, np.int64), np.zeros(N), np.zeros(N)
    averages, history, model_rows = [], {}, []
    offset, total_ll = 0, 0.0
    biggest = int(labels[np.argmax(sizes)])   # its run logs in full: memory plan, PCA, iterations
    for c, n_c, K_c in zip(labels, sizes, Ks):
        idx = np.flatnonzero(map_classes == c)
        sub_dir = os.path.join(sml_dir, "class%03d" % c)
        gres = None
        if resume:
            _, gck = newest(os.path.join(sub_dir, "run_it*_gtm.h5"))
            gres = read_checkpoint(gck) if gck is not None else None
        cfg = replace(sml_cfg, K=int(K_c))
        t = time.time()
        sub_log = (lambda *m, c=c: log("   [MAP class %d] %s" % (c, " ".join(str(x) for x in m)))) \
            if c == biggest else (lambda *m: None)
        out = run_gtm(aligned.subset(idx), comm, cfg, sub_dir, log=sub_log, resume=gres,
                      memory_limit_gb=memory_limit_gb, extra=dict(extra, map_class=int(c)))
        log("   MAP class %3d: %5d particles -> %3d GTM classes, %d non-empty, loglik %.6e%s (%.1f s)" % (
            c, n_c, K_c, len(np.unique(out["classes"])), out["loglik"],
            " (resumed at iteration %d)" % gres["iteration"] if gres else "", time.time() - t))
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
            h["seconds"] += r["seconds"]
        model_rows += [(int(c), k + 1) for k in range(K_c)]
        offset += int(K_c)
    averages = np.concatenate(averages, axis=0) if comm.rank == 0 else None   # run_gtm: rank 0 only
    hist = [history[i] for i in sorted(history)]
    if comm.rank == 0:
        _write_combined(outdir, aligned, assign, rmax, logZ, averages, model_rows, hist)
    comm.barrier()
    return {"classes": assign + 1, "rmax": rmax, "loglik": total_ll, "history": hist, "averages": averages,
            "K": offset, "class_sizes": sizes, "gtm_classes_per_map_class": Ks}


def _write_combined(outdir, aligned, assign, rmax, logZ, averages, model_rows, hist) -> None:
    import pandas as pd

    from ..io.mrc import write_mrc
    from ..io.star import write_star
    from ..plots import montage
    from .gtm_io import write_loglik

    K = averages.shape[0]
    write_mrc(os.path.join(outdir, "run_classes.mrcs"), averages, aligned.angpix, stack=True)
    aligned.with_columns(rlnClassNumber=assign + 1, rlnMaxValueProbDistribution=rmax,
                         rlnLogLikeliContribution=logZ).write(os.path.join(outdir, "run_data.star"))
    sizes = np.bincount(assign, minlength=K)
    tab = pd.DataFrame({"rlnReferenceImage": ["%06d@run_classes.mrcs" % (k + 1) for k in range(K)],
                        "rlnClassDistribution": sizes / max(aligned.n, 1),
                        "rlnClassNumberOfParticles": sizes.astype(np.int64),
                        "hpcemMapClassNumber": [r[0] for r in model_rows],
                        "hpcemGtmSubClass": [r[1] for r in model_rows]})
    general = pd.DataFrame({"rlnNrClasses": [K], "rlnLogLikelihood": [hist[-1]["loglik"] if hist else 0.0],
                            "hpcemSmlMode": ["per_class"], "hpcemMapClasses": [len(set(r[0] for r in model_rows))]})
    write_star(os.path.join(outdir, "run_model.star"), {"model_general": general, "model_classes": tab})
    order = [k for k in np.argsort(-sizes, kind="stable") if sizes[k] > 0]
    montage(os.path.join(outdir, "run_classes.png"), averages[order],
            labels=["%d (%d)" % (k + 1, sizes[k]) for k in order])
    write_loglik(outdir, hist)


def deep_classify_2d(ps, map_cfg, sml_cfg, comm, outdir: str, resume: bool = False, log=print,
                     job: dict | None = None, memory_limit_gb: float = 0.0, sml_mode: str = "per_class") -> dict:
    """Deep classification of ``ps``: MAP alignment (``map_cfg``, a Class2DConfig) into
    ``outdir/map2d``, GTM (``sml_cfg``, a GTMConfig) into ``outdir/sml``, final files in
    ``outdir``.  ``sml_mode="global"`` is ROME's strategy I as printed (one GTM over all
    aligned particles); ``"per_class"`` runs one GTM inside each MAP class with K shared
    in proportion to the class sizes (strategy II over every class, automatically).
    Returns the GTM summary plus ``map_classes`` (N,), ``t_map``, ``t_sml`` (seconds of this
    call's stages) and ``map_iterations``."""
    from dataclasses import replace

    from .gtm_io import read_checkpoint, run_gtm
    from .map_em import Class2DConfig, classify_2d
    from .map_em_io import load_checkpoint

    if sml_mode not in ("per_class", "global"):
        raise ValueError("sml_mode must be 'per_class' or 'global'")
    map_dir, sml_dir = os.path.join(outdir, "map2d"), os.path.join(outdir, "sml")
    if comm.rank == 0:
        os.makedirs(map_dir, exist_ok=True)
        os.makedirs(sml_dir, exist_ok=True)
    comm.barrier()

    # ---------------------------------------------------------------- stage 1: MAP alignment
    t0 = time.time()
    it, ck = newest(os.path.join(map_dir, "run_it*_checkpoint.h5")) if resume else (0, None)
    restart, map_done = None, False
    if ck is not None:
        restart = load_checkpoint(ck)
        stored = Class2DConfig(**restart["config"])
        map_cfg = replace(stored, iters=max(map_cfg.iters, int(restart["iteration"])))
    if restart is None or int(restart["iteration"]) < map_cfg.iters:
        log("== stage 1: MAP alignment, K = %d, %d iterations%s -> %s" % (
            map_cfg.K, map_cfg.iters, " (from iteration %d)" % it if restart else "", map_dir))
        classify_2d(ps, map_cfg, comm, map_dir, restart=restart, log=log, job=job)
        comm.barrier()
        it, ck = newest(os.path.join(map_dir, "run_it*_checkpoint.h5"))
        restart = load_checkpoint(ck)
    else:
        map_done = True
        log("== stage 1 already done (%s)" % ck)
    t_map = time.time() - t0
    res = restart["results"]
    map_classes = np.asarray(res["class"], np.int64)
    aligned = portable_names(ps).with_columns(
        rlnAnglePsi=np.asarray(res["psi"], np.float64), rlnOriginXAngst=np.asarray(res["ox"], np.float64),
        rlnOriginYAngst=np.asarray(res["oy"], np.float64), hpcemMapClassNumber=map_classes)
    if comm.rank == 0:
        aligned.write(os.path.join(outdir, "aligned.star"))
    log("   MAP alignment: %d particles in %d non-empty classes (iteration %d, %.1f s)" % (
        ps.n, len(np.unique(map_classes)), it, t_map))

    # ---------------------------------------------------------------- stage 2: GTM
    t0 = time.time()
    # GTM checkpoints only count when the alignment they were made from was already final
    gtm_resume = resume and map_done
    extra = dict(job or {}, stage="deep2d/sml")
    if sml_mode == "per_class":
        log("== stage 2: GTM inside each of the %d MAP classes, K = %d in all, %d iterations -> %s/classNNN" % (
            len(np.unique(map_classes)), sml_cfg.K, sml_cfg.iters, sml_dir))
        # writes the combined final files to outdir itself
        out = _per_class_gtm(aligned, map_classes, sml_cfg, comm, sml_dir, outdir, gtm_resume, log, extra,
                             memory_limit_gb)
        t_sml = time.time() - t0
    else:
        git, gck = newest(os.path.join(sml_dir, "run_it*_gtm.h5")) if gtm_resume else (0, None)
        gres = None
        if gck is not None:
            gres = read_checkpoint(gck)
            sml_cfg = type(sml_cfg)(**dict(gres["config"], iters=max(sml_cfg.iters, gres["iteration"])))
        log("== stage 2: GTM, K = %d, %d iterations%s -> %s" % (
            sml_cfg.K, sml_cfg.iters, " (from iteration %d)" % git if gres else "", sml_dir))
        out = run_gtm(aligned, comm, sml_cfg, sml_dir, log=log, resume=gres, memory_limit_gb=memory_limit_gb,
                      extra=extra)
        t_sml = time.time() - t0
        # ------------------------------------------------------------ stage 3: final files
        if comm.rank == 0:
            for name in FINAL_FILES:
                src = os.path.join(sml_dir, name)
                if os.path.exists(src):
                    _copy(src, os.path.join(outdir, name))
        comm.barrier()
    log("== deep2d: %d particles -> %d non-empty of %d classes (MAP %.1f s, GTM %.1f s); wrote %s/run_*" % (
        ps.n, len(np.unique(out["classes"])), out["K"], t_map, t_sml, outdir))
    out.update(map_classes=map_classes, t_map=t_map, t_sml=t_sml, map_iterations=it)
    return out
