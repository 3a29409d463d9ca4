"""MDCatch's job in hpcem: acquisition metadata of an EPU session or a SerialEM folder into
RELION's import file (``movies.star``), a record of every field read (``metadata.json``), values
derived for processing, and a Scheme's variables.

``movies.star``: ``data_optics`` (one group per distinct acquisition setting: movie pixel size,
voltage, Cs, amplitude contrast, detector and its mode, magnification; rlnOpticsGroupName,
rlnOpticsGroup, rlnMicrographOriginalPixelSize, rlnVoltage, rlnSphericalAberration,
rlnAmplitudeContrast) and ``data_movies`` (rlnMicrographMovieName, rlnOpticsGroup).

Derived per optics group: dose per frame (per fraction; per raw frame for EER, with the EER
grouping that gives ~1 e/A^2 per fraction), dose rate on the camera (e/physical pixel/s), the
micrograph pixel size after motion correction (super-resolution binned by 2), and from a particle
diameter D (A) RELION's relion_it choices: mask diameter 1.1 D, box 1.5 D (even), and the
smallest FFT-friendly down-scaled box whose pixel is finer than 3.75 A.

A metadata file that does not parse or misses required fields (the acquisition software is still
writing it) gets one warning naming it and is tried again at the next scan; a movie not there yet
waits silently.
"""
from __future__ import annotations

import glob
import json
import math
import os
import time

from ..errors import InputError
from ..io.atomic import atomic_write
from ..io.epu import EPU_XML_PATTERN, find_movie, read_epu_xml, read_fei_mrc_header
from ..io.mdoc import movie_of_mdoc, read_mdoc
from ..io.star import write_star

SMALL_BOXES = (48, 64, 96, 128, 160, 192, 256, 288, 300, 320, 360, 384, 400, 420, 450, 480, 512, 640, 768, 896, 1024)
_GROUP_KEYS = ("movie_pixel_size_A", "voltage_kV", "cs_mm", "amplitude_contrast", "detector", "detector_mode",
               "magnification")


def read_cs_table(path: str) -> dict:
    """Instrument ID -> Cs (mm) from a JSON object or a text file of ``ID Cs [name]`` lines."""
    if not path:
        return {}
    try:
        with open(path) as f:
            text = f.read()
    except OSError as exc:
        raise InputError("cannot read (%s)" % exc.strerror, file=path, field="--cs_table") from None
    try:
        return {str(k): float(v) for k, v in json.loads(text).items()}
    except (ValueError, AttributeError, TypeError):
        pass
    table = {}
    for n, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        try:
            table[words[0]] = float(words[1])
        except (IndexError, ValueError):
            raise InputError("line %d: expected 'instrument_id Cs_mm [name]'" % n, file=path, field="--cs_table") from None
    return table


def derived(rec: dict, particle_diameter: float = 0.0) -> dict:
    """Processing values from one acquisition record (module docstring)."""
    out = {}
    dose, t = rec.get("dose_e_per_A2"), rec.get("exposure_time_s")
    frames = rec.get("n_frames") if rec.get("detector_mode") == "EER" else rec.get("n_fractions")
    if dose and frames:
        out["dose_per_frame_e_per_A2"] = dose / frames
    if dose and rec.get("detector_mode") == "EER" and frames:
        out["eer_grouping"] = max(1, int(round(frames / dose)))
    physical = rec["movie_pixel_size_A"] * (rec.get("super_resolution_factor") or 1.0)
    out["micrograph_pixel_size_A"] = physical
    if dose and t:
        out["dose_rate_e_per_px_per_s"] = dose * physical ** 2 / t
    if particle_diameter and particle_diameter > 0:
        box = int(math.ceil(1.5 * particle_diameter / physical))
        box += box % 2
        small = next((s for s in SMALL_BOXES if s >= box or physical * box / s < 3.75), box)
        small = min(small, box)
        out.update(particle_diameter_A=particle_diameter, mask_diameter_A=round(1.1 * particle_diameter, 1),
                   box_size_px=box, small_box_size_px=small, small_box_pixel_size_A=physical * box / small)
    return out


