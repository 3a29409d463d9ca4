"""RobPicker against the supervised (DeepFinder-style) baseline on simulated tomograms (issue 15).

Simulates tomograms (default: the issue's 256 x 256 x 128 voxels at 10 A, four species of 240,
150, 100 and 70 A in abundances 30:10:3:1 at SNR 0.3 per tilt, sphere labels missing 30% of the
particles; DESIGN_NOTES issue 15 third pass says why these), trains the
same U-Net with the same data, patches and number of segmentation steps by every method (the
seed's RobPicker, its DR-only and LC-only ablations, the supervised baseline, and the supervised
baseline given the meta tomogram's clean labels as extra training data), picks the held-out
tomograms, and prints per-species precision / recall / F1, training and prediction times,
prediction voxels per second, and the prediction's scaling from 1 to 2 MPI ranks.  The last line
is the headline ratio: RobPicker's mean F1 over the supervised baseline's.

  python bench/bench_pick3d.py --out bench/out/pick3d [--steps 1000] [--parallel 2] [--j 1]

Runs are reused when their outputs exist (delete the folder to start over).  Timings on a shared
machine are noisy; the F1 numbers are not (every run is seeded).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import pandas as pd

METHODS = ("supervised", "robpicker", "dr_only", "lc_only", "supervised_all")


def _hpcem():
    exe = shutil.which("hpcem", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    return [exe] if exe else [sys.executable, "-m", "hpcem.cli.main"]


def _env(j: int):
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(j)
    return env


def simulate(a, sim):
    if os.path.isfile(os.path.join(sim, "truth.json")):
        return
    cmd = _hpcem() + ["simulate", "--mode", "tomo", "--o", sim, "--n_tomos", str(a.n_tomos), "--size", a.size,
                      "--angpix", str(a.angpix), "--diameters", a.diameters, "--abundance", a.abundance,
                      "--n_particles", str(a.n_particles), "--missed", str(a.missed), "--snr", str(a.snr),
                      "--n_meta", "1", "--n_test", str(a.n_test), "--seed", str(a.seed)]
    subprocess.run(cmd, check=True, env=_env(2))


def _train_cmd(a, sim, method, out):
    labels = os.path.join(sim, "labels.star")
    if method == "supervised_all":
        from hpcem.io.star import read_star, write_star

        labels = os.path.join(a.out, "labels_plus_clean.star")
        tabs = [read_star(os.path.join(sim, f))["particles"] for f in ("labels.star", "clean.star")]
        write_star(labels, {"particles": pd.concat(tabs, ignore_index=True)})
    m = "supervised" if method == "supervised_all" else method
    return _hpcem() + ["pick3d", "train", "--i", os.path.join(sim, "tomograms.star"), "--labels", labels,
                       "--meta_set", os.path.join(sim, "clean.star"), "--diameters", a.diameters, "--o", out,
                       "--method", m, "--steps", str(a.steps), "--patch", str(a.patch), "--widths", a.widths,
                       "--batch", str(a.batch), "--lr", str(a.lr), "--seed", str(a.seed), "--j", str(a.j), "--save_every", "100",
                       "--bottleneck", str(a.bottleneck), "--meta_lr", str(a.meta_lr), "--lc_alpha", str(a.lc_alpha),
                       "--lc_lr", str(a.lc_lr)] + (["--balanced"] if a.balanced else [])


def train_all(a, sim, methods) -> dict:
    """Train every method (``--parallel`` at a time); returns method -> wall seconds."""
    pending = [m for m in methods if not os.path.isfile(os.path.join(a.out, m, "model.pt"))]
    times = _load(a, "train_times.json")
    running = {}
    while pending or running:
        while pending and len(running) < a.parallel:
            m = pending.pop(0)
            out = os.path.join(a.out, m)
            cont = ["--continue"] if os.path.isdir(out) and any(f.endswith("_checkpoint.h5") for f in os.listdir(out)) else []
            log = open(os.path.join(a.out, m + "_train.log"), "a")
            running[m] = (subprocess.Popen(_train_cmd(a, sim, m, out) + cont, stdout=log, stderr=subprocess.STDOUT,
                                           env=_env(a.j)), time.time(), log)
        time.sleep(5)
        for m, (proc, t0, log) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                if proc.returncode != 0:
                    raise RuntimeError("training %s failed; see %s_train.log" % (m, m))
                times[m] = times.get(m, 0.0) + time.time() - t0
                _save(a, "train_times.json", times)
                del running[m]
                print("trained %-15s %.0f s" % (m, times[m]), flush=True)
    return times


def predict(a, sim, method, ranks=1, tag="") -> float:
    out = os.path.join(a.out, method + "_pred" + tag)
    stamp = os.path.join(out, "seconds.json")
    if os.path.isfile(stamp):
        return json.load(open(stamp))["seconds"]
    cmd = _hpcem() + ["pick3d", "predict", "--model", os.path.join(a.out, method, "model.pt"),
                      "--i", os.path.join(sim, "tomograms_test.star"), "--o", out, "--j", str(a.j)]
    if ranks > 1:
        exe = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
        cmd = [exe, "-n", str(ranks)] + cmd
    t0 = time.time()
    subprocess.run(cmd, check=True, env=_env(a.j), stdout=subprocess.DEVNULL)
    dt = time.time() - t0
    json.dump({"seconds": dt}, open(stamp, "w"))
    return dt


def evaluate(a, sim, method) -> dict:
    out = os.path.join(a.out, method + "_pred")
    subprocess.run(_hpcem() + ["pick3d", "evaluate", "--picks", os.path.join(out, "particles.star"),
                               "--truth", os.path.join(sim, "truth.star"), "--i",
                               os.path.join(sim, "tomograms_test.star"), "--diameters", a.diameters, "--o", out],
                   check=True, stdout=subprocess.DEVNULL, env=_env(1))
    return json.load(open(os.path.join(out, "scores.json")))


def _load(a, name):
    p = os.path.join(a.out, name)
    return json.load(open(p)) if os.path.isfile(p) else {}


def _save(a, name, d):
    json.dump(d, open(os.path.join(a.out, name), "w"), indent=1)


def report(a, methods, scores, train_t, pred_t, voxels, scaling):
    S = len(a.diameters.split(","))
    print("\nper-species F1 on %d held-out tomograms (precision / recall in brackets)" % a.n_test)
    print("%-16s" % "method" + "".join("%22s" % ("species %d (%s A)" % (s + 1, a.diameters.split(",")[s]))
                                        for s in range(S)) + "%9s" % "mean F1")
    for m in methods:
        sp = scores[m]["species"]
        cells = "".join("%22s" % ("%.3f (%.2f/%.2f)" % (sp[str(s + 1)]["f1"], sp[str(s + 1)]["precision"],
                                                       sp[str(s + 1)]["recall"])) for s in range(S))
        print("%-16s%s%9.3f" % (m, cells, scores[m]["mean_f1"]))
    print("\ntimes (wall, shared machine): training / prediction of %d tomograms" % a.n_test)
    for m in methods:
        print("  %-16s train %7.0f s   predict %6.1f s   %.3g voxels/s" % (m, train_t.get(m, float("nan")),
                                                                         pred_t[m], voxels / pred_t[m]))
    if scaling:
        print("prediction scaling 1 -> 2 MPI ranks (robpicker model): %.1f s -> %.1f s, speed-up %.2f, "
              "efficiency %.2f (ranks x %d thread(s))" % (scaling[0], scaling[1], scaling[0] / scaling[1],
                                                         scaling[0] / scaling[1] / 2, a.j))
    if "robpicker" in scores and "supervised" in scores:
        print("RobPicker / supervised mean F1: %.3f / %.3f = %.2f" % (
            scores["robpicker"]["mean_f1"], scores["supervised"]["mean_f1"],
            scores["robpicker"]["mean_f1"] / max(scores["supervised"]["mean_f1"], 1e-9)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench/out/pick3d")
    p.add_argument("--n_tomos", type=int, default=11)
    p.add_argument("--n_test", type=int, default=4)
    p.add_argument("--size", default="256,256,128")
    p.add_argument("--angpix", type=float, default=10.0)
    p.add_argument("--diameters", default="240,150,100,70")
    p.add_argument("--abundance", default="30,10,3,1")
    p.add_argument("--n_particles", type=int, default=150)
    p.add_argument("--missed", type=float, default=0.3)
    p.add_argument("--snr", type=float, default=0.3)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--patch", type=int, default=32)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--widths", default="4,8,12,16")
    p.add_argument("--bottleneck", type=int, default=24)
    p.add_argument("--no_balanced", dest="balanced", action="store_false",
                   help="training patches drawn around annotations uniformly (default: class-balanced, every method)")
    p.add_argument("--meta_lr", type=float, default=1e-5)
    p.add_argument("--lc_alpha", type=float, default=0.1)
    p.add_argument("--lc_lr", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--parallel", type=int, default=2, help="training runs at once")
    p.add_argument("--j", type=int, default=1, help="torch threads per process")
    p.add_argument("--no_scaling", action="store_true")
    a = p.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    sim = os.path.join(a.out, "sim")
    methods = [m for m in a.methods.split(",") if m]
    simulate(a, sim)
    train_t = train_all(a, sim, methods)
    pred_t = {m: predict(a, sim, m) for m in methods}
    scores = {m: evaluate(a, sim, m) for m in methods}
    from hpcem.io.tomo_star import read_tomograms
    voxels = sum(int(pd.Series(e.shape).prod()) for e in read_tomograms(os.path.join(sim, "tomograms_test.star")))
    scaling = None
    if not a.no_scaling and "robpicker" in methods:
        scaling = (predict(a, sim, "robpicker", 1, "_n1"), predict(a, sim, "robpicker", 2, "_n2"))
    _save(a, "results.json", {"scores": scores, "train_seconds": train_t, "predict_seconds": pred_t,
                              "scaling": scaling, "args": vars(a)})
    report(a, methods, scores, train_t, pred_t, voxels, scaling)


if __name__ == "__main__":
    main()
