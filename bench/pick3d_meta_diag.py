"""What RobPicker's reweighting learns, species by species (issue 15 diagnosis).

On a set written by ``hpcem simulate --mode tomo`` (``--sim``), trains one method in-process with
the library's trainer and logs, every 25 steps, each species' mean patch loss and reweighting
weight (the species of the particle a patch was drawn around) and the reweighting curve
h(0.05, 0.3, 0.6, 0.9); then, with ``--align N``, what the clean meta objective asks of each
species: a_s = <grad l_s, P grad L_val>, the hypergradient of L_val with respect to a weight on
species-s patches being -a_s (P: the Adam step map of the real lower step, grad L_val averaged
over 8 balanced meta batches, N batches of 4 same-species patches); then picks and scores the
held-out tomograms unless ``--no_predict``.

  python bench/pick3d_meta_diag.py --sim SIM --out OUT --method dr_only --steps 150 --align 4
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from hpcem.cli.main import run_job
from hpcem.ml.picker.data import PatchSampler, sphere_voxels
from hpcem.ml.picker.meta import step_map
from hpcem.ml.picker.model_io import save_model
from hpcem.ml.picker.nets import dice_per_sample, forward_with, one_hot
from hpcem.ml.picker.train import PickerTrainer, TrainConfig
from hpcem.ml.picker.training import prepare
from hpcem.parallel.comm import SerialComm


class SpeciesSampler(PatchSampler):
    """The training sampler, remembering the species of each patch's particle."""

    def batch(self, rng, size):
        self.picked = []
        return super().batch(rng, size)

    def _pick(self, rng):
        k = super()._pick(rng)
        self.picked.append(int(self.cls[k]))
        return k


def _flat(ts):
    return torch.cat([t.reshape(-1) for t in ts])


def alignment(tr, nb: int, log) -> None:
    rng = np.random.default_rng(7)
    v = None
    for _ in range(8):
        g = torch.autograd.grad(tr.meta_loss(), tr.params)
        v = list(g) if v is None else [a + b for a, b in zip(v, g)]
    u = _flat([P * t / 8 for P, t in zip(step_map(tr.opt, tr.params), v)])
    S = tr.train
    for s in S.species:
        members = np.flatnonzero(S.cls == s)
        al, ls = [], []
        for _ in range(nb):
            crops = []
            for k in rng.choice(members, 4):
                t = S.tomos[S.owner[k]]
                crops.append(S._crop(t, t.coords[S.index[k]] + rng.uniform(-8, 8, 3), (False, False, False)))
            x = tr._input(np.stack([c[0][None] for c in crops]))
            y = one_hot(tr._tensor(np.stack([c[1] for c in crops]), torch.int64), tr.cfg.n_classes)
            loss = dice_per_sample(torch.softmax(forward_with(tr.seg, tr.names, tr.params, x), 1), y).mean()
            al.append(float(_flat(torch.autograd.grad(loss, tr.params)) @ u))
            ls.append(float(loss.detach()))
        log("align species %d: loss %.3f  a_s %.2e +- %.1e" % (s, np.mean(ls), np.mean(al), np.std(al) / np.sqrt(nb)))


