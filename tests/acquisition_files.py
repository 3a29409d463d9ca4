"""Test helpers: EPU per-movie XML, SerialEM mdoc files and EPU MRC movies with an FEI extended
header, generated here from the documented layouts (element names and nesting of EPU's
MicroscopeImage XML; IMOD autodoc key = value sections), with made-up values."""
import os

import numpy as np

SO = "http://schemas.datacontract.org/2004/07/Fei.SharedObjects"
ARR = "http://schemas.microsoft.com/2003/10/Serialization/Arrays"
OMP = "http://schemas.datacontract.org/2004/07/Fei.Applications.Common.Omp.Interface"
TYPES = "http://schemas.datacontract.org/2004/07/Fei.Types"
DRAW = "http://schemas.datacontract.org/2004/07/System.Drawing"
XSD = "http://www.w3.org/2001/XMLSchema"

# three EPU versions and detectors
K3_SUPERRES = dict(version="2.6.1.69", detector="EF-CCD", location="EnergyFilter", voltage=300, pixel=0.83,
                   exposure=2.5, dose=50.0, mag=105000, counting=True, sr=2, fractions=50, instrument="3593",
                   slit=20, spot=7, movie="_fractions.tiff")
FALCON3_LINEAR = dict(version="2.12.1.2782REL", detector="BM-Falcon", location="BottomMounted", voltage=300,
                      pixel=1.07, exposure=1.5, dose=40.0, mag=75000, counting=None, sr=1, dose_fractions=39,
                      instrument="3299", spot=6, movie="_Fractions.mrc")
FALCON4_EER = dict(version="3.5.0.5654REL", detector="EF-Falcon", location="EnergyFilter", voltage=200,
                   pixel=0.73, exposure=4.0, dose=40.0, mag=130000, counting=True, sr=1, instrument="4248",
                   eer_rate=248, gain="C:\\Gain\\20230117_101010_EER_GainReference.gain", slit=10, spot=8,
                   c2="50", objective="100", movie="_EER.eer")


def _kv(key, value, xtype="double"):
    return ('<a:KeyValueOfstringanyType><a:Key>%s</a:Key><a:Value xmlns:b="%s" i:type="b:%s">%s</a:Value>'
            '</a:KeyValueOfstringanyType>' % (key, XSD, xtype, value))


def _fractionation(s):
    if s.get("fractions"):
        body = '<b:NumberOffractions>%d</b:NumberOffractions>' % s["fractions"]
        kind = "EquidistantFractionation"
    elif s.get("dose_fractions"):
        n, per = s["dose_fractions"], 10
        body = "<b:DoseFractions>%s</b:DoseFractions>" % "".join(
            '<a:anyType i:type="b:DoseFractionDefinition"><b:EndFrameNumber>%d</b:EndFrameNumber>'
            '<b:StartFrameNumber>%d</b:StartFrameNumber></a:anyType>' % ((k + 1) * per, k * per + 1) for k in range(n))
        kind = "VaridistantFractionation"
    else:
        return ""
    return ('<a:KeyValueOfstringanyType><a:Key>FractionationSettings</a:Key><a:Value xmlns:b="%s" i:type="b:%s">%s'
            '</a:Value></a:KeyValueOfstringanyType>' % (OMP, kind, body))


def epu_xml(s):
    """One FoilHole_*_Data_*.xml for acquisition settings ``s`` (see K3_SUPERRES)."""
    camera_in = "".join([_kv("ElectronCountingEnabled", "true" if s["counting"] else "false", "boolean")]
                        if s["counting"] is not None else [])
    if s["counting"]:
        camera_in += _kv("SuperResolutionFactor", s["sr"], "int")
    camera_in += _fractionation(s)
    custom = _kv("Dose", "%.6E" % (s["dose"] * 1e20)) + _kv("AppliedDefocus", "-1.8E-06")
    custom += _kv("PhasePlateUsed", "false", "boolean") + _kv("DoseOnCamera", "12.5")
    if s.get("eer_rate"):
        custom += _kv("Detectors[%s].EerGainReference" % s["detector"], s["gain"], "string")
        custom += _kv("Detectors[%s].FrameRate" % s["detector"], s["eer_rate"])
    if s.get("c2"):
        custom += _kv("Aperture[C2].Name", s["c2"], "string") + _kv("Aperture[OBJ].Name", s["objective"], "string")
    shift = lambda name, x, y: '<%s xmlns:a="%s"><a:_x>%s</a:_x><a:_y>%s</a:_y></%s>' % (name, TYPES, x, y, name)
    return (
        '<MicroscopeImage xmlns="%s" xmlns:i="http://www.w3.org/2001/XMLSchema-instance">'
        '<name>Empty</name><CustomData xmlns:a="%s">%s</CustomData>'
        '<SpatialScale><pixelSize><x><numericValue>%.10E</numericValue></x><y><numericValue>%.10E</numericValue></y>'
        '</pixelSize></SpatialScale>'
        '<microscopeData><acquisition><acquisitionDateTime>2023-01-17T10:11:12.5+00:00</acquisitionDateTime>'
        '<camera><Binning xmlns:a="%s"><a:x>1</a:x><a:y>1</a:y></Binning><CameraLocation>%s</CameraLocation>'
        '<CameraSpecificInput xmlns:a="%s">%s</CameraSpecificInput><ExposureTime>%s</ExposureTime>'
        '<Name>%s</Name></camera></acquisition>'
        '<core><ApplicationSoftware>EPU</ApplicationSoftware><ApplicationSoftwareVersion>%s'
        '</ApplicationSoftwareVersion></core>'
        '<gun><AccelerationVoltage>%d</AccelerationVoltage><GunLens>4</GunLens></gun>'
        '<instrument><InstrumentID>%s</InstrumentID><InstrumentModel>TITAN</InstrumentModel></instrument>'
        '<optics><BeamDiameter>1.2E-06</BeamDiameter>%s%s<Defocus>-1.9E-06</Defocus>'
        '<EnergyFilter><EnergySelectionSlitInserted>%s</EnergySelectionSlitInserted>'
        '<EnergySelectionSlitWidth>%s</EnergySelectionSlitWidth></EnergyFilter>%s<ProbeMode>NanoProbe</ProbeMode>'
        '<SpotIndex>%d</SpotIndex><TemMagnification><NominalMagnification>%d</NominalMagnification>'
        '</TemMagnification></optics></microscopeData></MicroscopeImage>' % (
            SO, ARR, custom, s["pixel"] * 1e-10, s["pixel"] * 1e-10, DRAW, s["location"], ARR, camera_in,
            s["exposure"], s["detector"], s["version"], s["voltage"] * 1000, s["instrument"],
            shift("BeamShift", 0.01, -0.02), shift("BeamTilt", 0.001, 0.002), "true" if s.get("slit") else "false",
            s.get("slit", 0), shift("ImageShift", 0.5, -0.25), s["spot"], s["mag"]))


