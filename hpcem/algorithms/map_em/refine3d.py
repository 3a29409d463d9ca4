"""3D auto-refinement with gold-standard halves, as RELION does it (seed 000, section 3.1.1).

The two halves (``rlnRandomSubset``, else a seeded split) are refined independently, each on its
own group of ranks (one rank does both in turn).  Every M-step first reconstructs both half maps
lightly regularised (``run_half?_class001_unfil``), exchanges them, and derives from their FSC
(masked by the particle sphere) the SSNR of a half map, ``FSC/(1-FSC)``, and ``tau2 = SSNR / <W>``
(noise power of a half map per voxel = ``1/<W>``), which regularises the half references.
Resolution = FSC 0.143; next ``r_cur`` = that shell + margin.  HEALPix order + 1 when the
resolution stalls while the mean pose changes are below the angular step, or when the step
exceeds twice the resolution-driven accuracy ``deg(res / R_particle)`` (but into local searches
only once the global search has stalled, or after 5 iterations at that order); local searches
(sigma_ang = 0.75 step) from ``auto_local_healpix_order``; converged after two iterations at the
finest order without resolution gain and with mean changes below the step; then a final
iteration at Nyquist combines both halves (SSNR of the full map ``2 FSC/(1-FSC)``) into
``run_class001.mrc``.

With --tv (seed 002, :mod:`hpcem.recon.tv`) each half's reference is the regularised M-step's map
from that half's sums alone, restrained to the half's own previous map (the halves stay
independent), instead of the Wiener MAP map; the final map is the regularised reconstruction of
both halves' sums (``run_class001_tv.png``: central slices with and without regularisation).  The
gold-standard FSC, the resolution and the ``_unfil`` half maps stay those of the unregularised
halves: the FSC between regularised halves is inflated by their shared, signal-dependent bias
(DESIGN_NOTES, issue 13), so only alignment and the final map see the regulariser.

relion_refine's options: ``--low_resol_join_halves`` (:mod:`.halves`), ``--solvent_mask`` and
``--solvent_correct_fsc`` (:mod:`.solvent`), ``--sigma_ang`` (local searches around the input
poses from the first iteration), ``--firstiter_cc`` (:mod:`hpcem.estep.crosscorr`), ``--norm`` /
``--scale`` (:mod:`hpcem.estep.corrections`).
"""
from __future__ import annotations

import numpy as np

from ...core.fsc import fsc, fsc_to_ssnr, resolution_at
from ...core.sampling import angular_accuracy, angular_step
from ...errors import InputError
from ...estep import LocalSearch, TranslationSampling
from ...parallel.decomp import half_groups
from ...recon import mstep
from ...recon.projector import summed_backprojector
from ...runtime.device import HOST
from ...runtime.memory import MemoryPlan
from .model3d import Model3D, initial_reference, shell_of, tv_lines, tv_stats
from .halves import join_low_resolution
from .results import change_sums
from .solvent import masked_fsc
from .space3d import ProjectionSpace, Sampling3D

SCHEDULE = {"iteration": 0, "order": 0, "r_cur": 0, "resolution": np.inf, "best_shell": 0.0, "n_wo_res": 0,
            "n_wo_change": 0, "converged": 0, "n_at_order": 0, "offset_range": 0.0}


def split_halves(ps, seed: int) -> np.ndarray:
    s = ps.random_subset()
    if s is None or not np.isin(s, (1, 2)).all() or len(np.unique(s)) < 2:
        s = 1 + (np.random.default_rng(seed).permutation(ps.n) % 2)
    return np.asarray(s, np.int64)


def local_sigma(cfg, order: int) -> float:
    """Width (deg) of the local angular searches at HEALPix ``order`` (0: global): 0.75 step from
    --auto_local_healpix_order on; --sigma_ang from the start (never wider than that)."""
    auto = angular_step(order) * 0.75 if order >= cfg.auto_local_healpix_order else 0.0
    if cfg.sigma_ang > 0:
        return min(cfg.sigma_ang, auto) if auto > 0 else float(cfg.sigma_ang)
    return auto


