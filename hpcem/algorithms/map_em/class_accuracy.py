"""What RELION's model STAR says of each 2D class beyond its size: its estimated resolution and the
expected accuracy of its rotational and translational alignment (``rlnEstimatedResolution``,
``rlnAccuracyRotations``, ``rlnAccuracyTranslationsAngst`` in data_model_classes), which the class
ranker (:mod:`hpcem.ml`) takes as features.

* Resolution per class: the last shell (from 1) before the class's SSNR measure falls below its
  threshold (EM: the data-vs-prior SSNR ``T tau2 <W>`` against 1; VDAM: the half-set FSC against
  0.143), as Angstrom.
* Accuracies (as relion_refine and relion_class_ranker estimate them): the smallest in-plane
  rotation (degrees) and shift (pixels, written in Angstrom) of the class reference that changes a
  particle's log-likelihood by ``-ln 0.01 = 4.605``, i.e. the expected
  ``sum_k <CTF^2>_shell |F(k) - F'(k)|^2 / sigma2_shell`` over the independent coefficients up to
  the E-step's limit (hpcem's sigma2 is ``E|N|^2`` of the unnormalised transform, so that is the
  log-likelihood ratio of the two poses).  RELION draws 100 particles with their own CTFs; here the
  particles' mean CTF^2 per shell stands for them.  Steps as RELION's (0.05 deg / 0.1 px upwards),
  capped at 30 deg and 10 px; rotated references come from the 2D projector, so interpolation
  affects both poses alike.
"""
from __future__ import annotations

import numpy as np

from ...core.euler import rotation_2d
from ...core.filters import radial_average
from ...core.fourier import hermitian_weights2, shell_index2, shift_phases
from ...recon.projector import Projector2D

P_001 = 4.60517                      # -ln(0.01)
ROT_MAX, SHIFT_MAX = 30.0, 10.0      # deg, px


def _steps(edges, stop):
    """Grid of RELION's increasing steps: ``edges`` [(below, step), ...] up to ``stop``."""
    out, x = [], 0.0
    while x < stop:
        x = round(x + next(s for below, s in edges if x < below), 6)
        out.append(x)
    return np.array(out)


ROT_GRID = _steps([(0.2, 0.05), (1.0, 0.1), (2.0, 0.2), (5.0, 0.5), (10.0, 1.0), (20.0, 2.0), (np.inf, 5.0)],
                  ROT_MAX)
SHIFT_GRID = _steps([(1.0, 0.1), (2.0, 0.2), (5.0, 0.5), (10.0, 1.0), (np.inf, 2.0)], SHIFT_MAX)


def shells_above(measure, threshold: float) -> np.ndarray:
    """(K,) the last shell from 1 before each row of ``measure`` (K, nsh) falls below
    ``threshold`` (the last shell when it never does)."""
    m = np.atleast_2d(np.asarray(measure, np.float64))
    below = m[:, 1:] < threshold
    first = np.where(below.any(axis=1), below.argmax(axis=1), m.shape[1] - 1)
    return first.astype(np.int64)


def shells_to_angstrom(shells, n: int, angpix: float) -> np.ndarray:
    """Resolution (A) of shell indices; shell 0 (no signal) as the box size."""
    return n * angpix / np.maximum(np.asarray(shells, np.float64), 1.0)


def mean_ctf2(parts, comm, nsh: int) -> np.ndarray:
    """(nsh,) the particles' mean CTF^2 per shell over all ranks (ones without CTF)."""
    if parts.C is None:
        return np.ones(nsh)
    n = parts.n
    total = np.zeros((n, n // 2 + 1))
    for s in range(0, parts.C.shape[0], 4096):
        c = parts.C[s:s + 4096].astype(np.float64)
        total += (c * c).sum(axis=0).reshape(n, n // 2 + 1)
    cnt = np.array([float(parts.C.shape[0])])
    comm.allreduce_(total)
    comm.allreduce_(cnt)
    return radial_average(total / max(cnt[0], 1.0), dims=2)[:nsh]


def _first_crossing(snr, grid, cap):
    """(K,) the first grid value where snr (K, len(grid)) exceeds P_001, else ``cap``."""
    over = snr > P_001
    return np.where(over.any(axis=1), grid[over.argmax(axis=1)], cap)


def expected_accuracies(refs, sigma2, ctf2, r_max: int, angpix: float):
    """(acc_rot deg, acc_trans A), each (K,), of class references ``refs`` (K, n, n) given the
    noise power ``sigma2`` (nsh,) and the mean CTF^2 ``ctf2`` (nsh,) per shell, counting the
    coefficients up to shell ``r_max``."""
    refs = np.asarray(refs, np.float64)
    K, n = refs.shape[0], refs.shape[-1]
    shell = shell_index2(n)
    nsh = n // 2 + 1
    w_shell = np.zeros(nsh)
    lim = min(int(r_max), nsh - 1)
    s2 = np.asarray(sigma2, np.float64)[:nsh]
    w_shell[1:lim + 1] = np.asarray(ctf2, np.float64)[1:lim + 1] / np.maximum(s2[1:lim + 1], 1e-300)
    # independent coefficients: half the full plane
    wk = (0.5 * hermitian_weights2(n) * w_shell[np.minimum(shell, nsh - 1)]).ravel()
    proj = Projector2D.from_images(refs)
    angles = np.concatenate([[0.0], ROT_GRID])
    F = proj.project(rotation_2d(np.tile(angles, K)), np.repeat(np.arange(K), angles.size), r_max=n / 2.0)
    F = F.reshape(K, angles.size, -1)
    d_rot = np.abs(F[:, 1:] - F[:, :1]) ** 2 @ wk                                  # (K, nrot)
    # a shift by s along x or y (RELION draws one of the two): |F|^2 |1 - e^{-2 pi i k s / n}|^2
    P0 = np.abs(F[:, 0]) ** 2                                                      # (K, M)
    sx = np.stack([SHIFT_GRID, np.zeros_like(SHIFT_GRID)], 1)
    gx = np.abs(1.0 - shift_phases(n, sx, dtype=np.complex128).reshape(SHIFT_GRID.size, -1)) ** 2
    gy = np.abs(1.0 - shift_phases(n, sx[:, ::-1], dtype=np.complex128).reshape(SHIFT_GRID.size, -1)) ** 2
    d_sh = (P0 * wk) @ (0.5 * (gx + gy)).T                                         # (K, nshift)
    return _first_crossing(d_rot, ROT_GRID, ROT_MAX), _first_crossing(d_sh, SHIFT_GRID, SHIFT_MAX) * angpix
