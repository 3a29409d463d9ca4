"""Ab initio 3D reconstruction from random starts by SAGD (seed 003; cryoSPARC's Ab-Initio
Reconstruction), the state object of :func:`hpcem.runtime.driver.run_iterations`.

Per iteration (:mod:`.schedule`): the mini-batch of SAG's fixed partition; the E-step of its
particles (split over the ranks) over the quadrature of the current resolution, with
importance-sampled candidates (:class:`hpcem.estep.importance.ImportanceSampler`) or the full
grid, per-class posteriors mixed by the class similarity for K > 1; the gradient of each class
map from the back-projected residuals (:func:`.sagd.data_gradient`); the SAG step with the
Lipschitz line search, then non-negativity, the particle window and re-centring; the running
noise estimate and class shares; a class whose share falls below ``class_reseed / K`` is
re-seeded from the largest (or, ``--reseed_from worst``, from the worst-fit images: :mod:`.reseed`).
``finish`` assigns every particle a class and pose against the final maps and writes
``run_classKKK.mrc``, ``run_data.star``, central slices and the log.
"""
from __future__ import annotations

import numpy as np

from ...core.fourier import ft3, ift3
from ...estep import FullGrid
from ...estep.importance import SEED_EPOCH, ImportanceSampler
from ...runtime.memory import MemoryPlan
from ..vdam.blobs import signal_std
from ..vdam.splitmerge import COOLDOWN, SplitMerge, shared_mass
from .model import SagdModel
from .priors import Prior
from .sagd import LINE_SEARCH_EVERY, SAG, Basis, Lipschitz, data_curvature, data_gradient
from .schedule import Batches, Schedule, StepFactor, quadrature

PRIOR_MEMORY = 0.9     # running average of the class shares over mini-batches
CHURN_MAX = 0.05       # K > 1: importance sampling only while fewer particles than this change class per visit
CHURN_MEMORY = 0.5     # running average of that fraction over mini-batches


