"""Importance-sampled candidates: cryoSPARC's quadrature over poses (seed 003, section 3.4).

The third candidate generator of the E-step (beside :class:`~.candidates.FullGrid` and
:class:`~.candidates.LocalSearch`).  Each particle (with class segments: each (particle, class))
keeps the marginals of its last E-step over viewing directions, in-plane angles and
translations (eqs 17-19, as points with values: directions and angles as unit vectors,
translations as absolute origins in pixels, so that they survive a change of quadrature grid
and of search centre; with the spacing of the quadrature they were made on, which widens the
kernels when the quadrature has become finer since: "smooth transitions between resolutions").  The next E-step draws from the mixture of eq 20 (the marginals raised to
1/T, diffused by the kernels of eqs 21-23, mixed with the uniform distribution in proportion
alpha), N = s0 ESS draws per dimension (:func:`hpcem.kernels.is_draw`), and evaluates the
product of the drawn sets, each candidate carrying the properly weighted factor of eq 13 as its
extra log prior (:func:`hpcem.kernels.is_candidates`): the E-step's log-likelihood is then the
importance-sampling estimate of the quadrature's.  ``alpha`` and ``T`` follow the seed's
schedule in the position ``tau`` at which the marginals were made (:func:`schedule`); a particle
without marginals draws from the uniform distribution.  A batch whose product would evaluate more
than ``max_frac`` of the full grid runs the dense pass instead (the early epochs).
"""
from __future__ import annotations

import numpy as np

from .. import kernels

CAP = 128         # points kept per segment and dimension
SEED_EPOCH = 46105 / 200.0    # the seed's iterations per epoch (thermus: 46,105 images, 200 per mini-batch)
_MIX = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93,
                 0x27D4EB2F165667C5], dtype=np.uint64)


def schedule(tau_prev):
    """(alpha, 1/T) of eq 20 for marginals made at seed iteration ``tau_prev`` (< 0: none):
    ``alpha = max(0.05, 2^(-0.25 floor(tau/50)))``, ``T = max(1.25, 2^(10 / floor(tau/50)))``."""
    tau = np.asarray(tau_prev, np.float64)
    f = np.floor(np.maximum(tau, 0.0) / 50.0)
    alpha = np.where(tau < 0, 1.0, np.maximum(0.05, 2.0 ** (-0.25 * f)))
    with np.errstate(divide="ignore"):
        T = np.maximum(1.25, 2.0 ** (10.0 / f))
    return alpha, np.where(f > 0, 1.0 / T, 0.0)


def random_keys(seed: int, it: int, gidx, cls, dim: int):
    """uint64 stream keys of segments (global particle index, class) for one dimension."""
    with np.errstate(over="ignore"):
        k = (np.uint64(seed) * _MIX[0]) ^ (np.uint64(it) * _MIX[1]) ^ (np.uint64(dim + 1) * _MIX[4])
        return k ^ (np.asarray(gidx, np.uint64) * _MIX[2]) ^ (np.asarray(cls, np.uint64) * _MIX[3])


class Marginals:
    """The kept marginal of one dimension: ``pts`` (S, CAP, D) points, ``val`` (S, CAP) values
    (0: empty slot, the largest 1), ``step`` (S,) the spacing of the quadrature they were made on."""

    def __init__(self, S: int, D: int, cap: int = CAP):
        self.pts = np.zeros((S, cap, D), np.float32)
        self.val = np.zeros((S, cap), np.float32)
        self.step = np.zeros(S, np.float32)

    def put(self, seg, pts, val):
        """Set the marginals of the segments in ``seg`` (cleared by the caller) from ``(seg, pts,
        val)`` entries: the CAP largest of each segment, normalised to a maximum of 1."""
        cap = self.val.shape[1]
        if seg.size == 0:
            return
        order = np.lexsort((-val, seg))
        seg, pts, val = seg[order], pts[order], val[order]
        first = np.r_[0, np.flatnonzero(np.diff(seg)) + 1]
        rank = np.arange(seg.size) - np.repeat(first, np.diff(np.r_[first, seg.size]))
        top = np.repeat(val[first], np.diff(np.r_[first, seg.size]))
        ok = (rank < cap) & (top > 0)
        self.pts[seg[ok], rank[ok]] = pts[ok]
        self.val[seg[ok], rank[ok]] = val[ok] / top[ok]


