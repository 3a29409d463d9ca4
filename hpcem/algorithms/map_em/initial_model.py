"""3D initial model by VDAM (relion_refine --grad --denovo_3dref, seed 000 sections 3.1.2-3.1.5):
the E-step of :class:`~.model3d.Model3D` on mini-batches, the K maps updated by
:func:`hpcem.algorithms.vdam.vdam_update` instead of EM's M-step, in C1 from random Gaussian blobs.

One map per class, every particle of a mini-batch aligned against it (masked by the particle
sphere); the particles' two fixed half sets (:mod:`hpcem.algorithms.vdam.minibatch`) give two
gradients.  The VDAM step works on the n-box half grid, as in 2D: each half's mini-batch
accumulators (data and CTF^2 weight on the padded grid) become the unregularised estimate ``R_h``
(:func:`hpcem.recon.projector.padded_estimate`) with the weight ``W_h`` at the padded voxels of the n-box
frequencies (n-box units: pad^3 x), and ``vdam_update`` takes ``(W_h R_h, W_h)`` as its sums.
(Stepping on the padded grid itself, the zero-padding's sinc tails came back through the crop as
high-frequency content.)  The maps are kept unmasked, the E-step's references masked.  The FSC of
the half estimates weights the update and sets the E-step's resolution limit (0.143 plus the
margin, never below ``--grad_min_resol``).  The data weight's signal power is the larger of the
references' and EM's estimate from the mini-batch (the references' own power alone keeps shells
they have not reached empty: FSC 0.5 at 14.4 A from the true map at 20 A, 10.5 A with the
mini-batch's estimate).  After the last mini-batch one pass over all particles assigns
classes and poses, unless the last ``--grad_em_iters`` iterations (by default 4 with K > 1) are
class3d's EM iterations over all particles at the final pass's order (each class map then
reconstructed from all its particles: K = 3 at SNR 0.05, maps 11-12 A -> 8 A, ARI 0.77 -> 0.87);
:meth:`finish` then aligns each map to the symmetry axes of ``--sym`` and
symmetrises it (:mod:`hpcem.core.symalign`), writing ``initial_model.mrc`` beside the rootname
(RELION's InitialModel job: VDAM in C1, then relion_align_symmetry).
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np

from ...core.filters import lowpass
from ...core.fourier import ft3, ift3, shell_index3
from ...core.sampling import order_for_resolution
from ...recon import mstep
from ...recon.projector import padded_estimate
from ...runtime.device import HOST
from ..vdam import Moments, Schedule, replace_inactive, vdam_update
from ..vdam.blobs import blob_images, signal_std
from ..vdam.minibatch import GradFiles, batch_noise, half_sets, running_priors, split_batch
from ..vdam.splitmerge import SplitMerge
from ..vdam.update import fsc_shell, mean_fsc_shell, share_prior
from .class3d import Class3D
from .model3d import tv_stats
from .results import pose_change_stats
from .space3d import PAD


class InitialModel(GradFiles, Class3D):
    kind = "initial_model"

    def __init__(self, ps, ref, cfg, comm, log=print, device=HOST):
        super().__init__(ps, None, dataclasses.replace(cfg, sym="C1"), comm, log, device)
        self.target_sym = cfg.sym
        self.N, n = ps.n, self.n
        self.sched = Schedule.of(cfg, self.N, 3)
        self.half = half_sets(cfg.random_seed, self.N)
        self.shell = shell_index3(n)
        self.nsh = n // 2 + 1
        self.floor_shell = int(n * ps.angpix / cfg.grad_min_resol) if cfg.grad_min_resol > 0 else 0
        self.st["r_cur"] = max(self.floor_shell, 3)
        self.st["order"] = self.st["order_flag"] = cfg.healpix_order
        self.maps = self.mom = self.replaced = None
        self.start = 0
        last = int(np.ceil(self.sched.final_start))
        self.split = SplitMerge(self.K, max(1, cfg.iters // 16), last) if cfg.estep_options().class_overlap else None

    @property
    def iteration(self) -> int:
        return int(self.st["iteration"])

    def restore(self, st):
        """The checkpoint's HEALPix order (``--auto_sampling`` may have refined it), unless
        ``--continue`` was given a new ``--healpix_order`` (as RELION's --continue allows)."""
        super().restore(st)
        flag = self.config.healpix_order
        changed = "order_flag" in st and int(st["order_flag"]) != flag
        self.st["order"] = flag if changed else int(st.get("order", flag))
        self.st["order_flag"] = flag
        self._sampling()
        if self.split is not None:
            self.split.restore(st)

    def state(self):
        st = super().state()
        if st is not None and self.split is not None:
            st.update(self.split.state())
        return st

    def _sampling(self):
        """The E-step's angular sampling at the schedule's HEALPix order (``--auto_sampling``)."""
        order = int(self.st["order"])
        if self.samp.order != order:
            self._set_order(order)     # Class3D's, in C1 (the config's symmetry here)

    def _next_order(self) -> int:
        """``--auto_sampling``: the order whose step the resolution reached supports (never lower)."""
        cfg, order = self.config, int(self.st["order"])
        if not cfg.auto_sampling:
            return order
        return max(order, self._supported_order(cfg.max_healpix_order))

    def _supported_order(self, max_order: int = 7) -> int:
        """The HEALPix order whose step the resolution reached supports (at most ``max_order``)."""
        return order_for_resolution(self.st["resolution"], self.m.radius_px * self.m.angpix, max_order=max_order)

    def finest_mini_batch_order(self) -> int:
        """``--auto_sampling``: the order the data's Nyquist resolution supports (at most
        ``--max_healpix_order``), which every later mini-batch searches on the full grid."""
        order = self.samp.order
        if not self.config.auto_sampling:
            return order
        return max(order, order_for_resolution(2.0 * self.m.angpix, self.m.radius_px * self.m.angpix,
                                               max_order=self.config.max_healpix_order))

    # ------------------------------------------------------------ start
    def initialise(self):
        m, cfg, n, K = self.m, self.config, self.n, self.K
        if cfg.init_blobs:
            vols = blob_images(K, n, m.radius_px, cfg.random_seed, dim=3)
        else:   # a soft sphere of the particle's radius in every class
            vols = np.repeat(m.mask3[None].astype(np.float64), K, axis=0)
        if cfg.grad_min_resol > 0:   # no high-frequency content the data have not put there
            vols = lowpass(vols, cfg.grad_min_resol, m.angpix, dims=3)
        vols *= m.mask3
        proj = vols.sum(axis=1)
        c = np.arange(n) - n // 2
        inside = (c[:, None] ** 2 + c[None, :] ** 2) < m.radius_px ** 2
        sd = signal_std(self.ps, m.radius_px, cfg.random_seed)
        vols *= (sd / np.maximum(proj[:, inside].std(axis=1), 1e-30))[:, None, None, None]
        self.maps = vols
        self._set_refs()
        m.sigma2 = m.img_power.copy()
        self.mom = Moments.zeros(K, self.shell.shape)

    def _set_refs(self):
        self.m.refs = (self.maps * self.m.mask3).astype(np.float32)
        self.m.tau2 = self.m.power3(self.m.refs)

    # ------------------------------------------------------------ the last --grad_em_iters: EM
    def _em_e_step(self):
        """The EM iterations (:meth:`em_phase`; default 4 with K > 1): class3d's E- and M-step at the
        final pass's order, the maps reconstructed from every particle instead of stepped towards a
        mini-batch's estimate."""
        if self.iteration == self.em_start:   # the first: the final order
            self.st["order"] = order = self.final_order()
            self.log("EM iterations %d-%d over all %d particles at order %d (--grad_em_iters)"
                     % (self.iteration + 1, self.config.iters, self.N, order))
        self._sampling()
        return Class3D.e_step(self)

    def _em_m_step(self, sums):
        """class3d's M-step; the VDAM maps follow its maps, the moments are left as they are."""
        stats = Class3D.m_step(self, sums)
        self.maps = self.m.refs.astype(np.float64)
        stats["em"] = True
        return stats

    # ------------------------------------------------------------ one mini-batch
    def e_step(self):
        if self.em_phase():
            return self._em_e_step()
        m = self.m
        self.prev = {k: v.copy() for k, v in m.res.items()}
        self.bsize = self.sched.batch_size(self.iteration)
        subsets = split_batch(self.config.random_seed, self.start, self.bsize, self.half, m.lo, m.hi)
        self.sub = np.concatenate(subsets)
        cnt = np.array([s.size for s in subsets], np.float64)
        self.comm.allreduce_(cnt)
        self.half_scale = np.bincount(self.half, minlength=2) / np.maximum(cnt, 1.0)
        R, W, total = [], [], None
        for h in (0, 1):
            sums = m.e_step(self.samp, self.trans, int(self.st["r_cur"]), subset=subsets[h])
            for bp in m.bps:
                bp.to_host()
                self.comm.allreduce_(bp.data)
                self.comm.allreduce_(bp.weight)
            r, w = zip(*(padded_estimate(*bp.completed(), self.n, PAD, ndim=3) for bp in m.bps))
            R.append(np.stack(r))
            W.append(np.stack(w))
            if total is None:
                total = sums
            else:
                total.add(sums)
        m.bps = None
        self.R, self.W = np.stack(R), np.stack(W)
        return total

    def reduce(self, sums):
        if self.em_phase():
            return Class3D.reduce(self, sums)
        sums.reduce(self.comm)

    def m_step(self, sums):
        if self.em_phase():
            return self._em_m_step(sums)
        m, cfg, n = self.m, self.config, self.n
        it, r_used, order_used = self.iteration, int(self.st["r_cur"]), self.samp.order
        eta, fudge = self.sched.step(it), self.sched.fudge(it)
        m.sigma2, m.sigma_offset, batch_pk = batch_noise(m.parts, self.sub, sums, self.comm, r_used, self.bsize)
        m.pclass = running_priors(m.pclass, batch_pk)
        tau2 = np.maximum(m.tau2, self._batch_tau2(r_used))
        self.replaced = replace_inactive(m.pclass, cfg.class_inactivity_threshold) or self._split_merge(sums)
        V = np.stack([ft3(x) for x in self.maps])
        fsc = vdam_update(V, self.W * self.R, self.W, self.mom, self.half_scale, tau2, fudge, self.floor_shell,
                          self.shell, eta, r_used, self.replaced)
        weight = np.tensordot(self.half_scale, self.W, axes=(0, 0)) if self.m.regularised else None   # --tv
        self.R = self.W = None
        share_prior(m.pclass, self.replaced)
        res_shell = mean_fsc_shell(fsc, m.pclass, r_used)
        class_res = n * m.angpix / np.maximum([fsc_shell(f, r_used) for f in fsc], 1)   # model.star, per class
        self.maps = np.stack([ift3(Vk, n) for Vk in V])
        tv = self._regularise(weight)
        self._set_refs()
        self.st["resolution"] = n * m.angpix / max(res_shell, 1)
        self.st["r_cur"] = int(min(n // 2, max(self.floor_shell, res_shell + cfg.margin_shells, 3)))
        self.st["order"] = self._next_order()
        self._sampling()     # the final pass at the order reached
        self.start += self.bsize
        self.st["iteration"] += 1
        if self.iteration == cfg.iters:
            self._final_pass()
        stats = pose_change_stats(self.comm, self.prev, m.res, self.space, first=self.iteration == 1)
        stats.update(iteration=self.iteration, r_cur=r_used, resolution=self.st["resolution"],
                     sigma_offset=m.sigma_offset, pclass=m.pclass.copy(), batch=self.bsize, step=eta,
                     fudge=fudge, replaced=self.replaced,
                     order=order_used, tv=tv, class_resolution=class_res)
        return stats

    def _split_merge(self, sums):
        """``--split_merge``: the move (a, b) of :mod:`hpcem.algorithms.vdam.splitmerge` or None."""
        if self.split is None:
            return None
        move = self.split.step(self.iteration, sums.class_overlap, self.m.pclass)
        if move is not None:
            a, b = move
            J = self.split.last_J
            self.log("split-merge at mini-batch %d: class %d shares its particles with another (shared mass %s), "
                     "class %d (%.2f of the particles) is split: class %d takes its map"
                     % (self.iteration + 1, a + 1, np.round(J[a], 3).tolist(), b + 1, self.m.pclass[b], a + 1))
        return move

    def _regularise(self, weight) -> dict:
        """``--tv``: each class map the sparsity + TV penalised map nearest the VDAM step's, in the
        metric of its mini-batch weight scaled to the whole set (``weight`` (K, half grid)), restrained
        to the step's map itself (:meth:`hpcem.recon.tv.TVReconstructor.regularise`); the stats
        per class for the log ({} without --tv)."""
        rec = self.m.reconstructor
        if not self.m.regularised:
            return {}
        out = {}
        for k in range(self.K):
            x = self.maps[k]
            self.maps[k] = rec.regularise(x, weight[k], prev=x)
            out[k + 1] = tv_stats(rec.last)
        return out

    def _batch_tau2(self, r_cur: int):
        """(K, nsh) signal power per shell as EM would estimate it from this mini-batch (both
        halves' unregularised reconstruction, masked, less its noise power): the references' own
        power is no bound where they are still empty (the data weight would keep them so)."""
        m, n = self.m, self.n
        msq = float(np.mean(m.mask3.astype(np.float64) ** 2))
        sh = self.shell.ravel()
        out = []
        for k in range(self.K):
            W = self.W[:, k].sum(0)
            X = (self.W[:, k] * self.R[:, k]).sum(0) / np.where(W > 0, W, 1.0)
            power = m.power3([ift3(X, n) * m.mask3])[0]
            w_shell = np.bincount(sh, weights=W.ravel(), minlength=self.nsh) / np.maximum(np.bincount(sh), 1)
            out.append(mstep.tau2_from_unfiltered(power, w_shell[:self.nsh], msq, r_cur))
        return np.array(out)

    def final_order(self) -> int:
        """The final pass's HEALPix order (``--final_healpix_order``; -1: with K > 1 one finer than the
        mini-batches', if the resolution reached supports it).  The classes of different maps need
        the finer search: the mini-batches' order 1 classified three true maps at ARI ~0.5, order 2
        at 0.88 (issue 11, stop 31)."""
        cfg, order = self.config, self.samp.order
        if cfg.final_healpix_order >= 0:
            return int(cfg.final_healpix_order)
        if self.K == 1:
            return order
        return max(order, min(order + 1, self._supported_order()))

    def finest_dense_order(self) -> int:
        """The finest order of the mini-batches (:meth:`finest_mini_batch_order`) or of the final
        pass (at most one finer by default): the memory plan's."""
        fin, final = self.finest_mini_batch_order(), self.config.final_healpix_order
        if final >= 0:
            return max(fin, final)
        return fin + 1 if self.K > 1 else fin

    def _final_pass(self):
        """Classes and poses of every particle against the final maps (no update), at
        :meth:`final_order`."""
        t0 = time.time()
        m = self.m
        order = self.final_order()
        if order != self.samp.order:     # the checkpoint keeps the mini-batches' order
            self._set_order(order)
        sums = m.e_step(self.samp, self.trans, int(self.st["r_cur"]))
        m.bps = None
        sums.reduce(self.comm)
        m.pclass = mstep.class_priors(sums.class_weight)
        self.log("final pass over all %d particles at order %d: %.1f s" % (self.N, self.samp.order,
                                                                             time.time() - t0))

    def finish(self, root):
        """``initial_model.mrc`` (the most populated class) and, with K > 1,
        ``initial_model_classKKK.mrc``: aligned to the axes of ``--sym`` and symmetrised."""
        if self.comm.rank != 0:
            return
        from ...io.mrc import write_mrc

        maps = []
        for k in range(self.K):
            vol = self.m.refs[k]
            if self.target_sym.upper() != "C1":
                from ...core.symalign import align_to_symmetry

                al = align_to_symmetry(vol, self.target_sym)
                self.log("class %d aligned to %s axes: symmetry score %.3f" % (k + 1, self.target_sym, al.score))
                vol = al.symmetrised
            maps.append(vol)
            if self.K > 1:
                write_mrc(root.file("initial_model_class%03d.mrc" % (k + 1)), vol, self.ps.angpix)
        write_mrc(root.file("initial_model.mrc"), maps[int(np.argmax(self.m.pclass))], self.ps.angpix)
