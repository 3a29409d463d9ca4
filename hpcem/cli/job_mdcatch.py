"""Read the acquisition metadata of an EPU session (per-movie XML, FEI MRC headers) or a SerialEM
folder (``.mdoc`` beside each movie), as MDCatch does, and write ``DIR/movies.star`` (RELION's
import format, one optics group per distinct acquisition setting) and ``DIR/metadata.json``
(every field read, and per optics group the derived dose per frame, dose rate, micrograph pixel
size, and with --particle_diameter the mask diameter, box and down-scaled box).

  hpcem mdcatch --epu /data/EPU_session --o Movies/ --cs_table scopes.txt --particle_diameter 150
  hpcem mdcatch --serialem /data/run1 --o Movies/ --scheme Schemes/prep --watch

``--scheme`` writes the values into the scheme's variables of the same names (movies_star, angpix,
voltage, cs, Q0, dose_per_frame, n_fractions, eer_grouping, gain_reference, super_resolution,
particle_diameter, mask_diameter, box_size, small_box_size, ...) and runs it; with ``--watch`` the
scheme starts in the background once the first movies are in and the watcher keeps ``movies.star``
growing for it.  The Cs comes from the mdoc, else from ``--cs_table`` (lines ``instrument_id
Cs_mm [name]`` or a JSON object) by the microscope's ID, else from ``--cs``."""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

from ..errors import InputError
from ..runtime.params import NON_NEGATIVE, POSITIVE, Params as Base, param


@dataclass(frozen=True)
class Params(Base):
    epu: str = param(None, "EPU session folder (with Images-Disc*/GridSquare_*/Data/FoilHole_*_Data_*.xml)",
                     group="I/O")
    serialem: str = param(None, "SerialEM folder (movies with their .mdoc files)", group="I/O")
    o: str = param(None, "output folder for movies.star and metadata.json", group="I/O")
    movies: str = param(None, "EPU: the folder holding the movies, laid out as the session (default: beside the "
                        "XML)", group="I/O")
    scheme: str = param(None, "a Scheme to fill in and run, e.g. Schemes/prep", group="I/O")
    cs_table: str = param(None, "microscope instrument ID -> Cs (mm): lines 'ID Cs [name]' or JSON")
    cs: float = param(0.0, "Cs (mm) when neither the metadata nor --cs_table give it", check=NON_NEGATIVE)
    Q0: float = param(0.1, "amplitude contrast", check=(lambda v: 0 <= v < 1, "in [0, 1)"))
    particle_diameter: float = param(0.0, "longest particle diameter (A): mask diameter and box sizes",
                                     check=NON_NEGATIVE)
    watch: bool = param(False, "keep reading new metadata as it appears", action="store_true")
    watch_interval: float = param(10.0, "--watch: seconds between scans", check=POSITIVE)
    watch_idle: float = param(0.0, "--watch: stop after this many seconds without a new movie (0: never)",
                              check=NON_NEGATIVE)


def run(p: Params, ctx):
    from ..workflow.mdcatch import Catcher, feed_scheme, read_cs_table, scheme_values, watch

    if ctx.comm.rank != 0:
        return 0
    if bool(p.epu) == bool(p.serialem):
        raise InputError("give one of --epu SESSION_DIR or --serialem DIR", field="--epu/--serialem")
    if not p.o:
        raise InputError("required", field="--o")
    if p.scheme and not os.path.isfile(os.path.join(p.scheme, "scheme.star")):
        raise InputError("no scheme.star in this folder", file=p.scheme, field="--scheme")
    session = p.epu or p.serialem
    catcher = Catcher(session, "EPU" if p.epu else "SerialEM", p.o, read_cs_table(p.cs_table), p.cs, p.Q0,
                      p.particle_diameter, p.movies, log=ctx.log)
    allowed = [os.path.abspath(x) for x in (p.o, session, p.movies) if x]
    star = os.path.abspath(os.path.join(p.o, "movies.star"))
    if not p.watch:
        catcher.scan()
        if not catcher.records:
            raise InputError("no readable metadata with its movie found", file=session, field="--epu/--serialem")
        _report(ctx, catcher, *catcher.write())
        if p.scheme:
            from ..workflow.schemer import run_scheme
            feed_scheme(p.scheme, scheme_values(catcher, _for_scheme(star, p.scheme)), ctx.log)
            return run_scheme(p.scheme, allowed=allowed)
        return 0
    started = []

    def on_new():
        if p.scheme and not started:
            feed_scheme(p.scheme, scheme_values(catcher, _for_scheme(star, p.scheme)), ctx.log)
            started.append(_start_schemer(p.scheme, allowed, ctx.log))
    n = watch(catcher, p.watch_interval, p.watch_idle, on_new)
    if catcher.records:
        _report(ctx, catcher, *catcher.write())
    ctx.log("mdcatch: stopped watching with %d movie(s)" % n)
    return 0


def _for_scheme(star: str, scheme: str) -> str:
    """movies.star as the scheme's project sees it (relative when inside the project)."""
    from ..workflow.scheme import Scheme
    project = Scheme(scheme).project
    rel = os.path.relpath(star, project)
    return star if rel.startswith("..") else rel


def _start_schemer(scheme: str, allowed, log):
    from ..workflow.launch import hpcem_command
    argv = hpcem_command() + ["schemer", "--scheme", scheme, "--run", "--quiet"]
    for a in allowed:
        argv += ["--allow_path", a]
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
    log("mdcatch: scheme %s started (schemer pid %d; log in %s/schemer.log)" % (scheme, p.pid, scheme))
    return p


def _report(ctx, catcher, star, meta):
    for key, name, recs in catcher.groups():
        first = recs[0]
        ctx.log("%s: %d movie(s), %.4f A/px, %g kV, Cs %g mm, %s %s" % (
            name, len(recs), first["movie_pixel_size_A"], first["voltage_kV"], first["cs_mm"],
            first.get("detector"), first.get("detector_mode")))
    ctx.log("wrote %s and %s" % (star, meta))
