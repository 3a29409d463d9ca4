"""What every job shares: the iteration driver, the checkpoint schema, ``--continue``, the output
rootname, the memory planner, validated parameters and logging.

The names below are loaded on first use (PEP 562), so that importing one light submodule (e.g.
``hpcem.runtime.params`` for the command line) does not import h5py, pandas and scipy."""
from importlib import import_module

_LAZY = {"Checkpoint": "checkpoint", "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint",
         "run_iterations": "driver", "MemoryPlan": "memory", "OutputRoot": "output", "Params": "params",
         "param": "params"}
__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module("." + _LAZY[name], __name__), name)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
