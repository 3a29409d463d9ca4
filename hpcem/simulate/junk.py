"""Junk particles: what a picker also boxes out of real micrographs, with known kind, for training
and testing the 2D class ranker (:mod:`hpcem.ml`).

Every kind is drawn as projected density on a canvas twice the box (origin at its centre), passed
through the particle's own CTF on that canvas and cut to the box, so that objects reaching past
the box edge (carbon, ice, cut particles) delocalise into it as in a micrograph.  Amplitudes are
given relative to ``proj_std``, the standard deviation of a centred particle projection inside the
particle disc (no CTF), so that a junk image is as strong as the particles of its data set:

* ``noise``: nothing (an empty pick): white noise only, once the data set's noise is added;
* ``ice``: an ice-thickness gradient (a ramp, 2-8 proj_std across the disc) plus thickness
  fluctuations (a random field low-passed to a third of the box);
* ``carbon``: the edge of a carbon film (a soft step 1.5-4 proj_std high with an amorphous texture
  of 0.5-1.5 proj_std on the film) crossing the box within 0.4 box of its centre.  The step's
  height is fixed, not scaled to the disc's spread: an edge outside the disc leaves the disc
  nearly flat, and scaling that to a spread once made 1 carbon image in 7 up to 10^5 times
  brighter than the particles, which flattened every noise estimate of the set;
* ``contaminant``: a dense sphere (crystalline ice, ethane), radius 0.12-0.3 box, 2-5 proj_std;
* ``aggregate``: 4-8 particles at random poses clumped (overlapping) within 0.15 box of the centre;
* ``offcentre``: a particle 0.2-0.35 box off the centre (partly outside the mask; ``offcentre=``
  sets the range, see :data:`OFFCENTRE`);
* ``cut``: a particle 0.4-0.5 box off the centre (cut by the box edge, except near its diagonals).

Whether a misplaced particle is junk depends on the aligner: one whose centre lies within the
translation search range is re-centred and is a particle; one just beyond it is found at the range's
edge, a pixel or two off, and still fits the map at low resolution.  The default range (0.2-0.35 box)
is what the class ranker's shipped weights were trained on (:mod:`hpcem.ml.datagen`); a data set for
a 3D aligner passes a range beyond its search range (:func:`hpcem.simulate.sets.offcentre_beyond`).
"""
from __future__ import annotations

import numpy as np

from ..core.ctf import ctf2d
from ..core.euler import random_rotations
from ..core.filters import lowpass
from ..core.fourier import ft2, ift2, shift_phases
from ..recon.projector import Projector

KINDS = ("noise", "ice", "carbon", "contaminant", "aggregate", "offcentre", "cut")
OFFCENTRE = (0.2, 0.35)     # box fractions: the ranker's training data (hpcem.ml.datagen)
CUT = (0.4, 0.5)


def _grid(m):
    c = np.arange(m) - m // 2
    return np.meshgrid(c, c, indexing="ij")        # y, x


def _disc_std(img, n, radius):
    y, x = _grid(img.shape[-1])
    return img[..., y ** 2 + x ** 2 <= radius ** 2].std(axis=-1)


def _rescale(canvas, n, amp):
    """Each canvas scaled to a standard deviation ``amp`` inside the particle disc."""
    sd = _disc_std(canvas, n, 0.35 * n)
    return canvas * (amp / np.maximum(sd, 1e-30))[:, None, None]


def _taper(canvas, n):
    """Canvases (B, 2n, 2n) less their mean, faded to zero between 0.6 n and n from the centre
    (a cosine edge), so that the periodic transform does not see a step at the canvas edge."""
    c = np.abs(np.arange(2 * n) - n) / n
    w = np.where(c <= 0.6, 1.0, np.cos(0.5 * np.pi * np.clip((c - 0.6) / 0.4, 0.0, 1.0)) ** 2)
    return (canvas - canvas.mean(axis=(1, 2), keepdims=True)) * w[:, None] * w[None, :]


