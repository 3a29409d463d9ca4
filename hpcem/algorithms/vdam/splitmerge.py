"""A split-merge move for VDAM with K >= 3 classes (issue 11, stop 33): when two classes share their
particles (one structure split over two classes) while a third, much larger class holds more than
one structure, the smaller of the pair takes over the large class's map and moments -- eq 15's
replacement, triggered by the particles instead of by an empty class.

The pair is found by the particles, not by the maps: at 30 A two copies of one structure agree no
better than two different true maps do (aligned FSC), but a particle whose structure is split over
two classes spreads its posterior over both.  The classes' shared mass is the correlation of their
posterior columns, ``J_ij = sum_n P(i|X_n) P(j|X_n) / sqrt(sum_n P(i|X_n)^2 sum_n P(j|X_n)^2)``
(Ueda et al.'s SMEM merge criterion), summed with decay over the mini-batches
(:attr:`hpcem.estep.EStepSums.class_overlap`).  Measured on the K = 3 three-map set (seed 2, stuck
from mini-batch ~60 with truth 1 split over classes 1 and 3 and truths 2 + 3 in class 2): J_13 0.23
against J_12 0.09 and J_23 0.14 at mini-batch 60, 0.17 against 0.08 / 0.09 at 200; the true maps
give 0.03-0.06 for every pair.  See DESIGN_NOTES (issue 11, stop 33).
"""
from __future__ import annotations

import numpy as np

DECAY = 0.9          # the running shared mass forgets a mini-batch's in ~10 mini-batches
PAIR_RATIO = 1.5     # the pair's J over the median J of the other pairs
SIZE_RATIO = 1.5     # the class to split holds this many times the pair's mean posterior mass
COOLDOWN = 20        # mini-batches after a move before the next (the running J starts again)


def shared_mass(overlap) -> np.ndarray:
    """(K, K) correlation of the classes' posterior columns from ``overlap`` = sum P P^T."""
    O = np.asarray(overlap, np.float64)
    d = np.sqrt(np.maximum(np.diag(O), 1e-300))
    return O / np.outer(d, d)


def standing_out(overlap, pair_ratio: float = PAIR_RATIO):
    """The pair (i, j) of classes sharing the most particles when it stands out (J >= pair_ratio x
    the other pairs' median), else None."""
    K = len(overlap)
    J = shared_mass(overlap)
    iu = np.triu_indices(K, 1)
    vals = J[iu]
    top = int(np.argmax(vals))
    if K < 3 or vals[top] < pair_ratio * np.median(np.delete(vals, top)):
        return None
    return int(iu[0][top]), int(iu[1][top])


def propose(overlap, pclass, pair_ratio: float = PAIR_RATIO, size_ratio: float = SIZE_RATIO, fresh=()):
    """(a, b) or None: ``a`` the smaller class of the pair sharing the most particles, ``b`` the most
    populated class outside the pair, when the pair stands out (:func:`standing_out`) and b is large
    (>= size_ratio x the pair's mean mass); no class of ``fresh`` (the last move's, until its two
    copies part) takes part."""
    K = len(pclass)
    if K < 3 or not np.any(overlap):
        return None
    pair = standing_out(overlap, pair_ratio)
    if pair is None or set(pair) & set(fresh):
        return None
    i, j = pair
    p = np.asarray(pclass, np.float64)
    outside = np.array([k for k in range(K) if k not in (i, j) and k not in fresh])
    if outside.size == 0:
        return None
    b = int(outside[np.argmax(p[outside])])
    if p[b] < size_ratio * 0.5 * (p[i] + p[j]):
        return None
    return (i, b) if p[i] <= p[j] else (j, b)


class SplitMerge:
    """The running shared mass and the move's bookkeeping (saved in the checkpoint).  Moves are
    allowed in mini-batches [first, last), ``COOLDOWN`` apart, at most ``K - 1`` times, the class to
    split holding at least ``size_ratio`` x the pair's mean mass (:func:`propose`); the two
    classes of a move share their particles until their maps part, so neither takes part in
    another move before the pair no longer stands out (with K = 3: one move until then)."""

    def __init__(self, K: int, first: int, last: int, size_ratio: float = SIZE_RATIO):
        self.K, self.first, self.last, self.size_ratio = K, first, last, float(size_ratio)
        self.overlap = np.zeros((K, K))
        self.since = COOLDOWN       # mini-batches since the last move
        self.moves = 0
        self.last_J = None          # the shared mass that made the last move
        self.fresh = ()             # the last move's classes, until their copies part

    def step(self, iteration: int, batch_overlap, pclass):
        """Adds a mini-batch's ``batch_overlap``; returns the move (a, b) to make now or None."""
        B = max(float(np.trace(batch_overlap)), 1e-300)
        self.overlap = DECAY * self.overlap + np.asarray(batch_overlap, np.float64) / B
        self.since += 1
        if self.fresh and self.since >= COOLDOWN and standing_out(self.overlap) != tuple(sorted(self.fresh)):
            self.fresh = ()          # the last move's copies have parted
        if not (self.first <= iteration < self.last) or self.since < COOLDOWN or self.moves >= self.K - 1:
            return None
        move = propose(self.overlap, pclass, size_ratio=self.size_ratio, fresh=self.fresh)
        if move is not None:
            self.last_J = shared_mass(self.overlap)
            self.overlap[:] = 0.0
            self.since, self.moves, self.fresh = 0, self.moves + 1, move
        return move

    def state(self) -> dict:
        return {"sm_overlap": self.overlap, "sm_since": self.since, "sm_moves": self.moves,
                "sm_fresh": np.array(self.fresh, np.int64)}

    def restore(self, st) -> None:
        if "sm_overlap" in st:
            self.overlap = np.asarray(st["sm_overlap"], np.float64)
            self.since, self.moves = int(st["sm_since"]), int(st["sm_moves"])
            self.fresh = tuple(int(k) for k in np.asarray(st.get("sm_fresh", []), np.int64).ravel())
