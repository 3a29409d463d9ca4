"""Strong scaling of class2d, refine3d and sml over MPI ranks on one machine, and the
communication model (hpcem.parallel.commmodel) calibrated from it and projected to 1,000 nodes.

For each rank count (``--ranks``, default 1,2,4,8,16 up to this machine's cores; larger counts are
said and skipped unless ``--oversubscribe``) the script runs itself under ``mpiexec -n P``: every
worker times Allreduce / Reduce_scatter / Allgatherv from 1 KiB to 16 MiB through hpcem's Comm,
then runs the jobs through the job driver, recording per iteration the E-step and iteration
seconds and, per collective, calls, bytes and seconds (comm.traffic).  Printed: seconds per
iteration and efficiency t1 / (P tP) per job, the collectives of one iteration at the largest P,
the fitted (alpha, beta) per collective, the model against every measured point, and the model's
table for 1 to 1,000 nodes at realistic sizes (MAP: 1,000,000 particles, 256 px, K = 100; GTM:
100,000 particles, K = 1,000), with where efficiency falls under 50% and why, and a PNG.

    python bench/bench_scaling.py --ranks 1,2 --n 1200 --box 40 --iter 3        # this 2-core machine
    python bench/bench_scaling.py --ranks 1,2,4,8,16 --n 10000 --box 64 --K 100  # the 16-core node
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
JOBS = ("class2d", "refine3d", "sml")
OPS = ("Allreduce", "Reduce_scatter", "Allgatherv")


# ------------------------------------------------------------------ worker (under mpiexec)
def microbench(comm, max_bytes: int, reps: int = 5) -> dict:
    """{op: [(bytes, best seconds)]} of hpcem's Comm collectives, 1 KiB .. max_bytes."""
    out = {op: [] for op in OPS}
    nb = 1024
    while nb <= max_bytes:
        n = nb // 8
        for op in OPS:
            best = np.inf
            for _ in range(reps):
                a = np.ones(n * (comm.size if op == "Reduce_scatter" else 1))
                local = np.ones(n)
                comm.barrier()
                t = time.perf_counter()
                if op == "Allreduce":
                    comm.allreduce_(a)
                elif op == "Reduce_scatter":
                    comm.reduce_scatter_rows(a.reshape(comm.size, n))
                else:
                    comm.allgather_rows(local)
                best = min(best, time.perf_counter() - t)
            best = comm.allreduce(best, op="max")
            full = nb * comm.size if op in ("Reduce_scatter", "Allgatherv") else nb
            out[op].append((full, best))
        nb *= 4
    return out


def run_job(name, a, comm, tmp):
    """Timeline of ``name`` through the job driver, plus the sizes the model needs."""
    from hpcem.cli.inputs import read_particles, read_reference
    from hpcem.runtime.driver import run_iterations
    from hpcem.runtime.output import OutputRoot

    quiet = lambda *m, **k: None  # noqa: E731
    tl, info = [], {}
    with open(os.path.join(a.data, "paths.json")) as f:
        paths = json.load(f)
    diameter = 0.8 * a.box * 3.0
    if name == "class2d":
        from hpcem.algorithms.map_em.class2d import Class2D, Class2DConfig

        ps = read_particles(paths["p2d"], ctf=True)
        cfg = Class2DConfig(K=a.K, iters=a.iter, particle_diameter=diameter, ctf=True, psi_step=10.0,
                            offset_range=3.0, offset_step=1.0, oversampling=1, random_seed=1)
        algo = Class2D(ps, cfg, comm, quiet)
        info = {"N": ps.n, "n": ps.box, "K": a.K, "J": algo.space.Jf1, "T": algo.trans.T}
    elif name == "refine3d":
        from hpcem.algorithms.map_em.config3d import Refine3DConfig
        from hpcem.algorithms.map_em.refine3d import Refine3D

        ps = read_particles(paths["p3d"], ctf=True)
        ref = read_reference(paths["ref"], ps, log=quiet)
        cfg = Refine3DConfig(iters=a.iter, ini_high=30.0, healpix_order=1, auto_local_healpix_order=3,
                             particle_diameter=diameter, ctf=True, offset_range=2.0, offset_step=1.0, random_seed=1)
        algo = Refine3D(ps, ref, cfg, comm, quiet)
        info = {"N": ps.n, "n": ps.box}
    else:
        from hpcem.algorithms.rome.gtm import GTMConfig
        from hpcem.algorithms.rome.sml import SML

        ps = read_particles(paths["p2d"], ctf=True)
        algo = SML(ps, GTMConfig(K=a.gtm_K, iters=a.iter, ctf=True, seed=1), comm, quiet)
        info = {"N": ps.n, "K": a.gtm_K, "D": 3 * int(algo.model.D)}
    run_iterations(algo, OutputRoot(os.path.join(tmp, name)), comm, quiet, timeline=tl)
    return {"timeline": tl, "info": info}


