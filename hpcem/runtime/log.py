"""Logging from rank 0 and progress lines for long loops."""
from __future__ import annotations

import sys
import time


def rank0_log(comm):
    """``log(*parts)`` that prints (flushed) on rank 0 only."""
    def log(*msg):
        if comm.rank == 0:
            print(*msg, flush=True)
    return log


def progress_printer(label: str, every_s: float = 2.0, stream=None):
    """``show(done, total)``: a carriage-return progress line with elapsed time and ETA, at most
    every ``every_s`` seconds and once at the end."""
    stream = stream or sys.stdout
    t0 = time.time()
    last = [-1e9]

    def show(done, total):
        elapsed = time.time() - t0
        if elapsed - last[0] < every_s and done != total:
            return
        last[0] = elapsed
        eta = elapsed / done * (total - done) if done else 0.0
        stream.write("\r%s: %d/%d (%.0f%%), %.0f s, ETA %.0f s" % (
            label, done, total, 100.0 * done / max(total, 1), elapsed, eta))
        if done == total:
            stream.write("\n")
        stream.flush()
    return show
