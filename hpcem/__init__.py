"""hpcem: a distributed HPC engine for cryo-EM image processing."""
__version__ = "0.1.0"