def worker(a) -> int:
    from hpcem.parallel import get_comm

    comm = get_comm()
    tmp = tempfile.mkdtemp(prefix="hpcem_scaling_") if comm.rank == 0 else None
    tmp = comm.bcast(tmp)
    out = {"P": comm.size, "micro": microbench(comm, a.max_bytes) if comm.size > 1 else {}, "jobs": {}}
    for name in a.jobs.split(","):
        out["jobs"][name] = run_job(name, a, comm, tmp)
    if comm.rank == 0:
        with open(a.json, "w") as f:
            json.dump(out, f)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


# ------------------------------------------------------------------ driver
def prepare_data(a) -> None:
    """The simulated data sets (2D classes for class2d and sml, a 3D one with its reference)."""
    from hpcem.core.filters import lowpass
    from hpcem.io.mrc import write_mrc
    from hpcem.simulate.particles import simulate_dataset
    from hpcem.simulate.write import write_dataset

    d2 = simulate_dataset(n=a.box, n_particles=a.n, mode="2d", n_views=10, n_volumes=3, snr=0.05, ctf=True, seed=7)
    d3 = simulate_dataset(n=a.box, n_particles=a.n, snr=0.1, ctf=True, seed=8)
    paths = {"p2d": write_dataset(d2, os.path.join(a.data, "s2d"))["particles"],
             "p3d": write_dataset(d3, os.path.join(a.data, "s3d"))["particles"], "ref": os.path.join(a.data, "ref.mrc")}
    ref = lowpass(np.asarray(d3.volumes[0], np.float64), 30.0, d3.angpix, dims=3).astype(np.float32)
    write_mrc(paths["ref"], ref, d3.angpix)
    with open(os.path.join(a.data, "paths.json"), "w") as f:
        json.dump({k: os.path.abspath(v) for k, v in paths.items()}, f)


def s_per_iter(tl) -> float:
    """Mean seconds per iteration, the first (set-up heavy) left out where there are more."""
    t = [r["t_iter"] for r in tl]
    return float(np.mean(t[1:] if len(t) > 1 else t))


def report(results: dict, a) -> None:
    from hpcem.parallel import commmodel as cm

    Ps = sorted(results)
    print("\n== strong scaling (s/iteration, iterations 2.. ; efficiency t1 / (P tP)); %s" % a.note)
    print("%10s" % "job" + "".join("%16s" % ("%d rank(s)" % P) for P in Ps))
    for job in a.jobs.split(","):
        t1 = s_per_iter(results[Ps[0]]["jobs"][job]["timeline"]) * Ps[0]
        cells = []
        for P in Ps:
            t = s_per_iter(results[P]["jobs"][job]["timeline"])
            cells.append("%7.2f s %5.0f%%" % (t, 100 * t1 / (P * t)))
        print("%10s" % job + "".join("%16s" % c for c in cells))
    Pm = Ps[-1]
    if Pm == 1:
        print("\n(one rank only: no collectives to measure, no model calibration)")
        return
    print("\n== collectives of the last iteration at %d ranks (rank 0: calls, bytes, seconds)" % Pm)
    for job in a.jobs.split(","):
        for op, v in sorted(results[Pm]["jobs"][job]["timeline"][-1]["collectives"].items()):
            print("%10s %-20s %4d calls %12d B %9.4f s" % (job, op, v["calls"], v["bytes"], v["seconds"]))
    intra = {op: cm.fit_link(op, *zip(*results[Pm]["micro"][op]), Pm) for op in OPS}
    intra["small"] = small_link(results[Pm], Pm)
    print("\n== fitted links at %d ranks: %s" % (Pm, "; ".join("%s %s" % (k, v.describe()) for k, v in intra.items())))
    for op in OPS:
        for nb, t in results[Pm]["micro"][op]:
            print("   %-15s %10d B  measured %9.2e s  model %9.2e s" % (op, nb, t, cm.collective_time(op, nb, Pm, intra[op])))
    model_check(results, Ps, intra, a)
    projections(results, Ps, intra, a)


