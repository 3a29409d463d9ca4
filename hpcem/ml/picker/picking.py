"""``hpcem pick3d predict`` from files: every tomogram of the table is segmented by overlapping
patches and its picks clustered (:mod:`hpcem.ml.picker.predict`).  Under MPI the tomograms are
split across ranks (contiguous blocks in table order; torch runs on every rank); each rank writes
its tomograms' coordinate files (``<o>/coords/<name>.coords``: x y z class score per line, voxels)
and orthogonal-slice PNGs with the picks drawn (``<o>/<name>_picks.png``), and rank 0 writes the
RELION-5 particle table ``<o>/particles.star`` of all picks in table order.
"""
from __future__ import annotations

import os
import time

import numpy as np

from ...io.atomic import atomic_write
from ...io.tomo_star import particles_table, read_tomograms, write_particles
from ...parallel.decomp import block_range
from ...runtime.memory import MemoryPlan
from .data import load_tomogram
from .model_io import load_model
from .predict import cluster_picks, min_cluster_sizes, segment


def write_coords(path: str, picks) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path) as tmp:
        np.savetxt(tmp, np.column_stack([picks.coords, picks.classes, picks.scores]),
                   fmt=["%.2f", "%.2f", "%.2f", "%d", "%.4f"])


def pick_tomogram(seg, settings, entry, overlap: int, min_fraction: float, batch: int, device, log=None):
    """(picks, seconds spent segmenting, the normalised volume) of one tomogram."""
    import torch

    patch = int(settings["patch"])
    vol = load_tomogram(entry)
    t0 = time.time()
    with torch.inference_mode():
        probs = segment(seg, vol, patch, overlap, batch, device)
    dt = time.time() - t0
    picks = cluster_picks(probs, min_cluster_sizes(settings["diameters"], entry.angpix, min_fraction))
    if log:
        log("  %s: %d picks, segmentation %.1f s (%.3g voxels/s), clustering %.1f s" % (
            entry.name, len(picks.classes), dt, vol.size / dt, time.time() - t0 - dt))
    return picks, dt, vol


def predict_files(model_path: str, tomograms: str, out: str, comm, log, overlap: int, min_fraction: float,
                  batch: int, device: str = "cpu") -> dict:
    """Pick every tomogram of ``tomograms``; returns (on rank 0) {'star', 'n_picks', 'seconds', 'voxels'}."""
    from ... import plots

    entries = read_tomograms(tomograms)
    seg, settings = load_model(model_path, device)
    n_cls = int(settings["network"]["n_classes"])
    largest = max(int(np.prod(e.shape)) for e in entries)
    MemoryPlan({"tomogram, class probabilities, overlap counts, classes": largest * (4.0 * (n_cls + 2) + 8.0)},
               "largest tomogram %d voxels" % largest).check(comm, log)
    apix = float(settings["angpix"])
    for e in entries:
        if abs(e.angpix / apix - 1) > 0.01:
            log("warning: %s has %.3g A voxels, the model was trained on %.3g A" % (e.name, e.angpix, apix))
    lo, hi = block_range(len(entries), comm.size, comm.rank)
    mine = []
    radii = np.asarray(settings["diameters"], np.float64) / 2.0
    for e in entries[lo:hi]:                                   # a loop over this rank's tomograms
        picks, dt, vol = pick_tomogram(seg, settings, e, overlap, min_fraction, batch, device, log=print)
        write_coords(os.path.join(out, "coords", e.name + ".coords"), picks)
        plots.slices_with_picks(os.path.join(out, e.name + "_picks.png"), vol, picks.coords, picks.classes,
                                radii / e.angpix, title="%s: %d picks" % (e.name, len(picks.classes)))
        mine.append((e.name, picks, dt, int(vol.size)))
    gathered = comm.gather(mine, root=0)
    if comm.rank != 0:
        return {}
    done = {name: (p, dt, nv) for part in gathered for name, p, dt, nv in part}
    tables = [particles_table(e, done[e.name][0].coords, done[e.name][0].classes,
                              {"rlnAutopickFigureOfMerit": done[e.name][0].scores,
                               "hpcemClusterSize": done[e.name][0].sizes}) for e in entries]
    star = os.path.join(out, "particles.star")
    import pandas as pd
    write_particles(star, pd.concat(tables, ignore_index=True))
    return {"star": star, "n_picks": int(sum(len(v[0].classes) for v in done.values())),
            "seconds": float(sum(v[1] for v in done.values())), "voxels": int(sum(v[2] for v in done.values()))}