def _ice(B, n, angpix, rng, ctx):
    y, x = _grid(2 * n)
    th = rng.uniform(0, 2 * np.pi, B)
    ramp = (np.cos(th)[:, None, None] * x + np.sin(th)[:, None, None] * y) / n
    field = lowpass(rng.standard_normal((B, 2 * n, 2 * n)), n * angpix / 3.0, angpix, dims=2)
    return _taper(_rescale(ramp, n, ctx["proj_std"] * rng.uniform(2, 8, B))
                  + _rescale(field, n, ctx["proj_std"] * rng.uniform(0.3, 1.5, B)), n)


def _carbon(B, n, angpix, rng, ctx):
    y, x = _grid(2 * n)
    th = rng.uniform(0, 2 * np.pi, B)[:, None, None]
    d = rng.uniform(-0.4, 0.4, B)[:, None, None] * n
    u = np.cos(th) * x + np.sin(th) * y - d
    step = 1.0 / (1.0 + np.exp(-u / 1.5))
    texture = lowpass(rng.standard_normal((B, 2 * n, 2 * n)), 8.0, angpix, dims=2)
    height = ctx["proj_std"] * rng.uniform(1.5, 4, B)[:, None, None]
    grain = ctx["proj_std"] * rng.uniform(0.5, 1.5, B)[:, None, None]
    texture = texture / np.maximum(texture.std(axis=(1, 2), keepdims=True), 1e-30)
    return _taper((height + grain * texture) * step, n)


def _contaminant(B, n, angpix, rng, ctx):
    y, x = _grid(2 * n)
    R = rng.uniform(0.12, 0.3, B)[:, None, None] * n
    c = rng.uniform(-0.3, 0.3, (B, 2))[:, :, None, None] * n
    r2 = (x - c[:, 0]) ** 2 + (y - c[:, 1]) ** 2
    sphere = np.sqrt(np.maximum(R ** 2 - r2, 0.0))
    return _rescale(sphere, n, ctx["proj_std"] * rng.uniform(2, 5, B))


def _particles(ctx, count, rng):
    """``count`` projections (count, n, n) of the data set's map at random poses (no CTF)."""
    F = ctx["projector"].project(random_rotations(count, rng).astype(np.float32))
    return ift2(F, ctx["n"]).astype(np.float64)


def _on_canvas(imgs, shifts):
    """Images (M, n, n) on canvases (M, 2n, 2n) moved by ``shifts`` (M, 2) = (x, y) pixels (a
    particle stays clear of the canvas edge, so the periodic shift does not wrap it)."""
    M, n = imgs.shape[0], imgs.shape[-1]
    canvas = np.zeros((M, 2 * n, 2 * n))
    o = n - n // 2
    canvas[:, o:o + n, o:o + n] = imgs
    return ift2(ft2(canvas) * shift_phases(2 * n, shifts, dtype=np.complex128), 2 * n)


def _shifted(kind):
    """Particles moved ``ctx[kind]`` = (lo, hi) box from the centre in a random direction; the
    distances (pixels) go to ``ctx['shift']``."""
    def make(B, n, angpix, rng, ctx):
        lo, hi = ctx[kind]
        r = rng.uniform(lo, hi, B) * n
        phi = rng.uniform(0, 2 * np.pi, B)
        ctx["shift"] = r
        return _on_canvas(_particles(ctx, B, rng), np.stack([r * np.cos(phi), r * np.sin(phi)], 1))
    return make


def _aggregate(B, n, angpix, rng, ctx):
    counts = rng.integers(4, 9, B)
    r = np.sqrt(rng.uniform(0, 1, int(counts.sum()))) * 0.15 * n
    phi = rng.uniform(0, 2 * np.pi, r.size)
    moved = _on_canvas(_particles(ctx, r.size, rng), np.stack([r * np.cos(phi), r * np.sin(phi)], 1))
    canvas = np.zeros((B, 2 * n, 2 * n))
    np.add.at(canvas, np.repeat(np.arange(B), counts), moved)
    return canvas