def _small(tl):
    """(calls, seconds) per iteration of the latency-bound collectives (object ones, barriers)."""
    c = [sum(v["calls"] for k, v in r["collectives"].items() if k not in OPS) for r in tl]
    t = [sum(v["seconds"] for k, v in r["collectives"].items() if k not in OPS) for r in tl]
    return float(np.mean(c)), float(np.mean(t))


def small_link(res, P):
    """The latency of one small collective at P ranks, from the jobs' own (object) collectives."""
    from hpcem.parallel import commmodel as cm

    calls, secs = np.sum([_small(j["timeline"]) for j in res["jobs"].values()], axis=0)
    return cm.Link(alpha=secs / max(calls, 1) / max(np.ceil(np.log2(P)), 1), beta=0.0)


def _workloads(results, Ps, a):
    """The MAP and GTM workloads of the measured jobs, calibrated at the fewest ranks (their
    small collectives counted at the most)."""
    from hpcem.parallel import commmodel as cm

    out = {}
    res1 = results[Ps[0]]
    small = {job: _small(results[Ps[-1]]["jobs"][job]["timeline"])[0] for job in results[Ps[-1]]["jobs"]}
    c2 = res1["jobs"].get("class2d")
    if c2:
        i = c2["info"]
        tl = c2["timeline"][1:] or c2["timeline"]
        M = np.mean([cm.coefficients_within(i["n"], r["r_cur"]) for r in tl])
        w = cm.map_workload(i["N"], i["n"], i["K"], i["J"], i["T"], int(M))
        t_e = np.mean([r["t_estep"] for r in tl])
        out["class2d"] = replace(w.calibrated(t_e, np.mean([r["t_iter"] for r in tl]) - t_e), small_calls=small["class2d"])
    g = res1["jobs"].get("sml")
    if g:
        i = g["info"]
        out["sml"] = replace(cm.gtm_workload(i["N"], i["K"], i["D"]).calibrated(s_per_iter(g["timeline"])),
                             small_calls=small["sml"])
    return out


def model_check(results, Ps, intra, a) -> None:
    from hpcem.parallel import commmodel as cm

    ws = _workloads(results, Ps, a)
    print("\n== model against every measured point (s/iteration; Ps[0] = calibration)")
    for job, w in ws.items():
        for P in Ps:
            meas = s_per_iter(results[P]["jobs"][job]["timeline"])
            pr = cm.predict(w, 1, P, intra)
            print("%10s %3d rank(s): measured %8.3f s, model %8.3f s (%+.0f%%), model comm %.4f s" % (
                job, P, meas, pr["t_iter"], 100 * (pr["t_iter"] / meas - 1), pr["t_comm"]))


