"""The class ranker on classifications never used in training (issue 14): hpcem class2d (EM and
VDAM) of simulated sets with other pseudo-atomic maps and other SNRs than the training sets
(``hpcem.ml.datagen --split test``), scored with the shipped weights (or --model).  Prints per set
and pooled: ROC AUC of good (at least half good particles) against junk classes, and at
--min_score the purity and recall of the selected particles; last line the headline.

    python bench/bench_ranker.py --dir /tmp/ranker_test --sets 12          # generates the sets once
    python bench/bench_ranker.py --dir /tmp/ranker_test --sets 12 --model my_ranker.npz

Generating a set (1,000-2,000 particles, 32-36 px, K 12-20, 20 EM iterations or 60 VDAM
mini-batches; hpcem.ml.datagen) takes 3-10 minutes on one shared core; scoring takes well under a
second per set.  ``--split test64`` scores the 64 px sets (other maps again); ``--split test_large``
sets of realistic size (15,000-30,000 particles, K 50-100, VDAM 200 mini-batches: 7-16 minutes each
on one shared core; every fourth set is EM, far slower); ``--split test_large64`` the same in 64 px
boxes (SNR 0.035 first); ``--split test_large128`` those particles at half the pixel size in 128 px
boxes (10,000-20,000 particles, K 50-64; 8-19 minutes each on one shared core).  Sets missing from --dir (no done.json)
are generated first, so ``--sets N`` scores (and makes) set000 to set N-1; ``--only set000 set002``
scores (and makes) only those.
"""
from __future__ import annotations

import argparse
import os
import sys


def kinds_table(setdir: str, weights: dict, min_score: float) -> None:
    """Per kind of particle: the share selected at min_score and by the perfect ranker, and the
    classes of its own (at least half of their members of that kind) with the share they hold."""
    import json

    import numpy as np

    from hpcem.ml.classjob import ClassJob
    from hpcem.ml.evaluate import ORACLE_SHARE
    from hpcem.ml.select import UNSCORED, score_job, select_classes
    from hpcem.ml.trainset import good_share

    with open(os.path.join(setdir, "done.json")) as f:
        job = ClassJob.read(os.path.join(setdir, json.load(f)["optimiser"]))
    truth = np.load(os.path.join(setdir, "truth.npz"))
    kind, cls = truth["kind"], job.particles["rlnClassNumber"].to_numpy(np.int64) - 1
    scores, p = score_job(job, weights), good_share(job, kind)
    sel, ideal = select_classes(scores, job.counts, min_score), (scores > UNSCORED) & (p >= ORACLE_SHARE)
    member = np.stack([np.bincount(cls[kind == k], minlength=job.K) for k in range(len(truth["kinds"]))])
    for k, name in enumerate(truth["kinds"]):
        m = kind == k
        if m.any():
            own = member[k] >= 0.5 * np.maximum(job.counts, 1)
            print("  %-12s %6d  selected %.2f  perfect ranker %.2f  classes of its own %3d holding %.2f" % (
                name, m.sum(), sel[cls[m]].mean(), ideal[cls[m]].mean(), own.sum(), own[cls[m]].mean()))


def main(argv=None) -> int:
    from hpcem.ml import net
    from hpcem.ml.datagen import SNR, generate
    from hpcem.ml.evaluate import evaluate_set, perfect_ranker_curve, row_line, summarise

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="bench/out/ranker_test", help="folder of the test sets (made when missing)")
    ap.add_argument("--sets", type=int, default=12)
    ap.add_argument("--split", default="test", choices=tuple(SNR), help="datagen split (train128: training sets, a check)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="", help="weights (.npz); default: the shipped ones")
    ap.add_argument("--min_score", type=float, default=0.15)
    ap.add_argument("--j", type=int, default=1, help="threads of each classification")
    ap.add_argument("--only", nargs="*", default=(), help="only these sets (setNNN; e.g. leaving out the EM ones)")
    ap.add_argument("--kinds", action="store_true", help="per set, each kind's share selected and its own classes")
    a = ap.parse_args(argv)
    os.makedirs(a.dir, exist_ok=True)
    sets = generate(a.dir, a.split, a.sets, a.seed, a.j, names=a.only)
    weights = net.load_weights(a.model or None)
    rows = [evaluate_set(d, weights, a.min_score) for d in sets]
    for d, r in zip(sets, rows):
        print(row_line(r))
        if a.kinds:
            kinds_table(d, weights, a.min_score)
    for snr in sorted({r["snr"] for r in rows}):
        t = summarise([r for r in rows if r["snr"] == snr])
        print("SNR %.3f: %2d sets  AUC %.3f  purity %.3f  recall %.3f  (perfect ranker: purity %.3f recall %.3f)" % (
            snr, sum(r["snr"] == snr for r in rows), t["auc"], t["purity"], t["recall"], t["ideal_purity"],
            t["ideal_recall"]))
    for share, purity, recall in perfect_ranker_curve(rows):
        print("perfect ranker, classes >= %.2f good: purity %.3f recall %.3f" % (share, purity, recall))
    s = summarise(rows)
    print("%d sets, %d scored classes (%d good), %.0f classes/s; perfect ranker: purity %.3f recall %.3f" % (
        len(rows), s["classes"], s["good_classes"], s["classes_per_s"], s["ideal_purity"], s["ideal_recall"]))
    print("ranker on unseen sets (min_score %.2f): AUC %.3f  purity %.3f  recall %.3f" % (
        a.min_score, s["auc"], s["purity"], s["recall"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
