"""3D classification by regularised-likelihood (MAP) EM, as RELION does it (seed 000, section 3.1.1),
with each random half's particles scored against the other half's class maps (``--cross_halves``,
the default; see DESIGN_NOTES, "class3d: cross-half scoring").

Hypotheses: K x HEALPix directions of the asymmetric unit x psi x translations (global search
through the shared E-step, :class:`~.space3d.ProjectionSpace`).  Initialisation: the first
iteration aligns every particle to the low-passed reference and back-projects it into a random
class (seeded by particle index), so the K starting maps are reconstructions from K random
subsets (RELION's random perturbation of the classes).  The E-step uses uniform class priors (the
estimated pi_k are reported): with the estimated priors, the class that starts larger (more, and
misaligned, particles while the poses are still converging) pulls in more particles every
iteration and the split drifts to a junk/size split (blobs SNR 0.1, 2000 particles: sizes
660/1340, ARI 0.10 at iteration 14; with uniform priors 870/1130, ARI 0.18).

Cross-half scoring: the particles are split into two random halves (rlnRandomSubset, else
seeded), each half has its own K class maps built from its own particles, and every E-step
scores half 1 against half 2's maps and half 2 against half 1's.  A map that holds the particle
it scores favours that particle's current class and pose by its own contribution (at low SNR by
far more than the difference between the classes), which freezes the random initial classes;
the other half's maps hold no such term.  After every M-step half 2's classes are renumbered to
match half 1's (greatest map correlation first): scored across, each half takes the other's
numbering, and two halves numbered the other way round would swap numbers every iteration (seen:
each half at ARI 0.87, the whole at 0.00).  The class maps written each iteration are
reconstructed from both halves' sums.  ``--no-cross_halves`` is RELION's plain EM.
``--auto_sampling`` (:mod:`.class3d_schedule`) joins the halves and refines the sampling by itself
as the resolution stalls.

With --tv (seed 002) each class map is the regularised reconstruction of :mod:`hpcem.recon.tv`
restrained to its previous map; the last iteration also writes ``run_itNNN_classKKK_tv.png``
(central slices with and without the regularisation).

M-step: ``tau2`` of each class from this iteration's sums (power of the unregularised masked
reconstruction less its noise power, zero beyond the E-step's limit), the class maps, class
priors, sigma_offset, sigma2, and the next resolution limit where ``T tau2 <W>`` (SSNR) drops
below 1.
"""
from __future__ import annotations

import numpy as np

from ...estep import LocalSearch, TranslationSampling
from ...recon import mstep
from ...recon.projector import summed_backprojector
from ...runtime.device import HOST
from ...runtime.memory import MemoryPlan
from . import class3d_schedule as auto
from .model3d import Model3D, initial_reference, shell_of, tv_lines, tv_stats
from .refine3d import max_order_for, split_halves
from .results import pose_change_stats
from .space3d import PAD, ProjectionSpace, Sampling3D


def matching_classes(refs1, refs2) -> np.ndarray:
    """For each map of ``refs1`` the index of the map of ``refs2`` it matches: greedily by the
    greatest correlation first (a permutation)."""
    a = np.asarray(refs1, np.float64).reshape(len(refs1), -1)
    b = np.asarray(refs2, np.float64).reshape(len(refs2), -1)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    corr = (a @ b.T) / np.maximum(np.outer(np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)), 1e-30)
    perm = np.full(len(a), -1)
    for flat in np.argsort(-corr, axis=None):
        i, j = divmod(int(flat), len(b))
        if perm[i] < 0 and j not in perm:
            perm[i] = j
    return perm


