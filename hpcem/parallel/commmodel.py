"""A communication model of hpcem's two parallel decompositions (issue 16).

Collectives (p ranks, a full array of n bytes; Hockney's latency alpha and inverse bandwidth beta,
the usual large-message algorithms of MPICH/Open MPI):

* ``Allreduce``        2 ceil(log2 p) alpha + 2 (p-1)/p n beta   (reduce-scatter + allgather)
* ``Reduce_scatter``     ceil(log2 p) alpha +   (p-1)/p n beta
* ``Allgatherv``         ceil(log2 p) alpha +   (p-1)/p n beta
* ``Bcast``              ceil(log2 p) alpha + 2 (p-1)/p n beta   (scatter + allgather)

On ``nodes`` nodes of ``ranks_per_node`` ranks a collective is taken as hierarchical: the part
among the ranks of a node over the node's link (``intra``, measured by ``bench/bench_scaling.py``
on one machine) plus the part among the nodes over the network (``inter``: assumed, InfiniBand
HDR-like by default, since no cluster was measured).  :func:`fit_link` calibrates (alpha, beta)
of one collective from measured (bytes, seconds) at p ranks.

Workloads (bytes per iteration from the code's own arrays, compute per unit calibrated from a
measured run):

* :func:`map_workload`: the MAP particle split (class2d; refine3d/class3d alike with volumes):
  compute ``N K J T M`` split over the ranks (coarse search: particles x hypotheses x translations
  x coefficients), the dense per-hypothesis sums reduced by Reduce_scatter (K J M complex128 and
  float64), the class sums rotated back by Allreduce (K n (n/2+1) complex128 and float64), the
  per-particle results gathered (N x 80 B), an M-step replicated on every rank (``K n^2`` units).
* :func:`gtm_workload`: the GTM pixel split (sml): compute ``N K D`` split over ranks by pixels,
  the partial N x K float32 distances reduced by Reduce_scatter and the responsibilities
  gathered back by Allgatherv (N x K float32 each).

:func:`predict` gives seconds per iteration, efficiency against one rank and the collective that
costs most; :func:`table` prints it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

RESULT_BYTES = 80      # per particle: class, pose, origin, pmax, nsig, loglik ... (float64 each)


@dataclass(frozen=True)
class Link:
    """Hockney parameters of a collective over one kind of link."""
    alpha: float          # s per message step
    beta: float           # s per byte

    def describe(self) -> str:
        return "alpha %.1f us, %.2f GB/s" % (self.alpha * 1e6, 1e-9 / self.beta if self.beta > 0 else math.inf)


# assumed network between nodes (no cluster measured): ~HDR InfiniBand per node
NETWORK = Link(alpha=3e-6, beta=1.0 / 12e9)
STEPS = {"Allreduce": (2.0, 2.0), "Reduce_scatter": (1.0, 1.0), "Allgatherv": (1.0, 1.0), "Bcast": (1.0, 2.0)}


def collective_time(op: str, nbytes: float, p: int, link: Link) -> float:
    """Seconds of one collective ``op`` moving a full array of ``nbytes`` among ``p`` ranks."""
    if p <= 1:
        return 0.0
    a, b = STEPS.get(op, (1.0, 1.0))
    return a * math.ceil(math.log2(p)) * link.alpha + b * (p - 1) / p * nbytes * link.beta


def fit_link(op: str, nbytes, seconds, p: int) -> Link:
    """(alpha, beta) of ``op`` at ``p`` ranks by least squares on measured (bytes, seconds);
    non-negative (a negative fit falls back to the one-parameter fit)."""
    a, b = STEPS.get(op, (1.0, 1.0))
    x0 = np.full(len(nbytes), a * math.ceil(math.log2(max(p, 2))))
    x1 = b * (p - 1) / p * np.asarray(nbytes, np.float64)
    t = np.asarray(seconds, np.float64)
    w = 1.0 / np.maximum(t, 1e-9)              # relative error: small messages count as much as big ones
    A = np.stack([x0, x1], 1) * w[:, None]
    alpha, beta = np.linalg.lstsq(A, t * w, rcond=None)[0]
    if alpha < 0:
        alpha, beta = 0.0, float(np.dot(x1 * w, t * w) / np.dot(x1 * w, x1 * w))
    if beta < 0:
        alpha, beta = float(np.dot(x0 * w, t * w) / np.dot(x0 * w, x0 * w)), 0.0
    return Link(float(alpha), float(beta))


@dataclass(frozen=True)
class Workload:
    """One iteration of a decomposition: compute units split over ranks, replicated units, and
    the bytes of each collective (full arrays) with their call counts."""
    name: str
    split_units: float                  # work divided among the ranks
    replicated_units: float = 0.0       # work every rank does whole (M-step)
    collectives: dict = field(default_factory=dict)   # op -> (bytes per call, calls)
    s_per_split_unit: float = 0.0
    s_per_replicated_unit: float = 0.0
    small_calls: float = 0.0            # latency-bound collectives (object reductions, barriers) per iteration

    def calibrated(self, t_split: float, t_replicated: float = 0.0) -> "Workload":
        """This workload with its unit costs from measured seconds of the same workload."""
        return replace(self, s_per_split_unit=t_split / max(self.split_units, 1e-300),
                       s_per_replicated_unit=t_replicated / max(self.replicated_units, 1e-300)
                       if self.replicated_units else 0.0)

    def like(self, other: "Workload") -> "Workload":
        """This workload with the unit costs of ``other`` (calibrated at a small size)."""
        return replace(self, s_per_split_unit=other.s_per_split_unit,
                       s_per_replicated_unit=other.s_per_replicated_unit, small_calls=other.small_calls)


def map_workload(N: int, n: int, K: int, J: int, T: int, M: int, name="MAP particle split") -> Workload:
    """class2d-like MAP iteration: N particles, box n, K classes, J fine in-plane hypotheses per
    class, T translations, M coefficients in the current radius."""
    return Workload(name, split_units=float(N) * K * J * T * M, replicated_units=float(K) * n * n, collectives={
        "Reduce_scatter": (float(K) * J * M * 12, 2),             # complex128 data, float64 weights (24 B)
        "Allreduce": (float(K) * n * (n // 2 + 1) * 12, 2),       # the class sums rotated back, same types
        "Allgatherv": (float(N) * RESULT_BYTES, 1)})


def gtm_workload(N: int, K: int, D: int, name="GTM pixel split") -> Workload:
    """One GTM iteration: N particles, K latent points, D real coefficients (pixels) in all."""
    return Workload(name, split_units=float(N) * K * D, collectives={
        "Reduce_scatter": (float(N) * K * 4, 1),           # partial distances, float32
        "Allgatherv": (float(N) * K * 4 + N * 32.0, 2)})    # responsibilities + per-particle summaries


def coefficients_within(n: int, r: float) -> int:
    """Half-plane Fourier coefficients of an n-box in shells up to r (the E-step's M)."""
    from ..core.fourier import shell_index2

    return int((shell_index2(n) <= r).sum())


def predict(w: Workload, nodes: int, ranks_per_node: int, intra: dict, inter: Link = NETWORK,
            speedup: float = 1.0) -> dict:
    """Seconds per iteration of ``w`` on ``nodes`` x ``ranks_per_node`` ranks; ``intra`` maps an
    op to the :class:`Link` among the ranks of a node (ops missing use the first one; "small":
    the latency of the small collectives); ``speedup``: each rank computes that many times
    faster than the calibration (e.g. a GPU against one core)."""
    p = nodes * ranks_per_node
    t1 = (w.split_units * w.s_per_split_unit + w.replicated_units * w.s_per_replicated_unit) / speedup
    t_comp = (w.split_units * w.s_per_split_unit / p + w.replicated_units * w.s_per_replicated_unit) / speedup
    fallback = next(iter(intra.values())) if intra else NETWORK
    comm = {}
    for op, (nbytes, calls) in w.collectives.items():
        local = intra.get(op, fallback)
        comm[op] = calls * (collective_time(op, nbytes, ranks_per_node, local) + collective_time(op, nbytes, nodes, inter))
    if w.small_calls:
        small = intra.get("small", fallback)
        comm["small collectives"] = w.small_calls * (collective_time("small", 0, ranks_per_node, small)
                                                     + collective_time("small", 0, nodes, inter))
    t_comm = sum(comm.values())
    total = t_comp + t_comm
    worst = max(comm, key=comm.get) if comm and t_comm > 0 else "-"
    return {"nodes": nodes, "ranks": p, "t_compute": t_comp, "t_comm": t_comm, "t_iter": total,
            "efficiency": t1 / (p * total) if total > 0 else 1.0, "worst": worst, "comm": comm}


def table(w: Workload, nodes_list, ranks_per_node: int, intra: dict, inter: Link = NETWORK, speedup: float = 1.0):
    """(printable lines, rows) of :func:`predict` over ``nodes_list``; the first row where the
    efficiency falls under 50% is marked."""
    rows = [predict(w, nd, ranks_per_node, intra, inter, speedup) for nd in nodes_list]
    lines = ["%s, ranks %gx the calibrated compute rate: %d rank(s) per node; network %s" % (
        w.name, speedup, ranks_per_node, inter.describe()),
        "%7s %7s %12s %12s %12s %8s  %s" % ("nodes", "ranks", "compute s", "comm s", "s/iter", "eff", "costliest")]
    marked = False
    for r in rows:
        flag = ""
        if r["efficiency"] < 0.5 and not marked:
            flag, marked = "  <- under 50%% (%s)" % r["worst"], True
        lines.append("%7d %7d %12.4g %12.4g %12.4g %7.1f%%  %s%s" % (
            r["nodes"], r["ranks"], r["t_compute"], r["t_comm"], r["t_iter"], 100 * r["efficiency"], r["worst"], flag))
    return lines, rows


def plot(path: str, curves: dict) -> str:
    """PNG of efficiency against nodes, one curve per workload (``{name: rows}``)."""
    from ..plots import _save, plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, rows in curves.items():
        ax.semilogx([r["nodes"] for r in rows], [100 * r["efficiency"] for r in rows], "o-", label=name)
    ax.axhline(50, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("nodes")
    ax.set_ylabel("parallel efficiency (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    return _save(fig, path)
