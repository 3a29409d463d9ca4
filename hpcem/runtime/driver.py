"""The one job driver of the iterative methods.

An *algorithm* is a small state object (``hpcem.algorithms.<family>``) with:

* ``kind`` (the checkpoint's job name) and ``config`` (its frozen settings, a Params);
* ``memory_plan() -> MemoryPlan``; ``prepare()`` (read this rank's data; collective);
  ``initialise()`` (a fresh start) or ``restore(state)`` (from a checkpoint's state);
* per iteration: ``e_step() -> acc`` (rank-local sums), ``reduce(acc)`` (the Allreduces),
  ``m_step(acc) -> stats`` (the new model, identical on every rank; a dict for the log);
* ``state() -> dict | None`` (collective; the whole state on rank 0, None when the iteration
  leaves nothing to resume from); ``write(root, state, stats)`` (rank 0: the iteration's files;
  returns the model and data STAR paths named in the optimiser STAR), ``plot(root, state,
  stats)`` (rank 0, PNGs; never stops a run), ``log_line(stats)``;
* ``done() -> bool`` and ``finish(root)`` (collective; after the last iteration).

:func:`run_iterations` runs: plan memory (refuse before any compute), prepare, initialise or
restore, then per iteration E-step, reduce, M-step, write, checkpoint, optimiser STAR, plots,
log; then finish.  Rank 0 is the only writer; every file is written atomically.
"""
from __future__ import annotations

import time

from .checkpoint import save_checkpoint, write_optimiser


def run_iterations(algo, root, comm, log, restart=None, job: dict | None = None, memory_limit=None,
                   timeline: list | None = None):
    """Run ``algo`` to ``algo.done()`` writing into ``root`` (an OutputRoot); ``restart`` is a
    :class:`hpcem.runtime.checkpoint.Checkpoint` to resume from.  ``timeline`` (a list) receives
    one record per iteration: E-step and iteration seconds (before the files are written) and
    this rank's collectives (``comm.traffic``: calls, bytes, seconds per operation)."""
    algo.memory_plan().check(comm, log, memory_limit, detail=getattr(algo, "memory_detail", False))
    if comm.rank == 0:
        root.makedirs()
    algo.prepare()
    if restart is not None:
        algo.restore(restart.state)
        log("continuing from iteration %d" % restart.iteration)
    else:
        algo.initialise()
    while not algo.done():
        t0, traffic0 = time.time(), comm.traffic.snapshot()
        acc = algo.e_step()
        t1 = time.time()
        algo.reduce(acc)
        stats = algo.m_step(acc)
        stats.update(t_estep=t1 - t0, t_iter=time.time() - t0)
        if timeline is not None:
            timeline.append({"t_estep": stats["t_estep"], "t_iter": stats["t_iter"], "r_cur": stats.get("r_cur"),
                             "collectives": comm.traffic.since(traffic0)})
        state = algo.state()
        if comm.rank == 0:
            files = algo.write(root, state, stats) or {}
            if state is not None:
                it = int(state["iteration"])
                ck = root.iteration(it, algo.checkpoint_name)
                save_checkpoint(ck, algo.kind, state, algo.config.to_dict(), job)
                write_optimiser(root, it, algo.config.iters, ck, files.get("model"), files.get("data"))
            _plot(algo, root, state, stats)
            log(algo.log_line(stats))
        comm.barrier()
    algo.finish(root)
    return algo


def _plot(algo, root, state, stats):
    try:
        algo.plot(root, state, stats)
    except Exception as exc:  # a plot must never stop a run
        print("warning: plot not written: %s" % exc, flush=True)
