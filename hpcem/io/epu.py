"""EPU (Thermo Fisher) acquisition metadata: the per-movie XML and the FEI extended header of
EPU's MRC files.

An EPU session writes, for every exposure,
``Images-Disc<N>/GridSquare_<id>/Data/FoilHole_<hole>_Data_<...>.xml`` (a .NET
``MicroscopeImage`` document: ``microscopeData`` with gun, optics, acquisition/camera, core and
instrument; ``SpatialScale`` with the pixel size in metres; ``CustomData`` key/value pairs with the
dose in e/m^2, the applied defocus in metres, phase plate and aperture names, and for Falcon 4 the
EER frame rate and gain reference) next to the movie (``..._Fractions.mrc`` (Falcon 3/4 MRC),
``..._fractions.tiff`` (K3), ``..._EER.eer`` (Falcon 4 EER), or ``<same name>.mrc`` (K2)).

:func:`read_epu_xml` returns every field it reads, in Angstrom, kV, seconds, micrometres, e/A^2,
and raises :class:`hpcem.errors.InputError` for a file that is not (yet) a complete EPU XML.
XML goes through defusedxml: no DTD, no entity expansion, no external entity, so a hostile file
cannot expand itself to gigabytes or read other files.
"""
from __future__ import annotations

import os

from ..errors import InputError

EPU_XML_PATTERN = os.path.join("Images-Disc*", "GridSquare_*", "Data", "FoilHole_*_Data_*.xml")
MOVIE_SUFFIXES = ("_Fractions.mrc", "_fractions.mrc", "_Fractions.tiff", "_fractions.tiff", "_Fractions.tif",
                  "_fractions.tif", "_EER.eer", ".eer", ".tiff", ".tif", ".mrc")
_REQUIRED = ("voltage_kV", "pixel_size_A", "exposure_time_s")


def parse_xml_safely(path: str):
    """The root element of an XML file, parsed with DTDs, entities and external references refused."""
    import defusedxml.ElementTree as DET
    from defusedxml import DefusedXmlException

    try:
        return DET.parse(path, forbid_dtd=True, forbid_entities=True, forbid_external=True).getroot()
    except DefusedXmlException as exc:
        raise InputError("refused: %s (DTDs and entities are not allowed)" % type(exc).__name__, file=path,
                         field="XML") from None
    except DET.ParseError as exc:
        raise InputError("not a complete XML document (%s)" % exc, file=path, field="XML") from None
    except OSError as exc:
        raise InputError("cannot read (%s)" % exc.strerror, file=path, field="file") from None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(el, name):
    if el is None:
        return None
    return next((c for c in el if _local(c.tag) == name), None)


def _path(root, *names):
    el = root
    for n in names:
        el = _child(el, n)
    return el


def _text(root, *names):
    el = _path(root, *names)
    if el is None or el.text is None:
        return None
    return el.text.strip()


def _pairs(el) -> dict:
    """``KeyValueOfstringanyType`` entries under ``el``: key -> text, or the Value element itself
    when it holds elements (fractionation settings)."""
    out = {}
    for kv in el if el is not None else ():
        key, val = _child(kv, "Key"), _child(kv, "Value")
        if key is None or key.text is None or val is None:
            continue
        out[key.text.strip()] = val if len(val) else (val.text or "").strip()
    return out


def _num(text, scale=1.0):
    try:
        return float(text) * scale
    except (TypeError, ValueError):
        return None


def _bool(text):
    return None if text is None else str(text).strip().lower() == "true"


def read_epu_xml(path: str) -> dict:
    """Every acquisition field of one EPU movie XML (units in the key names)."""
    root = parse_xml_safely(path)
    if _local(root.tag) != "MicroscopeImage":
        raise InputError("root element %s is not an EPU MicroscopeImage" % _local(root.tag), file=path, field="XML")
    md = _child(root, "microscopeData")
    cam = _path(md, "acquisition", "camera")
    optics = _child(md, "optics")
    camera_in = _pairs(_child(cam, "CameraSpecificInput"))
    custom = _pairs(_child(root, "CustomData"))
    f = {
        "epu_xml": path,
        "application": _text(md, "core", "ApplicationSoftware"),
        "epu_version": _text(md, "core", "ApplicationSoftwareVersion"),
        "acquisition_time": _text(md, "acquisition", "acquisitionDateTime"),
        "instrument_id": _text(md, "instrument", "InstrumentID"),
        "instrument_model": _text(md, "instrument", "InstrumentModel"),
        "voltage_kV": _num(_text(md, "gun", "AccelerationVoltage"), 1e-3),
        "gun_lens": _num(_text(md, "gun", "GunLens")),
        "extractor_voltage_V": _num(_text(md, "gun", "ExtractorVoltage")),
        "detector": _text(cam, "Name"),
        "camera_location": _text(cam, "CameraLocation"),
        "exposure_time_s": _num(_text(cam, "ExposureTime")),
        "binning": _num(_text(cam, "Binning", "x")),
        "magnification": _num(_text(optics, "TemMagnification", "NominalMagnification")),
        "spot_size": _num(_text(optics, "SpotIndex")),
        "probe_mode": _text(optics, "ProbeMode"),
        "beam_diameter_um": _num(_text(optics, "BeamDiameter"), 1e6),
        "defocus_um": _num(_text(optics, "Defocus"), 1e6),
        "energy_filter_slit_inserted": _bool(_text(optics, "EnergyFilter", "EnergySelectionSlitInserted")),
        "energy_filter_slit_width_eV": _num(_text(optics, "EnergyFilter", "EnergySelectionSlitWidth")),
        "pixel_size_A": _num(_text(root, "SpatialScale", "pixelSize", "x", "numericValue"), 1e10),
    }
    for what in ("BeamTilt", "BeamShift", "ImageShift"):
        for axis in ("x", "y"):
            f["%s_%s" % (_snake(what), axis)] = _num(_text(optics, what, "_" + axis))
    _camera_fields(f, camera_in, cam)
    _custom_fields(f, custom)
    missing = [k for k in _REQUIRED if f.get(k) is None]
    if missing:
        raise InputError("incomplete EPU XML: no %s" % ", ".join(missing), file=path, field=missing[0])
    sr = f.get("super_resolution_factor") or 1.0
    f["movie_pixel_size_A"] = f["pixel_size_A"] / sr
    return f


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() and i else c.lower() for i, c in enumerate(name))


