"""Agreement measures against known truth, shared by the tests and the benchmarks."""
from __future__ import annotations

import numpy as np


def adjusted_rand_index(a, b) -> float:
    """Adjusted Rand index of two labelings (1: identical partitions, ~0: chance)."""
    _, a = np.unique(np.asarray(a), return_inverse=True)
    _, b = np.unique(np.asarray(b), return_inverse=True)
    C = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(C, (a, b), 1.0)

    def pairs(x):
        return float((x * (x - 1) / 2).sum())

    s, sa, sb, tot = pairs(C), pairs(C.sum(1)), pairs(C.sum(0)), pairs(np.array([C.sum()]))
    exp = sa * sb / tot
    return (s - exp) / (0.5 * (sa + sb) - exp)


def purity(assign, truth) -> float:
    """Mean over non-empty classes of the majority true label's share of the class."""
    assign, truth = np.asarray(assign), np.asarray(truth)
    _, truth = np.unique(truth, return_inverse=True)
    return float(np.mean([np.bincount(truth[assign == k]).max() / np.sum(assign == k)
                          for k in np.unique(assign)]))


def matched_picks(picks, truth, tolerance: float) -> int:
    """Largest number of one-to-one (pick, true particle) pairs closer than ``tolerance``
    (maximum bipartite matching on the pairs within reach); coordinates (N, 3)."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_bipartite_matching
    from scipy.spatial import cKDTree

    P, T = np.asarray(picks, np.float64).reshape(-1, 3), np.asarray(truth, np.float64).reshape(-1, 3)
    if len(P) == 0 or len(T) == 0:
        return 0
    pairs = cKDTree(P).query_ball_tree(cKDTree(T), r=float(tolerance))
    rows = np.repeat(np.arange(len(P)), [len(p) for p in pairs])
    cols = np.fromiter((j for p in pairs for j in p), np.int64, count=len(rows))
    if len(rows) == 0:
        return 0
    graph = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(P), len(T)))
    return int(np.sum(maximum_bipartite_matching(graph, perm_type="column") >= 0))


def pick_scores(picks: dict, truth: dict, tolerances: dict) -> dict:
    """Precision, recall and F1 per species of picks against the truth, as the seed scores picking
    (a pick is a true positive when it lies within its species' tolerance of a true particle of
    the same species, one pick per particle).  ``picks`` and ``truth``: tomogram name ->
    (coords (N, 3), classes (N,)); ``tolerances``: species -> distance.  Tomograms absent from the
    picks count as picked empty.  Returns species -> {gt, pred, tp, precision, recall, f1}."""
    out = {}
    for s in sorted(tolerances):
        gt = pred = tp = 0
        for name in sorted(set(truth) | set(picks)):
            tc, tk = truth.get(name, (np.zeros((0, 3)), np.zeros(0)))
            pc, pk = picks.get(name, (np.zeros((0, 3)), np.zeros(0)))
            t_s, p_s = np.asarray(tc)[np.asarray(tk) == s], np.asarray(pc)[np.asarray(pk) == s]
            gt, pred = gt + len(t_s), pred + len(p_s)
            tp += matched_picks(p_s, t_s, tolerances[s])
        precision = tp / pred if pred else 0.0
        recall = tp / gt if gt else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        out[s] = {"gt": gt, "pred": pred, "tp": tp, "precision": precision, "recall": recall, "f1": f1}
    return out


def roc_auc(scores, positive) -> float:
    """Area under the ROC curve of ``scores`` for the boolean labels ``positive``: the chance
    that a positive scores above a negative (ties count half; Mann-Whitney)."""
    from scipy.stats import rankdata

    s, y = np.asarray(scores, np.float64), np.asarray(positive, bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = rankdata(s)
    return float((r[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))
