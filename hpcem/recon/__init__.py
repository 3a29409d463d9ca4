"""Projection, back-projection, reconstruction and the M-step divides (MAP with tau2, FSC-based
tau2): :mod:`.projector`, :mod:`.mstep`, :mod:`.average2d`, :mod:`.reconstruct` (known poses); the
sparsity + TV regularised reconstructor :mod:`.tv` (solver :mod:`.tv_solver`)."""
from .mstep import WienerMAP  # noqa: F401
from .projector import BackProjector, BackProjector2D, Projector, Projector2D  # noqa: F401
