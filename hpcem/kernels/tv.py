"""Stencils of the sparsity + total-variation regularised reconstruction (seed 002, eqs 11-22):
``hpcem._core`` (csrc/tv.cpp) for numpy arrays, ``hpcem._cuda`` (cuda/tv.cu) for cupy arrays.
The solver that strings them together is :mod:`hpcem.recon.tv_solver`.

Layout: volumes float32 ``(n, n, n)`` (C order, any origin), half transforms complex64
``(n, n, n//2+1)`` as ``rfftn`` returns them.  Discrete gradient (eq 12): backward differences,
0 on the first plane of each axis; ``h_mu`` the Huber function (Nesterov smoothing of ``|Dx|``,
eq 14) and ``D^T(w u)`` with ``u = Dx / max(|Dx|, mu)`` the gradient of ``sum w h_mu(|Dx|)``
(eqs 15-17).

* :func:`tv_weights`  ``wl1 = 1/(|x| + eps)``, ``wtv = 1/(h_mu(|Dx|) + epsp)`` (eq 11's weights)
* :func:`tv_prox_step`  ``z = soft(y - t grad, t alpha wl1)`` with ``grad = g graw + beta
  D^T(wtv u(y)) + gamma2 (y - xp)`` (eqs 20-22; ``g`` the separable gridding correction,
  ``graw`` the inverse transform of the data residual) and ``gz = g z``; returns
  ``(sum (z-y)^2, sum y^2)``
* :func:`tv_penalties`  ``(sum wl1 |z|, sum wtv h_mu(|Dz|), sum (z - xp)^2)``
* :func:`tv_data_value`  ``(1 / 2n^3) sum_full Wd |Gz - Zc|^2`` from half grids
* :func:`tv_extrapolate`  ``out = p + a (q - p) + b (p - r)`` (real or complex arrays)
* :func:`tv_extrapolate_residual`  the same on half grids plus ``R = Wd (Gy - Zc)``

Sums are in double, accumulated per z plane and added in order (CPU: bitwise independent of the
thread count).
"""
from __future__ import annotations

import numpy as np

from . import _backend

__all__ = ["tv_weights", "tv_prox_step", "tv_penalties", "tv_data_value", "tv_extrapolate",
           "tv_extrapolate_residual"]


def _volume(c, a, name, shape=None, out=False):
    a = c.array(a, name, np.float32, ndim=3, shape=shape, writeable=out)
    return a


def _half(c, a, name, shape, dtype=np.complex64, out=False):
    return c.array(a, name, dtype, shape=shape, writeable=out)


