"""Which species a trained picker sees at the held-out true centres (issue 15 diagnosis).

For each model (comma-separated), segments every held-out tomogram of a ``hpcem simulate --mode
tomo`` set and prints, per species, the mean class probabilities (background, species 1..S) at
the true particle centres and the count of each argmax there: a run that has not yet learnt to
tell the sizes apart spreads the small species' centres over every species.

  python bench/pick3d_atcentres.py SIM MODEL.pt[,MODEL2.pt,...]
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from hpcem.io.tomo_star import read_particles, read_tomograms
from hpcem.ml.picker.data import load_tomogram
from hpcem.ml.picker.model_io import load_model
from hpcem.ml.picker.predict import segment


def main(argv=None):
    sim, models = (sys.argv[1:] if argv is None else argv)[:2]
    torch.set_num_threads(1)
    entries = {e.name: e for e in read_tomograms(sim + "/tomograms_test.star")}
    truth = read_particles(sim + "/truth.star", entries, others="skip")
    for model in models.split(","):
        seg, st = load_model(model)
        species = range(1, len(st["diameters"]) + 1)
        probs, argmax = {s: [] for s in species}, {s: [] for s in species}
        for name, e in entries.items():                     # a loop over tomograms
            with torch.no_grad():
                p = segment(seg, load_tomogram(e, st["patch"]), st["patch"], 8)
            am = np.argmax(p, 0)
            c, k = truth.coords[name], truth.classes[name]
            for s in species:
                x, y, z = np.rint(c[k == s]).astype(int).T
                probs[s].append(p[:, z, y, x].T)
                argmax[s].append(am[z, y, x])
        print(model)
        for s in species:
            v, a = np.concatenate(probs[s]), np.concatenate(argmax[s])
            print("  species %d (%d): mean probabilities (background, 1..S) %s  argmax counts %s" % (
                s, len(v), np.round(v.mean(0), 2), np.bincount(a, minlength=len(st["diameters"]) + 1)))


if __name__ == "__main__":
    main()
