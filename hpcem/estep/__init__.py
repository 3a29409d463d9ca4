"""The one E-step of hpcem's likelihood methods, for 2D and 3D.

* :mod:`.batch`: :func:`estep_batch`, one batch (coarse pass, significance, children, fine pass,
  accumulation);
* :mod:`.rank`: :func:`run_estep`, all of a rank's particles over a hypothesis space;
* :mod:`.candidates`: candidate generators (full grid, local search);
* :mod:`.children`, :mod:`.select`: oversampling children and the significant set;
* :mod:`.translations`: the translation grid and the origin prior;
* :mod:`.particles`: the rank's particles in Fourier space.
"""
from .batch import EStepResult, estep_batch  # noqa: F401
from .candidates import FullGrid, LocalSearch  # noqa: F401
from .children import RegularChildren, product_children, ragged_arange, segment_offsets  # noqa: F401
from .particles import FourierParticles  # noqa: F401
from .rank import EStepOptions, EStepSums, coarse_shell, coefficients, run_estep  # noqa: F401
from .select import most_probable_dense, top_per_segment  # noqa: F401
from .translations import TranslationSampling  # noqa: F401
