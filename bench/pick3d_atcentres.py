"""Which species a trained picker sees at the held-out true centres (issue 15 diagnosis).

For each model (comma-separated), segments every held-out tomogram of a ``hpcem simulate --mode
tomo`` set and prints, per species, the mean class probabilities (background, species 1..S) at
the true particle centres and the count of each argmax there: a run that has not yet learnt to
tell the sizes apart spreads the small species' centres over every species.  With a third
argument R, also each species' argmax shares in shells 1 voxel thick out to R voxels from the
centres (a network that paints every small particle "4 inside, 3 around" shows it there).

  python bench/pick3d_atcentres.py SIM MODEL.pt[,MODEL2.pt,...] [R]
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from hpcem.io.tomo_star import read_particles, read_tomograms
from hpcem.ml.picker.data import load_tomogram
from hpcem.ml.picker.model_io import load_model
from hpcem.ml.picker.predict import segment


def shell_shares(pad: np.ndarray, centre_xyz, radius: int, n_classes: int) -> np.ndarray:
    """(radius, n_classes): the share of each argmax class in shells [r, r + 1) voxels from a centre;
    ``pad`` the tomogram's argmax padded by radius + 1 voxels (edge values)."""
    c = np.asarray(centre_xyz, float)[::-1] + radius + 1                       # z, y, x in the padded grid
    lo = np.rint(c).astype(int) - radius - 1
    sub = pad[tuple(slice(a, a + 2 * radius + 3) for a in lo)]
    grid = np.indices(sub.shape) + lo[:, None, None, None]
    d = np.sqrt(((grid - c[:, None, None, None]) ** 2).sum(0))
    out = np.zeros((radius, n_classes))
    for r in range(radius):                                                     # a loop over shells
        m = (d >= r) & (d < r + 1)
        out[r] = np.bincount(sub[m], minlength=n_classes) / max(int(m.sum()), 1)
    return out


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    sim, models = args[:2]
    radius = int(args[2]) if len(args) > 2 else 0
    torch.set_num_threads(1)
    entries = {e.name: e for e in read_tomograms(sim + "/tomograms_test.star")}
    truth = read_particles(sim + "/truth.star", entries, others="skip")
    for model in models.split(","):
        seg, st = load_model(model)
        species = range(1, len(st["diameters"]) + 1)
        probs, argmax = {s: [] for s in species}, {s: [] for s in species}
        shells = {s: [] for s in species}
        for name, e in entries.items():                     # a loop over tomograms
            with torch.no_grad():
                p = segment(seg, load_tomogram(e, st["patch"]), st["patch"], 8)
            am = np.argmax(p, 0)
            pad = np.pad(am, radius + 1, mode="edge") if radius else None
            c, k = truth.coords[name], truth.classes[name]
            for s in species:
                x, y, z = np.rint(c[k == s]).astype(int).T
                probs[s].append(p[:, z, y, x].T)
                argmax[s].append(am[z, y, x])
                shells[s] += [shell_shares(pad, xyz, radius, len(species) + 1) for xyz in c[k == s]] if radius else []
        print(model)
        for s in species:
            v, a = np.concatenate(probs[s]), np.concatenate(argmax[s])
            print("  species %d (%d): mean probabilities (background, 1..S) %s  argmax counts %s" % (
                s, len(v), np.round(v.mean(0), 2), np.bincount(a, minlength=len(st["diameters"]) + 1)))
            for r, row in enumerate(np.mean(shells[s], 0) if radius else []):
                print("    shell %d-%d voxels: argmax shares %s" % (r, r + 1, np.round(row, 2)))


if __name__ == "__main__":
    main()
