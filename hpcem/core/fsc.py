"""Fourier shell correlation and resolution.

Shells are integer radii ``rint(|k|)`` in cycles per box, 0..n//2 (the
corners beyond Nyquist are left out).  Sums run over the half transform with
hermitian weights, so they equal full-grid sums:

    FSC(k) = sum_k Re(A B*) / sqrt(sum_k |A|^2 sum_k |B|^2)
"""
from __future__ import annotations

import numpy as np

from hpcem.core import fourier
from hpcem.core.filters import hermitian_weights


def _transform(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 2:
        return fourier.ft2(x)
    if x.ndim == 3:
        return fourier.ft3(x)
    raise ValueError("fsc needs 2D or 3D arrays")


def shell_sums(A: np.ndarray, B: np.ndarray, n: int, dims: int):
    """Per-shell (sum Re(A B*), sum |A|^2, sum |B|^2) over half grids, shells 0..n//2."""
    shell = (fourier.shell_index2(n) if dims == 2 else fourier.shell_index3(n)).ravel()
    w = np.asarray(hermitian_weights(n, dims)).ravel()
    nsh = n // 2 + 1
    inside = shell < nsh
    shell, w = shell[inside], w[inside]
    a, b = A.ravel()[inside], B.ravel()[inside]
    cross = np.bincount(shell, weights=w * (a.real * b.real + a.imag * b.imag), minlength=nsh)
    pa = np.bincount(shell, weights=w * (a.real ** 2 + a.imag ** 2), minlength=nsh)
    pb = np.bincount(shell, weights=w * (b.real ** 2 + b.imag ** 2), minlength=nsh)
    return cross, pa, pb


def fsc(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None):
    """FSC of two real images or volumes (origin-centred, same cubic shape).

    Returns ``(shells, curve)``: shells ``0..n//2`` (cycles per box) and the
    correlation per shell (0 where a shell has no power)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or len(set(a.shape)) != 1:
        raise ValueError(f"fsc needs two arrays of one cubic shape, got {a.shape} and {b.shape}")
    if mask is not None:
        a, b = a * mask, b * mask
    n = a.shape[-1]
    cross, pa, pb = shell_sums(_transform(a), _transform(b), n, a.ndim)
    den = np.sqrt(pa * pb)
    curve = np.where(den > 0, cross / np.where(den > 0, den, 1.0), 0.0)
    return np.arange(n // 2 + 1), curve


def resolution_at(curve, threshold: float, n: int, angpix: float) -> float:
    """Resolution (Angstrom) where the FSC first falls below ``threshold``.

    Scanning from shell 0, the crossing between the last shell at or above the
    threshold (i-1) and the first below (i) is placed by linear interpolation
    in shell number and converted to ``n * angpix / shell``.  If shell 0 is
    already below, the result is ``inf``; if no shell is below, it is the
    resolution of the last shell, ``n * angpix / (n // 2)`` (Nyquist)."""
    c = np.asarray(curve, dtype=np.float64)
    below = np.nonzero(c < threshold)[0]
    if below.size == 0:
        return float(n * angpix / (c.size - 1))
    i = int(below[0])
    if i == 0:
        return float("inf")
    c0, c1 = c[i - 1], c[i]
    x = (i - 1) + (c0 - threshold) / (c0 - c1)
    return float(n * angpix / x) if x > 0 else float("inf")


def fsc_table(shells, curve, n: int, angpix: float):
    """RELION-style FSC table, one row per shell, as a pandas DataFrame with columns
    rlnSpectralIndex, rlnResolution (1/A), rlnAngstromResolution (999 at shell 0),
    rlnFourierShellCorrelation (what ``io.star.write_star`` takes as a loop block)."""
    import pandas as pd

    c = np.asarray(curve, dtype=np.float64)
    k = np.asarray(shells, dtype=np.int64)
    if k.shape != c.shape:
        raise ValueError("shells and curve differ in length")
    inv = k / (n * angpix)
    ang = np.where(k > 0, n * angpix / np.maximum(k, 1), 999.0)
    return pd.DataFrame({
        "rlnSpectralIndex": k,
        "rlnResolution": inv,
        "rlnAngstromResolution": ang,
        "rlnFourierShellCorrelation": c,
    })


def fsc_to_ssnr(curve, full: bool = False) -> np.ndarray:
    """Per-shell SSNR from a half-map FSC: FSC / (1 - FSC) of one half map, 2 FSC / (1 - FSC) of
    the map of both halves (``full``); zero from the first shell where the FSC falls to 0 on (FSC
    clipped to [0, 0.999]); shell 0 at least as large as shell 1."""
    c = np.clip(np.asarray(curve, np.float64), 0.0, 0.999)
    ssnr = (2.0 if full else 1.0) * c / (1.0 - c)
    z = np.flatnonzero(c[1:] <= 0.0)
    if z.size:
        ssnr[z[0] + 1:] = 0.0
    ssnr[0] = max(ssnr[0], ssnr[1] if ssnr.size > 1 else 1.0)
    return ssnr


def fsc_half_to_full(curve) -> np.ndarray:
    """Expected FSC of the full map to the truth, C_ref = sqrt(2 FSC / (1 + FSC))."""
    c = np.clip(np.asarray(curve, np.float64), 0.0, 1.0)
    return np.sqrt(2.0 * c / (1.0 + c))


def phase_randomise(x: np.ndarray, from_shell: int, rng: np.random.Generator) -> np.ndarray:
    """Randomise Fourier phases at shells >= ``from_shell`` (amplitudes kept)."""
    x = np.asarray(x, np.float64)
    n = x.shape[-1]
    F = _transform(x)
    r = fourier.radius2(n) if x.ndim == 2 else fourier.radius3(n)
    sel = r >= from_shell
    ph = np.exp(2j * np.pi * rng.random(int(sel.sum())))
    F[sel] = F[sel] * ph
    return fourier.ift2(F, n) if x.ndim == 2 else fourier.ift3(F, n)


def fsc_true(fsc_masked, fsc_randomised, from_shell: int) -> np.ndarray:
    """Mask-corrected FSC (Chen et al. 2013): beyond ``from_shell``,
    (FSC_t - FSC_n) / (1 - FSC_n) with FSC_n that of phase-randomised half maps."""
    t = np.asarray(fsc_masked, np.float64)
    nrm = np.asarray(fsc_randomised, np.float64)
    out = t.copy()
    k = np.arange(t.size) >= from_shell
    out[k] = (t[k] - nrm[k]) / np.maximum(1.0 - nrm[k], 1e-12)
    return out
