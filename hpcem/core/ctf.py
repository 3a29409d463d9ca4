"""Contrast transfer function, RELION's formula and sign convention.

Parameters as in RELION STAR files: defocus U/V in Angstrom (positive =
underfocus), astigmatism angle and phase shift in degrees, voltage in kV,
spherical aberration Cs in mm, amplitude contrast Q (fraction), B-factor in A^2.

For a spatial frequency vector s = (sx, sy) in 1/A (on hpcem's half grid,
s = k / (n * angpix) with k = (kx, ky) from :func:`hpcem.core.fourier.kgrid2`)::

    lambda  = 12.2643247 / sqrt(V (1 + 0.978466e-6 V))          (A, V in volts)
    theta   = atan2(sy, sx)
    dz      = (dU + dV)/2 + (dU - dV)/2 cos(2 (theta - angle))   (> 0 underfocus)
    chi(s)  = pi lambda dz |s|^2 - (pi/2) Cs lambda^3 |s|^4 + phase_shift + atan(Q / sqrt(1 - Q^2))
    CTF(s)  = sin(chi(s)) * exp(-B |s|^2 / 4)

This is RELION's expression ``-sin(K1 df u^2 + K2 u^4 - K5 - K3)`` with its
internal defocus ``df = -dz`` (negative for underfocus), ``K1 = pi lambda``,
``K2 = (pi/2) Cs lambda^3``, ``K3 = atan(Q/sqrt(1-Q^2))``, ``K5`` the phase
shift in radians, rewritten with ``-sin(-x) = sin(x)``.

Sign: ``CTF(0) = sin(K3) = +Q`` and the CTF rises towards +1 at low
frequency for underfocus.  This is the convention of particles with inverted
contrast (protein white), the form RELION processes; the first zero,
``pi lambda dz s^2 + K3 = pi`` (ignoring Cs), moves to lower frequency as
the defocus grows.
"""
from __future__ import annotations

import numpy as np

from hpcem.core import fourier


def electron_wavelength(voltage_kv) -> np.ndarray:
    """Relativistic electron wavelength in Angstrom for an acceleration voltage in kV."""
    v = np.asarray(voltage_kv, dtype=np.float64) * 1e3
    return 12.2643247 / np.sqrt(v * (1.0 + 0.978466e-6 * v))


def ctf2d(n: int, angpix: float, defocus_u, defocus_v, defocus_angle, voltage, cs,
          amp_contrast, phase_shift=0.0, bfactor=0.0, dtype=np.float32, intact_first_peak=False) -> np.ndarray:
    """CTF on the 2D half grid of box ``n`` (pixel size ``angpix`` A).  ``intact_first_peak``:
    1 below the first peak (``chi < pi/2`` while chi still rises), RELION's --ctf_intact_first_peak.

    Scalar parameters give ``(n, n//2+1)``; parameters that are arrays of length
    ``B`` (others broadcast) give ``(B, n, n//2+1)``.  Computed in float64 and
    returned as ``dtype``.  ``angpix`` may also be an array of length ``B``.
    """
    params = [np.asarray(p, dtype=np.float64) for p in
              (defocus_u, defocus_v, defocus_angle, voltage, cs, amp_contrast,
               phase_shift, bfactor, angpix)]
    batched = any(p.ndim > 0 for p in params)
    params = [np.atleast_1d(p).reshape(-1) for p in params]
    du, dv, ang, kv, cs_mm, q, ps, bf, apx = np.broadcast_arrays(*params)
    if np.any(np.abs(q) >= 1.0):
        raise ValueError("amplitude contrast must be in (-1, 1)")

    ky, kx = fourier.kgrid2(n)
    theta = np.arctan2(ky, kx).astype(np.float64)              # (n, h)
    k2 = (ky * ky + kx * kx).astype(np.float64)                # cycles per box, squared
    out = np.empty((du.size,) + theta.shape, dtype)
    for a in range(0, du.size, _BLOCK):       # cache-sized blocks: the same values as one pass, faster
        b = slice(a, a + _BLOCK)
        out[b] = _ctf_block(theta, k2, n, du[b], dv[b], ang[b], kv[b], cs_mm[b], q[b], ps[b], bf[b], apx[b],
                            intact_first_peak)
    return out if batched else out[0]


