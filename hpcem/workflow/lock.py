"""One lock per Scheme, and the abort signal.

The lock is RELION's: a folder ``.relion_lock_scheme_<name>`` in the project with a file
``lock_scheme`` in it, made atomically (``mkdir``), so that relion_schemer and hpcem schemer
exclude each other.  hpcem writes its process id and host into the file; a lock left by a
schemer that no longer runs on this host (killed) is taken over with one line in the log.

``--abort`` touches RELION's ``RELION_JOB_ABORT_NOW`` in the scheme folder (and in the running
job's folder) and sends SIGTERM to the schemer that holds the lock on this host.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket

from ..errors import InputError
from ..io.atomic import _pid_running

ABORT_FILE = "RELION_JOB_ABORT_NOW"
_TAG = "hpcem schemer"


class SchemeLock:
    def __init__(self, scheme):
        self.dir = os.path.join(scheme.project, ".relion_lock_scheme_" + os.path.basename(scheme.folder))
        self.file = os.path.join(self.dir, "lock_scheme")
        self.scheme = scheme
        self.held = False

    def owner(self):
        """(pid, host) of the hpcem schemer holding the lock; None if free; 'other' if not hpcem's."""
        try:
            with open(self.file) as f:
                words = f.read().split()
        except FileNotFoundError:
            return None if not os.path.isdir(self.dir) else "other"
        if len(words) >= 5 and " ".join(words[:2]) == _TAG and words[2] == "pid":
            try:
                return int(words[3]), words[4]
            except ValueError:
                return "other"
        return "other"

    def running_pid(self):
        """The pid of a live schemer holding the lock on this host, else None."""
        o = self.owner()
        if isinstance(o, tuple) and o[1] == socket.gethostname() and _pid_running(o[0]):
            return o[0]
        return None

    def acquire(self, log=print) -> None:
        for _ in range(2):
            try:
                os.mkdir(self.dir)
            except FileExistsError:
                o = self.owner()
                if isinstance(o, tuple) and o[1] == socket.gethostname() and not _pid_running(o[0]):
                    log(" + taking over the lock of schemer pid %d, which no longer runs" % o[0])
                    shutil.rmtree(self.dir, ignore_errors=True)
                    continue
                if isinstance(o, tuple):
                    raise InputError("scheme %s is running (schemer pid %d on %s); hpcem schemer --scheme %s --abort "
                                     "stops it" % (self.scheme.name, o[0], o[1], self.scheme.name), field="lock")
                raise InputError("scheme %s is locked by %s (not an hpcem schemer); if no schemer runs, remove that "
                                 "folder" % (self.scheme.name, self.dir), field="lock")
            with open(self.file, "w") as f:
                f.write("%s pid %d %s\n" % (_TAG, os.getpid(), socket.gethostname()))
            self.held = True
            return
        raise InputError("could not take the lock %s" % self.dir, field="lock")

    def release(self) -> None:
        if self.held:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.held = False

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def request_abort(scheme, log=print) -> bool:
    """Ask a running scheme to stop; True if a schemer was running here and was signalled."""
    with open(os.path.join(scheme.folder, ABORT_FILE), "a"):
        pass
    job = scheme.jobs.get(scheme.current)
    if job is not None and job.folder and os.path.isdir(os.path.join(scheme.project, job.folder)):
        with open(os.path.join(scheme.project, job.folder, ABORT_FILE), "a"):
            pass
    pid = SchemeLock(scheme).running_pid()
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        log(" + sent the abort signal to schemer pid %d (at node %s)" % (pid, scheme.current))
        return True
    log(" + no schemer of %s runs on this host; %s left in %s" % (scheme.name, ABORT_FILE, scheme.name))
    return False


def clear_abort(scheme) -> None:
    try:
        os.remove(os.path.join(scheme.folder, ABORT_FILE))
    except FileNotFoundError:
        pass


def abort_requested(scheme) -> bool:
    return os.path.exists(os.path.join(scheme.folder, ABORT_FILE))
