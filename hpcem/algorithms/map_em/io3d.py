"""Files of 3D classification and auto-refinement runs (RELION names), written by rank 0, atomically.

class3d, per iteration NNN: <root>_itNNN_classKKK.mrc, _data.star, _model.star (+ the driver's
_optimiser.star and _checkpoint.h5, and _classKKK.png central slices).
refine3d, per iteration: <root>_itNNN_half{1,2}_class001.mrc, _data.star, _half{1,2}_model.star
(+ optimiser, checkpoint, _half1_class001.png); final: <root>_class001.mrc,
<root>_half{1,2}_class001_unfil.mrc, <root>_data.star, <root>_model.star (with the FSC),
<root>_fsc.star, <root>_fsc.png, <root>_class001.png (+ <root>_class001_tv.png with --tv: central slices
with and without the regularisation).
"""
from __future__ import annotations

import os

import numpy as np

from ...core.fsc import fsc_table
from ...io.mrc import write_mrc
from ...io.star import write_star
from .iofiles import group_names, model_blocks, write_data_star

POSES = ("rot", "tilt", "psi")


def write_class3d_iteration(root, ps, state, stats, cfg) -> dict:
    it = int(state["iteration"])
    refs = state["refs"]
    K, n, angpix = refs.shape[0], refs.shape[1], float(ps.angpix)
    names = []
    for k in range(K):
        p = root.iteration(it, "class%03d.mrc" % (k + 1))
        write_mrc(p, refs[k], angpix)
        names.append(os.path.basename(p))
    data = write_data_star(root.iteration(it, "data.star"), ps, state["results"], POSES)
    model = root.iteration(it, "model.star")
    write_star(model, model_blocks(3, n, angpix, names, state["pclass"], state["resolution"], state["r_cur"],
                                   state["sigma2"], state["tau2"], state["sigma_offset"], cfg.tau2_fudge,
                                   stats.get("loglik", np.nan), group_scale=state.get("group_scale"),
                                   group_names=group_names(ps), class_cols=_class_resolution(stats)))
    return {"model": model, "data": data}


def _class_resolution(stats) -> dict | None:
    """Each class's own half-set resolution (initial_model's VDAM), where the job measures it."""
    res = stats.get("class_resolution")
    return None if res is None else {"rlnEstimatedResolution": np.asarray(res, np.float64)}


def write_refine_iteration(root, ps, state, stats, cfg) -> dict:
    it = int(state["iteration"])
    n, angpix = ps.box, float(ps.angpix)
    g = state["global"]
    for h in (1, 2):
        hs = state["half%d" % h]
        p = root.iteration(it, "half%d_class001.mrc" % h)
        write_mrc(p, hs["refs"][0], angpix)
        write_star(root.iteration(it, "half%d_model.star" % h), model_blocks(
            3, n, angpix, [os.path.basename(p)], hs["pclass"], g["resolution"], g["r_cur"], hs["sigma2"],
            hs["tau2"], hs["sigma_offset"], cfg.tau2_fudge, float(stats["loglik_half"][h - 1]),
            extra_class_cols={"rlnGoldStandardFsc": stats["fsc"]}, group_scale=hs.get("group_scale"),
            group_names=group_names(ps)))
    data = write_data_star(root.iteration(it, "data.star"), ps, state["results"], POSES, state["subsets"])
    return {"model": root.iteration(it, "half1_model.star"), "data": data}


def write_refine_final(root, ps, fin, cfg) -> None:
    """The combined map (from both halves' sums), the unfiltered half maps, the masked and
    unmasked gold-standard FSC; ``fin`` from :meth:`Refine3D.m_step` of the final iteration."""
    n, angpix = ps.box, float(ps.angpix)
    write_mrc(root.path("class001.mrc"), fin["map"], angpix)
    for h in (1, 2):
        write_mrc(root.path("half%d_class001_unfil.mrc" % h), fin["unfil"][h], angpix)
    write_data_star(root.path("data.star"), ps, fin["results"], POSES, fin["subsets"])
    shells = np.arange(n // 2 + 1)
    tab = fsc_table(shells, fin["fsc"], n, angpix)
    tab["rlnFourierShellCorrelationUnmaskedMaps"] = fin["fsc_unmasked"]
    tab["rlnFourierShellCorrelationMaskedMaps"] = fin["fsc"]
    write_star(root.path("fsc.star"), {"fsc": tab})
    blocks = model_blocks(3, n, angpix, [os.path.basename(root.path("class001.mrc"))], np.ones(1), fin["res"],
                          n // 2, fin["sigma2"], fin["tau2"][None], fin["sigma_offset"], cfg.tau2_fudge,
                          fin["loglik"], extra_class_cols={"rlnGoldStandardFsc": fin["fsc"], "rlnSsnrMap": fin["ssnr"]})
    blocks["model_general"]["rlnFinalResolution"] = fin["res"]
    blocks["model_general"]["hpcemUnmaskedResolution"] = fin["res_unmasked"]
    write_star(root.path("model.star"), blocks)


def plot_refine_final(root, ps, fin) -> None:
    from ...plots import plot_fsc
    from .iofiles import central_slices_png

    n, shells = ps.box, np.arange(ps.box // 2 + 1)
    plot_fsc(root.path("fsc.png"), {"masked (%.2f A)" % fin["res"]: (shells, fin["fsc"]),
                                    "unmasked (%.2f A)" % fin["res_unmasked"]: (shells, fin["fsc_unmasked"])},
             n, float(ps.angpix), title="gold-standard FSC")
    central_slices_png(root.path("class001.png"), fin["map"], "final map, %.2f A" % fin["res"])
    if fin.get("map_wiener") is not None:
        central_slices_png(root.path("class001_tv.png"), {"TV": fin["map"], "Wiener": fin["map_wiener"]},
                           "final map with (top) and without (bottom) the sparsity + TV regularisation")