def _half_shape(shape):
    return tuple(shape[:2]) + (shape[2] // 2 + 1,)


def tv_weights(x, eps, epsp, mu, wl1, wtv):
    """In place: ``wl1 = 1/(|x| + eps)``, ``wtv = 1/(h_mu(|Dx|) + epsp)``."""
    c = _backend.args_for("tv_weights", x=x, wl1=wl1, wtv=wtv)
    x = _volume(c, x, "x")
    _volume(c, wl1, "wl1", x.shape, out=True)
    _volume(c, wtv, "wtv", x.shape, out=True)
    e, ep, m = c.number(eps, "eps", positive=True), c.number(epsp, "epsp", positive=True), \
        c.number(mu, "mu", positive=True)
    if not c.gpu:
        _backend.core("tv_weights", x, e, ep, m, wl1, wtv)
    else:
        _backend.cuda("tv_weights", x, *x.shape, e, ep, m, wl1, wtv)
    return wl1, wtv


def tv_prox_step(y, graw, xp, wl1, wtv, g, mu, beta, gamma2, t, alpha, z, gz):
    """One proximal-gradient step into ``z`` and ``gz`` (see the module docstring); returns
    ``(sum (z-y)^2, sum y^2)`` as floats."""
    c = _backend.args_for("tv_prox_step", y=y, graw=graw, xp=xp, wl1=wl1, wtv=wtv, g=g, z=z, gz=gz)
    y = _volume(c, y, "y")
    n = y.shape[0]
    if y.shape != (n, n, n):
        c.fail(f"y: must be a cube (n, n, n), got {tuple(y.shape)}")
    for a, name in ((graw, "graw"), (xp, "xp"), (wl1, "wl1"), (wtv, "wtv")):
        _volume(c, a, name, y.shape)
    _volume(c, z, "z", y.shape, out=True)
    _volume(c, gz, "gz", y.shape, out=True)
    g = c.array(g, "g", np.float32, shape=(n,))
    nums = [c.number(mu, "mu", positive=True), c.number(beta, "beta"), c.number(gamma2, "gamma2"),
            c.number(t, "t", positive=True), c.number(alpha, "alpha")]
    if not c.gpu:
        dz, yy = _backend.core("tv_prox_step", y, graw, xp, wl1, wtv, g, *nums, z, gz)
        return float(dz), float(yy)
    sums = c.xp.zeros(2, np.float64)
    _backend.cuda("tv_prox_step", y, graw, xp, wl1, wtv, g, n, *nums, z, gz, sums)
    s = _backend.to_host(sums)
    return float(s[0]), float(s[1])


def tv_penalties(z, xp, wl1, wtv, mu):
    """``(sum wl1 |z|, sum wtv h_mu(|Dz|), sum (z - xp)^2)`` as floats."""
    c = _backend.args_for("tv_penalties", z=z, xp=xp, wl1=wl1, wtv=wtv)
    z = _volume(c, z, "z")
    for a, name in ((xp, "xp"), (wl1, "wl1"), (wtv, "wtv")):
        _volume(c, a, name, z.shape)
    m = c.number(mu, "mu", positive=True)
    if not c.gpu:
        return tuple(float(v) for v in _backend.core("tv_penalties", z, xp, wl1, wtv, m))
    sums = c.xp.zeros(3, np.float64)
    _backend.cuda("tv_penalties", z, xp, wl1, wtv, *z.shape, m, sums)
    return tuple(float(v) for v in _backend.to_host(sums))


def tv_data_value(Gz, Zc, Wd, n: int) -> float:
    """``(1 / 2 n^3) sum_full Wd |Gz - Zc|^2`` (half grids ``(n, n, n//2+1)`` of a real box ``n``)."""
    c = _backend.args_for("tv_data_value", Gz=Gz, Zc=Zc, Wd=Wd)
    n = c.count(n, "n", minimum=1)
    shape = (n, n, n // 2 + 1)
    _half(c, Gz, "Gz", shape)
    _half(c, Zc, "Zc", shape)
    _half(c, Wd, "Wd", shape, np.float32)
    if not c.gpu:
        return float(_backend.core("tv_data_value", Gz, Zc, Wd, n))
    out = c.xp.zeros(1, np.float64)
    _backend.cuda("tv_data_value", Gz, Zc, Wd, n, n, n, out)
    return 0.5 * float(_backend.to_host(out)[0]) / float(n) ** 3


def _as_float(c, a, name, out=False):
    a = c.array(a, name, (np.float32, np.complex64), writeable=out)
    return a.view(np.float32) if a.dtype == np.complex64 else a


def tv_extrapolate(p, q, r, a, b, out):
    """In place ``out = p + a (q - p) + b (p - r)`` (float32 or complex64 arrays of one shape)."""
    c = _backend.args_for("tv_extrapolate", p=p, q=q, r=r, out=out)
    arrs = [_as_float(c, v, name) for v, name in ((p, "p"), (q, "q"), (r, "r"))]
    o = _as_float(c, out, "out", out=True)
    if any(v.shape != o.shape for v in arrs):
        c.fail("p, q, r and out must have one shape and dtype")
    fa, fb = float(a), float(b)
    if not c.gpu:
        _backend.core("tv_extrapolate", *arrs, fa, fb, o)
    else:
        _backend.cuda("tv_extrapolate", *arrs, int(o.size), fa, fb, o)
    return out


def tv_extrapolate_residual(Gp, Gq, Gr, a, b, Wd, Zc, Gy, R):
    """In place ``Gy = Gp + a (Gq - Gp) + b (Gp - Gr)`` and ``R = Wd (Gy - Zc)`` (half grids)."""
    c = _backend.args_for("tv_extrapolate_residual", Gp=Gp, Gq=Gq, Gr=Gr, Wd=Wd, Zc=Zc, Gy=Gy, R=R)
    Gp = c.array(Gp, "Gp", np.complex64, ndim=3)
    shape = tuple(Gp.shape)
    for v, name in ((Gq, "Gq"), (Gr, "Gr"), (Zc, "Zc")):
        _half(c, v, name, shape)
    _half(c, Wd, "Wd", shape, np.float32)
    _half(c, Gy, "Gy", shape, out=True)
    _half(c, R, "R", shape, out=True)
    fa, fb = float(a), float(b)
    if not c.gpu:
        _backend.core("tv_extrapolate_residual", Gp, Gq, Gr, fa, fb, Wd, Zc, Gy, R)
    else:
        _backend.cuda("tv_extrapolate_residual", Gp, Gq, Gr, int(np.prod(shape)), fa, fb, Wd, Zc, Gy, R)
    return Gy, R
