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
