"""The hypotheses of 3D classification and refinement: class k x HEALPix direction (asymmetric unit
of the symmetry group) x in-plane angle (seed 000, section 3.1.1).

Coarse orientation ``j1 = d * npsi + p`` of class k is hypothesis ``k * Jc1 + j1``.  Its fine
children (adaptive oversampling) are the HEALPix order + 1 directions ``e`` whose nearest
order-``order`` direction is ``d``, times psi -/+ step/4: ``k * Jf1 + e * 2 npsi + 2p + s``, the
psi corrected for the child's rot change (so that children tile the parent's neighbourhood in
SO(3)).  A hypothesis predicts the Fourier slice of the class volume at its pose (``V(A^T r)``,
padded projector); coarse slices are projected once per iteration (global searches) or per batch
(local searches), fine ones per batch, and each batch's fine sums are back-projected into one
:class:`BackProjector` per class.  On a GPU (``device``) the padded volumes, the slices, the
children tables and the back-projectors live on the device; only hypothesis numbers come to the
host (to compute their Euler angles) and the accumulators once per iteration.
"""
from __future__ import annotations

import numpy as np

from ...core.euler import angular_distance, euler_to_matrix, wrap180
from ... import kernels
from ...core.fourier import coef_freqs, friedel_unique, hermitian_weights2
from ...core.sampling import (angular_step, asymmetric_directions, direction_vectors, inplane_angles,
                              local_neighbours, oversample_directions)
from ...estep import ragged_arange
from ...estep.xp import namespace, repeat
from ...recon.projector import BackProjector, Projector
from ...runtime.device import HOST

PAD = 2
CHUNK = 2048      # slices per projection call


class Sampling3D:
    """Directions x psi of one HEALPix order and their oversampled children."""

    def __init__(self, order, sym, psi_step, oversampling=1):
        self.order, self.sym = int(order), sym
        step = angular_step(order)
        self.psi_step = float(psi_step) if psi_step and psi_step > 0 else step
        self.rot, self.tilt, hp = asymmetric_directions(order, sym)
        self.nd = self.rot.size
        self.psi_c = inplane_angles(self.psi_step)
        self.npsi = self.psi_c.size
        self.Jc1 = self.nd * self.npsi
        o = self.psi_step / 4.0
        self.psi_f = (self.psi_c[:, None] + np.array([-o, o])[None, :]).ravel() if oversampling > 0 else self.psi_c
        self.mpsi = self.psi_f.size // self.npsi          # psi children of a coarse psi (2, or 1)
        if oversampling > 0:
            frot, ftilt, parent = oversample_directions(order)
            loc = np.full(12 * 4 ** order, -1, np.int64)
            loc[hp] = np.arange(self.nd)
            pd = loc[parent]
            keep = np.flatnonzero(pd >= 0)
            order_ = keep[np.argsort(pd[keep], kind="stable")]
            self.frot, self.ftilt, pdk = frot[order_], ftilt[order_], pd[order_]
        else:
            self.frot, self.ftilt, pdk = self.rot.copy(), self.tilt.copy(), np.arange(self.nd)
        self.nfd = self.frot.size
        # in-plane correction of each fine direction e relative to its parent d: with ZYZ angles a
        # small change of direction by drot turns the image by ~drot cos(tilt), so the child
        # (rot_e, tilt_e, psi + dpsi_e) with dpsi_e = (rot_d - rot_e) cos(tilt_e) stays next to its
        # parent (rot_d, tilt_d, psi) in SO(3); without it, children near the poles are turned
        # in-plane by up to the rot difference and do not tile the parent's neighbourhood
        self.dpsi_f = (wrap180(self.rot[pdk] - self.frot) * np.cos(np.deg2rad(self.ftilt))) if oversampling > 0 \
            else np.zeros(self.nfd)
        self.dchild_off = np.concatenate([[0], np.cumsum(np.bincount(pdk, minlength=self.nd))]).astype(np.int64)
        self.Jf1 = self.nfd * self.psi_f.size
        self.coarse_step_deg = max(step, self.psi_step)

    def coarse_euler(self, j1):
        j1 = np.asarray(j1, np.int64)
        d, p = j1 // self.npsi, j1 % self.npsi
        return self.rot[d], self.tilt[d], self.psi_c[p]

    def fine_euler(self, jf1):
        jf1 = np.asarray(jf1, np.int64)
        e, q = jf1 // self.psi_f.size, jf1 % self.psi_f.size
        return self.frot[e], self.ftilt[e], self.psi_f[q] + self.dpsi_f[e]


