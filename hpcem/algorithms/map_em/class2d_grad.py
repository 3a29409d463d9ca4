"""2D classification by VDAM (relion_refine --grad, seed 000 sections 3.1.2-3.1.5): the E-step
of :class:`~.class2d.Class2D` on mini-batches, the model updated by
:func:`hpcem.algorithms.vdam.vdam_step` instead of EM's M-step.

Each particle belongs to one of two fixed random half sets; a mini-batch's particles of half h
are aligned against the half-h references and their sums update those (so the half-set FSC
measures the references' SNR).  Mini-batch t takes the next ``batch_size(t)`` particles of a
seeded random order of the whole set (a new order every epoch), so a resumed run draws the same
batches.  The E-step resolution limit grows from ``--ini_high`` by the half-set FSC (0.143 plus
the margin; never below ``--grad_min_resol``).  After the last mini-batch one pass over all
particles assigns classes and poses (the final references are not updated by it).  Files and
checkpoints every ``--grad_write_iter`` mini-batches and at the last.
"""
from __future__ import annotations

import time

import numpy as np

from ...core.filters import lowpass
from ...core.fourier import ft2, ift2, shell_index2
from ...recon import mstep
from ..vdam import Moments, Schedule, fsc_weights, replace_inactive, vdam_step
from ..vdam.blobs import blob_images, signal_std
from ..vdam.update import data_weights, half_fsc
from .class2d import Class2D
from .results import pose_change_stats

PRIOR_MEMORY = 0.9     # running average of the class priors over mini-batches


def batch_indices(seed: int, N: int, start: int, size: int) -> np.ndarray:
    """Global indices of the particles ``start .. start + size`` of the concatenated per-epoch
    random orders (epoch e: permutation seeded by (seed, e))."""
    out, pos = [], start
    while len(out) < size:
        e, off = divmod(pos, N)
        perm = np.random.default_rng([seed, 7919, e]).permutation(N)
        take = perm[off:off + size - len(out)]
        out.extend(take.tolist())
        pos += take.size
    return np.asarray(out, np.int64)


