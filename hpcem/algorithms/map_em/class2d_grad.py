"""2D classification by VDAM (relion_refine --grad, seed 000 sections 3.1.2-3.1.5): the E-step
of :class:`~.class2d.Class2D` on mini-batches, the model updated by
:func:`hpcem.algorithms.vdam.vdam_update` instead of EM's M-step.

All particles of a mini-batch are aligned against the one map per class in one E-step, each half
set's (:mod:`hpcem.algorithms.vdam.minibatch`) sums in its own row block giving that half's
gradient (:meth:`Class2DGrad.half_sums`).  The E-step resolution limit grows from ``--ini_high`` by
the FSC of the half estimates (0.143 plus the margin; never below ``--grad_min_resol``).  After
the last mini-batch one pass over all particles assigns classes and poses (the final references
are not updated by it), unless ``--grad_em_iters N`` makes the last N iterations EM iterations
over all particles (RELION's flag).  Files and checkpoints every ``--grad_write_iter``
mini-batches and at the last.
"""
from __future__ import annotations

import time

import numpy as np

from ...core.filters import lowpass
from ...core.fourier import ft2, ift2, shell_index2
from ...estep import TranslationSampling
from ...recon import mstep
from ...recon.average2d import padded_sums, scatter_back
from ...runtime.device import HOST
from ..vdam import Moments, Schedule, replace_inactive, vdam_update
from ..vdam.blobs import blob_images, signal_std
from ..vdam.minibatch import GradFiles, batch_noise, half_sets, running_priors, split_batch
from ..vdam.update import mean_fsc_shell, share_prior
from .class2d import Class2D
from .class_accuracy import shells_above, shells_to_angstrom
from .results import pose_change_stats, rows


