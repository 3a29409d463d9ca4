"""relion_refine --grad's settings (RELION-4 flag names and defaults)."""
from __future__ import annotations

from dataclasses import dataclass

from ...runtime.params import NON_NEGATIVE, Params, param

IN_0_1 = (lambda v: 0.0 <= v <= 1.0, "in [0, 1]")


@dataclass(frozen=True)
class GradOptions(Params):
    grad: bool = param(False, "VDAM: gradient updates from mini-batches instead of EM iterations (--iter counts "
                       "mini-batches, 200 unless given)", action="store_true", group="vdam")
    grad_ini_frac: float = param(0.3, "fraction of the mini-batches in the initial phase (small batches, step "
                                 "0.9)", check=IN_0_1, group="vdam")
    grad_fin_frac: float = param(0.2, "fraction of the mini-batches in the final phase (large batches, final "
                                 "step)", check=IN_0_1, group="vdam")
    grad_ini_subset: int = param(-1, "particles per initial mini-batch (-1: 0.5%% of the set, within [200, "
                                 "10,000] in 2D, [200, 5,000] in 3D)", group="vdam")
    grad_fin_subset: int = param(-1, "particles per final mini-batch (-1: 5%% (2D) or 10%% (3D) of the set, "
                                 "within [1,000, 100,000] / [1,000, 50,000])", group="vdam")
    grad_stepsize: float = param(-1.0, "final step size (-1: 0.3 in 2D, 0.5 in 3D)", group="vdam")
    grad_min_resol: float = param(20.0, "frequencies below this resolution (A) are always updated in full "
                                  "(not weighted by the half-set FSC)", check=NON_NEGATIVE, group="vdam")
    class_inactivity_threshold: float = param(0.1, "a class whose posterior mass falls below this / K takes "
                                              "over the most active class's moments (EM: is re-seeded from the "
                                              "largest class in the first 3/4 of the iterations)",
                                              check=NON_NEGATIVE, group="vdam")
    grad_em_iters: int = param(0, "the last this many of --iter are EM iterations over all particles (exact "
                               "class averages and assignments after the mini-batches)", check=NON_NEGATIVE,
                               group="vdam")
    grad_write_iter: int = param(10, "write the model and a checkpoint every this many mini-batches (and the "
                                 "last)", check=(lambda v: v >= 1, ">= 1"), group="vdam")
    init_blobs: bool = param(True, "start from random Gaussian blobs, different per class (--no-init_blobs: "
                             "from random particles)", action=__import__("argparse").BooleanOptionalAction,
                             group="vdam")

    def em_iters(self) -> int:
        """How many of the last ``--iter`` are EM iterations (``--grad_em_iters``)."""
        return self.grad_em_iters
