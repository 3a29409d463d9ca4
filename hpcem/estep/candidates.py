"""Candidate generators: which coarse hypotheses the E-step's coarse pass scores for a particle.

* :class:`FullGrid`: all of them (the dense SGEMM pass), for global searches in 2D and 3D;
* :class:`LocalSearch`: the orientations within ``nsigma * sigma`` of each particle's current
  pose with a Gaussian angular prior (RELION's local searches in auto-refine), all translations;
* importance-sampled candidates (cryoSPARC's) are the next generator: the same interface, poses
  drawn from each particle's importance distribution.

A generator has ``plan(space, results, T)`` (once per E-step: precompute what it needs and return
the order in which to visit this rank's particles, or None) and ``for_batch(sel, T)`` (None for
a dense pass, else ``(offsets, t_idx, j_idx, extra_log_prior)`` in CSR form over the batch).
"""
from __future__ import annotations

import numpy as np

from .children import ragged_arange, segment_offsets


class FullGrid:
    dense = True

    def plan(self, space, results, T):
        return None

    def for_batch(self, sel, T):
        return None


class LocalSearch:
    """Local orientation search of width ``sigma_deg`` (the space provides the neighbours), in the
    particle's current class, or with ``all_classes`` in every class of the space (3D
    classification with local searches)."""

    dense = False

    def __init__(self, sigma_deg: float, nsigma: float = 3.0, all_classes: bool = False):
        self.sigma, self.nsigma = float(sigma_deg), float(nsigma)
        self.all_classes = bool(all_classes)

    def plan(self, space, results, T):
        """Candidates of every particle at once (the grid's rotation matrices are built once), and
        the particles ordered by their nearest grid orientation, so that a batch's particles share
        candidate orientations (each projected once per batch)."""
        off, oi, dist = space.neighbours(results, self.sigma, self.nsigma)
        self.space, self.results = space, results
        self.off, self.oi, self.dist = off, oi, dist
        nb = off.size - 1
        if nb == 0:
            return np.zeros(0, np.int64)
        seg = np.repeat(np.arange(nb), np.diff(off))
        o_ = np.lexsort((dist, seg))
        nearest = oi[o_[off[:-1]]]
        return np.argsort(nearest, kind="stable")

    def for_batch(self, sel, T):
        cb = np.diff(self.off)[sel]
        pos = ragged_arange(self.off[sel], cb)
        oi, dist = self.oi[pos], self.dist[pos]
        if self.all_classes and self.space.K > 1:
            K = self.space.K
            oi, dist, cb = np.repeat(oi, K), np.repeat(dist, K), cb * K
            cls = np.tile(np.arange(K), pos.size)
        else:
            cls = np.repeat(self.results["class"][sel] - 1, cb)
        pj = np.repeat(self.space.coarse_index(cls, oi), T)
        pt = np.tile(np.arange(T), oi.size)
        extra = np.repeat(-dist ** 2 / (2.0 * self.sigma ** 2), T)
        return segment_offsets(cb * T), pt, pj, extra
