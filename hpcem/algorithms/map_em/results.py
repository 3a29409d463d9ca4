"""Per-particle results of the MAP-EM jobs (the columns of run_itNNN_data.star) and their changes
between iterations."""
from __future__ import annotations

import numpy as np


def new_results(nb: int, pose_keys, first_class: int = 0) -> dict:
    """Rank-local results: class (1-based; ``first_class`` before any E-step), the pose columns,
    origins ox/oy (A), pmax, nsig, loglik."""
    r = {"class": np.full(nb, first_class, np.int64)}
    for k in pose_keys:
        r[k] = np.zeros(nb)
    r.update(ox=np.zeros(nb), oy=np.zeros(nb), pmax=np.zeros(nb), nsig=np.zeros(nb, np.int64),
             loglik=np.zeros(nb))
    return r


def gather_results(comm, res: dict) -> dict:
    """All ranks' results concatenated in rank order (contiguous blocks), on every rank."""
    parts = comm.allgather(res)
    return {k: np.concatenate([p[k] for p in parts]) for k in res}


def change_sums(prev: dict, new: dict, space) -> np.ndarray:
    """[class changes, orientation change (deg), offset change (A), particles] of one block."""
    da = space.pose_change(prev, new)
    do = np.hypot(new["ox"] - prev["ox"], new["oy"] - prev["oy"])
    return np.array([np.sum(new["class"] != prev["class"]), da.sum(), do.sum(), da.size,
                     (do ** 2).sum()], np.float64)


def rows(res: dict, sel=None) -> dict:
    """Copies of the rows ``sel`` (index array; None: all) of every per-particle result column."""
    return {k: v.copy() if sel is None else v[np.asarray(sel)] for k, v in res.items()}


def pose_change_stats(comm, prev: dict, new: dict, space, first: bool, sel=None) -> dict:
    """Mean changes over all ranks' particles (NaN on the first iteration), total log-likelihood
    and mean number of significant hypotheses.  ``sel`` (rank-local indices): the changes over
    those particles only, ``prev`` holding just their rows (:func:`rows`; VDAM's mini-batch: O(batch),
    not O(N), per mini-batch); the log-likelihood and the mean number of hypotheses stay over all."""
    cur = new if sel is None else rows(new, sel)
    s = np.concatenate([change_sums(prev, cur, space),
                        [new["loglik"].sum(), new["nsig"].sum(), new["nsig"].size]])
    comm.allreduce_(s)
    N = max(s[3], 1.0)
    nan = float("nan")
    return {"changes_classes": nan if first else s[0] / N, "changes_orient": nan if first else s[1] / N,
            "changes_offsets": nan if first else s[2] / N, "loglik": s[5], "mean_nsig": s[6] / max(s[7], 1.0)}
