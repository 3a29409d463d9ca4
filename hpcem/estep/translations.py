"""Translation sampling of the E-step: the coarse grid, its oversampled children, the phases and
the Gaussian prior on each particle's origin (the same for 2D and 3D).

Translations ``t`` (pixels) are searched around each particle's current origin ``o`` (RELION):
the particle is shifted by ``+o`` before the search, and a particle found at ``t`` gets the new
origin ``o - t`` (RELION: the particle sits at ``-origin``), on which the prior is a Gaussian of
width ``sigma_offset`` (Angstrom) centred on the box centre.
"""
from __future__ import annotations

import numpy as np

from ..core.fourier import shift_phases
from ..core.sampling import translation_grid
from .children import RegularChildren
from .xp import namespace


class TranslationSampling:
    """Coarse grid ``coarse`` (T, 2) px within ``offset_range`` at ``offset_step``; each coarse
    point has 4 fine children at +-step/4 in x and y (``fine`` (4T, 2), children of coarse
    ``t``: ``4t .. 4t+3``); without oversampling the fine grid is the coarse one."""

    def __init__(self, offset_range: float, offset_step: float, oversampling: int = 1):
        self.coarse = translation_grid(offset_range, offset_step)
        self.T = len(self.coarse)
        d = offset_step / 4.0
        child = np.array([[-d, -d], [d, -d], [-d, d], [d, d]]) if oversampling > 0 else np.zeros((1, 2))
        self.fine = (self.coarse[:, None, :] + child[None]).reshape(-1, 2)
        m = len(child)
        self.m = m                      # fine children of a coarse translation
        self.step = float(offset_step)
        self.children = RegularChildren(np.arange(m * self.T).reshape(self.T, m))
        self._grids = {}    # array namespace -> (coarse, fine) grids there
        self._phases = None  # (key, coarse, fine) of the last phases()

    def _on(self, xp):
        if xp is np:
            return self.coarse, self.fine
        if xp not in self._grids:     # device copies, made once
            self._grids[xp] = (xp.asarray(self.coarse), xp.asarray(self.fine))
        return self._grids[xp]

    def phases(self, n: int, kidx, mc: int | None = None):
        """Phase factors (coarse (T, mc), fine (4T, M)) on the coefficients ``kidx`` (read-only:
        the last ones are kept and handed out again for the same coefficients, as VDAM's
        mini-batches at one resolution ask for them)."""
        mc = len(kidx) if mc is None else mc
        key = (int(n), int(mc), np.asarray(kidx).tobytes())
        if self._phases is None or self._phases[0] != key:
            phc = np.ascontiguousarray(shift_phases(n, self.coarse, index=kidx[:mc]))
            phf = np.ascontiguousarray(shift_phases(n, self.fine, index=kidx))
            for a in (phc, phf):
                a.flags.writeable = False
            self._phases = (key, phc, phf)
        return self._phases[1], self._phases[2]

    def log_prior(self, o_px, sigma_offset_A: float, angpix: float):
        """Log priors of the new origins ``o - t``: coarse (B, T) float32, fine (B, 4T) float64
        (on the device of ``o_px``)."""
        xp = namespace(o_px)
        coarse, fine = self._on(xp)
        c = angpix ** 2 / (2.0 * sigma_offset_A ** 2)
        o = xp.asarray(o_px, dtype=np.float64)[:, None, :]
        lpt_c = -((o - coarse[None]) ** 2).sum(-1) * c
        lpt_f = -((o - fine[None]) ** 2).sum(-1) * c
        return lpt_c.astype(np.float32), lpt_f

    def new_origins_A(self, o_px, t_fine, angpix: float):
        """Origins (B, 2) in Angstrom of particles found at fine translations ``t_fine``."""
        return (np.asarray(o_px) - self.fine[np.asarray(t_fine)]) * angpix

    def origin_power(self, o_px, pair_i, pair_t, angpix: float):
        """|new origin|^2 in A^2 of fine pairs (particle ``pair_i``, translation ``pair_t``; on
        the device of ``o_px``)."""
        xp = namespace(o_px)
        d = xp.asarray(o_px)[pair_i] - self._on(xp)[1][pair_t]
        return (d ** 2).sum(1) * angpix ** 2
