"""relion_refine's --low_resol_join_halves: below that resolution the two gold-standard halves'
back-projected sums are replaced by their average before the halves are reconstructed, so that
both half maps share one low-resolution solution (same hand, same overall orientation) while the
FSC above it stays independent.  The sums are exchanged only on the voxels within the join
shell (a few hundred kB at 40 A)."""
from __future__ import annotations

import numpy as np


def join_low_resolution(models: dict, half, world, sub, shell: float) -> None:
    """Average both halves' accumulators (data and weight) on the padded voxels of n-box shells
    <= ``shell``; ``models`` {half: Model3D} is both halves (one rank group) or this group's half
    (``half``, exchanged over ``world``, rank 0 of each group ``sub`` contributing)."""
    if shell <= 0:
        return
    bp0 = next(iter(models.values())).bps[0]
    sel = np.flatnonzero(bp0.shell_index().ravel() <= shell)
    if half is None:
        parts = {h: (m.bps[0].data.ravel()[sel], m.bps[0].weight.ravel()[sel]) for h, m in models.items()}
    else:
        m = models[half]
        mine = (m.bps[0].data.ravel()[sel], m.bps[0].weight.ravel()[sel]) if sub.rank == 0 else None
        parts = {h: v for h, v in world.allgather((half, mine)) if v is not None}
    data = 0.5 * (parts[1][0] + parts[2][0])
    weight = 0.5 * (parts[1][1] + parts[2][1])
    for m in models.values():
        m.bps[0].data.reshape(-1)[sel] = data
        m.bps[0].weight.reshape(-1)[sel] = weight
