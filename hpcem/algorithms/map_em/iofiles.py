"""RELION's iteration files of the MAP-EM jobs (2D and 3D): data, model and the plots, written
by rank 0 (atomically, through :mod:`hpcem.io`).

``run_itNNN_data.star``: the input particles with rlnClassNumber, the pose columns
(rlnAnglePsi; rlnAngleRot/Tilt in 3D), rlnOriginXAngst/YAngst, rlnMaxValueProbDistribution,
rlnNrOfSignificantSamples, rlnLogLikeliContribution (rlnRandomSubset in refine3d, rlnNormCorrection
with --norm).
``run_itNNN_model.star``: data_model_general, data_model_classes, data_model_optics_group_N
(sigma2 per shell) and data_model_class_N (tau2 per shell, the FSC in refine3d).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

POSE_COLUMNS = {"rot": "rlnAngleRot", "tilt": "rlnAngleTilt", "psi": "rlnAnglePsi"}


def write_data_star(path, ps, results, pose_keys, subsets=None) -> str:
    cols = {"rlnClassNumber": np.asarray(results["class"], np.int64)}
    for k in pose_keys:
        cols[POSE_COLUMNS[k]] = results[k]
    cols.update({"rlnOriginXAngst": results["ox"], "rlnOriginYAngst": results["oy"],
                 "rlnMaxValueProbDistribution": results["pmax"],
                 "rlnNrOfSignificantSamples": np.asarray(results["nsig"], np.int64),
                 "rlnLogLikeliContribution": results["loglik"]})
    if "norm" in results:
        cols["rlnNormCorrection"] = np.asarray(results["norm"], np.float64)
    if subsets is not None:
        cols["rlnRandomSubset"] = np.asarray(subsets, np.int64)
    ps.with_columns(**cols).write(path)
    return path


def group_names(ps) -> list:
    """The optics groups' names, in group order (the groups of sigma2 and the scale corrections)."""
    return [g.name for _, g in sorted(ps.optics.items())]


def model_blocks(dim, n, angpix, names, pclass, resolution, r_cur, sigma2, tau2, sigma_offset, tau2_fudge,
                 loglik, counts=None, extra_class_cols=None, group_scale=None, group_names=None,
                 class_cols=None) -> dict:
    """The blocks of a RELION model STAR (``dim`` 2 or 3 references of box ``n``); with
    ``group_scale`` (--scale) a data_model_groups table of the optics groups' scale corrections;
    ``class_cols`` per-class columns of data_model_classes (replacing the defaults)."""
    K = len(names)
    nsh = sigma2.shape[1]
    shell_res = np.arange(nsh) / (n * angpix)         # 1/A
    classes = {"rlnReferenceImage": names, "rlnClassDistribution": np.asarray(pclass, np.float64),
               "rlnEstimatedResolution": [float(resolution)] * K}
    if counts is not None:
        classes["rlnNrOfParticles"] = np.asarray(counts, np.int64)
    classes.update(class_cols or {})
    blocks = {
        "model_general": {
            "rlnReferenceDimensionality": int(dim), "rlnDataDimensionality": 2, "rlnOriginalImageSize": n,
            "rlnCurrentResolution": float(resolution), "rlnCurrentImageSize": int(2 * r_cur),
            "rlnPaddingFactor": 2, "rlnNrClasses": K, "rlnNrGroups": int(sigma2.shape[0]),
            "rlnTau2FudgeFactor": float(tau2_fudge), "rlnLogLikelihood": float(loglik),
            "rlnSigmaOffsetsAngst": float(sigma_offset), "rlnPixelSize": float(angpix),
        },
        "model_classes": pd.DataFrame(classes),
    }
    if group_scale is not None:
        G = len(group_scale)
        blocks["model_groups"] = pd.DataFrame({
            "rlnGroupNumber": np.arange(1, G + 1), "rlnGroupName": list(group_names or
                                                                        ["group%d" % (g + 1) for g in range(G)]),
            "rlnGroupScaleCorrection": np.asarray(group_scale, np.float64)})
    for g in range(sigma2.shape[0]):
        blocks["model_optics_group_%d" % (g + 1)] = pd.DataFrame({
            "rlnSpectralIndex": np.arange(nsh), "rlnResolution": shell_res, "rlnSigma2Noise": sigma2[g]})
    for k in range(K):
        d = {"rlnSpectralIndex": np.arange(nsh), "rlnResolution": shell_res,
             "rlnReferenceTau2": np.asarray(tau2[k])[:nsh] if tau2 is not None else np.zeros(nsh)}
        for c, v in (extra_class_cols or {}).items():
            d[c] = np.asarray(v)[:nsh]
        blocks["model_class_%d" % (k + 1)] = pd.DataFrame(d)
    return blocks


def central_slices_png(path, vol, title) -> None:
    from ...plots import central_slices

    central_slices(path, vol, title=title)
