"""MPI layer: a communicator wrapper (serial stub without MPI) and decompositions."""
from .comm import Comm, get_comm, SerialComm  # noqa: F401
from .decomp import block_range, particle_blocks, half_groups  # noqa: F401
