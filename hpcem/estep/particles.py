"""A rank's particles as the E-step reads them: masked, Fourier transformed, with their CTFs,
optics groups and the images' power spectra (one place for 2D and 3D, and for the coming
gradient and stochastic methods).

Each particle is multiplied by a soft circular mask (zero outside, or with ``zero_mask=False``
filled with noise of the image's own background mean and standard deviation, seeded by the
particle's index), transformed (hpcem's ft2) and kept whole as a complex64 half transform; its CTF
(when used) as float32.  RELION's normalisation and scale corrections (``--norm``, ``--scale``)
enter every batch: the image divided by the particle's ``norm``, the CTF multiplied by its optics
group's ``scale`` (so the prediction, the back-projection and its weights all carry the scale).  A batch is read
with :meth:`FourierParticles.batch`: restricted to the coefficients ``kidx`` and shifted by
``+origin`` (RELION: the particle sits at ``-origin``), so that the E-step searches translations
around each particle's current origin.

On a GPU (``device``, :mod:`hpcem.runtime.device`) the transforms and CTFs are copied to the
device once after :meth:`FourierParticles.load` (the host copies stay for the initialisation and
the image views) and every batch is gathered, shifted and corrected there: no particle crosses
the bus again.
"""
from __future__ import annotations

import numpy as np

from ..core.ctf import ctf_from_params
from ..core.filters import radial_average
from ..core.fourier import ft2, hermitian_weights2, shell_index2, shift_phases
from ..runtime.device import HOST

CHUNK = 512   # particles read at a time


def fill_with_noise(imgs, mask2, idx) -> np.ndarray:
    """``imgs * mask + noise * (1 - mask)``: white Gaussian noise of each image's mean and standard
    deviation outside the mask, seeded by the particle index ``idx`` (reproducible for any rank
    count)."""
    out = np.empty(imgs.shape, np.float32)
    bg = mask2 < 1e-3
    for i, (img, p) in enumerate(zip(imgs, idx)):
        v = img[bg]
        noise = np.random.default_rng([7, int(p)]).normal(v.mean(), v.std(), img.shape)
        out[i] = img * mask2 + noise * (1.0 - mask2)
    return out


class FourierParticles:
    """Particles ``idx`` (global indices into ``ps``) of this rank, in Fourier space."""

    def __init__(self, ps, idx, mask2, use_ctf: bool, comm, *, zero_mask: bool = True,
                 intact_first_peak: bool = False, device=HOST):
        self.ps, self.comm, self.device = ps, comm, device
        self._on_dev = self._kidx_dev = None     # (X, C) on the device; the last kidx put there
        self.zero_mask, self.intact_first_peak = bool(zero_mask), bool(intact_first_peak)
        self.idx = np.asarray(idx, np.int64)
        self.mask2 = mask2
        self.use_ctf = bool(use_ctf)
        self.n = ps.box
        self.nh = self.n // 2 + 1
        self.nsh = self.n // 2 + 1
        self.shell = shell_index2(self.n).ravel()       # shell of every half-grid coefficient
        self.hw = hermitian_weights2(self.n).ravel()    # its multiplicity in the full grid
        self.groups_all = ps.optics_group_index()
        self.G = int(self.groups_all.max()) + 1 if ps.n else 1
        self.groups = self.groups_all[self.idx]
        self.X = self.C = None
        self.img_power = self.group_counts = None
        self.norm = None     # (nb,) per-particle normalisation correction (None: 1)
        self.scale = None    # (G,) per-optics-group intensity scale (None: 1)

    @property
    def size(self) -> int:
        return self.idx.size

    def nbytes(self) -> int:
        """Memory the transformed particles (and CTFs) take on this rank."""
        return int(self.idx.size * self.n * self.nh * (8 + (4 if self.use_ctf else 0)))

    def load(self) -> None:
        """Read, mask and transform this rank's particles; the mean power spectrum of each optics
        group over all ranks (collective: one Allreduce each for the sums and counts)."""
        ps, n, idx = self.ps, self.n, self.idx
        self.X = np.empty((idx.size, n * self.nh), np.complex64)
        self.C = np.empty((idx.size, n * self.nh), np.float32) if self.use_ctf else None
        power = np.zeros((self.G, self.nsh))
        counts = np.zeros(self.G)
        for s in range(0, idx.size, CHUNK):
            b = idx[s:s + CHUNK]
            imgs = ps.read_images(b)
            F = ft2(imgs * self.mask2 if self.zero_mask else fill_with_noise(imgs, self.mask2, b))
            self.X[s:s + b.size] = F.reshape(b.size, -1)
            if self.C is not None:
                self.C[s:s + b.size] = ctf_from_params(n, ps.angpix, ps.ctf_params(b),
                                                       intact_first_peak=self.intact_first_peak).reshape(b.size, -1)
            pw = radial_average((F.real ** 2 + F.imag ** 2).astype(np.float64), dims=2)
            np.add.at(power, self.groups[s:s + b.size], pw)
            np.add.at(counts, self.groups[s:s + b.size], 1.0)
        self.comm.allreduce_(power)
        self.comm.allreduce_(counts)
        self.img_power = power / np.maximum(counts, 1.0)[:, None]
        self.group_counts = counts
        if self.device.gpu:        # once per run: the E-step reads the particles on the device
            self._on_dev = (self.device.put(self.X), None if self.C is None else self.device.put(self.C))

    def nbytes_device(self) -> int:
        return self.nbytes() if self.device.gpu else 0

    def _kidx(self, kidx):
        """``kidx`` on the device (put once per E-step: the batches share it)."""
        if not self.device.gpu:
            return kidx
        if self._kidx_dev is None or self._kidx_dev[0] is not kidx:
            self._kidx_dev = (kidx, self.device.put(kidx))
        return self._kidx_dev[1]

    def batch(self, sel, kidx, o_px):
        """(X, ctf) of the rank-local particles ``sel`` on coefficients ``kidx``, complex64 /
        float32 (B, M), shifted by ``+o_px`` (B, 2) pixels; on the device's arrays."""
        dev = self.device
        xp = dev.xp
        B = len(sel)
        Xall, Call = (self.X, self.C) if self._on_dev is None else self._on_dev
        rows, cols = dev.put(np.asarray(sel, np.int64)), self._kidx(kidx)
        X = Xall[rows[:, None], cols] * shift_phases(self.n, dev.put(o_px), index=cols)
        if self.norm is not None:
            X /= dev.put(self.norm[sel].astype(np.float32))[:, None]
        c = (Call[rows[:, None], cols] if Call is not None
             else xp.ones((B, len(kidx)), dtype=np.float32))
        if self.scale is not None:
            c = c * dev.put(self.scale[self.groups[sel]].astype(np.float32))[:, None]
        return xp.ascontiguousarray(X, dtype=np.complex64), xp.ascontiguousarray(c, dtype=np.float32)

    def images(self, sel) -> np.ndarray:
        """Masked real-space images (B, n, n) of rank-local particles (from the transforms)."""
        from ..core.fourier import ift2

        return ift2(self.X[sel].reshape(len(sel), self.n, self.nh), self.n)
