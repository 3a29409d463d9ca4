"""The optional ``[ml]`` extra (PyTorch CPU build, scikit-learn): the cryo-ET picker
(:mod:`hpcem.ml.picker`).  Nothing here imports torch at import time; :func:`require_torch`
gives the one clear message when the extra is missing."""
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
