"""Training the shipped class-ranker weights (``hpcem/ml/data/class_ranker.npz``) on simulated
classifications of known composition (:mod:`.datagen`), reproducibly:

    python -m hpcem.ml.datagen --o DATA --split train --sets 38      # or in shards: --shard i/n
    python -m hpcem.ml.ship --data DATA --o hpcem/ml/data/class_ranker.npz --epochs 40 --batch 32 --seed 0

(the shipped file until issue 14, stop 36: these commands, --j 2; measured in DESIGN_NOTES, issue 14).
``--init W`` fine-tunes the weights W (their feature standardisation kept) instead of starting anew,
and ``--data`` takes several folders, e.g. the 128 px training sets (``--split train128``) on top of
the shipped weights:

    python -m hpcem.ml.ship --data DATA128 --init hpcem/ml/data/class_ranker.npz --o W --epochs E --lr 3e-4

``--conv_lr_scale S`` trains the convolution layers at S x --lr (the fully connected head at --lr).

Targets from each class's share of good particles (:func:`.trainset.composition_targets`).  With
``--holdout F`` a fraction of the sets (whole sets) is kept out and its loss and AUC reported, to
choose the number of epochs; the shipped weights are then trained on every set.  Classes are
weighted by the square root of their size, so that the few large classes that hold most
particles count more than tiny junk classes, without swamping them.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys

import numpy as np

from ..metrics import roc_auc
from . import net
from .train import fit
from .trainset import simulated_examples


def _subset(ex, keep):
    return {k: v[keep] for k, v in ex.items()}


def train_shipped(data, out: str, epochs: int, seed: int = 0, holdout: float = 0.0, lr: float = 1e-3,
                  threads: int = 1, batch: int = 64, save_every: int = 0, init: str = "", conv_lr_scale: float = 1.0,
                  log=print) -> dict:
    """Train on the finished sets of the folder(s) ``data``; ``init``: weights to fine-tune."""
    log = log or (lambda *a, **k: None)
    folders = [data] if isinstance(data, str) else list(data)
    sets = sorted(d for f in folders for d in glob.glob(os.path.join(f, "set*"))
                  if os.path.isfile(os.path.join(d, "done.json")))
    ex = simulated_examples(sets, log=log)
    log("%d sets, %d classes (%d with >= half good particles)" % (len(sets), len(ex["targets"]),
                                                                   int((ex["p_good"] >= 0.5).sum())))
    rng = np.random.default_rng(seed)
    val_sets = rng.choice(len(sets), size=int(round(holdout * len(sets))), replace=False) if holdout > 0 else []
    val = np.isin(ex["set"], val_sets)
    tr, v = _subset(ex, ~val), _subset(ex, val)
    def keep(epoch, w):                 # the weights so far, beside --o (a long run can be stopped)
        net.save_weights(os.path.splitext(out)[0] + "_epoch%03d.npz" % epoch, w, seed=np.int64(seed),
                         epochs=np.int64(epoch), lr=np.float64(lr), batch=np.int64(batch))

    start = net.load_weights(init) if init else None
    if start is not None:
        log("fine-tuning %s" % init)
    weights, hist = fit(tr["images"], tr["feats"], tr["targets"], init=start, epochs=epochs, lr=lr, batch=batch, seed=seed,
                        threads=threads, sample_weight=np.sqrt(tr["counts"]), log=log, conv_lr_scale=conv_lr_scale,
                        every=(save_every, keep) if save_every and out else None,
                        val=(v["images"], v["feats"], v["targets"]) if val.any() else None)
    result = {"train_loss": hist[-1]}
    if val.any():
        s = net.score(v["images"], v["feats"], weights)
        result.update(val_loss=float(np.mean((s - v["targets"]) ** 2)), val_auc=roc_auc(s, v["p_good"] >= 0.5))
        log("held-out sets: loss %.4f  AUC %.3f" % (result["val_loss"], result["val_auc"]))
    if out:
        net.save_weights(out, weights, seed=np.int64(seed), epochs=np.int64(epochs), lr=np.float64(lr),
                         batch=np.int64(batch), fine_tuned=np.int64(bool(init)),
                         n_sets=np.int64(len(sets)), n_classes=np.int64(len(tr["targets"])),
                         final_loss=np.float64(hist[-1]), conv_lr_scale=np.float64(conv_lr_scale))
        log("wrote %s (%d bytes)" % (out, os.path.getsize(out)))
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hpcem.ml.ship", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, nargs="+", help="folder(s) of datagen sets")
    ap.add_argument("--init", default="", help="weights to fine-tune (default: a new network)")
    ap.add_argument("--o", default="", help="weights file to write")
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--holdout", type=float, default=0.0, help="fraction of sets held out (reported, not trained)")
    ap.add_argument("--batch", type=int, default=64, help="classes per optimiser step")
    ap.add_argument("--save_every", type=int, default=0, help="also write the weights every N epochs (beside --o)")
    ap.add_argument("--j", type=int, default=1, help="torch threads")
    ap.add_argument("--conv_lr_scale", type=float, default=1.0,
                    help="learning rate of the convolution layers as a multiple of --lr (e.g. 0.1 to fine-tune them slowly)")
    a = ap.parse_args(argv)
    train_shipped(a.data, a.o, a.epochs, a.seed, a.holdout, a.lr, a.j, a.batch, a.save_every, a.init, a.conv_lr_scale)
    return 0


if __name__ == "__main__":
    sys.exit(main())