class Catcher:
    """The state of one session's reading: records found, files that failed, what is pending."""

    def __init__(self, session: str, software: str, out: str, cs_table=None, cs: float = 0.0, q0: float = 0.1,
                 particle_diameter: float = 0.0, movies_root: str | None = None, log=print):
        if not os.path.isdir(session):
            raise InputError("not a folder", file=session, field="--epu" if software == "EPU" else "--serialem")
        self.session, self.software, self.out = os.path.abspath(session), software, out
        self.cs_table, self.cs, self.q0 = dict(cs_table or {}), cs, q0
        self.particle_diameter, self.movies_root, self.log = particle_diameter, movies_root, log
        self.records: dict = {}      # metadata file -> record
        self.warned: set = set()     # metadata files warned about and not read yet (one warning each,
        #                              however often a file EPU is still writing changes size)

    def candidates(self) -> list:
        pattern = EPU_XML_PATTERN if self.software == "EPU" else "*.mdoc"
        return sorted(glob.glob(os.path.join(self.session, pattern)))

    def scan(self) -> int:
        """Read the metadata files not read yet; the number of new movies."""
        new = 0
        for path in self.candidates():
            if path in self.records:
                continue
            try:
                rec = self._read(path)
            except InputError as exc:
                if path not in self.warned:
                    self.log("warning: %s (skipped; tried again at the next scan)" % exc)
                    self.warned.add(path)
                continue
            if rec is None:
                continue
            rec["cs_mm"] = self._cs(rec, path)       # a missing Cs is the user's to fix: one error, no retry
            self.records[path] = rec
            self.warned.discard(path)
            new += 1
        return new

    def _read(self, path: str):
        if self.software == "EPU":
            rec = read_epu_xml(path)
            movie = find_movie(path, self.movies_root, self.session)
        else:
            rec = read_mdoc(path)
            movie = movie_of_mdoc(path)
        if movie is None:
            return None                  # the movie is not there yet
        rec["movie"] = movie
        if movie.lower().endswith((".mrc", ".mrcs")):
            rec["fei_header"] = read_fei_mrc_header(movie)
        rec["amplitude_contrast"] = self.q0
        return rec

    def _cs(self, rec: dict, path: str) -> float:
        if rec.get("cs_mm"):
            return rec["cs_mm"]
        ident = rec.get("instrument_id")
        if ident is not None and ident in self.cs_table:
            return self.cs_table[ident]
        if self.cs > 0:
            return self.cs
        raise InputError("no Cs for instrument ID %s: add it to --cs_table or give --cs" % ident, file=path,
                         field="instrument_id")

    def groups(self) -> list:
        """[(key, name, [records])] in order of first appearance."""
        out = {}
        for rec in sorted(self.records.values(), key=lambda r: r["movie"]):
            key = tuple(round(rec[k], 4) if isinstance(rec.get(k), float) else rec.get(k) for k in _GROUP_KEYS)
            out.setdefault(key, []).append(rec)
        return [(k, "opticsGroup%d" % (i + 1), recs) for i, (k, recs) in enumerate(out.items())]

    def write(self) -> tuple:
        """Write ``movies.star`` and ``metadata.json`` into the output folder (atomically)."""
        os.makedirs(self.out, exist_ok=True)
        optics, movies, summary = [], [], []
        for i, (key, name, recs) in enumerate(self.groups(), 1):
            first = recs[0]
            optics.append({"rlnOpticsGroupName": name, "rlnOpticsGroup": i,
                           "rlnMicrographOriginalPixelSize": first["movie_pixel_size_A"],
                           "rlnVoltage": first["voltage_kV"], "rlnSphericalAberration": first["cs_mm"],
                           "rlnAmplitudeContrast": first["amplitude_contrast"]})
            for r in recs:
                r["optics_group"] = name
                movies.append({"rlnMicrographMovieName": _relative(r["movie"]), "rlnOpticsGroup": i})
            summary.append({"name": name, "group": i, "n_movies": len(recs), **dict(zip(_GROUP_KEYS, key)),
                            "derived": derived(first, self.particle_diameter)})
        import pandas as pd
        star = os.path.join(self.out, "movies.star")
        write_star(star, {"optics": pd.DataFrame(optics), "movies": pd.DataFrame(movies)})
        meta = os.path.join(self.out, "metadata.json")
        with atomic_write(meta) as tmp:
            with open(tmp, "w") as f:
                json.dump({"software": self.software, "session": self.session, "n_movies": len(movies),
                           "optics_groups": summary,
                           "movies": sorted(self.records.values(), key=lambda r: r["movie"])}, f, indent=1, default=str)
        return star, meta


