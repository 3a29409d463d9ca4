"""Write a simulated data set with known truth: a RELION 3.1 particle STAR file with an
optics group + an MRC stack, the true map(s), the true poses and classes (truth.star).

3D mode: particles of one or more conformations (--K) from uniformly random poses.
2D mode: particles of --views fixed projection classes from --volumes different maps,
with random in-plane rotations (a 2D classification test set)."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError
from ..runtime.params import AT_LEAST_1, NON_NEGATIVE, POSITIVE, Params as Base, param
from .common import job_record, stamp


@dataclass(frozen=True)
class Params(Base):
    o: str = param(None, "output folder")
    mode: str = param("3d", "3D poses or 2D projection classes", choices=("3d", "2d"))
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


def run(p: Params, ctx):
    import os

    from ..simulate import simulate_dataset
    from ..simulate.write import write_dataset

    if not p.o:
        raise InputError("required", field="--o")
    if ctx.comm.rank != 0:
        return 0
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
