"""hpcem I/O: MRC, STAR and particle sets with RELION-compatible semantics.

The names below are loaded on first use (PEP 562): ``hpcem.io.atomic`` alone imports neither
pandas nor scipy."""
from importlib import import_module

_LAZY = {"atomic_write": "atomic", "MrcStack": "mrc", "read_header": "mrc", "read_mrc": "mrc", "write_mrc": "mrc",
         "OpticsGroup": "particles", "ParticleSet": "particles", "write_particle_stack": "particles",
         "read_star": "star", "write_star": "star"}
__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module("." + _LAZY[name], __name__), name)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
