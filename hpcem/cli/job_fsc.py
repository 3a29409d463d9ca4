"""Fourier shell correlation between two maps: prints the curve and the resolutions at
FSC = 0.143 and 0.5, and writes a PNG plot (and optionally a RELION-style STAR table).

With ``--align`` the second map is first superposed onto the first (rotation, shift and hand, by
:func:`hpcem.core.align3d.align_maps`, e.g. for ab-initio models in an arbitrary frame); the
transform is printed and ``--o_aligned`` writes the superposed map."""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import InputError
from ..runtime.params import NON_NEGATIVE, Params as Base, param


@dataclass(frozen=True)
class Params(Base):
    map1: str = param(None, "first map (MRC)", positional=True)
    map2: str = param(None, "second map (MRC)", positional=True)
    angpix: float = param(0.0, "pixel size in A (default: from the MRC header)", check=NON_NEGATIVE)
    mask: str = param(None, "optional mask (MRC) applied to both maps")
    o: str = param(None, "PNG plot to write (default: fsc_<map1>_<map2>.png in the current folder)")
    o_star: str = param(None, "also write the FSC table as a STAR file")
    align: bool = param(False, "first superpose map2 onto map1 (global search of rotation, shift and hand)",
                        action="store_true")
    o_aligned: str = param(None, "with --align: write the superposed map2 (MRC)")


def run(p: Params, ctx):
    from ..core.fsc import fsc, fsc_table, resolution_at
    from ..io.mrc import read_mrc
    from ..io.star import write_star
    from ..plots import plot_fsc

    if ctx.comm.rank != 0:
        return 0
    if not p.map1 or not p.map2:
        raise InputError("two maps are required", field="map1/map2")
    a, apa = read_mrc(p.map1)
    b, apb = read_mrc(p.map2)
    if a.shape != b.shape:
        raise InputError("shape %s differs from %s's %s" % (b.shape, p.map1, a.shape), file=p.map2, field="nx/ny/nz")
    angpix = p.angpix or apa or apb
    if not angpix or angpix <= 0:
        raise InputError("no pixel size in the header; give --angpix", file=p.map1, field="voxel size")
    mask = None
    if p.mask:
        mask, _ = read_mrc(p.mask)
        if mask.shape != a.shape:
            raise InputError("mask shape %s differs from the maps' %s" % (mask.shape, a.shape), file=p.mask,
                             field="nx/ny/nz")
    if p.o_aligned and not p.align:
        raise InputError("--o_aligned needs --align", field="--o_aligned")
    if p.align:
        b = _align(a, b, angpix, p.o_aligned)
    n = a.shape[-1]
    shells, curve = fsc(a, b, mask=mask)
    print("%6s %10s %8s" % ("shell", "res(A)", "FSC"))
    for s, c in zip(shells, curve):
        print("%6d %10.2f %8.4f" % (s, (n * angpix / s) if s > 0 else float("inf"), c))
    print("resolution at FSC=0.143: %.2f A" % resolution_at(curve, 0.143, n, angpix))
    print("resolution at FSC=0.5:   %.2f A" % resolution_at(curve, 0.5, n, angpix))
    out = p.o or "fsc_%s_%s.png" % tuple(os.path.splitext(os.path.basename(x))[0] for x in (p.map1, p.map2))
    label = "%s vs %s%s" % (os.path.basename(p.map1), os.path.basename(p.map2), " (aligned)" if p.align else "")
    plot_fsc(out, {label: (shells, curve)}, n, angpix)
    print("plot: %s" % out)
    if p.o_star:
        write_star(p.o_star, {"fsc": fsc_table(shells, curve, n, angpix)})
    return 0


def _align(a, b, angpix: float, out: str | None):
    """``b`` superposed onto ``a``; prints the transform and writes the result to ``out`` if given."""
    from ..core.align3d import align_maps, apply_alignment
    from ..io.mrc import write_mrc

    if a.ndim != 3 or len(set(a.shape)) != 1:
        raise InputError("--align needs cubic 3D maps, got shape %s" % (a.shape,), field="nx/ny/nz")
    al = align_maps(a, b)
    rot, tilt, psi = al.euler
    sx, sy, sz = (float(v) * angpix for v in al.shift)
    print("align: rot %.2f tilt %.2f psi %.2f deg, shift x %.2f y %.2f z %.2f A, hand flipped: %s"
          % (rot, tilt, psi, sx, sy, sz, "yes" if al.flipped else "no"))
    print("align: correlation %.4f (other hand %.4f); convention: b_aligned(x) = b'(R^T (x - c - t) + c), "
          "R = euler_to_matrix(rot, tilt, psi), t = shift, c = n//2, b' = b[::-1] (z mirrored) if flipped, else b"
          % (al.score, al.score_other_hand))
    b = apply_alignment(b, al)
    if out:
        write_mrc(out, b, angpix)
        print("aligned map: %s" % out)
    return b
