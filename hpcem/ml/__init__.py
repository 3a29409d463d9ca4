"""Machine learning of hpcem: the 2D class ranker (RELION-4's relion_class_ranker, seed 000
section 3.2; inference in numpy from a weights file, :mod:`hpcem.ml.net`) and the cryo-ET picker
(:mod:`hpcem.ml.picker`).  Training and the picker need the optional ``[ml]`` extra (PyTorch CPU
build, scikit-learn); nothing here imports torch at import time, and :func:`require_torch` gives
the one clear message when the extra is missing."""
from __future__ import annotations

from ..errors import InputError

EXTRA_HINT = 'pip install "hpcem[ml]"'


def require_torch():
    """The torch module, or one InputError naming the [ml] extra."""
    try:
        import torch
    except ImportError:
        raise InputError("needs PyTorch, which is not installed: %s (torch 2.13.0 CPU, scikit-learn)" % EXTRA_HINT,
                         field="torch") from None
    return torch


def require_sklearn():
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise InputError("needs scikit-learn, which is not installed: %s" % EXTRA_HINT, field="scikit-learn") from None
