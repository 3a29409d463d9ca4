"""Run one benchmark twice in the same session, on an older checkout (its own virtual environment)
and on this one, and print their headline numbers side by side with the ratio after / before.

    git worktree add /tmp/before <commit>     # or: git clone . /tmp/before && git -C /tmp/before checkout <commit>
    python3 -m venv /tmp/venv_before && /tmp/venv_before/bin/pip install "/tmp/before[mpich]"
    python bench/compare_before.py --before-tree /tmp/before --before-venv /tmp/venv_before \\
        -- bench_class2d.py --n 10000 --Ks 10,50,100 --iter 3 --ari_iter 0
    python bench/compare_before.py --before-tree /tmp/before --before-venv /tmp/venv_before \\
        -- bench_refine3d.py --n 10000 --iter 3

Each run uses its own tree's copy of the benchmark script, its own venv's python, hpcem and
mpiexec.  The "before" run goes first; both print live.  Parsed: bench_class2d's table (seconds
per iteration per K, kernel GFLOP/s), bench_refine3d's per-rank-count lines (seconds in all, per
iteration, resolution).  The last line is the worst ratio of seconds per iteration.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

PATTERNS = {
    "bench_class2d.py": [
        (r"^\s*(\d+)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)\s+(\d+)\s+(\d+)%",
         lambda m: {"K=%s s/iter" % m[1]: float(m[2]), "K=%s s/iter (it>=2)" % m[1]: float(m[3]),
                    "K=%s diff2 GFLOP/s" % m[1]: float(m[4])}),
    ],
    "bench_refine3d.py": [
        (r"^(\d+) rank\(s\): ([0-9.]+) s total, (\d+) iterations \+ final, ([0-9.]+) s per iteration, "
         r"resolution (\S+) A; median orientation error ([0-9.]+) deg",
         lambda m: {"%s rank(s) s total" % m[1]: float(m[2]), "%s rank(s) s/iter" % m[1]: float(m[4]),
                    "%s rank(s) median orientation error (deg)" % m[1]: float(m[6])}),
        (r"coarse_diff2 kernel ([0-9.]+) GFLOP/s", lambda m: {"coarse_diff2 GFLOP/s": float(m[1])}),
    ],
}


def run(tree: str, venv: str, script: str, args: list, label: str) -> dict:
    py = os.path.join(venv, "bin", "python") if venv else sys.executable
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env["PATH"] = os.path.dirname(py) + os.pathsep + env.get("PATH", "")
    cmd = [py, os.path.join(tree, "bench", script)] + args
    print("== %s: %s" % (label, " ".join(cmd)), flush=True)
    p = subprocess.Popen(cmd, cwd=os.path.join(tree, "bench"), env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    found = {}
    for line in p.stdout:
        sys.stdout.write("   " + line)
        for pat, take in PATTERNS.get(script, []):
            m = re.search(pat, line)
            if m:
                found.update(take(m))
    if p.wait():
        sys.exit("%s run failed (exit %d)" % (label, p.returncode))
    return found


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before-tree", required=True, help="checkout of the older commit")
    ap.add_argument("--before-venv", required=True, help="virtual environment with that commit installed")
    ap.add_argument("--after-venv", default="", help="virtual environment of this tree (default: this python's)")
    ap.add_argument("bench", nargs=argparse.REMAINDER, help="-- SCRIPT ARGS...")
    a = ap.parse_args(argv)
    bench = a.bench[1:] if a.bench and a.bench[0] == "--" else a.bench
    if not bench:
        ap.error("name the benchmark after --")
    script, args = bench[0], bench[1:]
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    before = run(a.before_tree, a.before_venv, script, args, "before")
    after = run(here, a.after_venv, script, args, "after")
    print("\n%-45s %12s %12s %12s" % ("metric", "before", "after", "after/before"))
    worst = None
    for k in before:
        if k in after:
            r = after[k] / before[k] if before[k] else float("nan")
            print("%-45s %12.3f %12.3f %12.3f" % (k, before[k], after[k], r))
            if "s/iter" in k and (worst is None or r > worst[1]):
                worst = (k, r)
    if worst:
        print("headline: seconds per iteration after/before, worst case %s: %.3f" % worst)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
