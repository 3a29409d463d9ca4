"""The M-step of 2D classification: class averages from the E-step's sums per (class, in-plane
angle), MAP-regularised (seed 000 eq 5).

Each (class, psi) accumulator holds sums in the frame of its rotated reference.  It is rotated
back into the class frame by resampling its real-space image through the padded 2D projector
(the weights through an unpadded one: a gather, so discrete psi never leaves gaps in the Fourier
grid), and the rotated sums are added over psi.  Then ``A = data / (weight + 1/(T tau2))``.

The rotation runs in single precision, so it is applied to sums already reduced over ranks
(each rank rotating its share of the rows, :meth:`Comm.reduce_scatter_rows`): rotating each
rank's partial sums would round them separately, and 1 and N ranks would then differ by ~1e-7,
enough to flip the class of a particle whose posterior is flat.
"""
from __future__ import annotations

import numpy as np
from scipy.fft import next_fast_len

from ..core.euler import rotation_2d
from .. import kernels
from ..core.fourier import coef_freqs, freqs, friedel_unique, ift2, shell_index2
from .projector import BackProjector2D, Projector2D, padded_estimate

PAD = 2


def band_box(n: int, r_cur: int) -> int:
    """The smallest even FFT-friendly box (at most ``n``) that holds shells up to ``r_cur`` with
    the two-coefficient margin bilinear interpolation reads."""
    m = next_fast_len(2 * int(r_cur) + 6, real=True)
    return int(min(n, m + m % 2))


