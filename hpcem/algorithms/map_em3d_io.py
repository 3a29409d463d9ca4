"""Files of 3D classification and auto-refinement runs (RELION names), written by rank 0, atomically.

class3d, per iteration NNN: run_itNNN_classKKK.mrc, run_itNNN_data.star, run_itNNN_model.star,
run_itNNN_optimiser.star, run_itNNN_checkpoint.h5, run_itNNN_classKKK.png (central slices).
refine3d, per iteration: run_itNNN_half{1,2}_class001.mrc, run_itNNN_data.star,
run_itNNN_half{1,2}_model.star, run_itNNN_optimiser.star, run_itNNN_checkpoint.h5,
run_itNNN_half1_class001.png; final: run_class001.mrc, run_half{1,2}_class001_unfil.mrc,
run_data.star, run_model.star (with the FSC), run_fsc.star, run_fsc.png, run_class001.png.
Checkpoints are HDF5 files of the full state (nested groups), stamped with version and config.
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
from ..io.star import write_star
from .map_em_io import checkpoint_of_optimiser  # noqa: F401  (re-exported for the CLI)


# ----------------------------------------------------------------------------- HDF5 state
def _put(g, d):
    for k, v in d.items():
        if isinstance(v, dict):
            _put(g.create_group(k), v)
        elif np.ndim(v) == 0 and not isinstance(v, np.ndarray):
            g.attrs[k] = v
        else:
            g.create_dataset(k, data=np.asarray(v))


def _get(g):
    out = {k: v for k, v in g.attrs.items()}
    for k in g:
        out[k] = _get(g[k]) if hasattr(g[k], "keys") else g[k][()]
    return out


def _plain(o):
    return o.item() if hasattr(o, "item") else str(o)


def save_state(path, state: dict, job: dict | None = None):
    import h5py

    with atomic_write(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["hpcem_version"] = __version__
            f.attrs["config_json"] = json.dumps(state["config"], default=_plain)
            if job:
                f.attrs["job_json"] = json.dumps(job, default=str)
            _put(f, {k: v for k, v in state.items() if k != "config"})


def load_state(path) -> dict:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            st = _get(f)
    except (OSError, KeyError) as exc:
        raise InputError("cannot read checkpoint (%s)" % exc, file=path)
    st["config"] = json.loads(st.pop("config_json"))
    st["job"] = json.loads(st.pop("job_json")) if "job_json" in st else {}
    return st


# ----------------------------------------------------------------------------- STAR helpers
def _shell_res(nsh, n, angpix):
    k = np.arange(nsh)
    return k / (n * angpix)


def _data_star(path, ps, res, subsets=None):
    cols = {"rlnClassNumber": res["class"].astype(np.int64), "rlnAngleRot": res["rot"],
            "rlnAngleTilt": res["tilt"], "rlnAnglePsi": res["psi"],
            "rlnOriginXAngst": res["ox"], "rlnOriginYAngst": res["oy"],
            "rlnMaxValueProbDistribution": res["pmax"],
            "rlnNrOfSignificantSamples": res["nsig"].astype(np.int64),
            "rlnLogLikeliContribution": res["loglik"]}
    if subsets is not None:
        cols["rlnRandomSubset"] = np.asarray(subsets, np.int64)
    ps.with_columns(**cols).write(path)


def _model_blocks(n, angpix, dim_classes, names, pclass, resolution, r_cur, sigma2, tau2, sigma_offset,
                  tau2_fudge, loglik, extra_class_cols=None):
    K = len(names)
    blocks = {
        "model_general": {
            "rlnReferenceDimensionality": 3, "rlnDataDimensionality": 2, "rlnOriginalImageSize": n,
            "rlnCurrentResolution": float(resolution), "rlnCurrentImageSize": int(2 * r_cur),
            "rlnPaddingFactor": 2, "rlnNrClasses": K, "rlnNrGroups": int(sigma2.shape[0]),
            "rlnTau2FudgeFactor": float(tau2_fudge), "rlnLogLikelihood": float(loglik),
            "rlnSigmaOffsetsAngst": float(sigma_offset), "rlnPixelSize": float(angpix),
        },
        "model_classes": pd.DataFrame({"rlnReferenceImage": names, "rlnClassDistribution": pclass,
                                       "rlnEstimatedResolution": [float(resolution)] * K}),
    }
    nsh = sigma2.shape[1]
    for g in range(sigma2.shape[0]):
        blocks["model_optics_group_%d" % (g + 1)] = pd.DataFrame({
            "rlnSpectralIndex": np.arange(nsh), "rlnResolution": _shell_res(nsh, n, angpix),
            "rlnSigma2Noise": sigma2[g]})
    for k in range(K):
        d = {"rlnSpectralIndex": np.arange(nsh), "rlnResolution": _shell_res(nsh, n, angpix),
             "rlnReferenceTau2": np.asarray(tau2[k])[:nsh] if tau2 is not None else np.zeros(nsh)}
        if extra_class_cols:
            d.update({c: np.asarray(v)[:nsh] for c, v in extra_class_cols.items()})
        blocks["model_class_%d" % (k + 1)] = pd.DataFrame(d)
    return blocks


def _optimiser(base, outdir, it, iters, ck, model_name, data_name):
    write_star(base + "_optimiser.star", {"optimiser_general": {
        "rlnOutputRootName": os.path.join(outdir, "run"), "rlnModelStarFile": model_name,
        "rlnExperimentalDataStarFile": data_name, "rlnCurrentIteration": int(it),
        "rlnNumberOfIterations": int(iters), "hpcemCheckpointFile": os.path.basename(ck)}})
    return base + "_optimiser.star"


def _slices(path, vol, title):
    try:
        from ..plots import central_slices
        central_slices(path, vol, title=title)
    except Exception as exc:  # a plot must never stop a run
        print("warning: %s not written: %s" % (path, exc))


# ----------------------------------------------------------------------------- class3d
def write_class3d_iteration(outdir, ps, model, state, stats, job=None):
    it = int(state["iteration"])
    base = os.path.join(outdir, "run_it%03d" % it)
    os.makedirs(outdir, exist_ok=True)
    refs, res = state["refs"], state["results"]
    K, n, angpix = refs.shape[0], refs.shape[1], float(model.angpix)
    names = []
    for k in range(K):
        p = base + "_class%03d.mrc" % (k + 1)
        write_mrc(p, refs[k], angpix)
        names.append(os.path.basename(p))
        _slices(base + "_class%03d.png" % (k + 1), refs[k], "class %d: %.1f%%" % (k + 1, 100 * state["pclass"][k]))
    _data_star(base + "_data.star", ps, res)
    write_star(base + "_model.star", _model_blocks(n, angpix, 3, names, state["pclass"], state["resolution"],
                                                   state["r_cur"], state["sigma2"], state["tau2"],
                                                   state["sigma_offset"], state["config"]["tau2_fudge"],
                                                   stats.get("loglik", np.nan)))
    ck = base + "_checkpoint.h5"
    save_state(ck, state, job)
    return _optimiser(base, outdir, it, state["config"]["iters"], ck, os.path.basename(base + "_model.star"),
                      os.path.basename(base + "_data.star"))


# ----------------------------------------------------------------------------- refine3d
def _half_states(models, half, sub, world):
    """{h: {idx, results, refs, sigma2, tau2, img_power, sigma_offset}} of both halves, on every rank."""
    mine = {}
    for h, m in models.items():
        r = m.gather_results()
        mine[h] = {"idx": m.idx_all, "results": r, "refs": m.refs, "sigma2": m.sigma2,
                   "tau2": m.tau2 if m.tau2 is not None else np.zeros((1, m.nsh)),
                   "img_power": m.img_power, "sigma_offset": m.sigma_offset, "pclass": m.pclass}
    if half is None:
        return mine
    got = world.allgather(mine if sub.rank == 0 else None)
    out = {}
    for g in got:
        if g:
            out.update(g)
    return out


def _merge_results(hstates, N):
    keys = hstates[1]["results"].keys()
    out = {}
    for k in keys:
        a = np.zeros(N, hstates[1]["results"][k].dtype)
        for h in (1, 2):
            a[hstates[h]["idx"]] = hstates[h]["results"][k]
        out[k] = a
    return out


def write_refine_iteration(outdir, ps, models, half, sub, world, st, subsets, curve, stats, cfg, log, job=None):
    """Collective (every rank calls it); rank 0 writes the iteration's files and checkpoint."""
    from dataclasses import asdict

    hs = _half_states(models, half, sub, world)
    if world.rank != 0:
        return
    it = int(st["iteration"])
    base = os.path.join(outdir, "run_it%03d" % it)
    os.makedirs(outdir, exist_ok=True)
    n, angpix = ps.box, float(ps.angpix)
    results = _merge_results(hs, ps.n)
    for h in (1, 2):
        p = base + "_half%d_class001.mrc" % h
        write_mrc(p, hs[h]["refs"][0], angpix)
        write_star(base + "_half%d_model.star" % h, _model_blocks(
            n, angpix, 3, [os.path.basename(p)], hs[h]["pclass"], st["resolution"], st["r_cur"], hs[h]["sigma2"],
            hs[h]["tau2"], hs[h]["sigma_offset"], cfg.tau2_fudge, float(hs[h]["results"]["loglik"].sum()),
            extra_class_cols={"rlnGoldStandardFsc": curve}))
    _slices(base + "_half1_class001.png", hs[1]["refs"][0], "iteration %d, half 1" % it)
    _data_star(base + "_data.star", ps, results, subsets)
    state = {"global": dict(st), "subsets": subsets, "results": results, "config": asdict(cfg)}
    for h in (1, 2):
        state["half%d" % h] = {k: hs[h][k] for k in ("refs", "sigma2", "img_power", "sigma_offset")}
    ck = base + "_checkpoint.h5"
    save_state(ck, state, job)
    _optimiser(base, outdir, it, cfg.iters, ck, os.path.basename(base + "_half1_model.star"),
               os.path.basename(base + "_data.star"))
    log("it %3d  order %d%s  T %d  r_cur %2d  res %6.2f A  dang %6.2f deg  doff %5.2f A  sig_off %5.2f/%5.2f A  "
        "nsig %6.1f  (%.1f s, E-step %.1f s)%s" % (
            it, stats["order"], " local %.2f" % stats["local_sigma"] if stats["local_sigma"] > 0 else "",
            stats["n_trans"], stats["r_cur"], stats["resolution"], stats["changes_orient"], stats["changes_offsets"],
            hs[1]["sigma_offset"], hs[2]["sigma_offset"], float(results["nsig"].mean()), stats["t_iter"],
            stats["t_estep"], "  -> converged, final iteration next" if st["converged"] else ""))


