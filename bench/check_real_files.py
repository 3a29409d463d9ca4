"""Read the real RELION/cryoSPARC/EPU files that other projects ship as test data with hpcem, and
print what happened to each: the particle STAR files (hpcem.io.ParticleSet.read, images read when
the stacks are there) and the MRC files (hpcem.io.read_mrc).

    python bench/check_real_files.py                 # downloads the sdists below with pip
    python bench/check_real_files.py --dir DIR       # sdists already unpacked in DIR

Sources (PyPI source distributions): cryodrgn 4.3.1 (RELION 3.0/3.1/5 STAR files, stacks,
cryoSPARC .cs), starfile 0.5.13 (RELION STAR files), mrcfile 1.5.4 (EMDB maps, EPU MRC headers).
A file counts as handled when it is read, or refused with one InputError line that names the file
and the field (e.g. a stack that is not shipped, or a file without a pixel size, which asks for
--angpix); anything else (a traceback) is a failure.  The last line counts the failures.
"""
from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tarfile
import tempfile
import warnings

SDISTS = ["cryodrgn==4.3.1", "starfile==0.5.13", "mrcfile==1.5.4"]


def fetch(d: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d", d]
                   + SDISTS, check=True)
    for f in glob.glob(os.path.join(d, "*.tar.gz")):
        with tarfile.open(f) as t:
            t.extractall(d, filter="data")


def check(path: str, reader) -> tuple[str, str]:
    from hpcem.errors import InputError

    cwd = os.getcwd()
    os.chdir(os.path.dirname(path))
    try:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            what = reader(os.path.basename(path))
        note = "; ".join(sorted({str(x.message).split(": ", 1)[-1][:70] for x in w}))
        return "read", what + (" [warning: %s]" % note if note else "")
    except InputError as e:
        return "refused", str(e)[:140]
    except Exception as e:  # a traceback a user would see
        return "FAILED", "%s: %s" % (type(e).__name__, str(e)[:120])
    finally:
        os.chdir(cwd)


def read_star(name):
    from hpcem.io.particles import ParticleSet

    ps = ParticleSet.read(name, validate_stacks=False)
    try:
        ps.validate()
        imgs = ps.read_images(range(min(ps.n, 4)))
        return "%d particles, %d optics group(s), box %d, %.4g A/px, images %s" % (
            ps.n, len(ps.optics), ps.box, ps.angpix, imgs.shape)
    except Exception as e:
        from hpcem.errors import InputError

        if isinstance(e, InputError):
            return "%d particles, %d optics group(s); images not read: %s" % (ps.n, len(ps.optics), str(e)[:90])
        raise


def read_map(name):
    from hpcem.io.mrc import read_mrc

    data, apix = read_mrc(name)
    return "shape %s, %.4g A/px" % (data.shape, apix)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=None, help="folder with the unpacked sdists (default: download them)")
    a = ap.parse_args(argv)
    d = a.dir or tempfile.mkdtemp(prefix="hpcem_real_files_")
    if a.dir is None:
        fetch(d)
    stars = sorted(p for p in glob.glob(os.path.join(d, "*", "tests", "**", "*.star"), recursive=True))
    maps = sorted(p for p in glob.glob(os.path.join(d, "*", "tests", "**", "*.mrc*"), recursive=True)
                  if not p.endswith((".gz", ".bz2")))
    failures = 0
    for kind, files, reader in (("STAR", stars, read_star), ("MRC", maps, read_map)):
        print("\n%s files (%d)" % (kind, len(files)))
        for p in files:
            status, msg = check(p, reader)
            failures += status == "FAILED"
            print("  %-8s %-60s %s" % (status, os.path.relpath(p, d)[-60:], msg))
    print("\nheadline: %d of %d real files failed with a traceback" % (failures, len(stars) + len(maps)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
