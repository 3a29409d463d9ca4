"""The small simulated sets of ab initio's K > 1 checks (issue 12): 32 px, 3.75 A/px, 800 particles
at SNR 1 with CTF of pseudo-atomic maps seeds 1.. , optionally with a fraction of junk images
(:mod:`hpcem.simulate.junk`).  One generator for the gated tests (tests/test_abinitio_full.py), the
bench's runs (bench/abinitio_junk/gen.py) and the class ceiling (bench/bench_abinitio_oracle.py)."""
from __future__ import annotations

import numpy as np

BOX, ANGPIX, SNR, SEED = 32, 3.75, 1.0, 5


def offcentre_beyond(search_px: float, n: int = BOX, radius_frac: float = 0.3) -> tuple:
    """The off-centre junk range (box fractions) for an aligner that searches translations within
    ``search_px`` of the box centre: the particle's centre at least two thirds of the particle's
    radius beyond that range, up to 0.45 box.  Aligned at the range's edge, a particle nearer than
    that still fits the map: with the true map held fixed, abinitio's E-step at 9.2 A puts 100% of
    the particles shifted 3-7 px (range 6 px) in the map's class, 50% at 10-11 px, 6% at 12-13 px
    (bench_abinitio_oracle.py --junk_kinds offcentre --offcentre 0.1,0.5; issue 12, ninth pass).
    In a 32 px box a particle of radius 0.3 box so far off is partly outside the box."""
    lo = (search_px + 2.0 * radius_frac * n / 3.0) / n
    return (lo, max(lo, 0.45))


def small_set(n_maps: int = 1, junk: float = 0.0, n_particles: int = 800, offcentre=None, junk_kinds=None):
    """(SimulatedData, maps): ``n_maps`` maps in equal shares, a fraction ``junk`` replaced by junk of
    every kind (seed 5; class 0).  ``offcentre``: the off-centre kind's range, by default beyond
    abinitio's default translation search (``--offset_range``): a particle within it is re-centred
    by the aligner and is no junk for it (issue 12, ninth pass)."""
    from ..algorithms.sagd.config import AbInitioConfig
    from .junk import KINDS, add_junk
    from .particles import simulate_dataset
    from .volumes import pseudo_atomic_volume

    vols = [pseudo_atomic_volume(BOX, ANGPIX, seed=s).astype(np.float64) for s in range(1, n_maps + 1)]
    d = simulate_dataset(n=BOX, n_particles=n_particles, angpix=ANGPIX, snr=SNR, ctf=True, seed=SEED, volumes=vols,
                         n_classes=n_maps, model="atoms")
    if junk > 0:
        if offcentre is None:
            offcentre = offcentre_beyond(AbInitioConfig().offset_range)
        add_junk(d, junk, seed=SEED, offcentre=offcentre, kinds=junk_kinds or KINDS)
    return d, vols
