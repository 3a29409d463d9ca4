"""A finished 2D classification as the class ranker reads it: hpcem class2d's (EM or VDAM) or
RELION's ``run_itNNN_optimiser.star`` (or the job's folder: its last iteration), the model STAR it
names (classes, sizes, resolutions, accuracies, noise spectrum), the class averages and the
particles' data STAR.

hpcem's files name their siblings by base name, RELION's by paths from the project folder; both
are found.  The mask diameter is RELION's ``rlnParticleDiameter`` or, for hpcem, the run's own
setting in its checkpoint (0 there means 80% of the box).  Class averages are put in units of the
particles' noise standard deviation: RELION's particles are normalised to a background of
standard deviation 1, hpcem's are not, so for hpcem runs the noise power per shell of the model
STAR (``E|N|^2`` of the masked particles' transforms) is divided by the mask's sum of squares.
"""
from __future__ import annotations

import glob
import json
import os
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io.mrc import read_mrc
from ..io.star import read_star

MIN_PARTICLES = 10      # classes with fewer particles are not scored (RELION's ranker)


def _find(name: str, base_dirs) -> str | None:
    """A file named in a STAR file: as given (from the working directory), else in ``base_dirs``."""
    cands = [name] if os.path.isabs(name) else [name] + [os.path.join(b, name) for b in base_dirs] + \
        [os.path.join(b, os.path.basename(name)) for b in base_dirs]
    return next((c for c in cands if os.path.isfile(c)), None)


def optimiser_of(path: str) -> str:
    """The optimiser STAR of ``path``: itself, or the last ``*_itNNN_optimiser.star`` of a folder."""
    if os.path.isdir(path):
        found = glob.glob(os.path.join(path, "*_it[0-9][0-9][0-9]*_optimiser.star"))
        it = lambda p: int(re.search(r"_it(\d+)_optimiser", p).group(1))  # noqa: E731
        if not found:
            raise InputError("no run_itNNN_optimiser.star in this folder", file=path, field="--i")
        return max(found, key=it)
    if not os.path.isfile(path):
        raise InputError("file not found", file=path, field="--i")
    return path


def _general(blocks, path):
    b = blocks.get("optimiser_general")
    if b is None:
        raise InputError("no data_optimiser_general block (not an optimiser STAR file)", file=path,
                         field="data_optimiser_general")
    return b.iloc[0]


def _hpcem_run(opt_dir, gen):
    """(particle diameter in A, input particles STAR) from an hpcem run's checkpoint, if present."""
    ck = os.path.join(opt_dir, str(gen["hpcemCheckpointFile"]))
    if not os.path.isfile(ck):
        return 0.0, None
    import h5py

    with h5py.File(ck, "r") as f:
        cfg = json.loads(f.attrs["config_json"])
        job = json.loads(f.attrs["job_json"])
    return float(cfg.get("particle_diameter", 0.0)), job.get("params", {}).get("i")


def _column(table, name, path):
    if name in table.columns:
        return table[name].to_numpy(np.float64)
    raise InputError("missing column", file=path, field=name)


@dataclass
class ClassJob:
    optimiser: str
    model_path: str
    data_path: str
    images: np.ndarray          # (K, n, n) class averages as written
    names: list                 # rlnReferenceImage of each class
    stack: str                  # the class averages' stack (path found)
    angpix: float
    box: int
    diameter: float             # mask diameter (A)
    distribution: np.ndarray    # rlnClassDistribution
    counts: np.ndarray          # particles per class (from the data STAR)
    resolution: np.ndarray      # A
    acc_rot: np.ndarray         # deg
    acc_trans: np.ndarray       # A
    noise_std: float            # the particles' noise standard deviation per pixel
    particles: pd.DataFrame     # data_particles of the data STAR
    optics: pd.DataFrame | None
    input_star: str | None      # the classification's input particles (hpcem runs)

    @property
    def K(self) -> int:
        return self.images.shape[0]

    @property
    def radius_px(self) -> float:
        return min(self.diameter / 2.0 / self.angpix, self.box / 2.0)

    def live(self) -> np.ndarray:
        """Indices of the classes the ranker scores (at least :data:`MIN_PARTICLES`)."""
        return np.flatnonzero(self.counts >= MIN_PARTICLES)

    @classmethod
    def read(cls, path: str) -> "ClassJob":
        opt = optimiser_of(path)
        opt_dir = os.path.dirname(os.path.abspath(opt))
        gen = _general(read_star(opt), opt)
        is_hpcem = "hpcemCheckpointFile" in gen.index
        files = {key: _named_file(gen, col, opt, opt_dir)
                 for key, col in (("model", "rlnModelStarFile"), ("data", "rlnExperimentalDataStarFile"))}
        diameter, input_star = _hpcem_run(opt_dir, gen) if is_hpcem else (float(gen.get("rlnParticleDiameter", 0)), None)
        model = read_star(files["model"])
        mg, mc = model.get("model_general"), model.get("model_classes")
        if mg is None or mc is None:
            raise InputError("not a model STAR file (needs data_model_general and data_model_classes)",
                             file=files["model"], field="data_model_classes")
        angpix, box = float(mg["rlnPixelSize"].iloc[0]), int(mg["rlnOriginalImageSize"].iloc[0])
        names = mc["rlnReferenceImage"].astype(str).tolist()
        stack, imgs = _class_images(names, box, files["model"], opt_dir)
        data = read_star(files["data"])
        parts = data.get("particles", next(iter(data.values())))
        if "rlnClassNumber" not in parts.columns:
            raise InputError("missing column", file=files["data"], field="rlnClassNumber")
        cls_of = parts["rlnClassNumber"].to_numpy(np.int64)
        K = len(names)
        counts = np.bincount(cls_of[(cls_of >= 1) & (cls_of <= K)] - 1, minlength=K)[:K].astype(np.int64)
        diameter = diameter if diameter > 0 else 0.8 * box * angpix
        if "rlnAccuracyRotations" in mc.columns and "rlnAccuracyTranslationsAngst" in mc.columns:
            acc = mc["rlnAccuracyRotations"].to_numpy(np.float64), mc["rlnAccuracyTranslationsAngst"].to_numpy(np.float64)
        else:
            acc = _accuracies(imgs, model, parts, data.get("optics"), angpix, int(mg["rlnCurrentImageSize"].iloc[0]))
        return cls(opt, files["model"], files["data"], imgs, names, stack, angpix, box, diameter,
                   _column(mc, "rlnClassDistribution", files["model"]), counts,
                   _column(mc, "rlnEstimatedResolution", files["model"]), acc[0], acc[1],
                   _noise_std(model, box, diameter / angpix / 2.0) if is_hpcem else 1.0,
                   parts, data.get("optics"), input_star)