class AbInitio:
    kind = "abinitio"
    checkpoint_name = "checkpoint.h5"

    def __init__(self, ps, cfg, comm, log=print):
        self.ps, self.config, self.comm, self.log = ps, cfg, comm, log
        self.n, self.K, self.N = ps.box, cfg.K, ps.n
        self.sched = Schedule(cfg, self.n, ps.angpix, self.N)
        self.step_factor = StepFactor(self.sched, self.K)
        self.m = SagdModel(ps, cfg, comm)
        self.basis = Basis(self.n, int(np.floor(self.sched.r_max)) + 2)
        self.prior = Prior(cfg.prior, self.m.mask3, cfg.prior_weight)
        self.sampler = (ImportanceSampler(self.m.idx, self.K, cfg.s0, cfg.random_seed) if cfg.importance_sampling
                        else None)
        self.it, self.visits, self.phase, self.phase_start = 0, 0, -1, 0
        self.V = self.sag = self.batches = None
        self.lip = Lipschitz()
        self.pclass = np.full(self.K, 1.0 / self.K)
        self.churn = 1.0
        self.split = self._split_merge_state()
        self.rows = []
        self.finished = False

    # ------------------------------------------------------------ driver interface: start
    def memory_plan(self):
        n, K = self.n, self.K
        nb = int(np.ceil(self.N / max(1, min(self.config.minisize_init, self.config.minisize))))
        P = 2 * n
        return MemoryPlan({"particles (transforms + CTFs)": self.m.parts.nbytes(),
                           "SAG gradients (%d mini-batches)" % nb: nb * K * self.basis.size * 8,
                           "maps and moves": 4 * K * n ** 3 * 8,
                           "projectors and back-projectors": K * P * P * (P // 2 + 1) * 8 * 4},
                          what="%d particles, K=%d, %d iterations" % (self.N, K, self.sched.total),
                          hint="run on more ranks/nodes, or lower --K or the box size")

    def prepare(self):
        self.m.load()

    def initialise(self):
        cfg = self.config
        sd = signal_std(self.ps, self.m.radius_px, cfg.random_seed)
        self.V = self.m.random_maps(cfg.random_seed, sd, cfg.init_radwn_cutoff)
        self.prior.fit(self.V)
        self._new_phase(0)
        sub, quad, r = self._batch(0)
        scale, target = self._noise_scale(r, quad, sub)
        self.m.start_noise(scale)
        self.log("random starts: %d class(es); initial noise scale %.3g (ESS fraction %.4f%s); %d iterations"
                 % (self.K, scale, target, "" if target == cfg.target_initial_ess_fraction else
                    ", the most this quadrature reaches over 2 (--maxsig caps the oversampled points)",
                    self.sched.total))

    def _noise_scale(self, r, quad, sub) -> tuple[float, float]:
        """(noise scale, ESS fraction it gives) on the first mini-batch (bisection in log): the target
        ESS fraction, or half the largest this quadrature reaches where that is less than twice the
        target (at a fine initial resolution the oversampled points, at most --maxsig coarse points'
        children, are too few a share of the quadrature: at 20 A in a 64 px box at most 1.0%, under
        the default 1.1%, and the bisection ran to its bound, a noise 10^6 times the data's, whose
        data term vanished beside the prior and left empty maps; issue 12, stop 38)."""
        lo, hi = np.log(1e-2), np.log(1e6)
        target = min(self.config.target_initial_ess_fraction,
                     0.5 * self.m.ess_fraction(self.V, r, quad, sub, np.exp(hi)))
        for _ in range(12):
            mid = 0.5 * (lo + hi)
            if self.m.ess_fraction(self.V, r, quad, sub, np.exp(mid)) < target:
                lo = mid
            else:
                hi = mid
        return float(np.exp(0.5 * (lo + hi))), float(target)

    def restore(self, st):
        from .files import restore_state

        restore_state(self, st)

    def done(self):
        return self.it >= self.sched.total

    # ------------------------------------------------------------ one iteration
    def _new_phase(self, it):
        ph = self.sched.phase(it)
        if ph != self.phase:
            self.phase, self.phase_start = ph, it
            self.batches = Batches(self.config.random_seed, self.N, self.sched.batch_size(it), ph)
            self.sag = SAG(self.batches.n_batches, self.K, self.basis.size)

    def _batch(self, it):
        b = self.batches.index(it - self.phase_start)
        return self.m.local(self.batches.members(b)), quadrature(self.sched.radius(it), self.m.radius_px), \
            self.sched.shell(it)

    def _candidates(self):
        return self.sampler if self.sampler is not None else FullGrid()

    def _class_mix(self):
        s = self.sched.class_similarity(self.it)
        if self.K < 2 or s <= 0:
            return None
        return lambda r: (1.0 - s) * r + s / self.K

    def e_step(self):
        it = self.it
        self._new_phase(it)
        self.b = self.batches.index(it - self.phase_start)
        self.sub, self.quad, self.r = self._batch(it)
        if self.sampler is not None:
            self.sampler.position(SEED_EPOCH * self.visits / self.N, it)
            self.sampler.frozen = False
            self.sampler.force_dense = self._classes_moving()
            self.sampler.reset_counts()
        prev = self.m.res["class"][self.sub].copy()
        sums, self.space = self.m.e_step(self.V, self.r, self.quad, self.sub, self.m.sigma2(), self._candidates(),
                                         self._class_mix())
        self._update_churn(prev, self.m.res["class"][self.sub])
        return sums

    def _classes_moving(self) -> bool:
        """K > 1: whether the classes are still being decided (class similarity on, or more than
        CHURN_MAX of the particles changed class at their last visits): the E-step then uses the
        full quadrature, whose class posteriors are exact; the importance-sampled estimates carry
        errors of a few nats per class, which decide classes at random while the classes differ by
        less (the seed's rule for alpha and T: rely on the uniform while the density changes)."""
        return self.K > 1 and (self.sched.class_similarity(self.it) > 0 or self.churn > CHURN_MAX)

    def _update_churn(self, prev, new):
        """Running fraction of the mini-batch's previously visited particles that changed class."""
        seen = prev > 0
        c = np.array([float(np.sum(seen & (prev != new))), float(np.sum(seen))])
        self.comm.allreduce_(c)
        if c[1] > 0:
            self.churn = CHURN_MEMORY * self.churn + (1.0 - CHURN_MEMORY) * c[0] / c[1]

    def reduce(self, sums):
        for bp in self.space.bps:
            self.comm.allreduce_(bp.data)
            self.comm.allreduce_(bp.weight)
        sums.reduce(self.comm)
        self.frac_eval = sums.fraction_evaluated

    def _sums(self):
        """Completed (and symmetrised) residual and weight sums of every class."""
        from ... import kernels

        out = []
        for bp in self.space.bps:
            D, W = bp.completed()
            if len(self.m.ops) > 1:
                D, W = kernels.symmetrise3d(D, W, np.asarray(self.m.ops, np.float64), bp.P / 2.0)
            out.append((D, W))
        return out

    def m_step(self, sums):
        n, it = self.n, self.it
        loglik = self.m.batch_loglik(self.sub)
        sw = self._sums()
        G = np.stack([data_gradient(D, n, self.basis) for D, _ in sw])
        self.sag.add(self.b, G)
        nb = self.batches.n_batches
        evals = 0
        search = (it - self.phase_start) % LINE_SEARCH_EVERY == 0
        new_shell = self.K > 1 and it > 0 and self.sched.shell(it) > self.sched.shell(it - 1)
        if search or new_shell:     # the batch gradient as a volume (both need it)
            dV = np.stack([self.basis.volume(g) for g in G]) + self.prior.grad(self.V) / nb
        if search:
            evals = self._line_search(dV, [W for _, W in sw], nb)
        else:
            self.lip.decrease()
            if new_shell:
                self.lip.L = max(self.lip.L, self._curvature(dV, [W for _, W in sw], nb))
        event = self.step_factor.observe(it, not self._classes_moving(), self.churn)
        eps = self.step_factor(it)
        move = np.stack([self.basis.volume(g) for g in self.sag.mean()]) + self.prior.grad(self.V) / nb
        self.V = self._project(self.V - (eps / self.lip.L) * move)
        self.m.update_noise(sums.noise, self.m.group_counts(self.sub), self.r, self.sub)
        share = sums.class_weight / max(float(sums.class_weight.sum()), 1e-300)
        self.pclass = PRIOR_MEMORY * self.pclass + (1.0 - PRIOR_MEMORY) * share
        reseeded = self._reseed()
        split = self._split_merge(sums) if reseeded is None else None
        self.space = None
        self.it += 1
        self.visits += int(self.batches.members(self.b).size)
        stats = {"iteration": self.it, "r": self.sched.radius(it), "resolution": n * self.ps.angpix / self.r,
                 "batch": int(self.batches.members(self.b).size), "epsilon": eps, "step": eps / self.lip.L,
                 "L": self.lip.L, "evaluated": self.frac_eval, "pclass": self.pclass.copy(), "evals": evals,
                 "churn": self.churn, "step_event": event, "split": split,
                 "shared": None if self.split is None else shared_mass(self.split.overlap),
                 "reseeded": reseeded, "reseed_from": self.config.reseed_from, "order": self.quad.order, "psi_step": self.quad.psi_step,
                 "t_step": self.quad.t_step, "epoch": self.visits / self.N, "loglik": loglik}
        self.rows.append([self.it, stats["resolution"], stats["step"], stats["evaluated"], stats["epoch"]]
                         + list(self.pclass))
        return stats

    def _line_search(self, dV, Ws, nb) -> int:
        """Algorithm 1's line search on this mini-batch (collective: every trial is an E-step)."""
        dn2 = float(np.sum(dV ** 2))
        if dn2 <= 0:
            return 0
        if self.sampler is not None:
            self.sampler.frozen = True

        def f_at(L):
            V1 = self.V if L is None else self.V - dV / L
            self.m.e_step(V1, self.r, self.quad, self.sub, self.m.sigma2(), self._candidates(), self._class_mix(),
                          accumulate=False)
            return -self.m.batch_loglik(self.sub) + self.prior.value(V1) / nb

        f0 = f_at(None)
        evals = 1 + self.lip.search(f_at, f0, dn2, self._curvature(dV, Ws, nb))
        if self.sampler is not None:
            self.sampler.frozen = False
        return evals

    def _curvature(self, dV, Ws, nb) -> float:
        """The mini-batch objective's curvature along ``dV`` over |dV|^2 (its quadratic model's
        Lipschitz constant in that direction): the line search's first guess, and, for K > 1, the
        floor of L when the frequency marching adds a shell.  Between line searches L only decays
        while each new shell raises the curvature; with the stale L the steps were ~7x too large
        during the marching, the particles' class map lost its new shells and its particles moved
        to the other classes (issue 12: map + junk at K = 3).  K = 1 keeps the stale L: it has no
        other class to lose particles to, and the floor's smaller steps left the short smoke run's
        map behind (FSC 10.6 -> 15.4 A)."""
        dn2 = float(np.sum(dV ** 2))
        if dn2 <= 0:
            return 0.0
        return (sum(data_curvature(d, W) for d, W in zip(dV, Ws)) + self.prior.curvature(dV) / nb) / dn2

    def _project(self, V):
        """Non-negativity, the particle window, re-centring (the SAG gradients move with the maps)."""
        cfg = self.config
        if cfg.nonneg:
            V = np.maximum(V, 0.0)
        if cfg.window:
            V = V * self.m.mask3
        if cfg.center:
            V = np.stack([self._centre(k, v) for k, v in enumerate(V)])
            if cfg.nonneg:
                V = np.maximum(V, 0.0)
        return V

    def _centre(self, k, v):
        n = self.n
        tot = float(v.sum())
        if tot <= 0:
            return v
        c = np.arange(n) - n // 2
        com = np.array([np.tensordot(v, c, axes=([a], [0])).sum() / tot for a in range(3)])   # (z, y, x)
        if np.linalg.norm(com) < 0.1:
            return v
        from ...core.fourier import freqs

        f = freqs(n)
        kz, ky, kx = np.meshgrid(f, f, np.arange(n // 2 + 1), indexing="ij")
        ph = np.exp(2j * np.pi * (kz * com[0] + ky * com[1] + kx * com[2]) / n)     # shift by -com
        self.sag.apply_phase(k, ph.ravel()[self.basis.idx])
        return ift3(ft3(v) * ph, n)

    def _reseed(self):
        """(emptied class, source) when a class's share fell below class_reseed / K, else None; not within
        COOLDOWN iterations of a split-merge move, which halves a small class's share by bookkeeping (on the
        seed-2 junk run a move from a class of share 0.11 set both copies to 0.055, under the threshold
        0.067, and the next two iterations re-seeded both from the largest class: issue 12, tenth pass)."""
        K = self.K
        a = int(np.argmin(self.pclass))
        if K < 2 or self.config.class_reseed <= 0 or self.pclass[a] >= self.config.class_reseed / K:
            return None
        if self.split is not None and self.split.moves and self.split.since < COOLDOWN:
            return None
        b = int(np.argmax(self.pclass))
        self._replace(a, b)
        return a, b

    def _split_merge_state(self):
        """``--split_merge`` (K >= 3): moves once the class similarity is off (the mixed posteriors share
        every particle between every pair before), until half-way through the final iterations."""
        cfg = self.config
        if not (cfg.split_merge and self.K >= 3):
            return None
        last = self.sched.total - cfg.num_final_iters // 2
        return SplitMerge(self.K, max(cfg.class_anneal_end, 1), last, size_ratio=cfg.split_merge_size)

    def _split_merge(self, sums):
        """The move (a, b) of :mod:`hpcem.algorithms.vdam.splitmerge` (class a takes class b's map), or None."""
        if self.split is None:
            return None
        move = self.split.step(self.it, sums.class_overlap, self.pclass)
        if move is not None:
            self._replace(*move)
        return move

    def _replace(self, a, b):
        """Class ``a`` takes class ``b``'s map (perturbed by 20% of its sd in low-passed noise), SAG memory
        and half its share (a re-seeded class, a split-merge move); with ``--reseed_from worst`` the map of
        the images the classes fit worst instead (:mod:`.reseed`).  ``--high_lr_rearm``: the large steps
        restart again once the classes settle after it."""
        self.step_factor.rearm(self.it, self.batches.n_batches)
        if self.config.reseed_from == "worst":
            return self._replace_worst(a, b)
        rng = np.random.default_rng([self.config.random_seed, 43, self.it])
        noise = self.m.random_maps(int(rng.integers(1 << 30)), 1.0, self.config.init_radwn_cutoff)[0]
        v = self.V[b]
        self.V[a] = np.maximum(v + 0.2 * v.std() * noise / max(noise.std(), 1e-30), 0.0) * self.m.mask3
        self.sag.copy_class(b, a)
        self.pclass[a] = self.pclass[b] = 0.5 * self.pclass[b]

    def _replace_worst(self, a, b):
        """Class ``a`` takes the map of the worst-fit images (at their best poses against the current maps),
        an empty SAG memory and their share; the other shares keep their proportions (collective)."""
        from . import reseed

        fit = reseed.fit_all(self.m, self.V, self.r, self.quad)
        sel = reseed.worst_fit(self.comm, fit["class"], fit["loglik"], self.N, self.K)
        self.V[a] = reseed.map_from_images(self.m, self.comm, sel, fit, self.r, self.V[b])
        self.sag.clear_class(a)
        cnt = np.array([float(sel.size)])
        self.comm.allreduce_(cnt)
        share = cnt[0] / self.N
        rest = np.arange(self.K) != a
        self.pclass[rest] *= (1.0 - share) / max(float(self.pclass[rest].sum()), 1e-300)
        self.pclass[a] = share

    # ------------------------------------------------------------ files
    def state(self):
        from .files import collect_state

        return collect_state(self)

    def write(self, root, state, stats):
        from .files import write_iteration

        return write_iteration(self, root, state, stats)

    def plot(self, root, state, stats):
        from .files import plot_iteration

        plot_iteration(self, root, state)

    def log_line(self, st):
        from .files import log_line

        return log_line(st)

    def finish(self, root):
        from .files import final_pass_and_files

        final_pass_and_files(self, root)
