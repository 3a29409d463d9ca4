"""relion_refine command lines run unchanged as ``hpcem class2d/class3d/refine3d``.

RELION's flags that change results are hpcem flags of the same name (their fields live in the
jobs' configurations).  The I/O and hardware tuning flags that have no meaning in hpcem are taken
off the command line here, each with one line saying what hpcem does instead; any other unknown
flag is one error naming it and the nearest flag of the job.
"""
from __future__ import annotations

import difflib

from ..errors import InputError

# flag -> (values it takes: 0, 1 or "?" (an optional one), what hpcem does instead)
TUNING = {
    "--pool": (1, "hpcem sizes its particle batches from the memory plan (--batch)"),
    "--dont_combine_weights_via_disc": (0, "hpcem always combines the ranks' sums by MPI reductions in memory"),
    "--preread_images": (0, "hpcem always holds each rank's particles in memory"),
    "--scratch_dir": (1, "hpcem reads each particle once into memory; no scratch copy is made"),
    "--dont_check_norm": (0, "hpcem does not check the images' normalisation"),
    "--pipeline_control": (1, "hpcem writes no pipeline-control files; its exit status and run_job.json tell "
                              "how the job ended"),
    "--free_gpu_memory": (1, "hpcem sizes GPU work from its memory plan"),
    "--no_parallel_disc_io": (0, "hpcem reads images on every rank in parallel"),
    "--pad": (1, "hpcem always pads references and reconstructions twofold"),
}
# flags that a job implies (relion_refine needs them to do what the hpcem job always does)
IMPLIED = {
    "refine3d": {"--auto_refine": "hpcem refine3d is RELION's auto-refine",
                 "--split_random_halves": "hpcem refine3d always refines gold-standard halves"},
}
RELION_JOBS = ("class2d", "class3d", "refine3d")


def _takes_value(token: str) -> bool:
    return not token.startswith("--")


def strip_tuning(job: str, argv: list) -> tuple[list, list]:
    """``argv`` without RELION's tuning flags (and their values) and the flags ``job`` implies,
    and one note per flag taken off."""
    if job not in RELION_JOBS:
        return list(argv), []
    implied = IMPLIED.get(job, {})
    out, notes, i = [], [], 0
    while i < len(argv):
        tok = argv[i]
        flag = tok.split("=", 1)[0]
        if flag in TUNING and "=" not in tok:
            nvals, what = TUNING[flag]
            take = 1 if nvals == 1 else int(nvals == "?" and i + 1 < len(argv) and _takes_value(argv[i + 1]))
            if nvals == 1 and (i + 1 >= len(argv)):
                raise InputError("needs a value", field=flag)
            notes.append("%s: ignored, %s" % (flag, what))
            i += 1 + take
            continue
        if flag in TUNING:
            notes.append("%s: ignored, %s" % (flag, TUNING[flag][1]))
            i += 1
            continue
        if tok in implied:
            notes.append("%s: implied (%s)" % (tok, implied[tok]))
            i += 1
            continue
        out.append(tok)
        i += 1
    return out, notes


def unknown_flag_error(job: str, unknown: list, known_flags) -> InputError:
    """One error naming the first unknown flag and the nearest flag of ``job``."""
    flags = [u for u in unknown if u.startswith("-")]
    bad = (flags or unknown)[0].split("=", 1)[0]
    if not bad.startswith("-"):
        return InputError("unexpected argument %r" % bad, field="hpcem " + job)
    near = difflib.get_close_matches(bad, sorted(known_flags), n=1, cutoff=0.0)
    hint = "; nearest hpcem %s flag: %s" % (job, near[0]) if near else ""
    return InputError("unknown flag for hpcem %s%s (hpcem %s --help lists them)" % (job, hint, job), field=bad)
