"""The hypotheses of 2D classification: class k x in-plane angle psi (seed 000, section 3.1.1).

Coarse hypothesis ``j = k * npsi + p`` (psi_c[p]); its two fine children ``k * 2 npsi + 2p + s``
are psi -/+ step/4 (``psi_f``); without oversampling the fine grid is the coarse one.  A hypothesis predicts the class reference rotated in-plane,
``ref_k(A_psi^T r)`` (``rotation_2d(psi)``), through the padded 2D projector; all of them are
projected once per iteration (2D references are small), and their M-step sums are kept dense,
(K 2npsi, M), then rotated back into the class frames (:mod:`hpcem.recon.average2d`).  On a GPU
(``device``) the padded references go to the device once per iteration, are projected there, and
the dense sums stay there until :meth:`InPlaneSpace.host_sums` brings them back for the reduction.
"""
from __future__ import annotations

import numpy as np

from ... import kernels
from ...core.euler import rotation_2d, wrap180
from ...core.fourier import coef_freqs
from ...core.sampling import inplane_angles
from ...estep.xp import namespace
from ...recon.projector import Projector2D
from ...runtime.device import HOST

PAD = 2


class PsiChildren:
    """Fine children ``k * m npsi + m p + s`` (s < m) of coarse ``j = k * npsi + p``: m = 2 with
    oversampling (psi -/+ step/4), 1 without (the fine grid is the coarse one)."""

    def __init__(self, npsi: int, m: int = 2):
        self.npsi, self.m = int(npsi), int(m)

    def expand(self, idx):
        xp = namespace(idx)
        idx = xp.asarray(idx, dtype=xp.int64)
        m = self.m
        base = (idx // self.npsi) * (m * self.npsi) + m * (idx % self.npsi)
        return xp.full(idx.size, m, dtype=xp.int64), (base[:, None] + xp.arange(m)[None, :]).reshape(-1)


class InPlaneSpace:
    pose_keys = ("psi",)
    cap_groups = 1      # the maxsig cap over all hypotheses: with hundreds of classes a cap per
                        # class would oversample thousands of hypotheses per particle

    def __init__(self, K: int, psi_step: float, oversampling: int, n: int, device=HOST):
        self.K, self.n, self.device = int(K), int(n), device
        self.psi_c = inplane_angles(psi_step)
        self.npsi = self.psi_c.size
        o = psi_step / 4.0
        self.psi_f = (self.psi_c[:, None] + np.array([-o, o])[None, :]).ravel() if oversampling > 0 else self.psi_c
        self.Jc1, self.Jf1 = self.npsi, self.psi_f.size
        self.coarse_step_deg = float(psi_step)
        self.children = PsiChildren(self.npsi, self.Jf1 // self.npsi)
        self.refs = None            # (K, n, n) float32, set by the algorithm
        self.data = self.wsum = self.refs_f = None
        self.single_sums = False    # dense sums in complex64 / float32 (VDAM's mini-batches), else double

    def begin(self, kidx, mc, r_max, r_max_coarse, dense=True, n_slots=1):
        """Rotated references of every coarse (mc coefficients) and fine hypothesis (the fine ones
        kept as ``refs_f``), and zeroed dense sums (n_slots K 2npsi, M) complex128 / float64
        (complex64 / float32 with ``single_sums``): one
        row block per slot (VDAM's half sets, :meth:`dense_sums`).  On the CPU only the
        coefficients ``kidx`` are interpolated (project2d_at); on a GPU the whole transforms, then
        the coefficients taken."""
        K, dev = self.K, self.device
        xp = dev.xp
        proj = Projector2D.from_images(self.refs, pad=PAD)
        rot_c, cls_c = rotation_2d(np.tile(self.psi_c, K)), np.repeat(np.arange(K), self.npsi)
        rot_f, cls_f = rotation_2d(np.tile(self.psi_f, K)), np.repeat(np.arange(K), self.Jf1)
        if not dev.gpu:
            ky, kx = coef_freqs(kidx, self.n)
            Rc = kernels.project2d_at(proj.data, rot_c, ky[:mc], kx[:mc], PAD, ref_index=cls_c)
            Rf = kernels.project2d_at(proj.data, rot_f, ky, kx, PAD, ref_index=cls_f)
        else:
            proj.to(dev)
            Rc = proj.project(rot_c, cls_c, r_max=r_max_coarse)
            Rf = proj.project(rot_f, cls_f, r_max=r_max)
            kd = dev.put(kidx)
            Rc = xp.ascontiguousarray(Rc.reshape(len(Rc), -1)[:, kd[:mc]])
            Rf = xp.ascontiguousarray(Rf.reshape(len(Rf), -1)[:, kd])
        single = self.single_sums
        self.data = dev.zeros((n_slots * K * self.Jf1, kidx.size), np.complex64 if single else np.complex128)
        self.wsum = dev.zeros((n_slots * K * self.Jf1, kidx.size), np.float32 if single else np.float64)
        self.refs_f = Rf
        return Rc, Rf

    def host_sums(self):
        """The dense sums (data, wsum) on the host (copied back from a GPU once per E-step) and the
        space's accumulators released."""
        out = self.device.get(self.data), self.device.get(self.wsum)
        self.data = self.wsum = None
        return out

    def dense_sums(self, slot=0):
        rows = slice(slot * self.K * self.Jf1, (slot + 1) * self.K * self.Jf1)
        return self.data[rows], self.wsum[rows]

    def insert(self, res, kidx, r_max):
        raise AssertionError("2D sums are dense")

    def class_of(self, jf):
        return namespace(jf).asarray(jf) // self.Jf1

    def poses(self, jf):
        return {"psi": wrap180(self.psi_f[np.asarray(jf) % self.Jf1])}

    def pose_change(self, prev, new):
        """In-plane angle change (deg) per particle."""
        return np.abs(wrap180(np.asarray(new["psi"]) - np.asarray(prev["psi"])))