def projections(results, Ps, intra, a) -> None:
    """The model at realistic sizes for 1 to 1,000 nodes: ranks as fast as the measured ones, and
    ranks ``--gpu_speedup`` times faster (an assumed GPU rate until bench_gpu.py measures it)."""
    from hpcem.parallel import commmodel as cm

    ws = _workloads(results, Ps, a)
    nodes = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000]
    curves = {}
    M = cm.coefficients_within(256, 64)      # E-step radius: 64 shells of 256 px (~2x Nyquist... 4 A at 1 A/px)
    big = {}
    if "class2d" in ws:
        from hpcem.core.sampling import translation_grid

        T = len(translation_grid(5.0, 1.0))     # RELION's 2D defaults: offset range 5, step 1; psi step 10
        big["MAP class2d (1e6 particles, 256 px, K 100)"] = cm.map_workload(1_000_000, 256, 100, 2 * 36, T, M
                                                                            ).like(ws["class2d"])
    if "sml" in ws:
        big["GTM sml (1e5 particles, K 1000)"] = cm.gtm_workload(100_000, 1000, 3 * M).like(ws["sml"])
    for name, w in big.items():
        for speed in (1.0, a.gpu_speedup):
            lines, curves["%s, x%g" % (name, speed)] = cm.table(w, nodes, a.ranks_per_node, intra, speedup=speed)
            print("\n== model: " + "\n".join(lines))
    if curves:
        print("\nwrote " + cm.plot(os.path.join(a.out, "scaling_model.png"), curves))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", default="1,2,4,8,16")
    p.add_argument("--jobs", default=",".join(JOBS))
    p.add_argument("--n", type=int, default=1200, help="particles")
    p.add_argument("--box", type=int, default=40)
    p.add_argument("--K", type=int, default=10, help="class2d classes")
    p.add_argument("--gtm_K", type=int, default=100, help="sml classes")
    p.add_argument("--iter", type=int, default=3)
    p.add_argument("--max_bytes", type=int, default=16 << 20)
    p.add_argument("--ranks_per_node", type=int, default=1, help="ranks per node in the projection (1 per GPU node)")
    p.add_argument("--gpu_speedup", type=float, default=100.0,
                   help="compute rate of a rank in the second projection, times the measured one (assumed)")
    p.add_argument("--oversubscribe", action="store_true")
    p.add_argument("--report_only", action="store_true", help="report the ranks*.json of an earlier run in --out")
    p.add_argument("--out", default="bench_scaling_out")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        return worker(a)
    a.out, a.data = os.path.abspath(a.out), os.path.abspath(os.path.join(a.out, "data"))
    cores = os.cpu_count() or 1
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    ranks = []
    for P in (int(r) for r in a.ranks.split(",")):
        if P > 1 and mpiexec is None:
            print("%d ranks: skipped, mpiexec not found (pip install hpcem[mpich])" % P)
        elif P > cores and not a.oversubscribe:
            print("%d ranks: skipped, this machine has %d cores (--oversubscribe to run anyway)" % (P, cores))
        else:
            ranks.append(P)
    load = os.getloadavg()[0]
    a.note = "%d cores, load average %.1f at the start%s" % (cores, load, " (shared: timings noisy)" if load > 0.5 else "")
    if not ranks and not a.report_only:
        print("bench_scaling: no rank count of --ranks %s can run here; nothing measured" % a.ranks)
        return 0
    os.makedirs(a.out, exist_ok=True)
    t0 = time.time()
    results = {}
    if a.report_only:
        ranks = []
        for P in sorted(int(f[5:-5]) for f in os.listdir(a.out) if f.startswith("ranks") and f.endswith(".json")):
            with open(os.path.join(a.out, "ranks%d.json" % P)) as f:
                results[P] = json.load(f)
    else:
        prepare_data(a)
    for P in ranks:
        js = os.path.join(a.out, "ranks%d.json" % P)
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--json", js, "--data", a.data]
        cmd += ["--jobs", a.jobs, "--n", str(a.n), "--box", str(a.box), "--K", str(a.K), "--gtm_K", str(a.gtm_K),
                "--iter", str(a.iter), "--max_bytes", str(a.max_bytes)]
        if P > 1:
            cmd = [mpiexec, "-n", str(P)] + cmd
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        print("running %d rank(s) ..." % P, flush=True)
        subprocess.run(cmd, check=True, env=env)
        with open(js) as f:
            results[P] = json.load(f)
    report(results, a)
    print("\n(%.0f s in all)" % (time.time() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