def band_index(kidx, n: int, m: int) -> np.ndarray:
    """The flat (m, m//2+1) half-grid indices of the flat (n, n//2+1) coefficients ``kidx``
    (all within the m box): the same frequencies on the smaller grid."""
    ky, kx = np.divmod(np.asarray(kidx), n // 2 + 1)
    return (freqs(n)[ky] % m) * (m // 2 + 1) + kx


def rotate_back(data, wsum, kidx, psi_f, K: int, n: int, r_cur: int, row0: int = 0):
    """Sums over psi of (class, psi) accumulators rotated into the class frames:
    ``(D (K, n, n//2+1) complex128, W float64)``, zero beyond shell ``r_cur``.  ``data`` /
    ``wsum`` (R, M) hold rows ``row0 .. row0 + R`` of the (K * len(psi_f), M) accumulators (row
    ``k * len(psi_f) + q`` is class k at psi_f[q]); any row range works, so that ranks can each
    rotate their share of the reduced rows.

    The accumulators hold only shells up to ``r_cur``, so they are rotated on the band-limited
    box :func:`band_box` (the same frequencies, the same padded-grid spacing, fewer pixels); rows
    no particle reached are skipped."""
    nh, npsi = n // 2 + 1, len(psi_f)
    m = band_box(n, r_cur)
    mh = m // 2 + 1
    kidx_m = band_index(kidx, n, m)
    r_max = r_cur + 1.0
    Dk = np.zeros((K, len(kidx)), np.complex128)
    Wk = np.zeros((K, len(kidx)), np.float64)
    live = np.flatnonzero(np.any(wsum != 0, axis=1))
    for a in range(0, live.size, 64):          # chunks of rows, for memory
        loc = live[a:a + 64]
        rows = row0 + loc
        A_inv = np.swapaxes(rotation_2d(psi_f[rows % npsi]), 1, 2)
        full = np.zeros((loc.size, m * mh), np.complex128)
        full[:, kidx_m] = data[loc]
        idx = np.arange(loc.size)
        rot = Projector2D.from_images(ift2(full.reshape(-1, m, mh), m), pad=PAD).project(A_inv, idx, r_max=r_max)
        wf = np.zeros((loc.size, m * mh), np.complex64)
        wf[:, kidx_m] = wsum[loc]
        wrot = Projector2D(wf.reshape(-1, m, mh), m, pad=1).project(A_inv, idx, r_max=r_max).real
        cls = rows // npsi
        first = np.flatnonzero(np.r_[True, cls[1:] != cls[:-1]])      # the chunk's class segments
        Dk[cls[first]] += np.add.reduceat(rot.reshape(loc.size, -1)[:, kidx_m].astype(np.complex128), first, axis=0)
        Wk[cls[first]] += np.add.reduceat(wrot.reshape(loc.size, -1)[:, kidx_m].astype(np.float64), first, axis=0)
    D = np.zeros((K, n * nh), np.complex128)
    W = np.zeros((K, n * nh), np.float64)
    D[:, kidx], W[:, kidx] = Dk, Wk
    return D.reshape(K, n, nh), W.reshape(K, n, nh)


def scatter_back(data, wsum, kidx, psi_f, K: int, n: int, r_cur: int, row0: int = 0, refs=None) -> BackProjector2D:
    """The (class, psi) rows of :func:`rotate_back` back-projected into K padded class accumulators
    (bilinear scatter, the adjoint of the projection: no transform per row), for
    :func:`padded_sums` once the accumulators are summed over ranks; with ``refs`` (the rows'
    predictions, (J, M) in single precision, row r predicted by ``refs[r % J]``) the residual rows
    ``data - wsum refs``.
    Scattering the data themselves is 6-8% off the resampling gather; the residual around a
    reference 25% off the truth, 2%, as the gather (VDAM's mini-batches).  One compiled call
    (:func:`hpcem.kernels.backproject2d_at`) on the rows' coefficients ``kidx`` (all within
    ``r_cur``) in raster order, the kx = 0 line's Friedel mates once: the sums of backproject2d on
    the rows put on the full half grid, without building them.  The accumulators are single
    precision (complex64 / float32: a quarter less time than double, sums 2e-7 relative off the
    double ones; :func:`padded_sums` continues in double)."""
    npsi = len(psi_f)
    bp = BackProjector2D(n, K, pad=PAD, dtype=np.complex64)
    rows = row0 + np.arange(data.shape[0])
    ky, kx = coef_freqs(kidx, n)
    raster = np.argsort(kidx, kind="stable")
    cols = raster[friedel_unique(n).ravel()[kidx[raster]] > 0]    # the kx = 0 line holds both mates: one
    kernels.backproject2d_at(data, wsum, rotation_2d(psi_f[rows % npsi]), rows // npsi, ky, kx, bp.data,
                             bp.weight, PAD, cols=cols, refs=None if refs is None else np.asarray(refs, np.complex64),
                             pred_index=None if refs is None else rows % len(refs))
    return bp


def padded_sums(bp: BackProjector2D, r_cur: int):
    """``(D, W)`` (K, n, n//2+1) on the n box from summed scatter accumulators: ``W X`` and ``W``
    of :func:`hpcem.recon.projector.padded_estimate`, zero beyond shell ``r_cur``."""
    D, W = bp.completed()
    X, Wn = padded_estimate(D, W, bp.n, PAD, ndim=2)
    Wn *= shell_index2(bp.n) <= r_cur
    return X * Wn, Wn


def class_averages(D, W, tau2, fudge: float, shell2, inside, mask) -> np.ndarray:
    """Real-space class averages (K, n, n) float32: ``D / (W + 1/(fudge tau2))`` inside the
    resolution limit (shells with no prior power are zero), masked."""
    K, n = D.shape[0], D.shape[1]
    nsh = tau2.shape[1]
    refs = np.empty((K, n, n), np.float32)
    for k in range(K):  # classes
        t2 = fudge * tau2[k][np.minimum(shell2, nsh - 1)]
        reg = np.where(t2 > 0, 1.0 / np.maximum(t2, 1e-300), np.inf)
        F = np.where(inside & np.isfinite(reg), D[k] / (W[k] + reg), 0.0)
        refs[k] = (ift2(F, n) * mask).astype(np.float32)
    return refs
