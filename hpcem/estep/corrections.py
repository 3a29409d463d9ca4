"""RELION's per-particle normalisation correction (--norm, rlnNormCorrection) and per-optics-group
intensity-scale correction (--scale, rlnGroupScaleCorrection), for one model's particles.

Both are measured at each particle's best pose of the last E-step (the E-step's ``fit``):

* norm: the particle's residual ``sum s_e |X - c R|^2`` over its expectation for the noise model
  (``sum hw``), so ``norm <- norm sqrt(residual / expected)``; the next E-step reads the image
  divided by its norm, and the norms are renormalised to a mean of 1 (the scale of the noise model
  is the sigma2's);
* scale: per optics group the least-squares factor between the data and the prediction,
  ``sum s_e Re(X (cR)*) / sum s_e |cR|^2``; the next E-step multiplies the group's CTFs by it
  (prediction, back-projection and weights alike), renormalised to a particle-weighted mean of 1
  (the map's own scale is the data's).
Both start at 1 (the norms at the input's rlnNormCorrection where the STAR file has one).
"""
from __future__ import annotations

import numpy as np

LIMITS = (0.1, 10.0)   # a single update changes a correction by at most this factor


class Corrections:
    def __init__(self, parts, results, norm: bool, scale: bool):
        self.norm, self.scale = bool(norm), bool(scale)
        if self.norm:
            t = parts.ps.table
            start = (t["rlnNormCorrection"].to_numpy(np.float64)[parts.idx] if "rlnNormCorrection" in t
                     else np.ones(parts.size))
            results["norm"] = np.where(np.isfinite(start) & (start > 0), start, 1.0)
            results["norm_fit"] = np.ones(parts.size)
        self.group_scale = np.ones(parts.G) if self.scale else None

    def apply(self, parts, results) -> None:
        """Before an E-step: the particles read with the current corrections."""
        parts.norm = results["norm"] if self.norm else None
        parts.scale = self.group_scale

    def update(self, parts, results, sums, comm) -> None:
        """After the E-step's sums are reduced over ``comm`` (collective); the next E-step reads the
        particles with the new corrections (:meth:`apply`)."""
        if self.norm:
            new = results["norm"] * np.sqrt(np.clip(results["norm_fit"], LIMITS[0] ** 2, LIMITS[1] ** 2))
            tot = np.array([new.sum(), float(new.size)])
            comm.allreduce_(tot)
            results["norm"] = new / (tot[0] / max(tot[1], 1.0))
        if self.scale:
            xa, aa = sums.scale_fit
            ratio = np.where(aa > 0, xa / np.where(aa > 0, aa, 1.0), 1.0)
            s = self.group_scale * np.clip(ratio, *LIMITS)
            cnt = np.asarray(parts.group_counts, np.float64)
            self.group_scale = s / (np.sum(s * cnt) / max(cnt.sum(), 1.0))

    def state(self) -> dict:
        return {"group_scale": self.group_scale} if self.scale else {}

    def load(self, st) -> None:
        if self.scale and "group_scale" in st:
            self.group_scale = np.asarray(st["group_scale"], np.float64)
