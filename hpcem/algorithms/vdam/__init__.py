"""VDAM: variable-metric gradient descent with adaptive moments (seed 000, sections 3.1.2-3.1.5),
the mini-batch alternative to EM's M-step, shared by 2D classification and 3D initial models."""
from .options import GradOptions  # noqa: F401
from .schedule import Schedule  # noqa: F401
from .update import Moments, fsc_weights, replace_inactive, vdam_update  # noqa: F401
