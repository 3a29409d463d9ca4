"""Can junk particles inside the classes the ranker selects be dropped one by one (issue 14, part 1)?

On stored test sets (``hpcem.ml.datagen`` folders: truth.npz gives each particle's kind), the
classes selected at --min_score by the shipped ranker are taken as they are; then each candidate
per-particle statistic keeps the particles on its good side of a threshold.  The threshold is
chosen on the --tune sets (the best purity with a pooled recall of at least --recall; recall counts
every good particle of the sets, so the ones the class selection loses count too) and applied
unchanged to the --check sets, which it was not tuned on.  Prints each statistic's ROC AUC (good
against junk, inside the selected classes) per set, and purity / recall on both groups.

Statistics from class2d's run_itNNN_data.star: rlnLogLikeliContribution, rlnMaxValueProbDistribution,
log rlnNrOfSignificantSamples, the origin's length; each raw and relative to its class (median /
MAD: ``_z``).  With --images also the evidence at the stored pose, from the images: t = CTF x the
class average turned by psi and shifted by the origin, masked; ``z`` = x.t / (sigma |t|) against an
empty pick, ``cc`` = x.t / (|x| |t|), ``resid`` = (|x - t|^2 / sigma^2 - M) / sqrt(2M) for M pixels in
the mask; sigma is the true noise level (truth.npz), so these are a best case.

    python bench/bench_ranker_particles.py --dir /tmp/issue14-ranker4/large \\
        --tune set000,set001,set002 --check set004,set005 [--images]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import pandas as pd


def load_set(setdir, weights, min_score):
    from hpcem.ml.classjob import ClassJob
    from hpcem.ml.select import score_job, select_classes

    info = json.load(open(os.path.join(setdir, "done.json")))
    job = ClassJob.read(os.path.join(setdir, info["optimiser"]))
    truth = np.load(os.path.join(setdir, "truth.npz"))
    sel = select_classes(score_job(job, weights), job.counts, min_score)
    cls = job.particles["rlnClassNumber"].to_numpy(np.int64) - 1
    return {"name": os.path.basename(setdir), "dir": setdir, "info": info, "job": job, "cls": cls,
            "inside": sel[cls], "good": truth["kind"] == 0, "sigma": float(truth["noise_sigma"])}


def class_z(v, cls):
    """``v`` relative to its class: (v - median) / (1.4826 MAD)."""
    g = pd.Series(v).groupby(cls)
    med = g.transform("median").to_numpy()
    mad = pd.Series(np.abs(v - med)).groupby(cls).transform("median").to_numpy()
    return (v - med) / (1.4826 * mad + 1e-12)


def stored_stats(s):
    t = s["job"].particles
    raw = {"loglik": t["rlnLogLikeliContribution"].to_numpy(float),
           "maxprob": t["rlnMaxValueProbDistribution"].to_numpy(float),
           "log_nsig": np.log(t["rlnNrOfSignificantSamples"].to_numpy(float)),
           "offset": np.hypot(t["rlnOriginXAngst"].to_numpy(float), t["rlnOriginYAngst"].to_numpy(float))}
    out = dict(raw)
    out.update({k + "_z": class_z(v, s["cls"]) for k, v in raw.items()})
    return out


def image_stats(s, chunk=2048):
    from scipy import ndimage

    from hpcem.core.ctf import ctf_from_params
    from hpcem.core.fourier import ft2, ift2, shift_phases
    from hpcem.io.mrc import read_mrc
    from hpcem.io.particles import ParticleSet

    job, t = s["job"], s["job"].particles
    ps = ParticleSet.read(os.path.join(s["dir"], "particles.star"), ctf=True)
    n, angpix = ps.box, job.angpix
    avg = read_mrc(job.stack)[0]            # as written (job.images are rescaled)
    c = np.arange(n) - n // 2
    mask = ((c[:, None] ** 2 + c[None, :] ** 2) <= (s["info"]["diameter"] / 2 / angpix) ** 2).astype(np.float32)
    psi = t["rlnAnglePsi"].to_numpy(float)
    shifts = -np.stack([t["rlnOriginXAngst"].to_numpy(float), t["rlnOriginYAngst"].to_numpy(float)], 1) / angpix
    pairs, pair_of = np.unique(np.stack([s["cls"], np.round(psi * 100).astype(np.int64)], 1), axis=0, return_inverse=True)
    refs = np.stack([ft2(ndimage.rotate(avg[k], p / 100.0, reshape=False, order=1)) for k, p in pairs])
    xt, tt, xx = (np.empty(len(t)) for _ in range(3))
    for a in range(0, len(t), chunk):
        idx = np.arange(a, min(a + chunk, len(t)))
        ctf = ctf_from_params(n, angpix, {k: v for k, v in ps.ctf_params(idx).items() if k != "angpix"})
        tmpl = ift2(ctf * refs[pair_of.ravel()[idx]] * shift_phases(n, shifts[idx]), n) * mask
        x = ps.read_images(idx) * mask
        xt[idx], tt[idx], xx[idx] = (x * tmpl).sum((1, 2)), (tmpl * tmpl).sum((1, 2)), (x * x).sum((1, 2))
    sig2, m = s["sigma"] ** 2, float(mask.sum())
    return {"z": xt / np.sqrt(sig2 * tt + 1e-30), "cc": xt / np.sqrt(xx * tt + 1e-30),
            "resid": ((xx - 2 * xt + tt) / sig2 - m) / np.sqrt(2 * m)}


def purity_recall(sets, stat, sign, thr):
    good = kept = total = 0
    for s in sets:
        keep = s["inside"] & (sign * s["stats"][stat] >= sign * thr)
        good += int((keep & s["good"]).sum())
        kept += int(keep.sum())
        total += int(s["good"].sum())
    return good / max(kept, 1), good / max(total, 1)


def tune(sets, stat, sign, recall):
    """The threshold with the best pooled purity at recall >= ``recall`` on ``sets``."""
    v = np.concatenate([s["stats"][stat][s["inside"]] for s in sets])
    qs = np.quantile(v, np.linspace(0.0, 0.3, 151) if sign > 0 else np.linspace(1.0, 0.7, 151))
    best = (-1.0, 0.0, qs[0])
    for q in qs:
        p, r = purity_recall(sets, stat, sign, q)
        if r >= recall and p > best[0]:
            best = (p, r, q)
    return best


def main(argv=None) -> int:
    from hpcem.metrics import roc_auc
    from hpcem.ml import net

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True, help="folder of stored datagen sets")
    ap.add_argument("--tune", default="set000,set001,set002", help="sets the thresholds are chosen on")
    ap.add_argument("--check", default="set004,set005", help="sets they are checked on")
    ap.add_argument("--min_score", type=float, default=0.15)
    ap.add_argument("--recall", type=float, default=0.90)
    ap.add_argument("--images", action="store_true", help="also the image evidence at the stored pose")
    a = ap.parse_args(argv)
    weights = net.load_weights(None)
    groups = {g: [load_set(os.path.join(a.dir, n), weights, a.min_score) for n in names.split(",") if n]
              for g, names in (("tune", a.tune), ("check", a.check))}
    every = groups["tune"] + groups["check"]
    for s in every:
        s["stats"] = stored_stats(s)
        if a.images:
            s["stats"].update(image_stats(s))
        p, r = purity_recall([s], "loglik", 1, -np.inf)
        print("%s SNR %.3f K %d: classes at %.2f select %d particles, purity %.4f recall %.4f" % (
            s["name"], s["info"]["snr"], s["job"].K, a.min_score, int(s["inside"].sum()), p, r))
    for g, sets in groups.items():
        print("%s sets, class selection only: purity %.4f recall %.4f" % (g, *purity_recall(sets, "loglik", 1, -np.inf)))
    print("%-10s %s | tuned: purity / recall (threshold) | checked" % ("statistic", " ".join(s["name"][-6:] for s in every)))
    for stat in every[0]["stats"]:
        aucs = [roc_auc(s["stats"][stat][s["inside"]], s["good"][s["inside"]]) for s in every]
        sign = 1 if np.mean(aucs[:len(groups["tune"])]) >= 0.5 else -1
        p, r, thr = tune(groups["tune"], stat, sign, a.recall)
        pc, rc = purity_recall(groups["check"], stat, sign, thr) if groups["check"] else (np.nan, np.nan)
        print("%-10s %s | %.4f / %.4f (%s %.3f) | %.4f / %.4f" % (
            stat, " ".join("%6.3f" % x for x in aucs), p, r, ">=" if sign > 0 else "<=", thr, pc, rc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