def _named_file(gen, col, opt, opt_dir) -> str:
    if col not in gen.index:
        raise InputError("missing", file=opt, field=col)
    found = _find(str(gen[col]), [opt_dir])
    if found is None:
        raise InputError("%s not found" % gen[col], file=opt, field=col)
    return found


def _class_images(names, box: int, model_path: str, opt_dir: str):
    """(stack path, class averages (K, box, box)) named by rlnReferenceImage ``NNNNNN@stack``."""
    stack = _find(names[0].split("@", 1)[-1], [os.path.dirname(os.path.abspath(model_path)), opt_dir])
    if stack is None:
        raise InputError("class averages %s not found" % names[0], file=model_path, field="rlnReferenceImage")
    imgs, _ = read_mrc(stack)
    imgs = np.asarray(imgs, np.float32).reshape(-1, box, box)
    idx = np.array([int(nm.split("@", 1)[0]) - 1 for nm in names])
    if idx.min() < 0 or idx.max() >= len(imgs):
        raise InputError("image index beyond the stack's %d images" % len(imgs), file=model_path,
                         field="rlnReferenceImage")
    return stack, imgs[idx]


def _sigma2(model) -> np.ndarray:
    rows = [b["rlnSigma2Noise"].to_numpy(np.float64) for k, b in model.items() if k.startswith("model_optics_group")]
    return np.mean(rows, axis=0) if rows else None


def _accuracies(refs, model, parts, optics, angpix: float, current_size: int):
    """RELION's accuracies for a model STAR written without them (hpcem before issue 14), from
    the noise spectrum and the mean CTF^2 of up to 500 of the particles (first optics group's
    voltage, Cs and amplitude contrast)."""
    from ..algorithms.map_em.class_accuracy import expected_accuracies
    from ..core.ctf import ctf_from_columns
    from ..core.filters import radial_average

    n = refs.shape[-1]
    s2 = _sigma2(model)
    ctf2 = np.ones(n // 2 + 1)
    if "rlnDefocusU" in parts.columns:
        cols = {c: parts[c].to_numpy()[:500] for c in parts.columns if c.startswith("rlnDefocus") or c == "rlnPhaseShift"}
        if optics is not None:
            cols.update({c: float(optics[c].iloc[0]) for c in ("rlnVoltage", "rlnSphericalAberration",
                                                              "rlnAmplitudeContrast") if c in optics.columns})
        try:
            c = ctf_from_columns(n, angpix, cols).astype(np.float64)
            ctf2 = radial_average((c * c).mean(axis=0), dims=2)[:n // 2 + 1]
        except KeyError:
            pass
    if s2 is None:
        return np.full(len(refs), 999.0), np.full(len(refs), 999.0)
    return expected_accuracies(refs, s2, ctf2, current_size // 2, angpix)


def _noise_std(model, box: int, radius_px: float) -> float:
    """Per-pixel noise standard deviation of hpcem's (masked) particles from the model STAR's
    sigma2 (mean over optics groups and over every coefficient up to Nyquist)."""
    from ..core.fourier import shell_index2
    from ..core.masks import soft_circular_mask

    s2 = _sigma2(model)
    if s2 is None:
        return 1.0
    shell = shell_index2(box)
    use = (shell >= 1) & (shell < s2.size)
    mean_power = s2[shell[use]].mean()
    msq = float((soft_circular_mask(box, radius_px) ** 2).sum())
    return float(np.sqrt(mean_power / max(msq, 1.0)))
