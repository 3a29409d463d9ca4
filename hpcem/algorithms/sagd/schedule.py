"""The iteration schedule of ab initio SAGD and the quadrature over poses at each resolution.

Schedule (cryoSPARC's Ab-Initio phases, seed 003 section 4.2's frequency marching):
``num_init_iters`` at the initial resolution, then the Fourier radius rises by ``radwn_step``
per iteration to the final resolution, then ``num_final_iters`` there; mini-batches of
``minisize_init`` particles until ``minisize_num_init_iters``, ``minisize`` after; the SAGD step
factor ``epsilon = max(1/16, high_lr 2^-floor(it / high_lr_duration))`` (the seed's
``max(1/16, 2^(1 - floor(tau/150)))`` with the defaults), for K > 1 restarted at ``high_lr`` once the
marching is over and the classes have settled, optionally halved once more when they move again
(:class:`StepFactor`); the class similarity ``beta``
until ``class_anneal_start``, falling linearly to 0 at ``class_anneal_end``.

Quadrature (section 3.2) at Fourier radius ``r = D omega*`` (cycles per box): the angle between
discrete wave numbers at that radius ``alpha = arccos((r^2 - 1) / (r^2 + 1)) / 2``; directions
``M_d = (3.6 / alpha)^2``, here the HEALPix order whose 12 4^o equal-area directions are nearest to
it in ratio (HEALPix instead of the seed's Saff-Kuijlaars spiral: equal weights 4 pi / M_d,
hierarchical, the grid every other hpcem job uses); ``M_psi = 2 pi / alpha`` in-plane angles;
translations on a square grid within ``offset_range`` at the arc ``alpha`` moves the particle's
edge (``alpha`` times its radius: the translation accuracy matching the angular one; the seed's
``M_t = (D omega*)^2`` spaces them a full period of omega* apart), with the seed's broad Gaussian
prior centred in the box.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_RADIUS = 2.0


@dataclass(frozen=True)
class Quadrature:
    order: int          # HEALPix order of the directions
    psi_step: float     # deg
    t_step: float       # pixels

    def describe(self) -> str:
        return "HEALPix order %d, psi %.2f deg, translations every %.2f px" % (self.order, self.psi_step, self.t_step)


def quadrature(r: float, radius_px: float) -> Quadrature:
    """The seed's quadrature sizes at Fourier radius ``r`` (see the module docstring)."""
    r = max(float(r), MIN_RADIUS)
    alpha = 0.5 * np.arccos((r * r - 1.0) / (r * r + 1.0))
    m_d = (3.6 / alpha) ** 2
    orders = np.arange(0, 8)
    order = int(orders[np.argmin(np.abs(np.log(12.0 * 4.0 ** orders) - np.log(m_d)))])
    n_psi = int(np.ceil(2.0 * np.pi / alpha - 1e-9))
    return Quadrature(order, 360.0 / n_psi, float(max(alpha * radius_px, 0.5)))


class Schedule:
    def __init__(self, cfg, n: int, angpix: float, n_particles: int):
        self.cfg, self.n, self.N = cfg, int(n), int(n_particles)
        self.r_init = min(n * angpix / cfg.init_res, n / 2.0)
        self.r_max = max(min(n * angpix / cfg.max_res, n / 2.0), self.r_init)
        self.n_anneal = int(np.ceil((self.r_max - self.r_init) / cfg.radwn_step - 1e-9))
        self.total = int(cfg.num_init_iters + self.n_anneal + cfg.num_final_iters)

    def radius(self, it: int) -> float:
        """Fourier radius (cycles per box) of iteration ``it`` (0-based)."""
        a = it - self.cfg.num_init_iters
        if a < 0:
            return self.r_init
        return float(min(self.r_max, self.r_init + (a + 1) * self.cfg.radwn_step))

    def shell(self, it: int) -> int:
        """The E-step's resolution limit (shell index) of iteration ``it``."""
        return int(max(MIN_RADIUS, np.floor(self.radius(it) + 1e-9)))

    def phase(self, it: int) -> int:
        return 0 if it < self.cfg.minisize_num_init_iters else 1

    def batch_size(self, it: int) -> int:
        b = self.cfg.minisize_init if self.phase(it) == 0 else self.cfg.minisize
        return int(min(max(b, 1), self.N))

    def marching_done(self, it: int) -> bool:
        """Whether iteration ``it`` comes after the frequency marching (the final radius reached before it)."""
        return it >= self.cfg.num_init_iters + self.n_anneal

    def epsilon(self, it: int, start: int = 0) -> float:
        """The step factor, its halvings counted from iteration ``start``."""
        c = self.cfg
        return float(max(1.0 / 16.0, c.high_lr * 2.0 ** (-np.floor((it - start) / c.high_lr_duration))))

    def class_similarity(self, it: int) -> float:
        c = self.cfg
        if it < c.class_anneal_start:
            return float(c.class_anneal_beta)
        if it >= c.class_anneal_end or c.class_anneal_end <= c.class_anneal_start:
            return 0.0
        return float(c.class_anneal_beta * (c.class_anneal_end - it) / (c.class_anneal_end - c.class_anneal_start))


