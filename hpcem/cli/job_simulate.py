"""Write a simulated data set with known truth: a RELION 3.1 particle STAR file with an
optics group + an MRC stack, the true map(s), the true poses and classes (truth.star).

3D mode: particles of one or more conformations (--K) from uniformly random poses.
2D mode: particles of --views fixed projection classes from --volumes different maps,
with random in-plane rotations (a 2D classification test set).
Tomo mode: --n_tomos tomograms (--size x,y,z voxels) of --species pseudo-atomic species of
--diameters A in --abundance ratios, tilt series (+-60 deg), CTF, noise and weighted
back-projection; truth, shape and sphere label maps, RELION-5 tomograms.star and particle tables
(hpcem.simulate.tomo_write)."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError
from ..runtime.params import AT_LEAST_1, NON_NEGATIVE, POSITIVE, Params as Base, param
from .common import job_record, stamp


@dataclass(frozen=True)
class Params(Base):
    o: str = param(None, "output folder")
    mode: str = param("3d", "3D poses, 2D projection classes or cryo-ET tomograms", choices=("3d", "2d", "tomo"))
    n: int = param(2000, "number of particles", check=AT_LEAST_1)
    box: int = param(64, "box size in pixels", check=(lambda v: v >= 8, ">= 8"))
    angpix: float = param(3.0, "pixel size in A", check=POSITIVE)
    snr: float = param(0.1, "signal-to-noise ratio (0 or inf: no noise)", check=NON_NEGATIVE)
    K: int = param(1, "3D mode: number of conformations", check=AT_LEAST_1)
    views: int = param(10, "2D mode: number of projection classes", check=AT_LEAST_1)
    volumes: int = param(3, "2D mode: number of different volumes the views come from", check=AT_LEAST_1)
    no_ctf: bool = param(False, "no CTF", action="store_true")
    defocus: tuple[float, float] = param((5000.0, 25000.0), "defocus range in A", nargs=2, type=float,
                                         metavar=("MIN", "MAX"))
    astig: float = param(1000.0, "maximum astigmatism (dU - dV) in A", check=NON_NEGATIVE)
    voltage: float = param(300.0, "kV", check=POSITIVE)
    cs: float = param(2.7, "spherical aberration in mm", check=NON_NEGATIVE)
    amp_contrast: float = param(0.1, "amplitude contrast", check=(lambda v: 0 <= v < 1, "in [0, 1)"))
    max_shift: float = param(0.0, "maximum particle shift in A (0: 2 pixels)", check=NON_NEGATIVE)
    model: str = param("blobs", "maps of smooth Gaussian blobs, or pseudo-atomic maps with a protein-like spectrum",
                       choices=("blobs", "atoms"))
    bfactor: float = param(100.0, "--model atoms: B-factor of the pseudo-atoms (A^2)", check=NON_NEGATIVE)
    blobs: int = param(60, "--model blobs: Gaussian blobs per volume", check=AT_LEAST_1)
    junk: float = param(0.0, "share of the particles replaced by junk (empty picks, ice, carbon edges, contaminants, "
                        "aggregates, off-centre and cut particles; true class 0)",
                        check=(lambda v: 0 <= v < 1, "in [0, 1)"))
    seed: int = param(0, "random seed")
    n_tomos: int = param(8, "tomo mode: number of tomograms", check=AT_LEAST_1, group="tomo")
    size: str = param("256,256,128", "tomo mode: tomogram size x,y,z in voxels", group="tomo")
    species: int = param(6, "tomo mode: number of species (diameters 250 to 25 A unless --diameters)",
                         check=AT_LEAST_1, group="tomo")
    diameters: str = param("", "tomo mode: species diameters in A, comma-separated", group="tomo")
    abundance: str = param("", "tomo mode: relative abundance per species (default 30 down to 1)", group="tomo")
    n_particles: int = param(150, "tomo mode: particles per tomogram over all species", check=AT_LEAST_1,
                             group="tomo")
    missed: float = param(0.3, "tomo mode: fraction of each species' particles left out of labels.star",
                          check=(lambda v: 0 <= v < 1, "in [0, 1)"), group="tomo")
    tilt_range: float = param(60.0, "tomo mode: tilt range +- degrees", check=(lambda v: 0 < v <= 90, "in (0, 90]"),
                              group="tomo")
    tilt_step: float = param(3.0, "tomo mode: tilt step in degrees", check=POSITIVE, group="tomo")
    n_meta: int = param(1, "tomo mode: tomograms of the clean meta set (clean.star)", check=NON_NEGATIVE, group="tomo")
    n_test: int = param(2, "tomo mode: held-out tomograms (tomograms_test.star)", check=NON_NEGATIVE, group="tomo")


def run(p: Params, ctx):
    import os

    from ..simulate import simulate_dataset
    from ..simulate.write import write_dataset

    if not p.o:
        raise InputError("required", field="--o")
    if ctx.comm.rank != 0:
        return 0
    if p.mode == "tomo":
        return _run_tomo(p, ctx)
    snr = p.snr if p.snr > 0 else float("inf")
    sim = simulate_dataset(n=p.box, n_particles=p.n, angpix=p.angpix, snr=snr, mode=p.mode, n_classes=p.K,
                           n_views=p.views, n_volumes=p.volumes, ctf=not p.no_ctf, defocus=tuple(p.defocus),
                           astig=p.astig, voltage=p.voltage, cs=p.cs, amp_contrast=p.amp_contrast,
                           max_shift_A=p.max_shift or None, n_blobs=p.blobs, seed=p.seed, model=p.model,
                           bfactor=p.bfactor)
    if p.junk > 0:
        from ..simulate.junk import add_junk

        add_junk(sim, p.junk, p.seed)
    paths = write_dataset(sim, p.o)
    stamp(os.path.join(p.o, "job.json"), job_record(ctx.name, p, ctx.argv))
    ctx.log("hpcem simulate: %d particles (%s mode), box %d, %.2f A/px, SNR %g, noise sigma %.4g" % (
        p.n, p.mode, p.box, p.angpix, p.snr, sim.noise_sigma))
    for k, v in paths.items():
        ctx.log("  %-12s %s" % (k, v if isinstance(v, str) else ", ".join(v)))
    return 0


def _floats(text: str, flag: str, n: int | None = None) -> list:
    try:
        v = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError("%r is not a comma-separated list of numbers" % text, field=flag) from None
    if n is not None and len(v) != n:
        raise InputError("needs %d values, got %d" % (n, len(v)), field=flag)
    if any(not x > 0 for x in v):
        raise InputError("values must be > 0", field=flag)
    return v


def tomo_settings(p: Params, given=frozenset()):
    """The simulator's settings from the flags (tomo defaults: 10 A voxels, defocus 3-5 um, B 1000)."""
    import numpy as np

    from ..simulate.tomo import TomoSettings

    x, y, z = (int(v) for v in _floats(p.size, "--size", 3))
    diam = _floats(p.diameters, "--diameters") if p.diameters else list(np.geomspace(250.0, 25.0, p.species))
    S = len(diam)
    abund = _floats(p.abundance, "--abundance", S) if p.abundance else list(np.geomspace(30.0, 1.0, S))
    if p.n_meta + p.n_test >= p.n_tomos:
        raise InputError("--n_meta + --n_test must leave training tomograms (--n_tomos %d)" % p.n_tomos,
                         field="--n_tomos")
    return TomoSettings(shape=(z, y, x), angpix=p.angpix if "angpix" in given else 10.0,
                        diameters=tuple(diam), abundance=tuple(abund), n_particles=p.n_particles,
                        tilt_range=p.tilt_range, tilt_step=p.tilt_step,
                        snr=p.snr if p.snr > 0 else float("inf"),
                        defocus=tuple(p.defocus) if "defocus" in given else (30000.0, 50000.0),
                        voltage=p.voltage, cs=p.cs, amp_contrast=p.amp_contrast,
                        bfactor=p.bfactor if "bfactor" in given else 1000.0, missed=p.missed,
                        ctf=not p.no_ctf, seed=p.seed)


def _run_tomo(p: Params, ctx):
    import os

    from ..simulate.tomo_write import write_tomo_dataset

    st = tomo_settings(p, ctx.given)
    ctx.log("hpcem simulate --mode tomo: %d tomograms %s voxels at %.2f A, species %s A, %s particles each" % (
        p.n_tomos, "x".join(str(v) for v in st.shape[::-1]), st.angpix,
        ", ".join("%.0f" % d for d in st.diameters), "/".join(str(c) for c in st.counts())))
    paths = write_tomo_dataset(st, p.o, p.n_tomos, p.n_meta, p.n_test, log=ctx.log)
    stamp(os.path.join(p.o, "job.json"), job_record(ctx.name, p, ctx.argv))
    for k, v in paths.items():
        ctx.log("  %-15s %s" % (k, v if isinstance(v, str) else ", ".join(v)))
    return 0
