"""Particle sets made from arrays (simulations, tests): one optics group, in memory or written as a
STAR file + MRC stack."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from hpcem.io.mrc import write_mrc
from hpcem.io.star import write_star


def particles_from_arrays(cls, images: np.ndarray, angpix: float, *, star_path=None,
                          defocus_u=None, defocus_v=None, defocus_angle=None, phase_shift=None,
                          bfactor=None, voltage: float = 300.0, cs: float = 2.7,
                          amp_contrast: float = 0.1, rot=None, tilt=None, psi=None, origins=None,
                          class_numbers=None, random_subset=None, extra: dict | None = None,
                          dtype=np.float32):
    """Build a particle set from arrays (one optics group). ``origins`` is (N, 2) (x, y) in
    Angstrom. With ``star_path`` the images go to ``<stem>.mrcs`` beside the STAR file
    (names relative to the STAR folder) and the set is read back from disk; without,
    it lives in memory."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"from_arrays: images must be (N, n, n), got {images.shape}")
    n, box = images.shape[0], images.shape[1]
    optics = pd.DataFrame({
        "rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
        "rlnMicrographOriginalPixelSize": [float(angpix)], "rlnVoltage": [float(voltage)],
        "rlnSphericalAberration": [float(cs)], "rlnAmplitudeContrast": [float(amp_contrast)],
        "rlnImagePixelSize": [float(angpix)], "rlnImageSize": [int(box)],
        "rlnImageDimensionality": [2]})
    cols: dict[str, object] = {}
    stack_name = None
    if star_path is not None:
        stack_name = Path(star_path).with_suffix(".mrcs").name
        cols["rlnImageName"] = [f"{i + 1:06d}@{stack_name}" for i in range(n)]
    else:
        cols["rlnImageName"] = [f"{i + 1:06d}@<memory>" for i in range(n)]

    def put(name, v, dt=np.float64):
        if v is not None:
            a = np.broadcast_to(np.asarray(v, dtype=dt), (n,))
            cols[name] = np.array(a)

    put("rlnDefocusU", defocus_u)
    put("rlnDefocusV", defocus_v if defocus_v is not None or defocus_u is None else defocus_u)
    put("rlnDefocusAngle", defocus_angle if defocus_angle is not None or defocus_u is None else 0.0)
    put("rlnPhaseShift", phase_shift)
    put("rlnCtfBfactor", bfactor)
    put("rlnAngleRot", rot)
    put("rlnAngleTilt", tilt)
    put("rlnAnglePsi", psi)
    if origins is not None:
        o = np.asarray(origins, np.float64).reshape(n, 2)
        cols["rlnOriginXAngst"], cols["rlnOriginYAngst"] = o[:, 0].copy(), o[:, 1].copy()
    put("rlnClassNumber", class_numbers, np.int64)
    put("rlnRandomSubset", random_subset, np.int64)
    cols["rlnOpticsGroup"] = np.ones(n, np.int64)
    for k, v in (extra or {}).items():
        cols[k] = v
    table = pd.DataFrame(cols)
    if star_path is None:
        return cls(table, optics, images=images)
    star_path = Path(star_path)
    write_mrc(star_path.parent / stack_name, images, angpix, stack=True, dtype=dtype)
    write_star(star_path, {"optics": optics, "particles": table})
    return cls.read(star_path)