def _report(tr, rows, t0, stats, n_species, log) -> None:
    r = np.array(rows)
    last = r[r[:, 0] > tr.steps_done - 25]
    cells = " ".join("s%d l=%.2f w=%.2f" % (s, last[last[:, 1] == s, 2].mean(), last[last[:, 1] == s, 3].mean())
                     for s in range(1, n_species + 1) if (last[:, 1] == s).any())
    extra = ""
    if tr.dr is not None:
        with torch.no_grad():
            extra += " h(.05,.3,.6,.9)=" + ",".join("%.2f" % v for v in tr.dr(torch.tensor([.05, .3, .6, .9])).tolist())
    if tr.lc is not None:
        extra += " alpha_bias=%.2f" % float(tr.lc.mix2.bias.detach().mean())
    log("step %d %.0fs loss %.3f | %s%s" % (tr.steps_done, time.time() - t0, stats["loss"], cells, extra))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sim", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--method", default="robpicker")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--widths", default="4,8,12,16")
    ap.add_argument("--bottleneck", type=int, default=24)
    ap.add_argument("--diameters", default="240,130,90,50")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--meta_lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--labels", default="labels.star", help="training annotations in --sim (truth_train.star: "
                    "every particle of the training tomograms, the clean-label upper bound)")
    ap.add_argument("--balanced", action="store_true", help="class-balanced training patches (pick3d --balanced)")
    ap.add_argument("--lc_alpha", type=float, default=0.018)
    ap.add_argument("--lc_lr", type=float, default=0.0)
    ap.add_argument("--lr_decay", type=float, default=0.0, help="pick3d --lr_decay (cosine over this last fraction)")
    ap.add_argument("--average", type=float, default=0.0, help="pick3d --average (weights of this last fraction)")
    ap.add_argument("--absent_dice", action="store_true", help="pick3d --absent_dice (absent species in the Dice)")
    ap.add_argument("--absent_above", type=float, default=0.5, help="pick3d --absent_above")
    ap.add_argument("--also_last", action="store_true", help="with --average: also save and score the last step's "
                    "weights (model_last.pt, pred_last, eval_last)")
    ap.add_argument("--align", type=int, default=0, help="batches per species of the alignment table (0: none)")
    ap.add_argument("--no_predict", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    os.makedirs(a.out, exist_ok=True)
    diam = [float(x) for x in a.diameters.split(",")]

    def log(s):
        print(s, flush=True)

    train_set, meta_set, angpix = prepare(os.path.join(a.sim, "tomograms.star"), os.path.join(a.sim, a.labels),
                                          os.path.join(a.sim, "clean.star"), diam, 32, SerialComm(), log)
    cfg = TrainConfig(n_classes=len(diam) + 1, method=a.method, widths=tuple(int(w) for w in a.widths.split(",")),
                      bottleneck=a.bottleneck, steps=a.steps, lr=a.lr, meta_lr=a.meta_lr, seed=a.seed,
                      warmup=a.warmup, lc_alpha=a.lc_alpha, lc_lr=a.lc_lr,
                      lr_decay=a.lr_decay, average=a.average,
                      absent_volumes=tuple(sphere_voxels(diam, angpix)) if a.absent_dice else (),
                      absent_above=a.absent_above)
    tr = PickerTrainer(cfg, SpeciesSampler(train_set, 32, balanced=a.balanced), PatchSampler(meta_set, 32, balanced=True), "cpu")
    seen = {}
    weights = tr._weights

    def logged(losses, active=True):                     # the lower step's call comes first in a step
        w = weights(losses, active)
        if "w" not in seen:
            seen["l"], seen["w"] = losses.detach().clone(), w.detach().clone()
        return w

    tr._weights = logged
    rows, t0 = [], time.time()
    while tr.steps_done < cfg.steps:
        seen.clear()
        stats = tr.step()
        rows += [(tr.steps_done, s, l, w) for s, l, w in zip(tr.train.picked, seen["l"].tolist(), seen["w"].tolist())]
        if tr.steps_done % 25 == 0:
            _report(tr, rows, t0, stats, len(diam), log)
    np.save(os.path.join(a.out, "weights.npy"), np.array(rows))
    settings = {"network": cfg.network(), "diameters": diam, "angpix": angpix, "patch": 32, "method": a.method,
                "steps": cfg.steps, "seed": cfg.seed, "absent_dice": a.absent_dice,
                "absent_above": a.absent_above,
                "trained_on": [t.name for t in train_set], "meta_set": [t.name for t in meta_set]}
    save_model(os.path.join(a.out, "model.pt"), tr.network(), settings)
    models = [("model.pt", "pred", "eval")]
    if a.also_last and tr.n_avg:
        save_model(os.path.join(a.out, "model_last.pt"), tr.seg, settings)
        models.append(("model_last.pt", "pred_last", "eval_last"))
    log("train %.0f s" % (time.time() - t0))
    if a.align:
        alignment(tr, a.align, log)
    if a.no_predict:
        return
    test = os.path.join(a.sim, "tomograms_test.star")
    for model, pred, ev in models:
        run_job("pick3d", {"action": "predict", "model": os.path.join(a.out, model), "i": test,
                           "o": os.path.join(a.out, pred), "j": 1})
        run_job("pick3d", {"action": "evaluate", "picks": os.path.join(a.out, pred, "particles.star"),
                           "truth": os.path.join(a.sim, "truth.star"), "i": test, "diameters": a.diameters,
                           "o": os.path.join(a.out, ev)})


if __name__ == "__main__":
    main()