def _camera_fields(f: dict, camera_in: dict, cam) -> None:
    counting = _bool(camera_in.get("ElectronCountingEnabled")) if "ElectronCountingEnabled" in camera_in else None
    sr = _num(camera_in.get("SuperResolutionFactor")) if counting else None
    f["electron_counting"] = counting
    f["super_resolution_factor"] = sr if sr else 1.0
    frac = camera_in.get("FractionationSettings")
    n = None
    if frac is not None and not isinstance(frac, str):
        nf = _child(frac, "NumberOffractions")
        doses = _child(frac, "DoseFractions")
        n = _num(nf.text) if nf is not None else (float(len(doses)) if doses is not None else None)
    f["n_fractions"] = n
    mode = "linear"
    if counting:
        mode = "super-resolution" if f["super_resolution_factor"] > 1 else "counting"
    f["detector_mode"] = mode


def _custom_fields(f: dict, custom: dict) -> None:
    f["dose_e_per_A2"] = _num(custom.get("Dose"), 1e-20)
    f["dose_on_camera"] = _num(custom.get("DoseOnCamera"))
    f["applied_defocus_um"] = _num(custom.get("AppliedDefocus"), 1e6)
    f["phase_plate_used"] = _bool(custom.get("PhasePlateUsed"))
    f["phase_plate_name"] = custom.get("PhasePlateApertureName")
    f["phase_plate_position"] = custom.get("PhasePlatePosition")
    f["c2_aperture"] = custom.get("Aperture[C2].Name")
    f["objective_aperture"] = custom.get("Aperture[OBJ].Name")
    for key, val in custom.items():
        if key.startswith("Detectors[") and key.endswith("].EerGainReference"):
            f["detector_mode"] = "EER"
            f["gain_reference"] = os.path.basename(str(val).replace("\\", "/"))
            rate = _num(custom.get(key.replace("EerGainReference", "FrameRate")))
            f["eer_frame_rate"] = rate
            if rate and f.get("exposure_time_s"):
                f["n_frames"] = float(int(round(rate * f["exposure_time_s"])))


def find_movie(xml_path: str, movies_root: str | None = None, session: str | None = None):
    """The movie an EPU XML describes (see MOVIE_SUFFIXES), beside it or, with ``movies_root``,
    at the same place under that folder; None when it is not there (yet)."""
    stem = xml_path[:-4]
    places = [stem]
    if movies_root and session:
        places.insert(0, os.path.join(movies_root, os.path.relpath(stem, session)))
    for base in places:
        for suffix in MOVIE_SUFFIXES:
            if os.path.isfile(base + suffix):
                return base + suffix
    return None


def read_fei_mrc_header(path: str) -> dict:
    """The first record of the FEI1/FEI2 extended header of an EPU MRC file (every field, as
    numbers or text), or {} when the file has none."""
    import mrcfile
    import numpy as np

    try:
        with mrcfile.open(path, header_only=True, permissive=True) as m:
            ext = m.indexed_extended_header
    except (OSError, ValueError) as exc:
        raise InputError("cannot read the MRC header (%s)" % exc, file=path, field="extended header") from None
    if ext is None or not getattr(ext, "dtype", None) or not ext.dtype.names or len(ext) == 0:
        return {}
    out = {}
    for name in ext.dtype.names:
        v = ext[name][0]
        if isinstance(v, bytes):
            v = v.split(b"\0", 1)[0].decode("utf-8", "replace").strip()
        elif isinstance(v, np.ndarray):
            continue
        else:
            v = v.item() if hasattr(v, "item") else v
        out[name] = v
    return out