class Class2DGrad(Class2D):
    kind = "class2d"

    def __init__(self, ps, cfg, comm, log=print):
        super().__init__(ps, cfg, comm, log)
        self.sched = Schedule.of(cfg, self.N, 2)
        self.half = np.random.default_rng([cfg.random_seed, 2]).permutation(self.N) % 2
        self.shell = shell_index2(self.n)
        self.floor_shell = int(self.n * self.angpix / cfg.grad_min_resol) if cfg.grad_min_resol > 0 else 0
        self.halves = self.mom = None
        self.replaced = None

    # ------------------------------------------------------------ start
    def initialise(self):
        super().initialise()
        cfg, n, K = self.config, self.n, self.config.K
        if cfg.init_blobs:
            blobs = blob_images(K, n, self.radius_px, cfg.random_seed)
            blobs = lowpass(blobs, cfg.ini_high, self.angpix, dims=2) * self.mask
            sd = signal_std(self.ps, self.radius_px, cfg.random_seed)
            inside = self.mask > 0.5
            scale = sd / np.maximum(blobs[:, inside].std(axis=1), 1e-30)
            self.refs = (blobs * scale[:, None, None]).astype(np.float32)
            self.tau2 = self._power(self.refs)
        self.halves = np.stack([self.refs, self.refs]).astype(np.float64)
        self.mom = Moments.zeros(K, (n, n // 2 + 1))
        self.start = 0

    # ------------------------------------------------------------ one mini-batch
    def _batch(self):
        """Rank-local indices of this mini-batch's particles, per half."""
        b = self.sched.batch_size(self.iteration)
        g = batch_indices(self.config.random_seed, self.N, self.start, b)
        loc = g[(g >= self.lo) & (g < self.hi)]
        return b, [np.sort(loc[self.half[loc] == h] - self.lo) for h in (0, 1)]

    def e_step(self):
        self.prev = {k: v.copy() for k, v in self.res.items()}
        self.corr.apply(self.parts, self.res)
        self.bsize, subsets = self._batch()
        self.sub = np.concatenate(subsets)
        cnt = np.array([s.size for s in subsets], np.float64)
        self.comm.allreduce_(cnt)
        self.half_scale = np.bincount(self.half, minlength=2) / np.maximum(cnt, 1.0)
        DW, total = [], None
        for h in (0, 1):
            sums = self.estep_on(self.halves[h].astype(np.float32), subsets[h])
            DW.append(self.rotated_sums())
            if total is None:
                total = sums
            else:
                total.add(sums)
        self.D = np.stack([d for d, _ in DW])
        self.W = np.stack([w for _, w in DW])
        return total

    def reduce(self, sums):
        sums.reduce(self.comm)

    def m_step(self, sums):
        cfg, n, it = self.config, self.n, self.iteration
        eta, fudge = self.sched.step(it), self.sched.fudge(it)
        self._noise_and_priors(sums)
        V = ft2(self.halves)
        fsc = half_fsc(V)
        sh = np.minimum(self.shell, self.nsh - 1)
        f = np.minimum(fsc_weights(fsc, fudge, self.floor_shell)[:, sh][None],
                       data_weights(self.W, self.half_scale, self.tau2, fudge, self.shell))
        self.replaced = replace_inactive(self.pclass, cfg.class_inactivity_threshold)
        vdam_step(V, self.D, self.W, self.mom, f, sh, eta, self.shell <= self.r_cur, self.replaced)
        if self.replaced is not None:
            a, b = self.replaced
            self.pclass[a] = self.pclass[b] = 0.5 * self.pclass[b]
        self.halves = ift2(V, n) * self.mask
        self.refs = self.halves.mean(0).astype(np.float32)
        self.tau2 = self._power(self.refs)
        self.D = self.W = None
        r_used = self.r_cur
        fsc_new = half_fsc(ft2(self.halves))
        res_shell = self._resolution_shell(fsc_new)
        self.resolution = n * self.angpix / max(res_shell, 1)
        self.r_cur = int(min(n // 2, max(self.floor_shell, res_shell + cfg.margin_shells, 3)))
        self.start += self.bsize
        self.iteration += 1
        if self.iteration == cfg.iters:
            self._final_pass()
        stats = pose_change_stats(self.comm, self.prev, self.res, self.space, first=self.iteration == 1)
        stats.update(iteration=self.iteration, r_cur=r_used, resolution=self.resolution,
                     sigma_offset=self.sigma_offset, batch=self.bsize, step=eta, fudge=fudge,
                     replaced=self.replaced)
        return stats

    def _noise_and_priors(self, sums):
        """sigma2 and sigma_offset from this mini-batch; class priors as a running average."""
        g = np.bincount(self.parts.groups[self.sub], minlength=self.parts.G).astype(np.float64)
        self.comm.allreduce_(g)
        counts = mstep.shell_counts(self.parts.shell, self.nsh)
        self.sigma2 = mstep.sigma2_update(self.parts.img_power, sums.noise, counts, g, self.r_cur)
        self.sigma_offset = mstep.sigma_offset(sums.offset2, self.bsize)
        self.pclass = PRIOR_MEMORY * self.pclass + (1.0 - PRIOR_MEMORY) * mstep.class_priors(sums.class_weight)

    def _resolution_shell(self, fsc) -> int:
        """Highest shell (<= r_cur) up to which the class-prior-weighted mean half-set FSC stays
        >= 0.143 (not the best class's: a class just replaced has two identical halves)."""
        mean = np.asarray(self.pclass) @ fsc / max(float(np.sum(self.pclass)), 1e-30)
        below = np.flatnonzero(mean[1:self.r_cur + 1] < 0.143)
        return int(below[0]) if below.size else self.r_cur

    def _final_pass(self):
        """Classes and poses of every particle against the final references (no update)."""
        t0 = time.time()
        sums = self.estep_on(self.refs)
        self.space.data = self.space.wsum = None
        sums.reduce(self.comm)
        self.pclass = mstep.class_priors(sums.class_weight)
        self.log("final pass over all %d particles: %.1f s" % (self.N, time.time() - t0))

    # ------------------------------------------------------------ state, files
    def _writes(self) -> bool:
        return self.iteration % self.config.grad_write_iter == 0 or self.iteration >= self.config.iters

    def state(self):
        if not self._writes():
            return None
        st = super().state()
        st.update(halves=self.halves, grad_start=self.start, **self.mom.state())
        return st

    def restore(self, st):
        super().restore(st)
        self.halves = np.asarray(st["halves"], np.float64)
        self.mom = Moments.load(st)
        self.start = int(st["grad_start"])

    def write(self, root, state, stats):
        return super().write(root, state, stats) if state is not None else {}

    def plot(self, root, state, stats):
        if state is not None:
            super().plot(root, state, stats)

    def log_line(self, st):
        rep = "-" if st["replaced"] is None else "%d<-%d" % (st["replaced"][0] + 1, st["replaced"][1] + 1)
        return ("batch %3d  size %5d  step %.3f  T %.2f  r_cur %2d  res %6.2f A  replaced %s  dclass %5.3f  "
                "sig_off %5.2f A  (%.1f s, E-step %.1f s)" % (
                    st["iteration"], st["batch"], st["step"], st["fudge"], st["r_cur"], st["resolution"], rep,
                    st["changes_classes"], st["sigma_offset"], st["t_iter"], st["t_estep"]))