class Class2DGrad(GradFiles, Class2D):
    kind = "class2d"

    def __init__(self, ps, cfg, comm, log=print, device=HOST):
        super().__init__(ps, cfg, comm, log, device)
        self.sched = Schedule.of(cfg, self.N, 2)
        self.half = half_sets(cfg.random_seed, self.N)
        self.shell = shell_index2(self.n)
        self.floor_shell = int(self.n * self.angpix / cfg.grad_min_resol) if cfg.grad_min_resol > 0 else 0
        self.maps = self.mom = self.V = None
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
        self.maps = self.refs.astype(np.float64)
        self.mom = Moments.zeros(K, (n, n // 2 + 1))
        self.start = 0

    # ------------------------------------------------------------ one mini-batch
    def e_step(self):
        if self.em_phase():
            return super().e_step()
        self.bsize = self.sched.batch_size(self.iteration)
        subsets = split_batch(self.config.random_seed, self.start, self.bsize, self.half, self.lo, self.hi)
        self.sub = np.concatenate(subsets)
        # the changes in the log line: over the mini-batch's particles, over all before the final pass
        self.changed = None if self.iteration + 1 == self.config.iters else self.sub
        self.prev = rows(self.res, self.changed)
        self.corr.apply(self.parts, self.res)
        cnt = np.array([s.size for s in subsets], np.float64)
        self.comm.allreduce_(cnt)
        self.half_scale = np.bincount(self.half, minlength=2) / np.maximum(cnt, 1.0)
        # the mini-batch sums in single precision on the CPU (DESIGN_NOTES, speed pass 3); a GPU keeps double
        # precision (its whole-transform path has not run with single-precision sums)
        self.space.single_sums = not self.space.device.gpu
        try:
            return self.estep_on(self.refs, self.sub, slots=self.half[self.lo:self.hi], n_slots=2)
        finally:
            self.space.single_sums = False

    def half_sums(self):
        """``(D, W)`` (2, K, n, n//2+1): each half set's mini-batch sums in the class frames.  The
        residual rows ``data - wsum R`` (R the E-step's rotated references) are back-projected
        (:func:`~hpcem.recon.average2d.scatter_back`) and put on the n box around the maps:
        ``D = W (V + X_res)``.  The scatter's few-percent error thus falls on the residual, not on
        the estimate (2% from a reference 25% off, as the resampling gather; 6-8% scattering the
        data themselves), at a fraction of the gather's cost."""
        K, n, r = self.config.K, self.n, self.r_cur
        data, wsum, row0, kidx = self.reduced_rows()
        bp = scatter_back(data, wsum, kidx, self.space.psi_f, 2 * K, n, r, row0,
                          refs=self.device.get(self.space.refs_f))
        self.space.refs_f = None
        for a in (bp.data, bp.weight):
            self.comm.allreduce_(a)
        Dres, W = padded_sums(bp, r)
        self.V = V = ft2(self.maps)       # the maps' transform, updated in place by m_step
        D = W * np.concatenate([V, V]) + Dres
        return D.reshape(2, K, n, -1), W.reshape(2, K, n, -1)

    def reduce(self, sums):
        if self.em_phase():
            return super().reduce(sums)
        self.D, self.W = self.half_sums()
        sums.reduce(self.comm)

    def m_step(self, sums):
        if self.em_phase():
            return self._em_m_step(sums)
        cfg, n, it = self.config, self.n, self.iteration
        eta, fudge = self.sched.step(it), self.sched.fudge(it)
        self.sigma2, self.sigma_offset, batch_pk = batch_noise(self.parts, self.sub, sums, self.comm, self.r_cur,
                                                               self.bsize)
        self.pclass = running_priors(self.pclass, batch_pk)
        self.replaced = replace_inactive(self.pclass, cfg.class_inactivity_threshold)
        V, self.V = self.V, None
        fsc = vdam_update(V, self.D, self.W, self.mom, self.half_scale, self.tau2, fudge, self.floor_shell,
                          self.shell, eta, self.r_cur, self.replaced)
        share_prior(self.pclass, self.replaced)
        self.maps = ift2(V, n) * self.mask
        self.refs = self.maps.astype(np.float32)
        self.tau2 = self._power(self.refs)
        self.D = self.W = None
        r_used = self.r_cur
        res_shell = mean_fsc_shell(fsc, self.pclass, self.r_cur)
        self.resolution = n * self.angpix / max(res_shell, 1)
        self.class_res = shells_to_angstrom(shells_above(fsc[:, :self.r_cur + 1], 0.143), n, self.angpix)
        self.r_cur = int(min(n // 2, max(self.floor_shell, res_shell + cfg.margin_shells, 3)))
        self.start += self.bsize
        self.iteration += 1
        if self.iteration == cfg.iters:
            self._final_pass()
        stats = pose_change_stats(self.comm, self.prev, self.res, self.space, first=self.iteration == 1,
                                   sel=self.changed)
        stats.update(iteration=self.iteration, r_cur=r_used, resolution=self.resolution,
                     sigma_offset=self.sigma_offset, batch=self.bsize, step=eta, fudge=fudge,
                     replaced=self.replaced)
        return stats

    def _em_m_step(self, sums):
        """EM's M-step (exact class averages from all particles); the maps follow the references
        and the moments are left as they are."""
        stats = super().m_step(sums)
        self.maps = self.refs.astype(np.float64)
        stats["em"] = True
        return stats

    def _final_pass(self):
        """Classes and poses of every particle against the final references (no update: only
        the posteriors, no data sums, as the seed's final pass computes only P(X | k)).  The
        translations are searched within ``--grad_final_offset_range`` of each particle's origin
        from its last mini-batch (3 px: 9 instead of 21 coarse translations at the bench's 5 / 2
        px, the final pass 1.8x faster; 10 of 20,000 classes changed, the same ARI: DESIGN_NOTES,
        speed pass 3)."""
        t0 = time.time()
        cfg = self.config
        search = self.trans
        if cfg.grad_final_offset_range < cfg.offset_range:
            self.trans = TranslationSampling(cfg.grad_final_offset_range, cfg.offset_step, cfg.oversampling)
        try:
            sums = self.estep_on(self.refs, accumulate=False)
        finally:
            self.trans = search
        self.space.data = self.space.wsum = None
        sums.reduce(self.comm)
        self.pclass = mstep.class_priors(sums.class_weight)
        self.log("final pass over all %d particles: %.1f s" % (self.N, time.time() - t0))