MAKERS = {"noise": lambda B, n, angpix, rng, ctx: np.zeros((B, 2 * n, 2 * n)),
          "ice": _ice, "carbon": _carbon, "contaminant": _contaminant, "aggregate": _aggregate,
          "offcentre": _shifted("offcentre"), "cut": _shifted("cut")}


def junk_images(kinds, volume, angpix: float, ctf: dict | None, rng, offcentre=OFFCENTRE,
                shifts: np.ndarray | None = None) -> np.ndarray:
    """Clean junk images (N, n, n) float32 of the given ``kinds`` (strings of :data:`KINDS`), with
    the particles' CTF parameters ``ctf`` (arrays of length N, as simulate._ctf_draw) applied;
    ``volume`` is the data set's map (for aggregates and misplaced particles, and the scale);
    ``offcentre`` the (lo, hi) box fractions of that kind's shift.  ``shifts`` (length N), if given,
    receives each misplaced particle's distance from the centre in pixels (NaN for other kinds)."""
    kinds = np.asarray(kinds)
    bad = sorted(set(kinds.tolist()) - set(KINDS))
    if bad:
        raise ValueError("unknown junk kind(s) %s (known: %s)" % (", ".join(bad), ", ".join(KINDS)))
    n, N = volume.shape[0], len(kinds)
    proj = Projector.from_volume(volume)
    ctx = {"n": n, "projector": proj, "offcentre": tuple(offcentre), "cut": CUT}
    ctx["proj_std"] = float(_disc_std(_particles(ctx, 16, np.random.default_rng(0)), n, 0.35 * n).mean())
    out = np.zeros((N, n, n), np.float32)
    o = n - n // 2
    for kind in KINDS:
        idx = np.flatnonzero(kinds == kind)
        for s in range(0, idx.size, 128):
            b = idx[s:s + 128]
            canvas = MAKERS[kind](b.size, n, angpix, rng, ctx)
            if shifts is not None:
                shifts[b] = ctx.pop("shift", np.nan)
            F = ft2(canvas)
            if ctf is not None:
                F = F * ctf2d(2 * n, angpix, *(np.asarray(ctf[k])[b] for k in (
                    "defocus_u", "defocus_v", "defocus_angle", "voltage", "cs", "amp_contrast", "phase_shift")))
            out[b] = ift2(F, 2 * n)[:, o:o + n, o:o + n]
    return out


def add_junk(sim, fraction: float, seed: int = 0, offcentre=OFFCENTRE, kinds=KINDS) -> np.ndarray:
    """Replace a random ``fraction`` of a simulated set's particles (:class:`SimulatedData`) by
    junk of the given ``kinds`` (default every kind) in equal shares, with the set's noise; their
    true class becomes 0, their kind is kept in ``sim.meta['junk_kind']`` and a misplaced particle's
    distance from the centre (pixels) in ``sim.meta['junk_shift']``.  ``offcentre``: see
    :func:`junk_images`.  Returns the replaced indices."""
    rng = np.random.default_rng([seed, 14])
    N = len(sim.images)
    idx = np.sort(rng.choice(N, size=int(round(fraction * N)), replace=False))
    kinds = np.array(kinds)[rng.integers(0, len(kinds), idx.size)]
    ctf = None if sim.ctf is None else {k: np.asarray(v)[idx] for k, v in sim.ctf.items()}
    shifts = np.full(idx.size, np.nan)
    clean = junk_images(kinds, sim.volumes[0], sim.angpix, ctf, rng, offcentre, shifts)
    sim.images[idx] = clean + rng.normal(0.0, sim.noise_sigma, clean.shape).astype(np.float32)
    sim.classes[idx] = 0
    sim.meta["junk_kind"] = {int(i): str(k) for i, k in zip(idx, kinds)}
    sim.meta["junk_shift"] = {int(i): float(r) for i, r in zip(idx, shifts) if np.isfinite(r)}
    return idx