class ImportanceSampler:
    """Candidate generator of importance-sampled poses for a rank's ``n_local`` particles (global
    indices ``gidx``) and ``K`` classes (one segment per (particle, class); use the E-step's class
    segments when K > 1)."""

    dense = False

    def __init__(self, gidx, K: int = 1, s0: float = 10.0, seed: int = 0, max_frac: float = 0.05, cap: int = CAP):
        self.gidx = np.asarray(gidx, np.int64)
        self.K, self.s0, self.seed, self.max_frac = int(K), float(s0), int(seed), float(max_frac)
        S = self.gidx.size * self.K
        self.m = {"d": Marginals(S, 3, cap), "p": Marginals(S, 2, cap), "t": Marginals(S, 2, cap)}
        self.tau_prev = np.full(self.gidx.size, -1.0)
        self.tau, self.it, self.frozen = 0.0, 0, False
        self.force_dense = False     # the full quadrature for every batch (its marginals still kept)
        self.reset_counts()

    # ------------------------------------------------------------ schedule and statistics
    def position(self, tau: float, it: int) -> None:
        """Marginals made from now on are at seed iteration ``tau``; ``it`` keys the draws."""
        self.tau, self.it = float(tau), int(it)

    def reset_counts(self) -> None:
        self.evaluated = self.full = 0.0

    @property
    def fraction(self) -> float:
        """Quadrature points evaluated over the full quadrature's, since the last reset."""
        return self.evaluated / self.full if self.full else float("nan")

    # ------------------------------------------------------------ the generator interface
    def bind(self, space, trans, angpix) -> None:
        self.space, self.trans, self.angpix = space, trans, float(angpix)
        dirs, psi, step_d, step_p = space.is_grids()
        rad = np.deg2rad
        self.grid = {"d": dirs, "p": np.stack([np.cos(rad(psi)), np.sin(rad(psi))], 1), "t": trans.coarse}
        self.step = {"d": float(step_d), "p": float(step_p), "t": max(float(trans.step), 1e-3)}

    @staticmethod
    def _kappa(dim, step):
        """Bandwidths of eqs 21-23 for grid spacings ``step`` (deg, or pixels for translations)."""
        if dim == "t":
            return 1.0 / (2.0 * step ** 2)
        return (np.log(4.0) if dim == "d" else np.log(2.0)) / (1.0 - np.cos(np.deg2rad(step)))

    def plan(self, space, results, T):
        self.results = results
        self.dense = bool(self.force_dense or np.any(self.tau_prev < 0))
        return None

    def for_batch(self, sel, T):
        sel = np.asarray(sel, np.int64)
        K, B = self.K, sel.size
        full = float(B * K * self.space.Jc1 * T)
        if self.force_dense:
            return self._dense_batch(full)
        seg = (sel[:, None] * K + np.arange(K)[None]).ravel()
        alpha, inv_T = (np.repeat(a, K) for a in schedule(self.tau_prev[sel]))
        cls = np.tile(np.arange(K), B)
        o = np.repeat(self._origins(sel), K, axis=0)
        draws = {}
        for dim, code in (("d", 0), ("p", 1), ("t", 2)):
            m = self.m[dim]
            prev = m.pts[seg].astype(np.float64)
            if dim == "t":   # stored as absolute origins; grid point t is the origin o - t
                prev = o[:, None, :] - prev
            keys = random_keys(self.seed, self.it, np.repeat(self.gidx[sel], K), cls, code)
            # the kernel as wide as the coarser of this quadrature and the one the marginal was made on
            kappa = self._kappa(dim, np.maximum(m.step[seg].astype(np.float64), self.step[dim]))
            draws[dim] = kernels.is_draw(prev, m.val[seg].astype(np.float64), self.grid[dim], 1 if dim == "t" else 0,
                                         kappa, inv_T, alpha, self.s0, keys)
        n = [np.diff(draws[d].offsets) for d in "dpt"]
        count = float(np.sum(n[0] * n[1] * n[2]))
        if count > self.max_frac * full:
            return self._dense_batch(full)
        self.full += full
        self.evaluated += count
        self._last = (sel, draws)
        return kernels.is_candidates(draws["d"], draws["p"], draws["t"], cls, K, self.grid["p"].shape[0],
                                     self.space.Jc1)

    def _dense_batch(self, full: float):
        """This batch on the full grid (the dense pass: no draws), counted as evaluated in full."""
        self.full += full
        self.evaluated += full
        self._last = None
        return None

    def _origins(self, sel):
        r = self.results
        return np.stack([r["ox"][sel], r["oy"][sel]], 1) / self.angpix

    # ------------------------------------------------------------ the marginals of eqs 17-19
    def observe(self, sel, res, o_px) -> None:
        if self.frozen:
            return
        sel = np.asarray(sel, np.int64)
        pi, pt, pj, w = (np.asarray(a) for a in (res.observe if res.observe is not None else
                                                  (res.pair_i, res.pair_t, res.pair_j, res.weight)))
        k, d, p, vec, psi = self.space.is_fine(pj)
        K = self.K
        lseg = pi * K + (k if K > 1 else 0)
        tc = pt // self.trans.m
        w = w.astype(np.float64)
        last = self._last if (self._last is not None and np.array_equal(self._last[0], sel)) else None
        lw = {dim: np.zeros(w.size) for dim in "dpt"}
        if last is not None:
            for dim, idx in (("d", d), ("p", p), ("t", tc)):
                lw[dim] = _lookup(last[1][dim], lseg, idx)
        seg = sel[pi] * K + (k if K > 1 else 0)
        segs = (sel[:, None] * K + np.arange(K)[None]).ravel()
        for dim, m in self.m.items():     # every segment of the batch gets this E-step's marginals
            m.val[segs] = 0.0
            m.step[segs] = self.step[dim]
        o = np.asarray(o_px, np.float64)[pi]
        rad = np.deg2rad(psi)
        for dim, key, pts in (("d", pj // max(self.space.samp.psi_f.size, 1), vec),
                              ("p", pj % self.space.samp.psi_f.size, np.stack([np.cos(rad), np.sin(rad)], 1)),
                              ("t", pt, o - self.trans.fine[pt])):
            contrib = w * np.exp(-lw[dim])
            u, first, inv = np.unique(seg * (1 << 32) + key, return_index=True, return_inverse=True)
            val = np.bincount(inv.ravel(), weights=contrib, minlength=u.size)
            self.m[dim].put(seg[first], pts[first], val)
        self.tau_prev[sel] = self.tau
        self._last = None

    # ------------------------------------------------------------ checkpoint
    def state(self) -> dict:
        return {"tau_prev": self.tau_prev, **{"%s_pts" % d: m.pts for d, m in self.m.items()},
                **{"%s_val" % d: m.val for d, m in self.m.items()}, **{"%s_step" % d: m.step for d, m in self.m.items()}}

    def load(self, st: dict) -> None:
        self.tau_prev = np.asarray(st["tau_prev"], np.float64).copy()
        for d, m in self.m.items():
            m.pts[...] = np.asarray(st["%s_pts" % d])
            m.val[...] = np.asarray(st["%s_val" % d])
            m.step[...] = np.asarray(st["%s_step" % d])


def _lookup(draws, seg, idx):
    """log factors of the drawn points ``idx`` of (batch-local) segments ``seg``."""
    off = np.asarray(draws.offsets)
    own = np.repeat(np.arange(off.size - 1), np.diff(off))
    M = int(max(np.max(draws.idx, initial=0), np.max(idx, initial=0))) + 1
    keys = own * M + np.asarray(draws.idx, np.int64)
    pos = np.searchsorted(keys, seg * M + idx)
    pos = np.minimum(pos, max(keys.size - 1, 0))
    ok = keys.size > 0
    if ok and not np.all(keys[pos] == seg * M + idx):
        raise RuntimeError("importance sampler: a fine pair whose parent was not drawn")
    return np.asarray(draws.lw)[pos] if ok else np.zeros(len(idx))