class Class3D:
    kind = "class3d"
    checkpoint_name = "checkpoint.h5"

    def __init__(self, ps, ref, cfg, comm, log=print, device=HOST):
        self.ps, self.ref, self.config, self.comm, self.log = ps, ref, cfg, comm, log
        self.n, self.K = ps.box, cfg.K
        self.cross = bool(getattr(cfg, "cross_halves", False)) and cfg.K > 1
        self.subsets = split_halves(ps, cfg.random_seed) if self.cross else np.ones(ps.n, np.int64)
        self.models = {h: Model3D(ps, np.flatnonzero(self.subsets == h), cfg, comm, log, device=device)
                       for h in ((1, 2) if self.cross else (1,))}
        self.m = self.models[1]
        self.trans = TranslationSampling(cfg.offset_range, cfg.offset_step, cfg.oversampling)
        r0 = int(min(self.n // 2, max(3, round(shell_of(cfg.ini_high, self.n, ps.angpix)))))
        self.st = {"iteration": 0, "r_cur": r0, "resolution": np.inf}
        # class3d's --auto_sampling schedule (kept in the checkpoint; initial_model has its own)
        self.auto = self.kind == "class3d" and bool(getattr(cfg, "auto_sampling", False))
        if self.auto:
            self.st["schedule"] = auto.new_schedule(cfg.healpix_order)
            for m in self.models.values():   # the joined stage records its marginals, the fine one samples
                if m.sampler is None:
                    m.add_sampler()
        self._set_order(cfg.healpix_order)
        # the random initial classes: a stream of their own (the halves may come from the same seed)
        self.subset = np.random.default_rng([cfg.random_seed, 3]).permutation(ps.n) % self.K
        self.refs = self.tau2 = None      # the class maps of all particles (files, checkpoint)
        self.prev_refs = {h: None for h in self.models}   # each half's maps of the iteration before

    def _set_order(self, order):
        self.samp = Sampling3D(order, self.config.sym, self.config.psi_step, self.config.oversampling)
        self.space = ProjectionSpace(self.samp, self.K, self.n, self.m.ops)

    def _auto_schedule(self):
        """--auto_sampling: advance the schedule on this iteration's resolution (log what changed)."""
        sch = self.st["schedule"]
        radius_A = self.m.radius_px * self.m.angpix
        msg = auto.advance(sch, self.st["resolution"], radius_A, max_order_for(self.config, self.m.angpix, radius_A))
        if msg:
            self.log("class3d " + msg)
        if sch["order"] != self.samp.order:
            self._set_order(sch["order"])

    def _joined(self) -> bool:
        return bool(self.config.cross_join) or (self.auto and auto.joined(self.st["schedule"]))

    def _candidates(self, m):
        """The E-step's candidate generator for ``m``: the importance sampler (--importance_sampling,
        or --auto_sampling's joined and fine stages), local searches (--sigma_ang), else the grid."""
        use = "sample" if self.config.importance_sampling else "grid"
        if self.auto and not self.config.importance_sampling:
            use = auto.candidates(self.st["schedule"])
        if use != "grid":
            m.sampler.force_dense = use == "record"
            return m.importance(self.st["iteration"])
        sigma = float(self.config.sigma_ang)
        return LocalSearch(sigma, all_classes=True) if sigma > 0 else None

    def finest_dense_order(self) -> int:
        """The finest HEALPix order this run searches on the full grid: the memory plan's (class3d's
        --auto_sampling draws the finer orders by importance sampling)."""
        return self.samp.order

    def memory_plan(self):
        order = self.finest_dense_order()
        s = self.samp if order == self.samp.order else Sampling3D(order, self.config.sym,
                                                                  self.config.psi_step, self.config.oversampling)
        items = self.m.memory_items(s, self.trans.T, self.n // 2)
        items["particles (transforms + CTFs)"] = sum(m.parts.nbytes() for m in self.models.values())
        items["projectors and back-projectors"] *= len(self.models)
        return MemoryPlan(items, what="%d particles, K=%d, %d directions x %d psi x %d translations at order %d%s"
                          % (self.ps.n, self.K, s.nd, s.npsi, self.trans.T, order,
                             ", cross halves" if self.cross else ""),
                          hint="run on more ranks/nodes, or lower --batch, --healpix_order, --offset_range or --K")

    def prepare(self):
        for m in self.models.values():
            m.prepare()

    def initialise(self):
        r = initial_reference(self.ref, self.ps.angpix, self.config.ini_high, self.m.solvent)
        for m in self.models.values():
            m.refs = np.repeat(r[None], self.K, axis=0)
            m.sigma2 = m.img_power.copy()
            m.tau2 = m.power3(m.refs)
        self.refs, self.tau2 = self.m.refs, self.m.tau2

    def restore(self, st):
        if self.cross:
            for h, m in self.models.items():
                m.load_state(st["half%d" % h])
                prev = st["half%d" % h].get("prev_refs")
                self.prev_refs[h] = None if prev is None else np.asarray(prev, np.float32)
        else:
            self.m.load_state(st)
        results = st["results"]
        for h, m in self.models.items():
            m.set_results({k: np.asarray(v)[m.idx_all] for k, v in results.items()})
        self.refs, self.tau2 = np.asarray(st["refs"], np.float32), np.asarray(st["tau2"])
        self.st = {"iteration": int(st["iteration"]), "r_cur": int(st["r_cur"]), "resolution": float(st["resolution"])}
        if self.auto:
            self.st["schedule"] = auto.schedule_from(st.get("schedule", {}), self.config.healpix_order)
            self._set_order(self.st["schedule"]["order"])

    def done(self):
        return self.st["iteration"] >= self.config.iters

    # ------------------------------------------------------------ iteration
    def _scoring_refs(self):
        """{half: the class maps its particles are scored against}.  Cross halves: the other half's
        maps; with ``cross_join`` averaged with that half's maps of the iteration before (matched
        class by class).  Scored against the other half's last maps alone, the halves form two
        interleaved chains (half 1 at t <- half 2 at t-1 <- half 1 at t-2) that never meet:
        measured from the 30 A start, one chain at ARI 0.49 and the other at 0.02 for 20
        iterations.  The average joins the chains (0.179 -> 0.509 continued from iteration 30) and
        holds no particle's own contribution either; from the start it locks into a split by
        alignment quality (ARI 0.026 at iteration 13), hence a flag for a continued run."""
        if not self.cross or self.st["iteration"] == 0:
            return {h: m.refs for h, m in self.models.items()}
        out = {}
        for h in self.models:
            other, prev = self.models[3 - h].refs, self.prev_refs[3 - h]
            if prev is None or self.st["iteration"] < 2 or not self._joined():
                out[h] = other
            else:
                out[h] = (0.5 * (other + prev[matching_classes(other, prev)])).astype(np.float32)
        return out

    def e_step(self):
        self.prev = {h: {k: v.copy() for k, v in m.res.items()} for h, m in self.models.items()}
        self.first = self.st["iteration"] == 0
        sums = {}
        for h, refs in self._scoring_refs().items():
            m = self.models[h]
            remap = None
            if self.first and self.K > 1:
                sub, J, idx = self.subset, self.samp.Jf1, m.idx
                remap = lambda li, pj, sub=sub, J=J, idx=idx: sub[idx[li]] * J + pj % J  # noqa: E731
            own, m.refs = m.refs, refs
            sums[h] = m.e_step(self.samp, self.trans, int(self.st["r_cur"]), remap=remap, uniform_priors=True,
                               candidates=self._candidates(m),
                               cc=self.first and self.config.firstiter_cc)
            m.refs = own
        return sums

    def reduce(self, sums):
        for h, m in self.models.items():
            m.reduce(sums[h])
        self.evaluated = float(np.mean([s.fraction_evaluated for s in sums.values()]))

    def _class_maps(self, m, r_cur):
        """The model's K maps from its own sums and their tau2 (power of the unregularised masked
        reconstruction less its noise, :func:`mstep.tau2_from_unfiltered`), and with --tv the
        solver's numbers per class."""
        cfg = self.config
        msq = float(np.mean(m.mask3.astype(np.float64) ** 2))
        t2 = np.asarray([mstep.tau2_from_unfiltered(m.power3([m.reconstruct(k, unfil=True) * m.mask3])[0],
                                                    m.mean_weight(k) * PAD ** 3, msq, r_cur)
                         for k in range(self.K)])
        refs, tv = [], {}
        for k in range(self.K):
            refs.append(m.flatten(m.reconstruct(k, tau2=t2[k], fudge=cfg.tau2_fudge * PAD ** 3)))
            tv[k + 1] = tv_stats(m.reconstructor.last) if m.regularised else None
        return np.stack(refs).astype(np.float32), t2, tv

    def _combined_bp(self, k):
        return summed_backprojector([self.models[1].bps[k], self.models[2].bps[k]])

    def _combined_maps(self, t2, wiener=False):
        """Cross halves: each class reconstructed from both halves' sums (tau2: the halves' mean),
        restrained to its previous map with --tv; ``wiener``: also without the regularisation, from
        the same sums (the last --tv iteration's PNG), else None."""
        a, fudge = self.models[1], self.config.tau2_fudge * PAD ** 3
        maps, weights, tv, plain = [], [], {}, []
        for k in range(self.K):
            bp = self._combined_bp(k)
            prev = self.refs[k] if self.refs is not None else None
            tau2 = 0.5 * (t2[1][k] + t2[2][k])
            maps.append(a.flatten(a.reconstructor.reconstruct(bp, tau2, fudge, a.ops, prev=prev)))
            tv[k + 1] = tv_stats(a.reconstructor.last) if a.regularised else None
            weights.append(bp.shell_mean_weight()[:a.nsh] * len(a.ops))
            if wiener:
                plain.append(a.flatten(a.plain.reconstruct(bp, tau2, fudge, a.ops)))
        return np.stack(maps).astype(np.float32), np.stack(weights), tv, np.stack(plain) if wiener else None

    def _wiener_maps(self, t2):
        """The last iteration with --tv, one set of halves: the class maps without the
        regularisation (for the PNG; cross halves: :meth:`_combined_maps`)."""
        m, fudge = self.m, self.config.tau2_fudge * PAD ** 3
        return np.stack([m.flatten(m.plain.reconstruct(m.bps[k], t2[1][k], fudge, m.ops)) for k in range(self.K)])

    def m_step(self, sums):
        cfg, K, n = self.config, self.K, self.n
        r_used = self.st["r_cur"]
        t2, ssnr, tv = {}, [], {}
        for h, m in self.models.items():
            m.update_noise_priors(sums[h])
            self.prev_refs[h] = m.refs
            m.refs, t2[h], tv = self._class_maps(m, sums[h].r_cur)
            m.tau2 = m.power3(m.refs)
            ssnr.append(cfg.tau2_fudge * m.tau2 * np.stack([m.mean_weight(k) for k in range(K)]) * PAD ** 3)
        if self.first and K > 1:   # the random initial classes
            for m in self.models.values():
                m.res["class"] = self.subset[m.idx] + 1
        if self.cross:
            self._renumber_half2(t2, sums[2])
        # the E-step's next limit from the maps it scores against (the halves' in cross mode)
        self.st["r_cur"] = mstep.next_r_cur(mstep.resolution_shell(np.concatenate(ssnr)), cfg.margin_shells, n)
        last = self.m.regularised and self.st["iteration"] + 1 >= cfg.iters
        if self.cross:
            self.refs, weight, tv, wiener = self._combined_maps(t2, wiener=last)
            self.tau2 = self.m.power3(self.refs)
            full = cfg.tau2_fudge * self.tau2 * weight * PAD ** 3
            class_weight = sums[1].class_weight + sums[2].class_weight
        else:
            self.refs, self.tau2, full, class_weight = self.m.refs, self.m.tau2, ssnr[0], sums[1].class_weight
            wiener = self._wiener_maps(t2) if last else None
        self.pclass = mstep.class_priors(class_weight)
        self.st["resolution"] = n * self.m.angpix / max(mstep.resolution_shell(full), 1)
        self.st["iteration"] += 1
        stats, order, stage = self._change_stats(), self.samp.order, ""
        if self.auto:      # the stage this iteration ran in, then the next one's
            stage = auto.STAGES[self.st["schedule"]["stage"]]
            self._auto_schedule()
        stats.update(iteration=self.st["iteration"], r_cur=r_used, resolution=self.st["resolution"],
                     sigma_offset=float(np.mean([m.sigma_offset for m in self.models.values()])),
                     pclass=self.pclass.copy(), tv=tv, wiener=wiener, evaluated=self.evaluated, order=order, stage=stage)
        return stats

    def _renumber_half2(self, t2, sums2):
        """Half 2's classes (maps, sums, tau2, priors, particles) renumbered to match half 1's."""
        m = self.models[2]
        perm = matching_classes(self.models[1].refs, m.refs)     # half 2's class for each of half 1's
        if np.array_equal(perm, np.arange(self.K)):
            return
        m.refs, m.tau2, t2[2] = m.refs[perm], m.tau2[perm], t2[2][perm]
        m.bps = [m.bps[k] for k in perm]
        m.pclass = m.pclass[perm]
        sums2.class_weight = np.asarray(sums2.class_weight)[perm]
        new_of_old = np.argsort(perm) + 1
        for res in (m.res, self.prev[2]):
            res["class"] = new_of_old[np.asarray(res["class"]) - 1]
        self.log("class3d: half 2's classes renumbered %s to match half 1's" % (perm + 1).tolist())

    def _change_stats(self):
        out = [pose_change_stats(self.comm, self.prev[h], m.res, self.space, first=self.first)
               for h, m in self.models.items()]
        if len(out) == 1:
            return out[0]
        w = [float(m.idx_all.size) for m in self.models.values()]
        mean = {k: (out[0][k] * w[0] + out[1][k] * w[1]) / sum(w) for k in out[0] if k != "loglik"}
        return dict(mean, loglik=out[0]["loglik"] + out[1]["loglik"])

    # ------------------------------------------------------------ state, files
    def _merged_results(self):
        """All particles' results in the input order (collective)."""
        parts = {h: m.gather_results() for h, m in self.models.items()}
        out = {}
        for k in parts[1]:
            a = np.zeros(self.ps.n, parts[1][k].dtype)
            for h, m in self.models.items():
                a[m.idx_all] = parts[h][k]
            out[k] = a
        return out

    def _model_state(self, m):
        smp = m.gather_sampler()     # (collective)
        h = next(k for k, v in self.models.items() if v is m)
        # the maps of the iteration before only where --cross_join scores against them (K maps per half)
        keep = self.cross and self._joined() and self.prev_refs[h] is not None
        prev = {"prev_refs": self.prev_refs[h]} if keep else {}
        return {"refs": m.refs, "sigma2": m.sigma2, "tau2": m.tau2, "pclass": m.pclass, **prev,
                "sigma_offset": m.sigma_offset, "img_power": m.img_power, **m.corr.state(),
                **({"sampler": smp} if smp is not None else {})}

    def state(self):
        st = {"results": self._merged_results(), **self.st}
        if not self.cross:
            return {**self._model_state(self.m), **st}
        halves = {"half%d" % h: self._model_state(m) for h, m in self.models.items()}
        a, b = halves["half1"], halves["half2"]
        return {**halves, **st, "refs": self.refs, "tau2": self.tau2, "pclass": self.pclass,
                "sigma2": 0.5 * (a["sigma2"] + b["sigma2"]), "sigma_offset": 0.5 * (a["sigma_offset"] + b["sigma_offset"]),
                "subsets": self.subsets, **({"group_scale": a["group_scale"]} if "group_scale" in a else {})}

    def write(self, root, state, stats):
        from .io3d import write_class3d_iteration

        return write_class3d_iteration(root, self.ps, state, stats, self.config)

    def plot(self, root, state, stats):
        from .iofiles import central_slices_png

        it = int(state["iteration"])
        for k in range(self.K):
            central_slices_png(root.iteration(it, "class%03d.png" % (k + 1)), state["refs"][k],
                               "class %d: %.1f%%" % (k + 1, 100 * state["pclass"][k]))
            if stats.get("wiener") is not None:
                central_slices_png(root.iteration(it, "class%03d_tv.png" % (k + 1)),
                                   {"TV": state["refs"][k], "Wiener": stats["wiener"][k]},
                                   "class %d with (top) and without (bottom) the sparsity + TV regularisation"
                                   % (k + 1))

    def log_line(self, st):
        tv = tv_lines(st.get("tv", {}))
        t_tv = sum(t["seconds"] for t in st.get("tv", {}).values() if t)
        auto_ = "  order %d %s" % (st["order"], st["stage"]) if st.get("stage") else ""
        return ("it %3d%s  r_cur %2d  res %6.2f A  dclass %5.3f  dang %6.2f deg  doff %5.2f A  sig_off %5.2f A  "
                "nsig %7.1f  classes %s  logL %.6e  poses evaluated %.2e  (%.1f s, E-step %.1f s%s)%s" % (
                    st["iteration"], auto_, st["r_cur"], st["resolution"], st["changes_classes"], st["changes_orient"],
                    st["changes_offsets"], st["sigma_offset"], st["mean_nsig"],
                    " ".join("%.2f" % p for p in st["pclass"]), st["loglik"], st.get("evaluated", float("nan")),
                    st["t_iter"], st["t_estep"], ", TV M-step %.1f s" % t_tv if tv else "", tv))

    def finish(self, root):
        pass
