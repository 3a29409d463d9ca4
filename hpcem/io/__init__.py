"""hpcem I/O: MRC, STAR and particle sets with RELION-compatible semantics.

The names below are loaded on first use (PEP 562): ``hpcem.io.atomic`` alone imports neither
pandas nor scipy."""
from ..lazy import lazy_attributes

_LAZY = {"atomic_write": "atomic", "MrcStack": "mrc", "read_header": "mrc", "read_mrc": "mrc", "write_mrc": "mrc",
         "OpticsGroup": "particles", "ParticleSet": "particles", "write_particle_stack": "particles",
         "read_star": "star", "write_star": "star"}
__all__ = sorted(_LAZY)
__getattr__ = lazy_attributes(__name__, _LAZY)
