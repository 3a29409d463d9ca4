"""The picker comparison over several seeds (issue 15): per species and mean F1 as mean +- sd.

Runs ``bench/pick3d_meta_diag.py`` once per (seed, run), seed by seed so that a cut-off still
leaves paired seeds, each in its own process, into ``OUT/<tag>/seed<N>`` (log ``seed<N>.log``
beside it; a run's ``eval_last`` of ``--also_last`` is tabled as ``<tag>_last``); a run whose
``eval/scores.json`` exists is not run again (restart the same command to
go on, or copy an earlier run's folder there to reuse it).  Then prints, for every tag under OUT,
each species' F1 and the mean F1 as mean +- sd over its seeds (sd with ddof 1), each seed's row
with the reweighting curve h(.05,.3,.6,.9) and the correction's alpha bias at the last logged step,
and each tag's paired difference of mean F1 against the first tag over their common seeds.

  python bench/pick3d_seeds.py --out OUT --seeds 0,1,2 \\
      --run "sup:--method supervised" \\
      --run "rob:--method robpicker --meta_lr 1e-5 --lc_alpha 0.1 --lc_lr 1e-2" \\
      -- --sim s1 --diameters 240,150,100,70 --steps 1000 --balanced --lr 3e-3
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shlex
import subprocess
import sys
import time

import numpy as np

DIAG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pick3d_meta_diag.py")


def run_one(out: str, tag: str, seed: int, run_args: str, common: list[str]) -> None:
    folder = os.path.join(out, tag, "seed%d" % seed)
    if os.path.exists(os.path.join(folder, "eval", "scores.json")):
        print("%s seed %d: done before, kept" % (tag, seed), flush=True)
        return
    cmd = [sys.executable, DIAG, *common, *shlex.split(run_args), "--seed", str(seed), "--out", folder]
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    t0 = time.time()
    print("%s seed %d: %s" % (tag, seed, " ".join(cmd)), flush=True)
    with open(folder + ".log", "w") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    print("%s seed %d: rc %d, %.0f s" % (tag, seed, rc, time.time() - t0), flush=True)


def last_curves(log_path: str) -> str:
    """h(...) and alpha_bias of the last logged step, and the training seconds."""
    if not os.path.exists(log_path):
        return ""
    text = open(log_path).read()
    steps = re.findall(r"^step (\d+) .*$", text, re.M)
    last = re.findall(r"^step \d+ .*$", text, re.M)
    extra = re.findall(r"(h\(\S+\)=\S+|alpha_bias=\S+)", last[-1]) if last else []
    train = re.search(r"^train (\d+) s", text, re.M)
    return " ".join(["step %s" % steps[-1]] * bool(steps) + extra + (["train %s s" % train.group(1)] if train else []))


def collect(out: str) -> dict[str, dict[int, dict]]:
    found: dict[str, dict[int, dict]] = {}
    for path in sorted(glob.glob(os.path.join(out, "*", "seed*", "eval*", "scores.json"))):
        seed_dir = os.path.dirname(os.path.dirname(path))
        tag, seed = os.path.basename(os.path.dirname(seed_dir)), int(os.path.basename(seed_dir)[4:])
        tag += os.path.basename(os.path.dirname(path))[4:]       # eval_last (--also_last): tag_last
        found.setdefault(tag, {})[seed] = dict(json.load(open(path)), log=last_curves(seed_dir + ".log"))
    return found


def table(found: dict[str, dict[int, dict]], order: list[str]) -> str:
    tags = [t for t in order if t in found] + sorted(t for t in found if t not in order)
    if not tags:
        return "no finished runs"
    species = sorted({s for t in tags for r in found[t].values() for s in r["species"]}, key=int)
    gt = {s: next(r["species"][s]["gt"] for t in tags for r in found[t].values() if s in r["species"]) for s in species}
    lines = ["| run | seeds | " + " | ".join("species %s (%d)" % (s, gt[s]) for s in species) + " | mean F1 |",
             "|---|---|" + "---|" * (len(species) + 1)]

    def cell(v):
        v = np.asarray(v, float)
        return "%.3f +- %.3f" % (v.mean(), v.std(ddof=1)) if len(v) > 1 else "%.3f" % v.mean()

    for t in tags:
        runs = found[t]
        f1 = [cell([r["species"][s]["f1"] for r in runs.values()]) for s in species]
        lines.append("| %s | %s | %s | %s |" % (t, ",".join(map(str, sorted(runs))), " | ".join(f1),
                                               cell([r["mean_f1"] for r in runs.values()])))
    lines.append("")
    for t in tags:
        for seed, r in sorted(found[t].items()):
            per = " ".join("%.3f" % r["species"][s]["f1"] for s in species)
            lines.append("%s seed %d: F1 %s  mean %.3f  %s" % (t, seed, per, r["mean_f1"], r["log"]))
    base = tags[0]
    for t in tags[1:]:
        common = sorted(set(found[t]) & set(found[base]))
        if common:
            d = [found[t][s]["mean_f1"] - found[base][s]["mean_f1"] for s in common]
            lines.append("paired %s - %s over seeds %s: %s (each %s)" % (
                t, base, ",".join(map(str, common)), cell(d), " ".join("%+.3f" % x for x in d)))
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    common = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    ap.add_argument("--run", action="append", default=[], metavar="TAG:ARGS",
                    help="a run: its tag (folder name) and its own pick3d_meta_diag.py flags; repeatable")
    ap.add_argument("--table_only", action="store_true", help="print the table of what OUT holds, run nothing")
    a = ap.parse_args(own)
    runs = [r.split(":", 1) for r in a.run]
    if not a.table_only:
        for seed in [int(s) for s in a.seeds.split(",")]:
            for tag, run_args in runs:
                run_one(a.out, tag, seed, run_args, common)
    text = table(collect(a.out), [t for t, _ in runs])
    print(text, flush=True)
    with open(os.path.join(a.out, "table.md"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
