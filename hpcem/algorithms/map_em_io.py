"""Files of a MAP-EM 2D classification run (RELION names), written by rank 0, atomically.

Per iteration ``NNN`` in the output folder:
  run_itNNN_classes.mrcs     class averages (K, n, n)
  run_itNNN_data.star        optics + particles with rlnClassNumber, rlnAnglePsi,
                             rlnOriginXAngst/YAngst, rlnMaxValueProbDistribution,
                             rlnNrOfSignificantSamples, rlnLogLikeliContribution
  run_itNNN_model.star       data_model_general, data_model_classes, data_model_optics_group_N
  run_itNNN_optimiser.star   pointers to the files above and the checkpoint
  run_itNNN_checkpoint.h5    the full state (HDF5) that ``--continue`` resumes from
  run_itNNN_classes.png      montage of the class averages sorted by class size
"""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd

from .. import __version__
from ..errors import InputError
from ..io.atomic import atomic_write
from ..io.mrc import write_mrc
from ..io.star import read_star, write_star


def stem(outdir: str, it: int) -> str:
    return os.path.join(outdir, "run_it%03d" % it)


def write_iteration(outdir: str, ps, model, state: dict, stats: dict, config_extra: dict | None = None):
    """Write all files of iteration ``state['iteration']``; returns the optimiser STAR path."""
    it = int(state["iteration"])
    base = stem(outdir, it)
    os.makedirs(outdir, exist_ok=True)
    refs, res = state["refs"], state["results"]
    K, n = refs.shape[0], refs.shape[1]
    angpix = float(model.angpix)
    write_mrc(base + "_classes.mrcs", refs, angpix, stack=True)

    cols = {"rlnClassNumber": res["class"].astype(np.int64), "rlnAnglePsi": res["psi"],
            "rlnOriginXAngst": res["ox"], "rlnOriginYAngst": res["oy"],
            "rlnMaxValueProbDistribution": res["pmax"],
            "rlnNrOfSignificantSamples": res["nsig"].astype(np.int64),
            "rlnLogLikeliContribution": res["loglik"]}
    ps.with_columns(**cols).write(base + "_data.star")

    cls_name = os.path.basename(base + "_classes.mrcs")
    counts = np.bincount(res["class"].astype(np.int64) - 1, minlength=K)[:K]
    blocks = {
        "model_general": {
            "rlnReferenceDimensionality": 2, "rlnDataDimensionality": 2, "rlnOriginalImageSize": n,
            "rlnCurrentResolution": float(state["resolution"]), "rlnCurrentImageSize": int(2 * state["r_cur"]),
            "rlnPaddingFactor": 2, "rlnNrClasses": K, "rlnNrGroups": int(state["sigma2"].shape[0]),
            "rlnTau2FudgeFactor": float(state["config"]["tau2_fudge"]),
            "rlnLogLikelihood": float(stats.get("loglik", np.nan)),
            "rlnSigmaOffsetsAngst": float(state["sigma_offset"]), "rlnPixelSize": angpix,
        },
        "model_classes": pd.DataFrame({
            "rlnReferenceImage": ["%06d@%s" % (k + 1, cls_name) for k in range(K)],
            "rlnClassDistribution": state["pclass"],
            "rlnEstimatedResolution": [float(state["resolution"])] * K,
            "rlnNrOfParticles": counts,
        }),
    }
    nsh = state["sigma2"].shape[1]
    res_A = np.where(np.arange(nsh) > 0, n * angpix / np.maximum(np.arange(nsh), 1), 999.0)
    for g in range(state["sigma2"].shape[0]):
        blocks["model_optics_group_%d" % (g + 1)] = pd.DataFrame({
            "rlnSpectralIndex": np.arange(nsh), "rlnResolution": 1.0 / res_A,
            "rlnSigma2Noise": state["sigma2"][g]})
    for k in range(K):
        blocks["model_class_%d" % (k + 1)] = pd.DataFrame({
            "rlnSpectralIndex": np.arange(nsh), "rlnReferenceTau2": state["tau2"][k]})
    write_star(base + "_model.star", blocks)

    ck = base + "_checkpoint.h5"
    save_checkpoint(ck, state, config_extra)
    write_star(base + "_optimiser.star", {"optimiser_general": {
        "rlnOutputRootName": os.path.join(outdir, "run"),
        "rlnModelStarFile": os.path.basename(base + "_model.star"),
        "rlnExperimentalDataStarFile": os.path.basename(base + "_data.star"),
        "rlnCurrentIteration": it,
        "rlnNumberOfIterations": int(state["config"]["iters"]),
        "hpcemCheckpointFile": os.path.basename(ck),
    }})
    try:
        from ..plots import montage
        order = np.argsort(-np.asarray(state["pclass"]), kind="stable")
        montage(base + "_classes.png", refs[order],
                labels=["%d: %.1f%%" % (k + 1, 100 * state["pclass"][k]) for k in order])
    except Exception as exc:  # a plot must never stop a run
        print("warning: montage not written: %s" % exc)
    return base + "_optimiser.star"


def save_checkpoint(path: str, state: dict, config_extra: dict | None = None) -> None:
    import h5py

    with atomic_write(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["hpcem_version"] = __version__
            f.attrs["config"] = json.dumps(state["config"])
            if config_extra:
                f.attrs["job"] = json.dumps(config_extra, default=str)
            for k in ("refs", "sigma2", "tau2", "pclass", "img_power"):
                f.create_dataset(k, data=np.asarray(state[k]))
            for k in ("sigma_offset", "r_cur", "iteration", "resolution"):
                f.attrs[k] = state[k]
            g = f.create_group("results")
            for k, v in state["results"].items():
                g.create_dataset(k, data=np.asarray(v))


def load_checkpoint(path: str) -> dict:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            st = {k: f[k][()] for k in ("refs", "sigma2", "tau2", "pclass", "img_power")}
            for k in ("sigma_offset", "r_cur", "iteration", "resolution"):
                st[k] = f.attrs[k]
            st["config"] = json.loads(f.attrs["config"])
            st["job"] = json.loads(f.attrs["job"]) if "job" in f.attrs else {}
            st["results"] = {k: f["results"][k][()] for k in f["results"]}
    except (OSError, KeyError) as exc:
        raise InputError("cannot read checkpoint (%s)" % exc, file=path)
    return st


def checkpoint_of_optimiser(optimiser_star: str) -> str:
    """The checkpoint named by a run_itNNN_optimiser.star."""
    if not os.path.exists(optimiser_star):
        raise InputError("file not found", file=optimiser_star, field="--continue")
    blocks = read_star(optimiser_star)
    b = next((v for k, v in blocks.items() if "optimiser_general" in k), None)
    if b is None:
        b = next(iter(blocks.values()))
    try:
        name = b["hpcemCheckpointFile"] if isinstance(b, dict) else b["hpcemCheckpointFile"].iloc[0]
    except (KeyError, IndexError):
        raise InputError("missing", file=optimiser_star, field="hpcemCheckpointFile")
    return os.path.join(os.path.dirname(os.path.abspath(optimiser_star)), str(name))
