"""Write a :class:`SimulatedData` set to disk: particles + truth, RELION 3.1 layout."""
from __future__ import annotations

import json
import os

import numpy as np

from ..io.mrc import write_mrc
from ..io.particles import write_particle_stack
from ..io.star import write_star
from ..io.atomic import atomic_write


def write_dataset(sim, outdir: str, with_poses: bool = True) -> dict:
    """Write ``outdir/particles.star`` + ``particles.mrcs`` (true poses and origins included
    when ``with_poses``, so `hpcem reconstruct` can use them), ``truth_classNNN.mrc`` (the true
    maps), ``truth.star`` (true classes, poses, origins) and, for 2D sets,
    ``truth_projections.mrcs``.  Returns a dict of the paths written."""
    os.makedirs(outdir, exist_ok=True)
    N = len(sim.images)
    kw = {}
    if sim.ctf is not None:
        kw.update(defocus_u=sim.ctf["defocus_u"], defocus_v=sim.ctf["defocus_v"],
                  defocus_angle=sim.ctf["defocus_angle"], phase_shift=sim.ctf["phase_shift"],
                  voltage=float(sim.ctf["voltage"][0]), cs=float(sim.ctf["cs"][0]),
                  amp_contrast=float(sim.ctf["amp_contrast"][0]))
    if with_poses:
        kw.update(rot=sim.rot, tilt=sim.tilt, psi=sim.psi, origins=sim.origins_A)
    star = os.path.join(outdir, "particles.star")
    write_particle_stack(star, sim.images, sim.angpix, random_subset=sim.subsets, **kw)
    paths = {"particles": star}
    for k, vol in enumerate(sim.volumes):
        p = os.path.join(outdir, "truth_class%03d.mrc" % (k + 1))
        write_mrc(p, vol, sim.angpix)
        paths.setdefault("truth_maps", []).append(p)
    import pandas as pd
    truth = pd.DataFrame({
        "rlnImageName": ["%06d@particles.mrcs" % (i + 1) for i in range(N)],
        "rlnClassNumber": sim.classes.astype(int),
        "rlnAngleRot": sim.rot, "rlnAngleTilt": sim.tilt, "rlnAnglePsi": sim.psi,
        "rlnOriginXAngst": sim.origins_A[:, 0], "rlnOriginYAngst": sim.origins_A[:, 1],
        "rlnRandomSubset": sim.subsets.astype(int),
    })
    paths["truth"] = os.path.join(outdir, "truth.star")
    write_star(paths["truth"], {"particles": truth})
    if sim.projections is not None:
        paths["projections"] = os.path.join(outdir, "truth_projections.mrcs")
        write_mrc(paths["projections"], sim.projections, sim.angpix, stack=True)
    info = {"n_particles": N, "box": int(sim.n), "angpix": sim.angpix, "snr": sim.snr,
            "noise_sigma": sim.noise_sigma, "mode": sim.meta.get("mode"), "seed": sim.meta.get("seed"),
            "n_classes": int(sim.classes.max()),
            "views": None if sim.views is None else np.asarray(sim.views).tolist()}
    if "junk_kind" in sim.meta:     # particle index (0-based) -> junk kind (hpcem.simulate.junk)
        info["junk_kind"] = {str(i): k for i, k in sim.meta["junk_kind"].items()}
    paths["info"] = os.path.join(outdir, "truth.json")
    with atomic_write(paths["info"]) as tmp:
        with open(tmp, "w") as f:
            json.dump(info, f, indent=1)
    return paths
