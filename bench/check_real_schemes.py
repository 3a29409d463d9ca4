"""Read RELION's own Schemes and MDCatch's real EPU XML / SerialEM mdoc files with hpcem, and print
what happened to each (their licence keeps them out of hpcem's tests; this script reads a checkout):

    git clone --depth 1 https://github.com/3dem/relion && git clone --depth 1 https://github.com/azazellochg/MDCatch
    python bench/check_real_schemes.py --relion relion --mdcatch MDCatch

Every scheme.star is read (hpcem.workflow.scheme), written back and read again (the tables must be
equal), and its --status text made; every job.star is read and its type checked (RELION's types are
refused with the one message that names them); every EPU XML and mdoc is parsed.  The last line
counts the failures (a traceback or a round trip that changes the scheme).
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import tempfile


def schemes(root: str) -> int:
    from hpcem.errors import InputError
    from hpcem.workflow.jobstar import check_type, read_job_star
    from hpcem.workflow.scheme import Scheme
    from hpcem.workflow.status import status_text

    bad = 0
    for star in sorted(glob.glob(os.path.join(root, "**", "Schemes", "*", "scheme.star"), recursive=True)):
        src = os.path.dirname(star)
        with tempfile.TemporaryDirectory() as tmp:
            dst = os.path.join(tmp, "Schemes", os.path.basename(src))
            shutil.copytree(src, dst)
            try:
                s = Scheme.read(dst)
                text = status_text(s)
                s.write()
                same = Scheme.read(dst).blocks() == s.blocks()
                kinds = {k: sum(v.kind == k for v in s.variables.values()) for k in ("float", "bool", "string")}
                print("%-70s read: %d floats, %d bools, %d strings, %d operators, %d jobs, %d edges; status %d lines; "
                      "round trip %s" % (os.path.relpath(star, root), kinds["float"], kinds["bool"], kinds["string"],
                                         len(s.operators), len(s.jobs), len(s.edges), len(text.splitlines()),
                                         "equal" if same else "CHANGED"))
                bad += not same
                for name in s.jobs:
                    path = os.path.join(dst, name, "job.star")
                    try:
                        spec = read_job_star(path)
                        check_type(spec, name, path)
                        print("    job %-16s %-28s %d options: hpcem runs it" % (name, spec.type, len(spec.options)))
                    except InputError as exc:
                        print("    job %-16s refused: %s" % (name, exc.message[:110]))
            except Exception as exc:          # a traceback a user would see
                print("%-70s FAILED: %s: %s" % (os.path.relpath(star, root), type(exc).__name__, exc))
                bad += 1
    return bad


def acquisition(root: str) -> int:
    from hpcem.errors import InputError
    from hpcem.io.epu import read_epu_xml
    from hpcem.io.mdoc import read_mdoc

    bad = 0
    files = sorted(glob.glob(os.path.join(root, "**", "*.xml"), recursive=True) +
                   glob.glob(os.path.join(root, "**", "*.mdoc"), recursive=True))
    for path in files:
        try:
            r = (read_mdoc if path.endswith(".mdoc") else read_epu_xml)(path)
            print("%-70s read: %s %s, %.4f A/px (movie %.4f), %g kV, dose %s, %s fractions, ID %s" % (
                os.path.relpath(path, root)[-70:], r.get("detector"), r.get("detector_mode"), r["pixel_size_A"],
                r["movie_pixel_size_A"], r["voltage_kV"], r.get("dose_e_per_A2"), r.get("n_fractions"),
                r.get("instrument_id")))
        except InputError as exc:
            print("%-70s refused: %s" % (os.path.relpath(path, root)[-70:], exc.message[:100]))
        except Exception as exc:
            print("%-70s FAILED: %s: %s" % (os.path.relpath(path, root)[-70:], type(exc).__name__, exc))
            bad += 1
    return bad


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--relion", help="a RELION source checkout (scripts/Schemes)")
    ap.add_argument("--mdcatch", help="an MDCatch checkout (its Schemes and tests/testdata)")
    a = ap.parse_args(argv)
    bad = 0
    for root in (a.relion, a.mdcatch):
        if root:
            bad += schemes(root)
    if a.mdcatch:
        bad += acquisition(a.mdcatch)
    print("failures: %d" % bad)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
