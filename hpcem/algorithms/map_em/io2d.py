"""Files of a 2D classification run (RELION names), written by rank 0, atomically.

Per iteration ``NNN`` (``<root>`` = the output rootname, ``Class2D/job001/run``):
  <root>_itNNN_classes.mrcs     class averages (K, n, n)
  <root>_itNNN_data.star        optics + particles with the class, psi, origins and posteriors
  <root>_itNNN_model.star       model_general, model_classes, model_optics_group_N, model_class_N
  <root>_itNNN_optimiser.star   pointers to the files above and to the checkpoint (the driver's)
  <root>_itNNN_checkpoint.h5    the whole state (hpcem.runtime.checkpoint) for --continue
  <root>_itNNN_classes.png      montage of the class averages sorted by class size
"""
from __future__ import annotations

import os

import numpy as np

from ...io.mrc import write_mrc
from ...io.star import write_star
from .iofiles import group_names, model_blocks, write_data_star


def write_iteration(root, ps, state: dict, stats: dict, cfg, angpix: float, class_cols=None) -> dict:
    it = int(state["iteration"])
    refs, res = state["refs"], state["results"]
    K, n = refs.shape[0], refs.shape[1]
    classes = root.iteration(it, "classes.mrcs")
    write_mrc(classes, refs, angpix, stack=True)
    data = write_data_star(root.iteration(it, "data.star"), ps, res, ("psi",))
    cls = np.asarray(res["class"], np.int64)
    counts = np.bincount(cls[cls > 0] - 1, minlength=K)[:K]     # 0: not yet in a VDAM mini-batch
    names = ["%06d@%s" % (k + 1, os.path.basename(classes)) for k in range(K)]
    model = root.iteration(it, "model.star")
    write_star(model, model_blocks(2, n, angpix, names, state["pclass"], state["resolution"], state["r_cur"],
                                   state["sigma2"], state["tau2"], state["sigma_offset"], cfg.tau2_fudge,
                                   stats.get("loglik", np.nan), counts=counts,
                                   group_scale=state.get("group_scale"), group_names=group_names(ps),
                                   class_cols=class_cols))
    return {"model": model, "data": data}


def plot_iteration(root, state: dict) -> None:
    from ...plots import montage

    it, pclass, refs = int(state["iteration"]), np.asarray(state["pclass"]), state["refs"]
    order = np.argsort(-pclass, kind="stable")
    montage(root.iteration(it, "classes.png"), refs[order],
            labels=["%d: %.1f%%" % (k + 1, 100 * pclass[k]) for k in order])