def write_refine_final(outdir, ps, models, half, sub, world, st, unfil, curve, curve_unmasked, full_bp, cfg,
                       mask3, log, job=None):
    """Collective; the combined map from both halves' sums (SSNR of the full data, 2FSC/(1-FSC)),
    half maps, masked/unmasked FSC; rank 0 writes."""
    from ..core.fsc import fsc_table, resolution_at
    from .map_em3d import _ssnr_from_fsc

    hs = _half_states(models, half, sub, world)
    n, angpix = ps.box, float(ps.angpix)
    ssnr = _ssnr_from_fsc(curve, full=True)
    ops = models[next(iter(models))].ops
    W = np.maximum(full_bp.shell_mean_weight()[:n // 2 + 1] * len(ops), 1e-30)
    tau2 = np.where(ssnr > 0, ssnr / W, 0.0)
    vol = full_bp.reconstruct(tau2=tau2, tau2_fudge=cfg.tau2_fudge, symmetry_ops=ops if len(ops) > 1 else None)
    if world.rank != 0:
        return
    os.makedirs(outdir, exist_ok=True)
    write_mrc(os.path.join(outdir, "run_class001.mrc"), vol, angpix)
    for h in (1, 2):
        write_mrc(os.path.join(outdir, "run_half%d_class001_unfil.mrc" % h), unfil[h], angpix)
    results = _merge_results(hs, ps.n)
    subsets = np.zeros(ps.n, np.int64)
    for h in (1, 2):
        subsets[hs[h]["idx"]] = h
    _data_star(os.path.join(outdir, "run_data.star"), ps, results, subsets)
    res_m = resolution_at(curve, 0.143, n, angpix)
    res_u = resolution_at(curve_unmasked, 0.143, n, angpix)
    shells = np.arange(n // 2 + 1)
    tab = fsc_table(shells, curve, n, angpix)
    tab["rlnFourierShellCorrelationUnmaskedMaps"] = curve_unmasked
    tab["rlnFourierShellCorrelationMaskedMaps"] = curve
    write_star(os.path.join(outdir, "run_fsc.star"), {"fsc": tab})
    blocks = _model_blocks(n, angpix, 3, ["run_class001.mrc"], np.ones(1), res_m, n // 2,
                           hs[1]["sigma2"], tau2[None], 0.5 * (hs[1]["sigma_offset"] + hs[2]["sigma_offset"]),
                           cfg.tau2_fudge, float(results["loglik"].sum()),
                           extra_class_cols={"rlnGoldStandardFsc": curve, "rlnSsnrMap": ssnr})
    blocks["model_general"]["rlnFinalResolution"] = res_m
    blocks["model_general"]["hpcemUnmaskedResolution"] = res_u
    write_star(os.path.join(outdir, "run_model.star"), blocks)
    try:
        from ..plots import plot_fsc
        plot_fsc(os.path.join(outdir, "run_fsc.png"), {"masked (%.2f A)" % res_m: (shells, curve),
                                                       "unmasked (%.2f A)" % res_u: (shells, curve_unmasked)},
                 n, angpix, title="gold-standard FSC")
    except Exception as exc:
        print("warning: FSC plot not written: %s" % exc)
    _slices(os.path.join(outdir, "run_class001.png"), vol, "final map, %.2f A" % res_m)
    log("final: resolution %.2f A (masked FSC 0.143), %.2f A unmasked; wrote %s" % (
        res_m, res_u, os.path.join(outdir, "run_class001.mrc")))