_BLOCK = 16     # particles per block of ctf2d: a (16, n, n/2+1) float64 temporary stays in L2 up to n ~ 128


def _ctf_block(theta, k2, n, du, dv, ang, kv, cs_mm, q, ps, bf, apx, intact_first_peak):
    """ctf2d (float64) of one block of parameter rows."""
    col = (slice(None), None, None)
    s2 = k2[None] / (n * apx[col]) ** 2                        # |s|^2 in 1/A^2
    lam = electron_wavelength(kv)[col]
    cs_a = cs_mm[col] * 1e7
    dz = 0.5 * (du + dv)[col] + 0.5 * (du - dv)[col] * np.cos(2.0 * (theta[None] - np.deg2rad(ang)[col]))
    k3 = np.arctan(q / np.sqrt(1.0 - q * q))[col]
    chi = (np.pi * lam * dz * s2 - 0.5 * np.pi * cs_a * lam ** 3 * s2 * s2
           + np.deg2rad(ps)[col] + k3)
    out = np.sin(chi)
    if np.any(bf != 0.0):
        out *= np.exp(-bf[col] / 4.0 * s2)
    if intact_first_peak:
        rising = np.pi * lam * dz - np.pi * cs_a * lam ** 3 * s2 > 0      # d chi / d s^2 > 0
        out = np.where(rising & (chi < 0.5 * np.pi), 1.0, out)
    return out


# the keys of ParticleSet.ctf_params() that ctf2d takes, in its argument order
CTF_ARGS = ("defocus_u", "defocus_v", "defocus_angle", "voltage", "cs", "amp_contrast", "phase_shift",
            "bfactor")


def ctf_from_params(n: int, angpix: float, params: dict, angle_offset=0.0, dtype=np.float32,
                    intact_first_peak=False) -> np.ndarray:
    """Batched CTFs ``(B, n, n//2+1)`` from per-particle parameters (``ParticleSet.ctf_params``);
    ``angle_offset`` (deg, scalar or (B,)) is added to the astigmatism angle, which puts the CTF
    into a frame rotated in-plane by that angle (a particle rotated by psi has its CTF's
    astigmatism at angle + psi)."""
    p = dict(params)
    p["defocus_angle"] = np.asarray(p["defocus_angle"], np.float64) + angle_offset
    return ctf2d(n, angpix, *(p[k] for k in CTF_ARGS), dtype=dtype, intact_first_peak=intact_first_peak)


# RELION STAR column -> ctf2d argument, with the default when the column is absent
STAR_CTF_COLUMNS = {
    "rlnDefocusU": ("defocus_u", None),
    "rlnDefocusV": ("defocus_v", None),
    "rlnDefocusAngle": ("defocus_angle", 0.0),
    "rlnVoltage": ("voltage", None),
    "rlnSphericalAberration": ("cs", None),
    "rlnAmplitudeContrast": ("amp_contrast", 0.1),
    "rlnPhaseShift": ("phase_shift", 0.0),
    "rlnCtfBfactor": ("bfactor", 0.0),
}


def ctf_from_columns(n: int, angpix, columns, indices=None, dtype=np.float32) -> np.ndarray:
    """Batched CTFs ``(B, n, n//2+1)`` from a mapping of RELION column names to arrays.

    ``columns`` maps e.g. ``rlnDefocusU`` to per-particle values (optics values
    already expanded per particle, or scalars); ``indices`` selects particles.
    Missing optional columns take RELION's defaults (Q = 0.1, no phase shift, no B).
    """
    kw = {}
    for col, (arg, default) in STAR_CTF_COLUMNS.items():
        if col in columns:
            v = np.asarray(columns[col], dtype=np.float64)
        elif default is not None:
            v = np.asarray(default)
        else:
            raise KeyError(col)
        if indices is not None and v.ndim > 0:
            v = v[indices]
        kw[arg] = np.atleast_1d(v)
    return ctf2d(n, angpix, dtype=dtype, **kw)
