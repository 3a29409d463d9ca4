"""hpcem I/O: MRC, STAR and particle sets with RELION-compatible semantics."""
from hpcem.io.atomic import atomic_write
from hpcem.io.mrc import MrcStack, read_header, read_mrc, write_mrc
from hpcem.io.particles import OpticsGroup, ParticleSet, write_particle_stack
from hpcem.io.star import read_star, write_star

__all__ = ["atomic_write", "MrcStack", "read_header", "read_mrc", "write_mrc", "OpticsGroup",
           "ParticleSet", "write_particle_stack", "read_star", "write_star"]
