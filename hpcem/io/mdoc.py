"""SerialEM's ``.mdoc`` metadata (IMOD autodoc): ``key = value`` lines, global ones first, then
sections ``[FrameSet = 0]`` (a movie's frame stack) or ``[ZValue = n]`` (images of an MRC file),
and title lines ``[T = SerialEM: Acquired on Titan Krios D3593 ...]`` whose ``D<digits>`` is the
microscope's ID.  The mdoc lies beside its movie: ``movie.tif.mdoc`` describes ``movie.tif``.

:func:`read_mdoc` returns every key read (global and first-section values) plus the fields hpcem
uses, in the units of :mod:`hpcem.io.epu`; a file without the required keys (SerialEM still
writing it) is one InputError, so a watcher retries it later.
"""
from __future__ import annotations

import os
import re

from ..errors import InputError

_KV = re.compile(r"^\s*([A-Za-z0-9_]+)\s*=\s*(.*?)\s*$")
_SECTION = re.compile(r"^\s*\[\s*([A-Za-z]+)\s*=\s*(.*?)\s*\]\s*$")
_TITLE = re.compile(r"^\s*\[?\s*T\s*=\s*(.*?)\]?\s*$")
_REQUIRED = ("Voltage", "PixelSpacing", "ExposureTime")


def _num(text):
    try:
        return float(str(text).split()[0])
    except (TypeError, ValueError, IndexError):
        return None


def read_mdoc(path: str) -> dict:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise InputError("cannot read (%s)" % exc.strerror, file=path, field="file") from None
    keys, titles, sections = {}, [], 0
    for line in lines:
        t = _TITLE.match(line)
        if t:
            titles.append(t.group(1))
            continue
        s = _SECTION.match(line)
        if s:
            sections += 1
            if sections > 1:
                break                     # the first frame set / image describes the movie
            keys["section"] = "%s = %s" % (s.group(1), s.group(2))
            continue
        kv = _KV.match(line)
        if kv:
            keys.setdefault(kv.group(1), kv.group(2))
        elif line.strip():
            raise InputError("not a key = value line: %r" % line.strip()[:60], file=path, field="mdoc")
    missing = [k for k in _REQUIRED if _num(keys.get(k)) is None]
    if missing:
        raise InputError("incomplete mdoc: no %s" % ", ".join(missing), file=path, field=missing[0])
    return _fields(path, keys, titles)


def _fields(path: str, keys: dict, titles: list) -> dict:
    ident = None
    for t in titles:
        m = re.search(r"\bD(\d{3,10})\b", t)
        if m:
            ident = m.group(1)
    binning = _num(keys.get("Binning"))
    superres = binning is not None and binning < 1
    pix = _num(keys["PixelSpacing"])
    f = {"mdoc": path, "mdoc_keys": dict(keys), "titles": titles, "application": "SerialEM",
         "instrument_id": ident, "voltage_kV": _num(keys["Voltage"]), "magnification": _num(keys.get("Magnification")),
         "pixel_size_A": pix / binning if superres else pix, "movie_pixel_size_A": pix,
         "super_resolution_factor": 1.0 / binning if superres else 1.0, "binning": binning,
         "dose_e_per_A2": _num(keys.get("ExposureDose")), "exposure_time_s": _num(keys["ExposureTime"]),
         "target_defocus_um": _num(keys.get("TargetDefocus")), "defocus_um": _num(keys.get("Defocus")),
         "n_fractions": _num(keys.get("NumSubFrames")), "gain_reference": keys.get("GainReference"),
         "defect_file": keys.get("DefectFile"), "spot_size": _num(keys.get("SpotSize")),
         "phase_plate_used": (keys["PhasePlateInserted"].strip().lower() in ("true", "1"))
         if "PhasePlateInserted" in keys else None,
         "date": keys.get("DateTime"), "sub_frame_path": keys.get("SubFramePath"),
         "tilt_angle_deg": _num(keys.get("TiltAngle")), "cs_mm": _num(keys.get("Cs")),
         "detector_mode": "super-resolution" if superres else "counting" if keys.get("CountsPerElectron") else None,
         "detector": keys.get("CameraIndex") and "camera %s" % keys["CameraIndex"]}
    shift = keys.get("ImageShift", "").split()
    if len(shift) == 2:
        f["image_shift_x"], f["image_shift_y"] = _num(shift[0]), _num(shift[1])
    return f


def movie_of_mdoc(path: str):
    """The movie a ``<movie>.mdoc`` describes, if it exists."""
    movie = path[:-5] if path.lower().endswith(".mdoc") else None
    return movie if movie and os.path.isfile(movie) else None
