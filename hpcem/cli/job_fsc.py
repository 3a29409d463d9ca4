"""Fourier shell correlation between two maps: prints the curve and the resolutions at
FSC = 0.143 and 0.5, and writes a PNG plot (and optionally a RELION-style STAR table)."""
from __future__ import annotations

import os

import numpy as np

from ..errors import InputError


def add_arguments(p):
    p.add_argument("map1", help="first map (MRC)")
    p.add_argument("map2", help="second map (MRC)")
    p.add_argument("--angpix", type=float, default=0.0, help="pixel size in A (default: from the MRC header)")
    p.add_argument("--mask", default=None, help="optional mask (MRC) applied to both maps")
    p.add_argument("--o", default=None, help="PNG plot to write (default: fsc_<map1>_<map2>.png in the current folder)")
    p.add_argument("--o_star", default=None, help="also write the FSC table as a STAR file")


def run(args, comm):
    from ..core.fsc import fsc, fsc_table, resolution_at
    from ..io.mrc import read_mrc
    from ..io.star import write_star
    from ..plots import plot_fsc

    if comm.rank != 0:
        return 0
    a, apa = read_mrc(args.map1)
    b, apb = read_mrc(args.map2)
    if a.shape != b.shape:
        raise InputError("shape %s differs from %s's %s" % (b.shape, args.map1, a.shape), file=args.map2, field="nx/ny/nz")
    angpix = args.angpix or apa or apb
    if not angpix or angpix <= 0:
        raise InputError("no pixel size in the header; give --angpix", file=args.map1, field="voxel size")
    mask = None
    if args.mask:
        mask, _ = read_mrc(args.mask)
        if mask.shape != a.shape:
            raise InputError("mask shape %s differs from the maps' %s" % (mask.shape, a.shape), file=args.mask, field="nx/ny/nz")
    n = a.shape[-1]
    shells, curve = fsc(a, b, mask=mask)
    print("%6s %10s %8s" % ("shell", "res(A)", "FSC"))
    for s, c in zip(shells, curve):
        print("%6d %10.2f %8.4f" % (s, (n * angpix / s) if s > 0 else float("inf"), c))
    r143 = resolution_at(curve, 0.143, n, angpix)
    r05 = resolution_at(curve, 0.5, n, angpix)
    print("resolution at FSC=0.143: %.2f A" % r143)
    print("resolution at FSC=0.5:   %.2f A" % r05)
    out = args.o or "fsc_%s_%s.png" % tuple(os.path.splitext(os.path.basename(x))[0] for x in (args.map1, args.map2))
    plot_fsc(out, {"%s vs %s" % (os.path.basename(args.map1), os.path.basename(args.map2)): (shells, curve)}, n, angpix)
    print("plot: %s" % out)
    if args.o_star:
        write_star(args.o_star, {"fsc": fsc_table(shells, curve, n, angpix)})
    return 0
