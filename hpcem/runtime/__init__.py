"""What every job shares: the iteration driver, the checkpoint schema, ``--continue``, the output
rootname, the memory planner, validated parameters and logging.

The names below are loaded on first use (PEP 562), so that importing one light submodule (e.g.
``hpcem.runtime.params`` for the command line) does not import h5py, pandas and scipy."""
from ..lazy import lazy_attributes

_LAZY = {"Checkpoint": "checkpoint", "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint",
         "run_iterations": "driver", "MemoryPlan": "memory", "OutputRoot": "output", "Params": "params",
         "param": "params"}
__all__ = sorted(_LAZY)
__getattr__ = lazy_attributes(__name__, _LAZY)
