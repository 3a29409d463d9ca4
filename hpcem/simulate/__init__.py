"""Synthetic data with known truth: volumes, particle stacks, 2D class sets."""
from .volumes import blob_volume, conformations  # noqa: F401
from .particles import simulate_projections, simulate_dataset, SimulatedData  # noqa: F401