class Children3D:
    """Children of coarse hypotheses j = k*Jc1 + d*npsi + p: fine j = k*Jf1 + e*m npsi + m p + s for
    the fine directions e of direction d and s < m (m = 2: psi -/+ step/4; 1 without oversampling,
    when the fine directions are the coarse ones)."""

    def __init__(self, samp: Sampling3D):
        self.s = samp
        self._off = {}     # array namespace -> dchild_off there

    def expand(self, idx):
        s = self.s
        xp = namespace(idx)
        off = s.dchild_off if xp is np else self._off.setdefault(xp, xp.asarray(s.dchild_off))
        idx = xp.asarray(idx, dtype=np.int64)
        k, r = idx // s.Jc1, idx % s.Jc1
        d, p = r // s.npsi, r % s.npsi
        cnt_d = off[d + 1] - off[d]
        e = ragged_arange(off[d], cnt_d)     # fine directions are numbered by parent
        rep = repeat(xp, xp.arange(idx.size), cnt_d)
        m = s.mpsi
        base = k[rep] * s.Jf1 + e * m * s.npsi + m * p[rep]
        return m * cnt_d, (base[:, None] + xp.arange(m)[None, :]).reshape(-1)


class ProjectionSpace:
    """The hypothesis space of :func:`hpcem.estep.run_estep` for K class volumes (see the module
    docstring); ``refs`` (K, n, n, n) are set by the caller, ``bps`` hold the iteration's sums."""

    pose_keys = ("rot", "tilt", "psi")

    def __init__(self, samp: Sampling3D, K: int, n: int, ops, bp_kernel: str = "linear", device=HOST):
        self.samp, self.K, self.n, self.ops, self.device = samp, int(K), int(n), ops, device
        self.bp_kernel = bp_kernel
        self.Jc1, self.Jf1 = samp.Jc1, samp.Jf1
        self.children = Children3D(samp)
        self.cap_groups = self.K   # the maxsig cap per class (a few classes)
        self.coarse_step_deg = samp.coarse_step_deg
        self.refs = None
        self.bps = None
        self.row_norm = None   # (weights over the half grid, norm): every slice scaled to that norm
        self.residual = False  # back-project the residuals (SAGD's gradient), weighted by the slices' h / 2

    def _freqs(self, kidx):
        """(ky, kx) int32 of flat half-grid coefficients."""
        return coef_freqs(kidx, self.n)

    def _project(self, k, eul, kidx, r_max):
        """Slices (len, kidx.size) of class k at Euler angles ``eul`` (host) on the coefficients
        ``kidx`` (all inside ``r_max``), on the device: on the CPU only those coefficients are
        interpolated (project3d_at); on a GPU the whole slices, then the coefficients taken."""
        if not self.device.gpu:
            A = euler_to_matrix(*eul).astype(np.float64)
            ky, kx = self._freqs(kidx)
            out = np.empty((A.shape[0], kidx.size), np.complex64)
            for s in range(0, A.shape[0], CHUNK):  # chunks of slices
                out[s:s + CHUNK] = kernels.project3d_at(self._projs[k].data, A[s:s + CHUNK], ky, kx, PAD)
        else:
            xp = self.device.xp
            A = euler_to_matrix(*eul).astype(np.float32)
            out = xp.empty((A.shape[0], kidx.size), dtype=np.complex64)
            nn = self.n * (self.n // 2 + 1)
            kd = self._kidx_on_device(kidx)
            for s in range(0, A.shape[0], CHUNK):  # chunks of slices
                full = self._projs[k].project(A[s:s + CHUNK], r_max=r_max).reshape(-1, nn)
                out[s:s + full.shape[0]] = xp.take(full, kd, axis=1)
        if self.row_norm is not None:
            from ...estep.crosscorr import normalise_rows

            normalise_rows(out, self.device.put(self.row_norm[0][kidx]), self.row_norm[1])
        return out

    def _kidx_on_device(self, kidx):
        if not self.device.gpu:
            return kidx
        if getattr(self, "_kd", (None,))[0] is not kidx:
            self._kd = (kidx, self.device.put(kidx))
        return self._kd[1]

    def _refs_by(self, idx, J1, euler_of, kidx, r_max):
        idx = np.asarray(self.device.get(idx), np.int64)     # hypothesis numbers (U values) to the host
        if self.K == 1:
            return self._project(0, euler_of(idx), kidx, r_max)
        out = self.device.xp.empty((idx.size, kidx.size), dtype=np.complex64)
        kk = idx // J1
        for k in np.unique(kk):  # classes
            sel = np.flatnonzero(kk == k)
            out[self.device.put(sel)] = self._project(int(k), euler_of(idx[sel] % J1), kidx, r_max)
        return out

    def begin(self, kidx, mc, r_max, r_max_coarse, dense=True, n_slots=1):
        if n_slots != 1:
            raise ValueError("ProjectionSpace: slots need dense sums (2D)")
        s, dev = self.samp, self.device
        self._projs = [Projector.from_volume(self.refs[k], pad=PAD).to(dev) for k in range(self.K)]
        self.bps = [BackProjector(self.n, pad=PAD, kernel=self.bp_kernel, device=dev) for _ in range(self.K)]
        kc = kidx[:mc]
        refs_f = lambda idx: self._refs_by(idx, s.Jf1, s.fine_euler, kidx, r_max)  # noqa: E731
        if not dense:
            return (lambda idx: self._refs_by(idx, s.Jc1, s.coarse_euler, kc, r_max_coarse)), refs_f
        return dev.xp.concatenate([self._project(k, s.coarse_euler(np.arange(s.Jc1)), kc, r_max_coarse)
                                   for k in range(self.K)]), refs_f

    def dense_sums(self, slot=0):
        return None

    def insert(self, res, kidx, r_max):
        """Back-project a batch's compacted fine sums (on the coefficients ``kidx``, all inside
        ``r_max``) into the class accumulators: on the CPU with the trilinear kernel only at those
        coefficients (backproject3d_at), else (GPU, --bp_kernel gauss) as whole slices."""
        if self.device.gpu or self.bp_kernel != "linear":
            return self._insert_slices(res, kidx, r_max)
        ky, kx = self._freqs(kidx)
        hd, hw = self._insert_factors(kidx)
        for k in range(self.K):  # classes
            m = np.flatnonzero(res.uniq_j // self.Jf1 == k)
            for c0 in range(0, m.size, CHUNK):
                mm = m[c0:c0 + CHUNK]
                A = euler_to_matrix(*self.samp.fine_euler(res.uniq_j[mm] % self.Jf1)).astype(np.float64)
                kernels.backproject3d_at(np.asarray(res.data[mm] * hd, np.complex64),
                                         np.asarray(res.wsum[mm] * hw, np.float32), A, ky, kx,
                                         self.bps[k].data, self.bps[k].weight, PAD)

    def _insert_slices(self, res, kidx, r_max):
        n, nn, dev = self.n, self.n * (self.n // 2 + 1), self.device
        uniq_j = np.asarray(dev.get(res.uniq_j))            # hypothesis numbers (U values) to the host
        kd = self._kidx_on_device(kidx)
        hd, hw = (dev.put(f) for f in self._insert_factors(kidx))
        for k in range(self.K):  # classes
            m = np.flatnonzero(uniq_j // self.Jf1 == k)
            for c0 in range(0, m.size, 1024):
                mm = m[c0:c0 + 1024]
                md = dev.put(mm)
                D = dev.zeros((mm.size, nn), np.complex64)
                W = dev.zeros((mm.size, nn), np.float32)
                D[:, kd] = res.data[md] * hd
                W[:, kd] = res.wsum[md] * hw
                A = euler_to_matrix(*self.samp.fine_euler(uniq_j[mm] % self.Jf1)).astype(np.float32)
                self.bps[k].insert(D.reshape(-1, n, n // 2 + 1), W.reshape(-1, n, n // 2 + 1), A, r_max=r_max)

    def _insert_factors(self, kidx):
        """(data, weight) factors (kidx.size,) float32 of the back-projection: each independent
        coefficient inserted once (:func:`friedel_unique`: the kx = 0 line holds both Friedel mates),
        or for the residuals (SAGD's gradient) the slices' h / 2 on the data and 1 on the weights."""
        if self.residual:
            return ((hermitian_weights2(self.n) / 2.0).ravel()[kidx].astype(np.float32),
                    np.ones(len(kidx), np.float32))
        once = friedel_unique(self.n).ravel()[kidx]
        return once, once

    def class_of(self, jf):
        return namespace(jf).asarray(jf) // self.Jf1

    def poses(self, jf):
        rot, tilt, psi = self.samp.fine_euler(np.asarray(jf) % self.Jf1)
        return {"rot": rot, "tilt": tilt, "psi": wrap180(psi)}

    def pose_change(self, prev, new):
        return pose_distance(prev, new, self.ops)

    def neighbours(self, results, sigma, nsigma):
        s = self.samp
        return local_neighbours(results["rot"], results["tilt"], results["psi"], sigma, s.order, s.sym,
                                s.psi_step, nsigma=nsigma)

    def coarse_index(self, cls, j1):
        return np.asarray(cls, np.int64) * self.Jc1 + np.asarray(j1, np.int64)

    # ------------------------------------------------------------ the importance sampler's view
    def is_grids(self):
        """Coarse quadrature of the importance sampler: direction unit vectors (nd, 3), in-plane
        angles (npsi,) deg, and their steps (deg)."""
        s = self.samp
        return direction_vectors(s.rot, s.tilt), s.psi_c, angular_step(s.order), s.psi_step

    def is_fine(self, jf):
        """(class, coarse direction, coarse psi, fine direction vectors (P, 3), fine psi deg) of fine
        hypotheses ``jf`` (the coarse ones without oversampling)."""
        s = self.samp
        jf = np.asarray(jf, np.int64)
        k, r = jf // s.Jf1, jf % s.Jf1
        e, q = r // s.psi_f.size, r % s.psi_f.size
        d = np.searchsorted(s.dchild_off, e, side="right") - 1
        return k, d, q // s.mpsi, direction_vectors(s.frot[e], s.ftilt[e]), s.psi_f[q]


def pose_distance(prev, new, ops):
    """Per-particle angular distance (deg) between two poses, the closest symmetry mate."""
    A0 = euler_to_matrix(prev["rot"], prev["tilt"], prev["psi"])
    A1 = euler_to_matrix(new["rot"], new["tilt"], new["psi"])
    d = np.full(A0.shape[0], np.inf)
    for R in ops:  # symmetry operators (a handful)
        d = np.minimum(d, angular_distance(A0 @ R, A1))
    return d