def _relative(path: str) -> str:
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def watch(catcher: Catcher, interval: float, idle: float, on_new=None, should_stop=lambda: False) -> int:
    """Scan every ``interval`` s, write the outputs whenever movies were added (then ``on_new``),
    stop after ``idle`` s without a new movie (0: never) or when ``should_stop()``."""
    last_new = time.time()
    while True:
        n = catcher.scan()
        if n:
            catcher.write()
            catcher.log("mdcatch: %d new movie(s), %d in all" % (n, len(catcher.records)))
            last_new = time.time()
            if on_new is not None:
                on_new()
        if should_stop() or (idle > 0 and time.time() - last_new >= idle):
            return len(catcher.records)
        time.sleep(interval)


def scheme_values(catcher: Catcher, movies_star: str) -> dict:
    """Values for a Scheme's variables of these names (the first optics group's), where it has them."""
    groups = catcher.groups()
    if not groups:
        return {}
    first = groups[0][2][0]
    d = derived(first, catcher.particle_diameter)
    values = {"movies_star": movies_star, "angpix": first["movie_pixel_size_A"], "voltage": first["voltage_kV"],
              "cs": first["cs_mm"], "Q0": first["amplitude_contrast"], "exposure_time": first.get("exposure_time_s"),
              "n_fractions": first.get("n_fractions") or first.get("n_frames"),
              "dose_per_frame": d.get("dose_per_frame_e_per_A2"), "dose_rate": d.get("dose_rate_e_per_px_per_s"),
              "eer_grouping": d.get("eer_grouping"), "micrograph_angpix": d["micrograph_pixel_size_A"],
              "super_resolution": first.get("detector_mode") == "super-resolution",
              "gain_reference": first.get("gain_reference"), "particle_diameter": d.get("particle_diameter_A"),
              "mask_diameter": d.get("mask_diameter_A"), "box_size": d.get("box_size_px"),
              "small_box_size": d.get("small_box_size_px"), "small_box_angpix": d.get("small_box_pixel_size_A"),
              "magnification": first.get("magnification")}
    return {k: v for k, v in values.items() if v is not None}


def feed_scheme(folder: str, values: dict, log=print) -> list:
    """Write ``values`` into the Scheme's variables of the same names (value and reset value);
    the names set.  Refused while the scheme runs (its lock)."""
    from .lock import SchemeLock
    from .scheme import Scheme, format_value

    scheme = Scheme.read(folder)
    done = []
    with SchemeLock(scheme):
        for name, value in values.items():
            v = scheme.variables.get(name)
            if v is None:
                continue
            if v.kind == "bool":
                value = bool(value)
            elif v.kind == "float":
                value = float(value)
            else:
                value = str(value)
            v.value = v.reset = value
            done.append("%s=%s" % (name, format_value(v.kind, value)))
        scheme.write()
    log("mdcatch: scheme %s variables set: %s" % (scheme.name, ", ".join(done) or "none (no variable of these names)"))
    return done
