"""The E-step over all of a rank's particles, for any hypothesis space (2D in-plane or 3D
projections): batches, noise weights, priors, the per-batch E-step, the per-particle results and
the M-step statistics.

A *space* (``hpcem.algorithms.map_em.space2d.InPlaneSpace``, ``...space3d.ProjectionSpace``)
describes the hypotheses j = class x orientation: ``K``, ``Jc1`` / ``Jf1`` (coarse / fine
orientations per class), ``children`` (fine children of a coarse j), ``cap_groups`` (groups of
the maxsig cap), ``coarse_step_deg``, ``pose_keys``, and the methods ``begin(kidx, mc, r_max,
r_max_coarse, dense, n_slots) -> (refs_c, refs_f)``, ``dense_sums(slot)`` (accumulators (Jf, M) or None), ``insert(res,
kidx, r_max)`` (compacted sums), ``class_of(jf)``, ``poses(jf)`` (dict of pose columns) and, for
local searches, ``neighbours(results, sigma, nsigma)`` and ``coarse_index(class, j1)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..runtime.device import HOST
from .batch import estep_batch
from .candidates import FullGrid


@dataclass(frozen=True)
class EStepOptions:
    frac: float = 0.999          # posterior mass of the significant set
    maxsig: int = 200            # most significant coarse hypotheses oversampled (0: all)
    batch: int = 0               # particles per batch (0: from the coarse diff2 budget)
    coarse_factor: float = 1.2   # coarse pass up to (angular step arc at the radius) / factor; 0: all
    oversampling: int = 1
    class_overlap: bool = False  # sum each particle's class posterior outer product (split-merge's)


@dataclass
class EStepSums:
    """Rank-local M-step statistics besides the data sums (one Allreduce each)."""

    noise: np.ndarray           # (G, nsh) sum w |X conj(ph) - c R|^2 per optics group and shell
    class_weight: np.ndarray    # (K,) posterior mass per class
    offset2: np.ndarray         # (1,) sum w |new origin|^2 (A^2)
    r_cur: int                  # the E-step's resolution limit (shell)
    scale_fit: np.ndarray = None   # (2, G) per optics group at the best poses: sum s_e Re(X (cR)*), sum s_e |cR|^2
    evaluated: np.ndarray = None   # (2,) (t, j) pairs scored (coarse + fine), fine quadrature points of the particles
    class_overlap: np.ndarray = None   # (K, K) sum over particles of P(k|X) P(k'|X) (opts.class_overlap only)

    def __post_init__(self):
        if self.evaluated is None:
            self.evaluated = np.zeros(2)

    @property
    def fraction_evaluated(self) -> float:
        """Scored pairs over the size of the fine quadrature (the particles' hypotheses x translations)."""
        return float(self.evaluated[0] / max(self.evaluated[1], 1.0))

    def reduce(self, comm) -> None:
        for a in (self.noise, self.class_weight, self.offset2, self.scale_fit, self.evaluated, self.class_overlap):
            if a is not None:
                comm.allreduce_(a)

    def add(self, other: "EStepSums") -> None:
        """Add the sums of another E-step over other particles (same resolution limit)."""
        self.noise += other.noise
        self.class_weight += other.class_weight
        self.offset2 += other.offset2
        self.evaluated += other.evaluated
        if self.class_overlap is not None:
            self.class_overlap += other.class_overlap
        if self.scale_fit is not None:
            self.scale_fit += other.scale_fit


def coefficients(shell, r_cur: int):
    """Half-grid coefficients within shell ``r_cur``, ordered by shell (coarse pass: a prefix)."""
    kidx = np.flatnonzero(shell <= r_cur)
    return kidx[np.argsort(shell[kidx], kind="stable")]


def coarse_shell(n: int, angpix: float, radius_px: float, step_deg: float, factor: float) -> int:
    """Highest shell the coarse pass scores: the arc an angular step moves the particle's edge,
    over ``factor``, is the finest resolution the coarse grid can score (RELION's adaptive
    oversampling coarse size); ``factor`` 0 disables the limit (see DESIGN_NOTES)."""
    if factor <= 0:
        return n // 2
    arc = np.deg2rad(step_deg) * radius_px * angpix
    return int(min(n // 2, np.ceil(n * angpix * factor / arc)))


def batch_size(opts: EStepOptions, T: int, Jc: int, dense: bool) -> int:
    """Particles per batch: the dense coarse diff2 (B x T x Jc float32) within 256 MB."""
    if opts.batch > 0:
        return int(opts.batch)
    if not dense:
        return 512
    return int(max(8, min(512, 256e6 // max(T * Jc * 4.0, 1.0))))


def noise_weights(sigma2, hw, sh):
    """Likelihood weights h / (2 sigma2) and accumulation weights 1 / sigma2, (G, M) float32."""
    inv = 1.0 / np.asarray(sigma2)[:, sh]
    return (hw[None, :] * 0.5 * inv).astype(np.float32), inv.astype(np.float32)


def run_estep(parts, space, trans, results, *, sigma2, sigma_offset: float, log_class_prior,
              r_cur: int, radius_px: float, opts: EStepOptions, candidates=None, remap=None,
              subset=None, slots=None, n_slots: int = 1, class_segments: bool = False, class_mix=None,
              accumulate: bool = True, particle_noise=None) -> EStepSums:
    """E-step of every particle of ``parts`` (a :class:`FourierParticles`); updates ``results``
    (rank-local dict of (nb,) arrays: class, the space's pose keys, ox, oy [A], pmax, nsig,
    loglik) in place and returns the :class:`EStepSums`; the data sums go to the space.
    ``remap(local_index, pj) -> pj`` (arrays on the particles' device) redirects the sums
    (class3d's random initial classes);
    ``subset`` (rank-local indices) limits the E-step to those particles (VDAM's mini-batches);
    ``slots`` (rank-local (nb,) ints below ``n_slots``, dense spaces only) sends each particle's
    sums to its slot's accumulators (VDAM's half sets in one pass); ``class_segments``: posteriors
    per (particle, class), the class posteriors through ``class_mix`` (:mod:`hpcem.estep.classes`);
    ``accumulate`` False: posteriors, results and log-likelihoods only (no sums into the space);
    ``particle_noise`` (rank-local (nb, nsh) array): receives each particle's posterior-weighted
    residual power per shell up to ``r_cur`` (ab initio's outlier-robust noise estimate).
    The batches run on the particles' device (``parts.device``: references, phases and weights
    placed there once; per batch only the per-particle results and the noise sums come back).

    A candidate generator may also have ``bind(space, trans, angpix)`` (called first) and
    ``observe(sel, res, o_px)`` (called with every batch's result: the importance sampler's
    marginals)."""
    candidates = candidates or FullGrid()
    dev = getattr(parts, "device", HOST)
    n, angpix = parts.n, float(parts.ps.angpix)
    kidx = coefficients(parts.shell, r_cur)
    sh = parts.shell[kidx]
    r_c = min(int(r_cur), coarse_shell(n, angpix, radius_px, space.coarse_step_deg,
                                       opts.coarse_factor if opts.oversampling else 0))
    mc = int(np.searchsorted(sh, r_c, side="right"))
    if hasattr(candidates, "bind"):
        candidates.bind(space, trans, angpix)
    order = candidates.plan(space, results, trans.T)
    refs_c, refs_f = space.begin(kidx, mc, r_cur + 1.0, r_c + 1.0, candidates.dense, n_slots)
    phc, phf = (dev.put(p) for p in trans.phases(n, kidx, mc))
    lpk = np.asarray(log_class_prior, np.float64)
    lpj_c, lpj_f = dev.put(np.repeat(lpk, space.Jc1)), dev.put(np.repeat(lpk, space.Jf1))
    s_e, s_a = (dev.put(w) for w in noise_weights(sigma2, parts.hw[kidx], sh))
    sums = EStepSums(np.zeros((parts.G, parts.nsh)), np.zeros(space.K), np.zeros(1), int(r_cur),
                     np.zeros((2, parts.G)), class_overlap=np.zeros((space.K,) * 2) if opts.class_overlap else None)
    coef_weight = float(parts.hw[kidx].sum())    # E[sum s_e |residual|^2] for a particle the model fits
    best_fit = parts.norm is not None or parts.scale is not None     # --norm / --scale need the fit
    onehot = np.zeros((kidx.size, int(r_cur) + 1))   # coefficient -> shell sums (double: the sums must not
    #                                                  depend on how the particles are batched over ranks)
    onehot[np.arange(kidx.size), sh] = 1.0
    onehot = dev.put(onehot)
    if order is None:       # particle order; a subset's in increasing order (as arange's entries in it)
        order = np.arange(parts.size) if subset is None else np.unique(np.asarray(subset, np.int64))
    elif subset is not None:
        order = order[np.isin(order, subset)]
    bs = batch_size(opts, trans.T, space.K * space.Jc1, candidates.dense)
    for sel, slot in _batches(order, bs, slots):
        acc_into = space.dense_sums(slot)
        o_px = np.stack([results["ox"][sel], results["oy"][sel]], 1) / angpix
        X, c = parts.batch(sel, kidx, o_px)
        lpt_c, lpt_f = trans.log_prior(dev.put(o_px), sigma_offset, angpix)
        g = parts.groups[sel]
        gd = dev.put(g)
        rmap = None if remap is None else (lambda pi, pj, _s=dev.put(sel): remap(_s[pi], pj))
        res = estep_batch(X, c, s_e[gd], s_a[gd],
                          phases_c=phc, phases_f=phf, refs_c=refs_c, refs_f=refs_f,
                          children_t=trans.children, children_j=space.children, lpt_c=lpt_c, lpt_f=lpt_f,
                          lpj_c=lpj_c, lpj_f=lpj_f, candidates=candidates.for_batch(sel, trans.T),
                          frac=opts.frac, maxsig=opts.maxsig, groups=space.cap_groups, mc=mc,
                          remap_j=rmap, acc_into=acc_into, best_fit=best_fit,
                          class_segments=space.K if class_segments else 1, class_mix=class_mix,
                          accumulate=accumulate, residual=getattr(space, "residual", False))
        if hasattr(candidates, "observe"):
            candidates.observe(sel, res, o_px)
        if acc_into is None and accumulate:
            space.insert(res, kidx, r_cur + 1.0)
        per = _add_statistics(sums, res, g, dev.put(o_px), onehot, space, trans, angpix, rmap, dev)
        if particle_noise is not None:
            particle_noise[sel, :per.shape[1]] = per
        _store_results(results, _host_summaries(res, dev), sel, o_px, space, trans, angpix)
        if best_fit:
            fit = np.asarray(res.fit, np.float64)
            np.add.at(sums.scale_fit.T, g, fit[:2].T)
            if "norm_fit" in results:
                results["norm_fit"][sel] = fit[2] / coef_weight
    return sums


def _batches(order, bs: int, slots):
    """``(particles, slot)`` per batch of at most ``bs``, no batch spanning two slots."""
    if slots is None:
        for s0 in range(0, order.size, bs):
            yield order[s0:s0 + bs], 0
        return
    slot_of = np.asarray(slots)[order]
    for slot in np.unique(slot_of):
        part = order[slot_of == slot]
        for s0 in range(0, part.size, bs):
            yield part[s0:s0 + bs], int(slot)


def _add_statistics(sums, res, g, o_px, onehot, space, trans, angpix, rmap, dev):
    """The batch's noise, class and offset sums (reduced on the device, added on the host); returns
    the per-particle noise sums (B, shells)."""
    xp = dev.xp
    per = dev.get(res.noise.astype(np.float64) @ onehot)       # (B, shells) each particle's residual power
    np.add.at(sums.noise[:, :onehot.shape[1]], g, per)
    pj = res.pair_j if rmap is None else rmap(res.pair_i, res.pair_j)
    cls = space.class_of(pj)
    sums.class_weight += dev.get(xp.bincount(cls, weights=res.weight, minlength=space.K)[:space.K])
    if sums.class_overlap is not None:     # each particle's class posterior (B, K): classes' shared mass
        pk = xp.bincount(res.pair_i * space.K + cls, weights=res.weight, minlength=len(g) * space.K)
        pk = pk[:len(g) * space.K].reshape(len(g), space.K)
        sums.class_overlap += dev.get(pk.T @ pk)
    sums.offset2 += dev.get(xp.dot(res.weight.astype(np.float64),
                                   trans.origin_power(o_px, res.pair_i, res.pair_t, angpix)))
    sums.evaluated += [float(res.evaluated), float(len(g)) * space.K * space.Jf1 * len(trans.fine)]
    return per


def _host_summaries(res, dev):
    """``res`` with its per-particle summaries on the host (B values each)."""
    for f in ("best_t", "best_j", "pmax", "nsig", "logZ", "fit"):
        setattr(res, f, dev.get(getattr(res, f)))
    return res


def _store_results(results, res, sel, o_px, space, trans, angpix):
    results["class"][sel] = space.class_of(res.best_j) + 1
    for k, v in space.poses(res.best_j).items():
        results[k][sel] = v
    o = trans.new_origins_A(o_px, res.best_t, angpix)
    results["ox"][sel], results["oy"][sel] = o[:, 0], o[:, 1]
    results["pmax"][sel], results["nsig"][sel], results["loglik"][sel] = res.pmax, res.nsig, res.logZ
