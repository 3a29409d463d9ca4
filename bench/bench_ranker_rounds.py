"""Two (or more) rounds of class2d -> rank_classes on the ranker's test sets (issue 14, stop 31):
the particles selected at --min_score in round r are classified again with the same class2d flags
(datagen's; K the set's own unless --K) and ranked again with the same weights.  Prints per set and
round, and pooled over the sets per round: purity and recall of the selected particles against the
set's ORIGINAL true particles (recall = share of all of the set's good particles kept), the AUC of
that round's classes, and the perfect ranker on that round's classification (classes >= 74% good).

    python bench/bench_ranker_rounds.py --dir /tmp/issue14-ranker6/large64 --out /tmp/rounds \\
        --only set000 set001 set002 set004 set005 set006

The sets must exist (``python -m hpcem.ml.datagen --split test_large64 ...`` or bench_ranker.py);
rounds already in --out are reused (each round-2 class2d of a 64 px set: 5-10 minutes on a shared
core), so the command resumes.  Layout: hpcem.ml.rounds.
"""
from __future__ import annotations

import argparse
import os
import sys


def main(argv=None) -> int:
    import numpy as np

    from hpcem.ml import net
    from hpcem.ml.rounds import evaluate_round, pooled, run_rounds, stored_optimisers

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True, help="folder of datagen sets (setNNN/done.json)")
    ap.add_argument("--out", required=True, help="folder of the rounds (made; reused)")
    ap.add_argument("--only", nargs="*", default=(), help="these sets (default: every finished set in --dir)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--K", type=int, default=0, help="classes of rounds >= 2 (default: the set's own K)")
    ap.add_argument("--min_score", type=float, default=0.15)
    ap.add_argument("--model", default="", help="weights (.npz); default: the shipped ones")
    ap.add_argument("--j", type=int, default=1, help="threads of each classification")
    ap.add_argument("--no_run", action="store_true", help="only evaluate the rounds already in --out")
    ap.add_argument("--kinds", action="store_true", help="per set, the share of each kind of particle each round keeps")
    a = ap.parse_args(argv)
    weights = net.load_weights(a.model or None)
    names = list(a.only) or sorted(d for d in os.listdir(a.dir) if os.path.isfile(os.path.join(a.dir, d, "done.json")))
    per_round = {}
    for name in names:
        setdir, outdir = os.path.join(a.dir, name), os.path.join(a.out, name)
        if a.no_run:
            optimisers = stored_optimisers(setdir, outdir, a.rounds)
        else:
            optimisers = run_rounds(setdir, outdir, weights, a.rounds, a.min_score, a.K, a.j)
        truth = np.load(os.path.join(setdir, "truth.npz"))
        kind = truth["kind"]
        prev = None
        for r, opt in enumerate(optimisers, 1):
            row = dict(evaluate_round(opt, kind, weights, a.min_score), good_total=int((kind == 0).sum()), set=name)
            subset = prev is None or bool(np.isin(row["selected_idx"], prev).all())
            prev = row["selected_idx"]
            per_round.setdefault(r, []).append(row)
            print("%s round %d: K %3d input %6d  AUC %.3f  selected %6d  purity %.3f  recall %.3f  "
                  "(perfect ranker: %.3f %.3f)%s" % (
                      name, r, row["K"], row["input"], row["auc"], row["selected"],
                      row["selected_good"] / max(row["selected"], 1), row["selected_good"] / max(row["good_total"], 1),
                      row["ideal_good"] / max(row["ideal"], 1), row["ideal_good"] / max(row["good_total"], 1),
                      "" if subset else "  NOT A SUBSET of the previous round"), flush=True)
        if a.kinds:
            for k, kname in enumerate(truth["kinds"]):
                members = np.flatnonzero(kind == k)
                if members.size:
                    print("  %-12s %6d  kept by round %s" % (kname, members.size, " / ".join(
                        "%.2f" % np.isin(members, r[-1]["selected_idx"]).mean()
                        for r in (per_round[i] for i in range(1, len(optimisers) + 1)))))
    for r, rows in sorted(per_round.items()):
        s = pooled(rows)
        print("round %d, %d sets pooled: AUC %.3f  purity %.3f  recall %.3f  (perfect ranker: purity %.3f recall %.3f)"
              % (r, len(rows), s["auc"], s["purity"], s["recall"], s["ideal_purity"], s["ideal_recall"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
