"""Write a simulated tomogram set (:mod:`hpcem.simulate.tomo`) in RELION-5's layout.

``<o>/tomograms/TS_NN.mrc`` (the tomograms), ``<o>/labels/TS_NN_shape.mrc`` and
``TS_NN_sphere.mrc`` (int8 label maps: shape-based from the truth; sphere-based from the kept
annotations), ``species_NNN.mrc`` (each species' map), ``tomograms.star`` (all tomograms) and
``tomograms_test.star`` (the held-out ones), ``truth.star`` (every particle: coordinates,
species, orientation, ``hpcemAnnotated`` 0/1), ``labels.star`` (the noisy annotations of the
training tomograms), ``clean.star`` (the complete truth of the meta tomograms), ``truth.json``.
Tomograms 1..n_train are for training, the next n_meta the clean meta set, the last n_test held out.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd

from ..core.euler import matrix_to_euler
from ..io.atomic import atomic_write
from ..io.mrc import write_mrc
from ..io.tomo_star import TomoEntry, particles_table, write_particles, write_tomograms
from .tomo import TomoSettings, simulate_tomogram, species_atoms
from .volumes import render_atoms


def _species_maps(st: TomoSettings, species, outdir) -> list:
    paths = []
    for i, (d, atoms) in enumerate(zip(st.diameters, species)):    # a loop over species
        n = int(2 * np.ceil(0.5 * d / st.angpix) + 8)
        p = os.path.join(outdir, "species_%03d.mrc" % (i + 1))
        write_mrc(p, render_atoms(n, st.angpix, atoms, st.bfactor), st.angpix)
        paths.append(p)
    return paths


def _split(n_tomos: int, n_meta: int, n_test: int) -> list:
    n_train = n_tomos - n_meta - n_test
    return ["train"] * n_train + ["meta"] * n_meta + ["test"] * n_test


def write_tomo_dataset(st: TomoSettings, outdir: str, n_tomos: int, n_meta: int = 1, n_test: int = 2,
                       log=print) -> dict:
    """Simulate and write ``n_tomos`` tomograms (see the module docstring); returns the paths."""
    for sub in ("tomograms", "labels"):
        os.makedirs(os.path.join(outdir, sub), exist_ok=True)
    species = [species_atoms(d, st.seed * 100 + i) for i, d in enumerate(st.diameters)]
    roles = _split(n_tomos, n_meta, n_test)
    entries, truth, info = [], [], []
    for t in range(n_tomos):                                       # a loop over tomograms
        sim = simulate_tomogram(st, t, species)
        path = os.path.join(outdir, "tomograms", sim.name + ".mrc")
        write_mrc(path, sim.tomogram, st.angpix)
        write_mrc(os.path.join(outdir, "labels", sim.name + "_shape.mrc"), sim.shape_labels, st.angpix, dtype=np.int8)
        write_mrc(os.path.join(outdir, "labels", sim.name + "_sphere.mrc"), sim.sphere_labels, st.angpix,
                  dtype=np.int8)
        e = TomoEntry(sim.name, os.path.relpath(path, outdir), st.angpix, tuple(st.shape))
        entries.append(e)
        rot, tilt, psi = matrix_to_euler(sim.rotations)
        truth.append(particles_table(e, sim.coords, sim.classes, {
            "rlnAngleRot": rot, "rlnAngleTilt": tilt, "rlnAnglePsi": psi,
            "hpcemAnnotated": sim.kept.astype(int)}))
        info.append({"name": sim.name, "role": roles[t], "defocus": sim.defocus, "noise_sigma": sim.noise_sigma,
                     "counts": np.bincount(sim.classes, minlength=len(st.diameters) + 1)[1:].tolist()})
        log("  %s (%s): %d particles, defocus %.0f A, noise sigma %.4g" % (
            sim.name, roles[t], len(sim.coords), sim.defocus, sim.noise_sigma))
    paths = _write_tables(outdir, entries, truth, roles, st)
    paths["species"] = _species_maps(st, species, outdir)
    paths["info"] = os.path.join(outdir, "truth.json")
    meta = {"settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in st.__dict__.items()},
            "tomograms": info, "diameters_A": list(st.diameters)}
    with atomic_write(paths["info"]) as tmp:
        with open(tmp, "w") as f:
            json.dump(meta, f, indent=1)
    return paths


def _write_tables(outdir, entries, truth, roles, st) -> dict:
    kw = dict(voltage=st.voltage, cs=st.cs, amp_contrast=st.amp_contrast)
    paths = {k: os.path.join(outdir, k + ".star") for k in ("tomograms", "tomograms_test", "truth", "labels", "clean")}
    write_tomograms(paths["tomograms"], entries, **kw)
    test = [e for e, r in zip(entries, roles) if r == "test"]
    if test:
        write_tomograms(paths["tomograms_test"], test, **kw)
    else:
        del paths["tomograms_test"]
    all_truth = pd.concat(truth, ignore_index=True)
    write_particles(paths["truth"], all_truth)
    train = [tab[tab["hpcemAnnotated"] == 1] for tab, r in zip(truth, roles) if r == "train"]
    meta = [tab for tab, r in zip(truth, roles) if r == "meta"]
    for key, tabs in (("labels", train), ("clean", meta)):
        if tabs:
            write_particles(paths[key], pd.concat(tabs, ignore_index=True).drop(columns=["hpcemAnnotated"]))
        else:
            del paths[key]
    return paths