# After the restart the classes count as moving again above this churn: twice the 5% below which they
# count as settled (the running churn wanders between 1% and 6% once settled; issue 12, eighth pass)
RELAPSE_CHURN = 0.10


class StepFactor:
    """SAGD's step factor epsilon over the run.  K > 1 with ``high_lr_restart``: the first iteration
    after the frequency marching at which the classes have settled (:meth:`observe`'s ``settled``:
    class similarity off and fewer than 5% of the particles changing class per visit, the rule that
    switches importance sampling on) restarts it at ``high_lr``, its halvings counted from there.
    The steps that let the classes settle are too small to bring the particles' map to the final
    resolution afterwards (issue 12, sixth pass: 16.9 A at the end; restarted, 8.1 A).  The large
    steps unsettle the classes again (``relapse``: the first iteration after the restart with a churn
    above RELAPSE_CHURN); ``high_lr_stop`` 'relapse' or 'resettle' halves epsilon once more from that
    iteration or from the first settled one after it (``stop``), so that the steps do not turn an empty
    class into a second particle class (issue 12, seventh pass).  With ``high_lr_rearm`` a re-seeded
    class or a split-merge move after the restart (:meth:`rearm`) arms it again: the first settled
    iteration a full epoch after the move restarts epsilon at ``high_lr`` and clears the stop (the
    merged or re-sorted particles' map lags as the map did after the marching); until then epsilon
    keeps its value and the move's churn is no relapse (with the stop rule acting on it, seed 1 ended
    with 137 particles in the worst-fit class; issue 12, twelfth pass).  ``restart``, ``relapse``,
    ``stop``, ``rearmed`` (-1: not yet / none pending) are part of the checkpoint."""

    def __init__(self, sched: Schedule, K: int):
        self.sched = sched
        self.on = K > 1 and bool(sched.cfg.high_lr_restart)
        self.mode = sched.cfg.high_lr_stop
        self.rearm_on = self.on and bool(sched.cfg.high_lr_rearm)
        self.restart = self.relapse = self.stop = self.rearmed = -1

    def rearm(self, it: int, wait: int) -> None:
        """A class re-seeded or moved at iteration ``it``: the restart fires again at the first settled
        iteration from ``it + wait`` (an epoch of mini-batches: the churn then measures the new classes)."""
        if self.rearm_on and self.restart >= 0:
            self.rearmed = int(it) + max(int(wait), 1)

    def observe(self, it: int, settled: bool, churn: float = 0.0) -> str:
        """What iteration ``it`` (classes ``settled`` or not, ``churn`` the running fraction of
        particles changing class) changes in the schedule ('' for nothing): the restart (once per
        run), then the stop of the large steps."""
        if not self.on:
            return ""
        if self.restart < 0:
            if settled and self.sched.marching_done(it):
                self.restart = int(it)
                return "classes settled: epsilon restarted at --high_lr"
            return ""
        if self.rearmed >= 0:          # the move's churn is no relapse of the large steps
            if not (settled and it >= self.rearmed):
                return ""
            self.restart, self.relapse, self.stop, self.rearmed = int(it), -1, -1, -1
            return "classes settled after the move: epsilon restarted at --high_lr"
        event = ""
        if self.relapse < 0 and churn > RELAPSE_CHURN:
            self.relapse, event = int(it), "classes moving again after the restart"
        if self.stop < 0 and self.relapse >= 0 and (self.mode == "relapse" or (self.mode == "resettle" and settled)):
            self.stop = int(it)
            event = "classes %s: epsilon halved (--high_lr_stop)" % ("moving" if self.mode == "relapse" else
                                                                      "settled again")
        return event

    def state(self) -> dict:
        return {"lr_restart": self.restart, "lr_relapse": self.relapse, "lr_stop": self.stop,
                "lr_rearmed": self.rearmed}

    def load(self, st) -> None:
        self.restart, self.relapse, self.stop, self.rearmed = (int(st[k]) if k in st else -1 for k in self.state())

    def __call__(self, it: int) -> float:
        eps = self.sched.epsilon(it, max(self.restart, 0))
        if 0 <= self.stop <= it:
            eps = max(1.0 / 16.0, eps / 2.0)
        return float(eps)


class Batches:
    """SAG's fixed partition of the particles into mini-batches, one per batch-size phase: a
    seeded permutation cut into ``ceil(N / B)`` subsets; each epoch visits every subset once in a
    seeded order.  Iteration ``it`` of the phase starting at ``start`` takes subset
    :meth:`subset` (the same for any rank count and after ``--continue``)."""

    def __init__(self, seed: int, N: int, B: int, phase: int):
        self.seed, self.N, self.B, self.phase = int(seed), int(N), int(B), int(phase)
        self.perm = np.random.default_rng([self.seed, 17, self.phase]).permutation(self.N)
        self.n_batches = int(np.ceil(self.N / self.B))

    def index(self, k: int) -> int:
        """The subset of the phase's ``k``-th iteration."""
        e, pos = divmod(int(k), self.n_batches)
        return int(np.random.default_rng([self.seed, 19, self.phase, e]).permutation(self.n_batches)[pos])

    def members(self, b: int) -> np.ndarray:
        return np.sort(self.perm[b * self.B:(b + 1) * self.B])
