"""Deep 2D classification, ROME strategy I: reference-free MAP alignment, then GTM.

Stage 1 (``<outdir>/map2d/``): :func:`hpcem.algorithms.map_em.classify_2d` with a small
number of classes aligns every particle in-plane (rlnAnglePsi, rlnOriginXAngst/YAngst of
its most probable class); under MPI the particles are split across ranks.
Stage 2 (``<outdir>/sml/``): :func:`hpcem.algorithms.gtm_io.run_gtm` classifies the
particles, put into their MAP class frames with those poses (as ROME applies the MAP
alignment), into many classes; under MPI the Fourier coefficients are split across ranks.
Stage 3: the final files are copied to ``<outdir>``: ``run_classes.mrcs`` (eq 17 averages),
``run_data.star`` (MAP poses + rlnClassNumber of the GTM class, the MAP class kept as
``hpcemMapClassNumber``), ``run_model.star``, ``run_classes.png`` and ``run_loglik.txt``.

Resuming (``resume=True``): each stage restarts from its own newest checkpoint
(``map2d/run_itNNN_checkpoint.h5``, ``sml/run_itNNN_gtm.h5``); a finished stage is not
repeated.  Both stages are deterministic given their seeds, so a resumed run ends where an
uninterrupted one does (up to float reduction order).
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


def deep_classify_2d(ps, map_cfg, sml_cfg, comm, outdir: str, resume: bool = False, log=print,
                     job: dict | None = None, memory_limit_gb: float = 0.0) -> dict:
    """ROME strategy I on ``ps``: MAP alignment (``map_cfg``, a Class2DConfig) into
    ``outdir/map2d``, GTM (``sml_cfg``, a GTMConfig) into ``outdir/sml``, final files in
    ``outdir``.  Returns run_gtm's summary plus ``map_classes`` (N,), ``t_map``, ``t_sml``
    (seconds of this call's stages) and ``map_iterations``."""
    from dataclasses import replace

    from .gtm_io import read_checkpoint, run_gtm
    from .map_em import Class2DConfig, classify_2d
    from .map_em_io import load_checkpoint

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
    git, gck = newest(os.path.join(sml_dir, "run_it*_gtm.h5")) if resume and map_done else (0, None)
    gres = None
    if gck is not None:
        gres = read_checkpoint(gck)
        sml_cfg = type(sml_cfg)(**dict(gres["config"], iters=max(sml_cfg.iters, gres["iteration"])))
    log("== stage 2: GTM, K = %d, %d iterations%s -> %s" % (
        sml_cfg.K, sml_cfg.iters, " (from iteration %d)" % git if gres else "", sml_dir))
    out = run_gtm(aligned, comm, sml_cfg, sml_dir, log=log, resume=gres, memory_limit_gb=memory_limit_gb,
                  extra=dict(job or {}, stage="deep2d/sml"))
    t_sml = time.time() - t0

    # ---------------------------------------------------------------- stage 3: final files
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