def max_order_for(cfg, angpix, radius_A):
    if cfg.max_healpix_order > 0:
        return int(cfg.max_healpix_order)
    need = np.rad2deg(2.0 * angpix / radius_A)
    o = 0
    while angular_step(o) > need and o < 7:
        o += 1
    return max(o, cfg.healpix_order)


class Refine3D:
    kind = "refine3d"
    checkpoint_name = "checkpoint.h5"

    def __init__(self, ps, ref, cfg, world, log=print, device=HOST):
        self.ps, self.ref, self.config, self.world, self.log = ps, ref, cfg, world, log
        self.n, self.angpix = ps.box, float(ps.angpix)
        self.subsets = split_halves(ps, cfg.random_seed)
        self.half, self.sub, _ = half_groups(world)
        hs = [1, 2] if self.half is None else [self.half]
        self.models = {h: Model3D(ps, np.flatnonzero(self.subsets == h), cfg, self.sub, log, device=device)
                       for h in hs}
        self.m0 = self.models[hs[0]]
        self.radius_A = self.m0.radius_px * self.angpix
        self.max_order = max_order_for(cfg, self.angpix, self.radius_A)
        self.st = dict(SCHEDULE, order=cfg.healpix_order, offset_range=float(cfg.offset_range),
                       r_cur=int(min(self.n // 2, max(3, round(shell_of(cfg.ini_high, self.n, self.angpix))))))
        self.final = self.finished = False
        self.fin = None

    def finest_dense_order(self) -> int:
        """The finest HEALPix order the schedule searches globally (on the full grid): the memory
        plan's; from --auto_local_healpix_order on the searches are local."""
        cfg = self.config
        if cfg.sigma_ang > 0:
            return int(cfg.healpix_order)
        return int(max(cfg.healpix_order, min(self.max_order, cfg.auto_local_healpix_order - 1)))

    def memory_plan(self):
        cfg = self.config
        order = self.finest_dense_order()
        samp = Sampling3D(order, cfg.sym, 0, cfg.oversampling)
        T = TranslationSampling(cfg.offset_range, cfg.offset_step, cfg.oversampling).T
        items = self.m0.memory_items(samp, T, self.n // 2)
        items["particles (transforms + CTFs)"] = sum(m.parts.nbytes() for m in self.models.values())
        return MemoryPlan(items, what="%d particles per half, %d directions x %d psi x %d translations at order %d, "
                          "%d half group(s) of %d rank(s)" % (self.m0.idx_all.size, samp.nd, samp.npsi, T,
                                                              order, 2 if self.half else 1, self.sub.size),
                          hint="run on more ranks/nodes, or lower --batch, --healpix_order or --offset_range")

    def prepare(self):
        for m in self.models.values():
            m.prepare()

    def initialise(self):
        r = initial_reference(self.ref, self.angpix, self.config.ini_high, self.m0.solvent)
        for m in self.models.values():
            m.refs = r[None].copy()
            m.sigma2 = m.img_power.copy()

    def restore(self, st):
        if not np.array_equal(np.asarray(st["subsets"]), self.subsets):
            raise InputError("the gold-standard halves differ from the run's (rlnRandomSubset or --random_seed "
                             "changed)", field="--continue")
        self.st = {k: type(v)(st["global"].get(k, v)) for k, v in self.st.items()}
        for h, m in self.models.items():
            m.load_state(st["half%d" % h])
            m.set_results({k: np.asarray(v)[m.idx_all] for k, v in st["results"].items()})

    def done(self):
        return self.finished

    # ------------------------------------------------------------ iteration
    def e_step(self):
        cfg, st = self.config, self.st
        order = st["order"]
        self.samp = Sampling3D(order, cfg.sym, 0, cfg.oversampling)
        self.trans = TranslationSampling(st["offset_range"], cfg.offset_step, cfg.oversampling)
        self.local = local_sigma(cfg, order)
        self.final = bool(st["converged"]) or st["iteration"] >= cfg.iters
        self.r_e = self.n // 2 if self.final else st["r_cur"]
        cand = LocalSearch(self.local) if self.local > 0 else None
        self.prev = {h: {k: v.copy() for k, v in m.res.items()} for h, m in self.models.items()}
        cc = bool(cfg.firstiter_cc) and st["iteration"] == 0
        return {h: m.e_step(self.samp, self.trans, self.r_e, cc=cc,
                            candidates=m.importance(st["iteration"]) if m.sampler is not None else cand)
                for h, m in self.models.items()}

    def reduce(self, acc):
        """Within each half group: the sums; then the pose changes over all ranks."""
        space = ProjectionSpace(self.samp, 1, self.n, self.m0.ops)
        sums = np.zeros(7)
        for h, m in self.models.items():
            m.reduce(acc[h])
            m.update_noise_priors(acc[h])
            if self.st["iteration"] > 0:
                sums[:5] += change_sums(self.prev[h], m.res, space)
            if self.sub.rank == 0:      # each half's reduced count once
                sums[5:] += acc[h].evaluated
        self.world.allreduce_(sums)
        self.changes, self.evaluated = sums[:5], sums[5] / max(sums[6], 1.0)

    def _half_fsc(self):
        """Unfiltered half maps (both, on every rank) and their masked and unmasked FSC."""
        unfil = {h: m.reconstruct(0, unfil=True) for h, m in self.models.items()}
        if self.half is not None:
            got = self.world.allgather((self.half, unfil[self.half] if self.sub.rank == 0 else None))
            unfil = {h: v for h, v in got if v is not None}
        _, curve_unmasked = fsc(unfil[1], unfil[2])
        curve = masked_fsc(unfil[1], unfil[2], self.m0.fsc_mask, self.config.solvent_correct_fsc, curve_unmasked,
                           seed=self.config.random_seed)
        curve[self.r_e + 1:] = 0.0             # no data beyond the E-step's limit (only gridding echoes)
        curve_unmasked[self.r_e + 1:] = 0.0
        return unfil, curve, curve_unmasked

    def m_step(self, acc):
        if not self.final and self.config.low_resol_join_halves > 0:
            join_low_resolution(self.models, self.half, self.world, self.sub,
                                shell_of(self.config.low_resol_join_halves, self.n, self.angpix))
        unfil, curve, curve_unmasked = self._half_fsc()
        res = resolution_at(curve, 0.143, self.n, self.angpix)
        if self.final:
            return self._final(unfil, curve, curve_unmasked, res)
        ssnr = fsc_to_ssnr(curve)
        for m in self.models.values():
            tau2 = mstep.tau2_from_ssnr(ssnr, m.mean_weight(0))
            m.tau2 = tau2[None]
            m.refs = m.flatten(m.reconstruct(0, tau2=tau2, fudge=self.config.tau2_fudge))[None].astype(np.float32)
        r_used, order = self.st["r_cur"], self.st["order"]
        self._schedule(res)
        s = self.changes
        stats = {"iteration": self.st["iteration"], "r_cur": r_used, "resolution": res, "order": order,
                 "local_sigma": self.local, "n_trans": self.trans.T, "fsc": curve, "evaluated": self.evaluated,
                 "changes_orient": s[1] / s[3] if s[3] else np.nan, "changes_offsets": s[2] / s[3] if s[3] else np.nan,
                 "converged": self.st["converged"]}
        stats.update(self._half_summaries())
        return stats

    def _half_summaries(self):
        """Both halves' sigma_offset and log-likelihood, and the mean nsig, on every rank."""
        mine = {h: (m.sigma_offset, float(m.res["loglik"].sum()), float(m.res["nsig"].sum()), m.res["nsig"].size,
                    tv_stats(m.reconstructor.last))
                for h, m in self.models.items()}
        got = self.world.allgather(mine)
        tot = {1: [0.0, 0.0, 0.0, 0], 2: [0.0, 0.0, 0.0, 0]}
        tv = {}
        for g in got:
            for h, (so, ll, ns, nb, t) in g.items():
                tot[h][0] = so
                tot[h][1] += ll
                tot[h][2] += ns
                tot[h][3] += nb
                tv[h] = t
        nsig = (tot[1][2] + tot[2][2]) / max(tot[1][3] + tot[2][3], 1)
        return {"sigma_offset_half": (tot[1][0], tot[2][0]), "loglik_half": (tot[1][1], tot[2][1]),
                "mean_nsig": nsig, "tv_half": tv if self.m0.regularised else {}}

    def _schedule(self, res):
        """Resolution bookkeeping, HEALPix order and translation range updates, convergence."""
        cfg, st, angpix = self.config, self.st, self.angpix
        order = st["order"]
        st["iteration"] += 1
        shell = shell_of(res, self.n, angpix)
        gain = shell > st["best_shell"] + 1e-6
        st["best_shell"] = max(st["best_shell"], shell)
        st["resolution"] = res
        st["r_cur"] = mstep.next_r_cur(np.floor(st["best_shell"]), cfg.margin_shells, self.n)
        s = self.changes
        step = angular_step(order)
        small = s[3] > 0 and s[1] / s[3] < step and s[2] / s[3] < cfg.offset_step * angpix
        st["n_wo_res"] = 0 if gain else st["n_wo_res"] + 1
        st["n_wo_change"] = st["n_wo_change"] + 1 if small else 0
        need = angular_accuracy(res, self.radius_A)
        stalled = st["n_wo_res"] >= 1 and st["n_wo_change"] >= 1
        if order < self.max_order:
            # finer sampling when the step is much coarser than the accuracy the resolution supports,
            # or when the resolution stalls; but the switch from global to local searches only once
            # global searching has stalled: a particle still misaligned then stays misaligned for the
            # rest of the run (local searches cannot bring it back)
            to_local = order + 1 >= cfg.auto_local_healpix_order and order < cfg.auto_local_healpix_order
            st["n_at_order"] += 1
            if stalled or (step > 2.0 * need and (not to_local or st["n_at_order"] >= 5)):
                st["order"] = order + 1
                # the translation grid is centred on each particle's current origin: once the poses
                # have settled it need only cover the remaining offset changes (3 x their RMS, at
                # least 1.5 steps), which keeps the finer orders' searches affordable
                if s[3] > 0:
                    rms_px = np.sqrt(s[4] / s[3]) / angpix
                    st["offset_range"] = float(min(st["offset_range"], max(1.5 * cfg.offset_step, 3.0 * rms_px)))
                st["n_wo_res"] = st["n_wo_change"] = st["n_at_order"] = 0
        elif st["n_wo_res"] >= 2 and st["n_wo_change"] >= 2:
            st["converged"] = 1

    # ------------------------------------------------------------ the final iteration
    def _combined_sums(self):
        """Back-projector of both halves summed (on every rank), with the halves' kernel."""
        if self.half is None:
            return summed_backprojector(m.bps[0] for m in self.models.values())
        m = self.models[self.half]
        bp = summed_backprojector([m.bps[0]] if self.sub.rank == 0 else [], like=m.bps[0])
        self.world.allreduce_(bp.data)
        self.world.allreduce_(bp.weight)
        return bp

    def _final(self, unfil, curve, curve_unmasked, res):
        """Both halves combined into the final map (SSNR of the full data, 2 FSC / (1 - FSC))."""
        bp = self._combined_sums()
        hs = self._half_states()
        summary = self._half_summaries()
        self.finished = True
        if self.world.rank != 0:
            return {}
        ops = self.m0.ops
        ssnr = fsc_to_ssnr(curve, full=True)
        tau2 = mstep.tau2_from_ssnr(ssnr, bp.shell_mean_weight()[:self.n // 2 + 1] * len(ops))
        prev = 0.5 * (hs[1]["refs"][0] + hs[2]["refs"][0])
        vol = self.m0.reconstructor.reconstruct(bp, tau2, self.config.tau2_fudge, ops, prev=prev)
        if self.m0.regularised:
            summary["tv_final"] = tv_stats(self.m0.reconstructor.last)
            summary["map_wiener"] = self.m0.plain.reconstruct(bp, tau2, self.config.tau2_fudge, ops)
        res_u = resolution_at(curve_unmasked, 0.143, self.n, self.angpix)
        self.fin = {"map": vol, "unfil": unfil, "fsc": curve, "fsc_unmasked": curve_unmasked, "ssnr": ssnr,
                    "tau2": tau2, "res": res, "res_unmasked": res_u, "results": self._merge(hs),
                    "subsets": self.subsets, "sigma2": hs[1]["sigma2"],
                    "sigma_offset": 0.5 * (hs[1]["sigma_offset"] + hs[2]["sigma_offset"]),
                    "loglik": sum(summary["loglik_half"]), "map_wiener": summary.get("map_wiener")}
        return {"final": True, "resolution": res, "resolution_unmasked": res_u, "tv_final": summary.get("tv_final")}

    # ------------------------------------------------------------ state, files
    def _half_states(self):
        """{h: results, refs, sigma2, tau2, img_power, sigma_offset, pclass} of both halves, on
        every rank (collective)."""
        mine = {}
        for h, m in self.models.items():
            smp = m.gather_sampler()
            mine[h] = {"results": m.gather_results(), "refs": m.refs, "sigma2": m.sigma2,
                       "tau2": m.tau2 if m.tau2 is not None else np.zeros((1, m.nsh)),
                       "img_power": m.img_power, "sigma_offset": m.sigma_offset, "pclass": m.pclass,
                       **m.corr.state(), **({"sampler": smp} if smp is not None else {})}
        if self.half is None:
            return mine
        out = {}
        for g in self.world.allgather(mine if self.sub.rank == 0 else None):
            out.update(g or {})
        return out

    def _merge(self, hs):
        out = {}
        for k in hs[1]["results"]:
            a = np.zeros(self.ps.n, hs[1]["results"][k].dtype)
            for h in (1, 2):
                a[np.flatnonzero(self.subsets == h)] = hs[h]["results"][k]
            out[k] = a
        return out

    def state(self):
        if self.finished:
            return None      # the final iteration leaves the final files, nothing to resume
        hs = self._half_states()
        st = {"iteration": self.st["iteration"], "global": dict(self.st), "subsets": self.subsets,
              "results": self._merge(hs)}
        for h in (1, 2):
            st["half%d" % h] = {k: hs[h][k] for k in ("refs", "sigma2", "tau2", "img_power", "sigma_offset",
                                                       "pclass", "group_scale", "sampler") if k in hs[h]}
        return st

    def write(self, root, state, stats):
        from .io3d import write_refine_final, write_refine_iteration

        if self.finished:
            write_refine_final(root, self.ps, self.fin, self.config)
            self.fin["path"] = root.path("class001.mrc")
            return {}
        return write_refine_iteration(root, self.ps, state, stats, self.config)

    def plot(self, root, state, stats):
        from .io3d import plot_refine_final
        from .iofiles import central_slices_png

        if self.finished:
            plot_refine_final(root, self.ps, self.fin)
        else:
            it = int(state["iteration"])
            central_slices_png(root.iteration(it, "half1_class001.png"), state["half1"]["refs"][0],
                               "iteration %d, half 1" % it)

    def log_line(self, st):
        tv = tv_lines(st.get("tv_half", {}), st.get("tv_final"))
        if st.get("final"):
            return "final: resolution %.2f A (masked FSC 0.143), %.2f A unmasked; wrote %s%s" % (
                st["resolution"], st["resolution_unmasked"], self.fin["path"], tv)
        so = st["sigma_offset_half"]
        t_tv = sum(t["seconds"] for t in st.get("tv_half", {}).values() if t)
        return ("it %3d  order %d%s  T %d  r_cur %2d  res %6.2f A  dang %6.2f deg  doff %5.2f A  "
                "sig_off %5.2f/%5.2f A  nsig %6.1f  poses evaluated %.2e  (%.1f s, E-step %.1f s%s)%s%s" % (
                    st["iteration"], st["order"], " local %.2f" % st["local_sigma"] if st["local_sigma"] > 0 else "",
                    st["n_trans"], st["r_cur"], st["resolution"], st["changes_orient"], st["changes_offsets"],
                    so[0], so[1], st["mean_nsig"], st.get("evaluated", 1.0), st["t_iter"], st["t_estep"],
                    ", TV M-step %.1f s" % t_tv if tv else "",
                    "  -> converged, final iteration next" if st["converged"] else "", tv))

    def finish(self, root):
        pass
