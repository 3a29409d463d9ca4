"""The bi-level step of RobPicker (seed 004, eqs 6-13).

Lower level: the segmentation weights I take a real optimiser step on the reweighted, corrected
training loss L_tr(I, C, R) (eq 1); that step is the one-step unrolled I' of eq 6.  Upper level:
the hypergradient of the clean meta loss L_val(I') with respect to the label-correction (C) and
reweighting (R) parameters (eqs 9-11) is

    grad_{C,R} L_val(I') = -(d g / d(C,R))^T u,    u = P grad_{I'} L_val(I'),

where g = grad_I L_tr(I, C, R) and P = dI'/dg is the optimiser's step map (the learning rate for
SGD; for Adam the diagonal lr (1 - b1) / ((1 - b1^t) (sqrt(v_hat) + eps)), the second-moment
estimate held fixed).  The mixed second derivative times u is the central finite difference of
eqs 12-13:

    (d g / d(C,R))^T u ~= [grad_{C,R} L_tr(I + e u) - grad_{C,R} L_tr(I - e u)] / (2 e),

with e = ``FD_SCALE`` / |u|, evaluated at the weights I before the step.  Both difference terms
need only forward passes of the U-Net (C and R act after it).  The targets' features and the
reweighting inputs are those of I (held fixed), so that the difference is exactly the derivative
of the g that the lower step used.
"""
from __future__ import annotations

import torch

FD_SCALE = 0.01     # e |u| (DARTS's choice)


def step_map(opt, params) -> list:
    """P = dI'/dg per parameter (tensors broadcastable to it) of the optimiser's last step."""
    group = opt.param_groups[0]
    lr = group["lr"]
    if isinstance(opt, torch.optim.Adam):
        b1, b2 = group["betas"]
        out = []
        for p in params:
            st = opt.state[p]
            t = float(st["step"])
            vhat = st["exp_avg_sq"] / (1.0 - b2 ** t)
            out.append(lr * (1.0 - b1) / (1.0 - b1 ** t) / (vhat.sqrt() + group["eps"]))
        return out
    return [torch.as_tensor(lr, dtype=p.dtype, device=p.device) for p in params]


def meta_direction(opt, params, meta_grads) -> list:
    """u = P grad_{I'} L_val(I') (one tensor per parameter)."""
    return [P * g for P, g in zip(step_map(opt, params), meta_grads)]


@torch.no_grad()
def _shifted(before: list, u: list, e: float) -> list:
    return [b + e * d for b, d in zip(before, u)]


def hypergradient(fd_loss, before: list, u: list, upper: list) -> list:
    """-(d g / d(C,R))^T u by central differences: ``fd_loss(weights)`` is L_tr at the given
    U-Net weights (a list like ``before``) as a differentiable function of the ``upper``
    parameters; returns one gradient per upper parameter (None where unused)."""
    norm = torch.sqrt(sum((d.double() ** 2).sum() for d in u)).item()
    if norm == 0.0:
        return [None] * len(upper)
    e = FD_SCALE / norm
    grads = []
    for sign in (1.0, -1.0):
        loss = fd_loss(_shifted(before, u, sign * e))
        grads.append(torch.autograd.grad(loss, upper, allow_unused=True))
    out = []
    for gp, gm in zip(*grads):
        if gp is None:
            out.append(None)
        else:
            out.append(-(gp - gm) / (2.0 * e))
    return out