def write_epu_movie(session, s, square=1, hole=1, movie=True, name=None):
    """An EPU XML (and its movie) in ``session``; the XML's path."""
    data = os.path.join(session, "Images-Disc1", "GridSquare_%d" % square, "Data")
    os.makedirs(data, exist_ok=True)
    stem = os.path.join(data, name or "FoilHole_%d_Data_%d_%d_20230117_101112" % (hole, 900 + square, hole))
    with open(stem + ".xml", "w") as f:
        f.write(epu_xml(s))
    if movie:
        if s["movie"].endswith(".mrc"):
            write_fei_mrc(stem + s["movie"], s)
        else:
            with open(stem + s["movie"], "wb") as f:
                f.write(b"\0" * 64)
    return stem + ".xml"


def write_fei_mrc(path, s):
    """A small MRC with an FEI1 extended header as EPU writes for Falcon movies."""
    import mrcfile
    from mrcfile.dtypes import get_ext_header_dtype

    ext = np.zeros(2, dtype=get_ext_header_dtype(b"FEI1"))
    ext["Metadata size"] = ext.dtype.itemsize
    ext["Metadata version"] = 0
    ext["HT"] = s["voltage"] * 1000.0
    ext["Dose"] = s["dose"] * 1e20
    ext["Pixel size X"] = s["pixel"] * 1e-10
    ext["Pixel size Y"] = s["pixel"] * 1e-10
    ext["Camera name"] = s["detector"].encode()
    ext["D-Number"] = s["instrument"].encode()
    ext["Application version"] = s["version"].encode()
    ext["Integration time"] = s["exposure"]
    ext["Magnification"] = s["mag"]
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.zeros((2, 8, 8), np.float32))
        m.set_extended_header(ext)
        m.header.exttyp = b"FEI1"


def mdoc_text(pixel=0.4175, binning=0.5, dose=52.0, exposure=3.0, frames=40, scope="D3593", cs=None):
    lines = ["PixelSpacing = %g" % pixel, "Voltage = 300", "ImageFile = movie.tif", "ImageSize = 11520 8184",
             "DataMode = 1", "", "[T = SerialEM: Digitized on EMBL Krios %s      17-Jan-23  10:11:12    ]" % scope,
             "", "[T = Tilt axis angle = 85.3, binning = 1  spot = 8  camera = 0]", "", "[FrameSet = 0]",
             "TiltAngle = 0.00255", "StagePosition = 102.3 -45.1", "Magnification = 81000", "Intensity = 0.12",
             "ExposureDose = %g" % dose, "PixelSpacing = %g" % pixel, "SpotSize = 8", "Defocus = -1.731",
             "ImageShift = 0.123 -0.456", "ExposureTime = %g" % exposure, "Binning = %g" % binning,
             "CameraIndex = 1", "TargetDefocus = -1.5", "SubFramePath = X:\\data\\movie_0001.tif",
             "NumSubFrames = %d" % frames, "FrameDosesAndNumber = %g %d" % (dose / frames, frames),
             "DateTime = 17-Jan-23  10:11:12", "GainReference = SuperRef_movie_0001.dm4",
             "DefectFile = defects_movie_0001.txt", "PhasePlateInserted = False", "CountsPerElectron = 32"]
    if cs is not None:
        lines.append("Cs = %g" % cs)
    return "\n".join(lines) + "\n"


def write_mdoc_movie(folder, name, movie=True, **kw):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name + ".tif.mdoc")
    with open(path, "w") as f:
        f.write(mdoc_text(**kw))
    if movie:
        with open(os.path.join(folder, name + ".tif"), "wb") as f:
            f.write(b"II*\0")
    return path


BILLION_LAUGHS = ('<?xml version="1.0"?>\n<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n'
                  + "".join(' <!ENTITY lol%d "%s">\n' % (i, ("&lol%d;" % (i - 1) if i > 1 else "&lol;") * 10)
                            for i in range(1, 10))
                  + ']>\n<MicroscopeImage xmlns="%s"><name>&lol9;</name></MicroscopeImage>\n' % SO)


def external_entity_xml(secret_path):
    return ('<?xml version="1.0"?>\n<!DOCTYPE m [<!ENTITY secret SYSTEM "file://%s">]>\n'
            '<MicroscopeImage xmlns="%s"><name>&secret;</name></MicroscopeImage>\n' % (secret_path, SO))
