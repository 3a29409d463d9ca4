"""class3d's automatic sampling schedule (``--auto_sampling``; issue 10, part 5).

What the staged runs on the issue's data (two conformations, SNR 0.05, 4,000 particles at 64 px;
DESIGN_NOTES, "class3d at SNR 0.05: the schedule") taught, as three stages that follow the run's own
resolution:

1. **cross** -- each half scored against the other half's maps at the starting order (RELION's
   class3d default, 2), globally.  The classes begin to separate in one of the halves' two
   interleaved chains while the resolution climbs; it then stalls.
2. **joined** -- once the resolution has stalled for ``STALL`` iterations, each half is scored
   against the other half's maps of the last two iterations averaged (``--cross_join``), which
   joins the chains (from the start it would lock into a split by alignment quality).
3. **fine** -- once the resolution stalls again, the HEALPix order goes to what the resolution
   supports (:func:`~hpcem.core.sampling.order_for_resolution`, refine3d's rule) and keeps
   following it, with global searches drawn by the importance sampler (seed 003), whose marginals
   the joined stage's dense passes recorded.  At order 2 even the true maps leave 17% of these
   particles more than 20 degrees off (classified at chance), at order 3 4.8%; local searches
   cannot bring those back (measured: 15% stayed lost), and the dense global search at order 3 costs
   ~13x the sampled one.

The state is a plain dict in the job's checkpoint, so ``--continue`` resumes the schedule.
"""
from __future__ import annotations

import numpy as np

from ...core.sampling import angular_step, order_for_resolution

STALL = 3          # iterations without a resolution gain that end a stage
STAGES = ("cross", "joined", "fine")


def new_schedule(order: int) -> dict:
    return {"stage": 0, "order": int(order), "best_res": np.inf, "n_stall": 0}


def schedule_from(st: dict, order: int) -> dict:
    """The schedule kept in a checkpoint (missing: a run without one starts afresh)."""
    out = new_schedule(order)
    out.update({k: type(out[k])(st[k]) for k in out if k in st})
    return out


def advance(sch: dict, resolution: float, radius_A: float, max_order: int) -> str | None:
    """Advance the schedule after an iteration that reached ``resolution`` (A); returns what
    changed, for the log, or None."""
    gain = np.isfinite(resolution) and resolution < sch["best_res"] * (1.0 - 1e-3)
    sch["best_res"] = float(min(sch["best_res"], resolution))
    sch["n_stall"] = 0 if gain else sch["n_stall"] + 1
    stage = sch["stage"]
    if stage < 2 and sch["n_stall"] < STALL:
        return None
    if stage == 0:
        sch.update(stage=1, n_stall=0)
        return "auto-sampling: the halves' chains joined (resolution stalled at %.2f A)" % sch["best_res"]
    order = max(sch["order"], order_for_resolution(sch["best_res"], radius_A, max_order=max_order))
    if stage == 1:
        sch.update(stage=2, n_stall=0, order=order)
        return ("auto-sampling: HEALPix order %d (%.2f deg), importance-sampled global searches (resolution %.2f A)"
                % (order, angular_step(order), sch["best_res"]))
    if order != sch["order"]:
        sch["order"] = order
        return "auto-sampling: HEALPix order %d (%.2f deg)" % (order, angular_step(order))
    return None


def joined(sch: dict) -> bool:
    return sch["stage"] >= 1


def candidates(sch: dict) -> str:
    """How the E-step draws its poses at this stage: ``grid`` (dense, nothing recorded), ``record``
    (dense, the importance sampler keeps the marginals) or ``sample`` (importance-sampled)."""
    return ("grid", "record", "sample")[sch["stage"]]
