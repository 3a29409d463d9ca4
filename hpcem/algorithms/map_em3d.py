"""3D classification and 3D auto-refinement by regularised-likelihood (MAP) EM, as RELION does it
(seed 000, section 3.1.1, eqs 1-6).

Model: particle ``X`` = CTF x Fourier slice of class volume ``V_k`` at pose ``A`` (``V(A^T r)``),
shifted by the translation, plus Gaussian noise of power ``sigma2`` per shell and optics group;
``V_k`` has a Gaussian prior of power ``tau2_k`` per shell; offsets a Gaussian prior of width
``sigma_offset`` (on the particle's total origin); class priors ``pi_k``.

Hypotheses: K x HEALPix directions of the asymmetric unit of ``sym`` x psi x translations.  The
translation grid is centred on each particle's current origin (RELION), the particle being
pre-shifted by it.  The E-step is :func:`hpcem.algorithms.estep.estep_batch`: a coarse pass (dense
SGEMM over the whole grid, or, for local searches, exact pairs over the orientations within
3 sigma_ang of the current pose with a Gaussian angular prior), the significant set, its children
(HEALPix order + 1 directions x psi +/- step/4, psi corrected for the child's rot change, x
translations +/- step/4) evaluated exactly, and the
accumulated sums ``sum w c X conj(ph)/sigma2``, ``sum w c^2/sigma2`` of every fine orientation, which
are back-projected per batch (``BackProjector`` per class, padding 2).

M-step: one Allreduce per accumulator (within the half group for refine3d), then
``V = data / (weight + 1 / (pad^3 tau2_fudge tau2))`` (the padded accumulators hold pad^3 less weight
per voxel), masked by a soft sphere of the particle diameter.
  * class3d: ``tau2`` of each class estimated from this iteration's sums: power of the
    unregularised masked reconstruction less its noise power (``<mask^2> / <W>`` per shell, n-box
    units), zero beyond the E-step's resolution limit (the previous map's power is no estimate
    there: it had no data beyond the previous limit, so using it kept those shells regularised to
    zero and the resolution limit could not rise), class priors,
    sigma_offset, sigma2, next resolution limit where ``tau2_fudge tau2 <W>`` (SSNR) drops below 1.
    Initialisation: the first iteration aligns every particle to the low-passed reference and
    back-projects it into a random class (seeded by particle index), so the K starting maps are
    reconstructions from K random subsets (RELION's random perturbation of the classes).
  * refine3d: the two halves are refined independently; each M-step first reconstructs both
    half maps lightly regularised (``run_half?_class001_unfil``), exchanges them, and derives from
    their FSC (masked by the particle sphere) the SSNR of a half map, ``FSC/(1-FSC)``, and
    ``tau2 = SSNR / <W>`` (noise power of a half map per voxel = ``1/<W>``), which regularises the
    half references.  Resolution = FSC 0.143; next ``r_cur`` = that shell + margin.  HEALPix order +1
    when the resolution stalls while the mean pose changes are below the angular step, or when the
    step exceeds twice the resolution-driven accuracy ``deg(res / R_particle)`` (but into local searches
    only once the global search has stalled, or after 5 iterations at that order); local searches (sigma_ang = step) from ``auto_local_healpix_order``;
    converged after two iterations at the finest order without resolution gain and with mean
    changes below the step; then a final iteration at Nyquist combines both halves (SSNR of the
    full map ``2 FSC/(1-FSC)``) into ``run_class001.mrc``.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from .estep import RegularChildren, estep_batch, ragged_arange
from .map_em import CTF_KEYS, available_memory
from ..core.ctf import ctf2d
from ..core.euler import angular_distance, euler_to_matrix
from ..core.filters import lowpass, radial_average
from ..core.fourier import ft2, ft3, hermitian_weights2, shell_index2, shift_phases
from ..core.masks import soft_circular_mask, soft_spherical_mask
from ..core.projector import BackProjector, Projector
from ..core.sampling import (angular_step, asymmetric_directions, inplane_angles, local_neighbours,
                             oversample_directions, translation_grid)
from ..core.symmetry import symmetry_ops
from ..errors import InputError
from ..parallel.decomp import block_range

PAD = 2


@dataclass(frozen=True)
class Map3DConfig:
    K: int = 1
    iters: int = 25                  # class3d: iterations; refine3d: the most iterations
    sym: str = "C1"
    particle_diameter: float = 0.0   # A; 0: 0.8 * box
    ctf: bool = True
    healpix_order: int = 2
    psi_step: float = 0.0            # deg; 0: the angular step of the HEALPix order
    offset_range: float = 5.0        # px
    offset_step: float = 1.0         # px
    oversampling: int = 1
    tau2_fudge: float = 4.0
    ini_high: float = 40.0
    random_seed: int = 0
    batch: int = 0
    frac: float = 0.999
    maxsig: int = 30
    margin_shells: int = 4
    mask_width: float = 5.0
    auto_local_healpix_order: int = 4   # refine3d
    max_healpix_order: int = 0          # refine3d; 0: from the Nyquist accuracy
    refine: bool = False
    coarse_factor: float = 1.2          # coarse pass up to (angular step arc at the radius)/factor; 0: all


# ----------------------------------------------------------------------------- sampling
class Children3D:
    """Children of coarse hypotheses j = k*Jc1 + d*npsi + p: fine j = k*Jf1 + e*2npsi + 2p + s for
    the fine directions e of direction d and s in {0, 1} (psi -/+ step/4)."""

    def __init__(self, samp):
        self.s = samp

    def expand(self, idx):
        s = self.s
        idx = np.asarray(idx, np.int64)
        k, r = idx // s.Jc1, idx % s.Jc1
        d, p = r // s.npsi, r % s.npsi
        cnt_d = s.dchild_off[d + 1] - s.dchild_off[d]
        e = s.dchild[ragged_arange(s.dchild_off[d], cnt_d)]
        rep = np.repeat(np.arange(idx.size), cnt_d)
        base = k[rep] * s.Jf1 + e * 2 * s.npsi + 2 * p[rep]
        fine = (base[:, None] + np.arange(2)[None, :]).reshape(-1)
        return 2 * cnt_d, fine


class Sampling3D:
    def __init__(self, order, sym, psi_step, offset_range, offset_step, K, oversampling=1):
        self.order = int(order)
        step = angular_step(order)
        self.psi_step = float(psi_step) if psi_step and psi_step > 0 else step
        self.rot, self.tilt, hp = asymmetric_directions(order, sym)
        self.nd = self.rot.size
        self.psi_c = inplane_angles(self.psi_step)
        self.npsi = self.psi_c.size
        self.Jc1 = self.nd * self.npsi
        o = self.psi_step / 4.0 if oversampling > 0 else 0.0
        self.psi_f = (self.psi_c[:, None] + np.array([-o, o])[None, :]).ravel()
        if oversampling > 0:
            frot, ftilt, parent = oversample_directions(order)
            loc = np.full(12 * 4 ** order, -1, np.int64)
            loc[hp] = np.arange(self.nd)
            pd = loc[parent]
            keep = np.flatnonzero(pd >= 0)
            order_ = keep[np.argsort(pd[keep], kind="stable")]
            self.frot, self.ftilt = frot[order_], ftilt[order_]
            pdk = pd[order_]
        else:
            self.frot, self.ftilt = self.rot.copy(), self.tilt.copy()
            pdk = np.arange(self.nd)
        self.nfd = self.frot.size
        # in-plane correction of each fine direction e relative to its parent d: with ZYZ angles a
        # small change of direction by drot turns the image by ~drot cos(tilt), so the child
        # (rot_e, tilt_e, psi + dpsi_e) with dpsi_e = (rot_d - rot_e) cos(tilt_e) stays next to its
        # parent (rot_d, tilt_d, psi) in SO(3); without it, children near the poles are turned
        # in-plane by up to the rot difference and do not tile the parent's neighbourhood
        prot = self.rot[pdk]
        self.dpsi_f = (_wrap180(prot - self.frot) * np.cos(np.deg2rad(self.ftilt))) if oversampling > 0 \
            else np.zeros(self.nfd)
        self.dchild = np.arange(self.nfd, dtype=np.int64)
        self.dchild_off = np.concatenate([[0], np.cumsum(np.bincount(pdk, minlength=self.nd))]).astype(np.int64)
        self.Jf1 = self.nfd * 2 * self.npsi
        self.K = K
        self.t_c = translation_grid(offset_range, offset_step)
        d = offset_step / 4.0 if oversampling > 0 else 0.0
        ch = np.array([[-d, -d], [d, -d], [-d, d], [d, d]])
        self.t_f = (self.t_c[:, None, :] + ch[None]).reshape(-1, 2)
        self.T = len(self.t_c)
        self.children_t = RegularChildren(np.arange(4 * self.T).reshape(self.T, 4))
        self.children_j = Children3D(self)

    def coarse_euler(self, j1):
        j1 = np.asarray(j1, np.int64)
        d, p = j1 // self.npsi, j1 % self.npsi
        return self.rot[d], self.tilt[d], self.psi_c[p]

    def fine_euler(self, jf1):
        jf1 = np.asarray(jf1, np.int64)
        e, q = jf1 // (2 * self.npsi), jf1 % (2 * self.npsi)
        return self.frot[e], self.ftilt[e], self.psi_f[q] + self.dpsi_f[e]


# ----------------------------------------------------------------------------- one model (a half, or all)
class Model3D:
    """References and per-particle state of one particle set (a gold-standard half, or all
    particles for class3d) on the ranks of ``comm`` (each rank a contiguous block of ``idx``)."""

    def __init__(self, ps, idx, cfg: Map3DConfig, comm, log=print):
        self.ps, self.cfg, self.comm, self.log = ps, cfg, comm, log
        self.idx_all = np.asarray(idx, np.int64)
        self.n, self.angpix = ps.box, float(ps.angpix)
        n = self.n
        self.nh, self.nsh = n // 2 + 1, n // 2 + 1
        self.lo, self.hi = block_range(self.idx_all.size, comm.size, comm.rank)
        self.idx = self.idx_all[self.lo:self.hi]
        self.radius_px = (cfg.particle_diameter / 2.0 / self.angpix) if cfg.particle_diameter > 0 else 0.4 * n
        self.mask2 = soft_circular_mask(n, self.radius_px, cfg.mask_width)
        self.mask3 = soft_spherical_mask(n, self.radius_px, cfg.mask_width)
        self.shell = shell_index2(n).ravel()
        self.hw = hermitian_weights2(n).ravel()
        self.groups = ps.optics_group_index()
        self.G = int(self.groups.max()) + 1 if ps.n else 1
        self.ops = symmetry_ops(cfg.sym)
        K = cfg.K
        self.refs = None
        self.sigma2 = self.tau2 = None
        self.pclass = np.full(K, 1.0 / K)
        self.sigma_offset = max(cfg.offset_range, 1.0) * self.angpix / 2.0
        nb = self.idx.size
        self.res = {"class": np.ones(nb, np.int64), "rot": np.zeros(nb), "tilt": np.zeros(nb),
                    "psi": np.zeros(nb), "ox": np.zeros(nb), "oy": np.zeros(nb), "pmax": np.zeros(nb),
                    "nsig": np.zeros(nb, np.int64), "loglik": np.zeros(nb)}
        self.bps = None

    # ------------------------------------------------------------ data
    def prepare(self):
        ps, n = self.ps, self.n
        idx = self.idx
        self.X = np.empty((idx.size, n * self.nh), np.complex64)
        self.C = np.empty((idx.size, n * self.nh), np.float32) if self.cfg.ctf else None
        power = np.zeros((self.G, self.nsh))
        counts = np.zeros(self.G)
        self.g_loc = self.groups[idx]
        for s in range(0, idx.size, 512):
            b = idx[s:s + 512]
            F = ft2(ps.read_images(b) * self.mask2)
            self.X[s:s + b.size] = F.reshape(b.size, -1)
            if self.C is not None:
                p = ps.ctf_params(b)
                self.C[s:s + b.size] = ctf2d(n, ps.angpix, *(p[k] for k in CTF_KEYS)).reshape(b.size, -1)
            pw = radial_average((F.real ** 2 + F.imag ** 2).astype(np.float64), dims=2)
            np.add.at(power, self.g_loc[s:s + b.size], pw)
            np.add.at(counts, self.g_loc[s:s + b.size], 1.0)
        self.comm.allreduce_(power)
        self.comm.allreduce_(counts)
        self.img_power = power / np.maximum(counts, 1.0)[:, None]
        self.group_counts = counts

    def power3(self, vols):
        out = []
        for v in vols:
            F = ft3(np.asarray(v, np.float64))
            out.append(radial_average(F.real ** 2 + F.imag ** 2, dims=3)[:self.nsh])
        return np.array(out)

    def coarse_shell(self, samp) -> int:
        """Highest shell of the coarse pass: the arc an angular step moves the particle's edge,
        over a safety factor of 1.2, is the finest resolution the coarse grid can score
        (RELION's adaptive-oversampling coarse size); the translation step's half-pixel error
        does not limit it below Nyquist.  ``coarse_factor`` 0 disables the limit."""
        if self.cfg.coarse_factor <= 0 or self.cfg.oversampling <= 0:
            return self.n // 2
        step = np.deg2rad(max(angular_step(samp.order), samp.psi_step))
        arc = step * self.radius_px * self.angpix     # A, at the particle's radius
        res = arc / self.cfg.coarse_factor
        return int(min(self.n // 2, np.ceil(self.n * self.angpix / res)))

    def batch_size(self, T, J):
        if self.cfg.batch > 0:
            return int(self.cfg.batch)
        return int(max(8, min(512, 192e6 // max(T * J * 4.0, 1.0))))

    def memory_estimate(self, samp: Sampling3D, r_cur: int) -> float:
        n, K = self.n, self.cfg.K
        coef = n * self.nh
        M = int(np.sum(self.shell <= r_cur))
        J = K * samp.Jc1
        b = self.batch_size(samp.T, J)
        P = PAD * n
        return float(self.idx.size * coef * 12 + b * samp.T * J * 4 + J * M * 8 + K * P * P * (P // 2 + 1) * 24 * 2
                     + b * coef * 40 + 4 * samp.T * M * 8
                     + min(b * max(self.cfg.maxsig, 1) * 8, K * samp.Jf1) * M * 24)

    # ------------------------------------------------------------ E-step
    def e_step(self, samp: Sampling3D, r_cur: int, local_sigma: float = 0.0, remap=None):
        """Posteriors of this rank's particles; back-projects the fine sums into ``self.bps``
        (rank-local) and returns the other accumulators."""
        cfg, n, K = self.cfg, self.n, self.cfg.K
        kidx = np.flatnonzero(self.shell <= r_cur)
        kidx = kidx[np.argsort(self.shell[kidx], kind="stable")]   # by shell: the coarse pass uses a prefix
        M = kidx.size
        sh = self.shell[kidx]
        rmax = r_cur + 1.0
        r_c = min(int(r_cur), self.coarse_shell(samp))
        mc = int(np.searchsorted(sh, r_c, side="right"))
        projs = [Projector.from_volume(self.refs[k], pad=PAD) for k in range(K)]

        def proj(k, eul, m=M):
            A = euler_to_matrix(*eul).astype(np.float32)
            out = np.empty((A.shape[0], m), np.complex64)
            cols = kidx[:m]
            rm = rmax if m == M else r_c + 1.0
            for s in range(0, A.shape[0], 2048):  # chunks of slices
                full = projs[k].project(A[s:s + 2048], r_max=rm).reshape(-1, n * self.nh)
                np.take(full, cols, axis=1, out=out[s:s + full.shape[0]])
            return out

        def refs_by(idx, J1, euler_of, m=M):
            idx = np.asarray(idx, np.int64)
            if K == 1:
                return proj(0, euler_of(idx), m)
            out = np.empty((idx.size, m), np.complex64)
            kk = idx // J1
            for k in np.unique(kk):  # classes
                sel = kk == k
                out[sel] = proj(int(k), euler_of(idx[sel] % J1), m)
            return out

        refs_f = lambda idx: refs_by(idx, samp.Jf1, samp.fine_euler)  # noqa: E731
        if local_sigma > 0:
            refs_c = lambda idx: refs_by(idx, samp.Jc1, samp.coarse_euler, mc)  # noqa: E731
        else:
            refs_c = np.concatenate([proj(k, samp.coarse_euler(np.arange(samp.Jc1)), mc) for k in range(K)])
        phc = np.ascontiguousarray(shift_phases(n, samp.t_c).reshape(samp.T, -1)[:, kidx[:mc]])
        phf = np.ascontiguousarray(shift_phases(n, samp.t_f).reshape(4 * samp.T, -1)[:, kidx])
        lpk = np.log(np.maximum(self.pclass, 1e-30))
        lpj_c = np.repeat(lpk, samp.Jc1)
        lpj_f = np.repeat(lpk, samp.Jf1)
        inv_s2 = 1.0 / self.sigma2[:, sh]
        s_e = (self.hw[kidx][None, :] * 0.5 * inv_s2).astype(np.float32)
        s_a = inv_s2.astype(np.float32)
        so2 = 2.0 * self.sigma_offset ** 2
        self.bps = [BackProjector(n, pad=PAD) for _ in range(K)]
        noise = np.zeros((self.G, self.nsh))
        csum = np.zeros(K)
        t2sum = np.zeros(1)
        r = self.res
        nb = self.X.shape[0]
        bs = self.batch_size(samp.T, K * samp.Jc1) if local_sigma <= 0 else 512
        onehot = np.zeros((M, int(r_cur) + 1), np.float32)   # coefficient -> shell sums
        onehot[np.arange(M), sh] = 1.0
        porder = np.arange(nb)
        if local_sigma > 0:
            # candidates of every particle at once (the grid's rotation matrices are built once),
            # and the particles ordered by their nearest grid orientation, so that a batch's
            # particles share candidate orientations (each projected once per batch)
            off_all, oi_all, dist_all = local_neighbours(r["rot"], r["tilt"], r["psi"], local_sigma, samp.order,
                                                         cfg.sym, samp.psi_step, nsigma=3.0)
            cnt_all = np.diff(off_all)
            seg = np.repeat(np.arange(nb), cnt_all)
            o_ = np.lexsort((dist_all, seg))
            nearest = oi_all[o_[off_all[:-1]]] if nb else np.zeros(0, np.int64)
            porder = np.argsort(nearest, kind="stable")
        for s0 in range(0, nb, bs):
            sl = porder[s0:s0 + bs]   # this batch's particles (indices into the rank's block)
            B = sl.size
            g = self.g_loc[sl]
            o_px = np.stack([r["ox"][sl], r["oy"][sl]], 1) / self.angpix
            X = self.X[sl][:, kidx] * shift_phases(n, o_px).reshape(B, -1)[:, kidx]
            X = np.ascontiguousarray(X, np.complex64)
            c = (np.ascontiguousarray(self.C[sl][:, kidx]) if self.C is not None else np.ones((B, M), np.float32))
            dt_c = o_px[:, None, :] - samp.t_c[None]
            dt_f = o_px[:, None, :] - samp.t_f[None]
            lpt_c = -(dt_c ** 2).sum(2) * self.angpix ** 2 / so2
            lpt_f = -(dt_f ** 2).sum(2) * self.angpix ** 2 / so2
            cand = None
            if local_sigma > 0:
                cb = cnt_all[sl]
                pos = ragged_arange(off_all[sl], cb)
                off, oi, dist = np.concatenate([[0], np.cumsum(cb)]), oi_all[pos], dist_all[pos]
                cnt = cb * samp.T
                pj = np.repeat(oi, samp.T)
                pt = np.tile(np.arange(samp.T), oi.size)
                ex = np.repeat(-dist ** 2 / (2.0 * local_sigma ** 2), samp.T)
                ccls = np.repeat(r["class"][sl] - 1, np.diff(off))
                pj = np.repeat(ccls, samp.T) * samp.Jc1 + pj
                cand = (np.concatenate([[0], np.cumsum(cnt)]), pt, pj, ex)
            res = estep_batch(X, c, np.ascontiguousarray(s_e[g]), np.ascontiguousarray(s_a[g]),
                              phases_c=phc, phases_f=phf, refs_c=refs_c, refs_f=refs_f,
                              children_t=samp.children_t, children_j=samp.children_j,
                              lpt_c=lpt_c.astype(np.float32), lpt_f=lpt_f, lpj_c=lpj_c, lpj_f=lpj_f,
                              candidates=cand, frac=cfg.frac, maxsig=cfg.maxsig, groups=K, mc=mc,
                              remap_j=(None if remap is None else (lambda pi, pj, _s=sl: remap(self.lo + _s[pi], pj))))
            # back-project the fine sums of this batch
            for k in range(K):  # classes
                m = np.flatnonzero(res.uniq_j // samp.Jf1 == k)
                for c0 in range(0, m.size, 1024):
                    mm = m[c0:c0 + 1024]
                    D = np.zeros((mm.size, n * self.nh), np.complex64)
                    W = np.zeros((mm.size, n * self.nh), np.float32)
                    D[:, kidx] = res.data[mm]
                    W[:, kidx] = res.wsum[mm]
                    A = euler_to_matrix(*samp.fine_euler(res.uniq_j[mm] % samp.Jf1)).astype(np.float32)
                    self.bps[k].insert(D.reshape(-1, n, self.nh), W.reshape(-1, n, self.nh), A, r_max=rmax)
            # statistics
            per_shell = (res.noise @ onehot).astype(np.float64)
            np.add.at(noise[:, :onehot.shape[1]], g, per_shell)
            pj_acc = res.pair_j if remap is None else remap(self.lo + sl[res.pair_i], res.pair_j)
            csum += np.bincount(pj_acc // samp.Jf1, weights=res.weight, minlength=K)[:K]
            dd = o_px[res.pair_i] - samp.t_f[res.pair_t]
            t2sum += np.dot(res.weight.astype(np.float64), (dd ** 2).sum(1) * self.angpix ** 2)
            bj, bt = res.best_j, res.best_t
            rot, tilt, psi = samp.fine_euler(bj % samp.Jf1)
            r["class"][sl] = bj // samp.Jf1 + 1
            r["rot"][sl], r["tilt"][sl], r["psi"][sl] = rot, tilt, _wrap180(psi)
            newo = (o_px - samp.t_f[bt]) * self.angpix
            r["ox"][sl], r["oy"][sl] = newo[:, 0], newo[:, 1]
            r["pmax"][sl], r["nsig"][sl], r["loglik"][sl] = res.pmax, res.nsig, res.logZ
        return {"noise": noise, "csum": csum, "t2sum": t2sum, "r_cur": r_cur}

    def reduce(self, acc):
        """One Allreduce per accumulator over this model's ranks."""
        for bp in self.bps:
            self.comm.allreduce_(bp.data)
            self.comm.allreduce_(bp.weight)
        for a in (acc["noise"], acc["csum"], acc["t2sum"]):
            self.comm.allreduce_(a)

    def update_noise_priors(self, acc):
        """sigma2 (shells <= r_cur), class priors, sigma_offset from reduced accumulators."""
        r_cur = acc["r_cur"]
        cnt = np.bincount(self.shell[self.shell < self.nsh], minlength=self.nsh).astype(np.float64)
        s2 = self.img_power.copy()
        ng = np.maximum(self.group_counts, 1.0)[:, None]
        upd = np.arange(self.nsh) <= r_cur
        est = acc["noise"] / (cnt[None, :] * ng)
        s2[:, upd] = np.where(est[:, upd] > 0, est[:, upd], s2[:, upd])
        self.sigma2 = s2
        self.pclass = acc["csum"] / max(acc["csum"].sum(), 1e-300)
        self.sigma_offset = float(np.sqrt(max(acc["t2sum"][0], 1e-12) / (2.0 * max(self.idx_all.size, 1))))

    def mean_weight(self, k):
        """Mean back-projected weight per shell (n-box units), symmetry included."""
        return self.bps[k].shell_mean_weight()[:self.nsh] * len(self.ops)

    def reconstruct(self, k, tau2=None, fudge=1.0, r_max=None, unfil=False):
        ops = self.ops if len(self.ops) > 1 else None
        if unfil:
            v = self.bps[k].reconstruct(symmetry_ops=ops)
        else:
            v = self.bps[k].reconstruct(tau2=tau2, tau2_fudge=fudge, symmetry_ops=ops)
        if r_max is not None:
            v = lowpass(v, self.n * self.angpix / max(r_max, 1), self.angpix, dims=3)
        return v.astype(np.float32)

    # ------------------------------------------------------------ state
    def gather_results(self):
        parts = self.comm.allgather(self.res)
        return {k: np.concatenate([p[k] for p in parts]) for k in self.res}

    def set_results(self, full):
        for k in self.res:
            self.res[k] = np.asarray(full[k])[self.lo:self.hi].astype(self.res[k].dtype)


def _wrap180(a):
    return (np.asarray(a) + 180.0) % 360.0 - 180.0


def pose_changes(prev, new, ops):
    """Per-particle angular change (deg, symmetry-aware) and offset change (A)."""
    A0 = euler_to_matrix(prev["rot"], prev["tilt"], prev["psi"])
    A1 = euler_to_matrix(new["rot"], new["tilt"], new["psi"])
    d = np.full(A0.shape[0], np.inf)
    for R in ops:  # symmetry operators (a handful)
        d = np.minimum(d, angular_distance(A0 @ R, A1))
    return d, np.hypot(prev["ox"] - new["ox"], prev["oy"] - new["oy"])


def initial_reference(ref, ps, cfg, mask3):
    n = ps.box
    return (lowpass(np.asarray(ref, np.float64), cfg.ini_high, float(ps.angpix), dims=3) * mask3).astype(np.float32)


def check_memory(comm, need, log, what):
    need = comm.allreduce(need, op="max")
    avail = available_memory() / max(1, comm.size)
    if comm.rank == 0:
        log("memory estimate: %.2f GiB per rank (%s)" % (need / 2**30, what))
    if need > avail:
        raise InputError("needs %.2f GiB per rank but about %.2f GiB is available: run on more ranks/nodes, "
                         "or lower --batch, --healpix_order, --offset_range or --K" % (need / 2**30, avail / 2**30),
                         field="memory")


def shell_of(res_A, n, angpix):
    return n * angpix / res_A if np.isfinite(res_A) and res_A > 0 else 0.0


# ----------------------------------------------------------------------------- class3d
def classify_3d(ps, ref, cfg: Map3DConfig, comm, outdir, restart=None, log=print, job=None):
    """3D classification to ``cfg.iters`` iterations; rank 0 writes every iteration."""
    from .map_em3d_io import write_class3d_iteration

    n, K = ps.box, cfg.K
    m = Model3D(ps, np.arange(ps.n), cfg, comm, log)
    samp = Sampling3D(cfg.healpix_order, cfg.sym, cfg.psi_step, cfg.offset_range, cfg.offset_step, K, cfg.oversampling)
    r0 = int(min(n // 2, max(3, round(shell_of(cfg.ini_high, n, ps.angpix)))))
    check_memory(comm, m.memory_estimate(samp, n // 2), log,
                 "%d particles, K=%d, %d directions x %d psi x %d translations" % (m.idx.size, K, samp.nd, samp.npsi, samp.T))
    m.prepare()
    st = {"iteration": 0, "r_cur": r0, "resolution": np.inf}
    if restart is not None:
        m.refs = np.asarray(restart["refs"], np.float32)
        m.sigma2, m.tau2 = np.asarray(restart["sigma2"]), np.asarray(restart["tau2"])
        m.pclass, m.sigma_offset = np.asarray(restart["pclass"]), float(restart["sigma_offset"])
        m.img_power = np.asarray(restart["img_power"])
        m.set_results(restart["results"])
        st = {"iteration": int(restart["iteration"]), "r_cur": int(restart["r_cur"]),
              "resolution": float(restart["resolution"])}
        if comm.rank == 0:
            log("continuing from iteration %d" % st["iteration"])
    else:
        r = initial_reference(ref, ps, cfg, m.mask3)
        m.refs = np.repeat(r[None], K, axis=0)
        m.sigma2 = m.img_power.copy()
        m.tau2 = m.power3(m.refs)
    subset = np.random.default_rng(cfg.random_seed).permutation(ps.n) % K
    fudge = cfg.tau2_fudge * PAD ** 3
    while st["iteration"] < cfg.iters:
        t0 = time.time()
        prev = {k: v.copy() for k, v in m.res.items()}
        first = st["iteration"] == 0
        remap = None
        if first and K > 1:
            remap = lambda gi, pj: subset[m.idx_all[gi]] * samp.Jf1 + pj % samp.Jf1  # noqa: E731
        # uniform class priors in the E-step (the estimated pi_k is still reported): with the
        # estimated priors, the class that starts larger (more, and misaligned, particles while the
        # poses are still converging) pulls in more particles every iteration and the split drifts
        # to a junk/size split (blobs SNR 0.1, 2000 particles: sizes 660/1340, ARI 0.10 at
        # iteration 14; with uniform priors 870/1130, ARI 0.18)
        m.pclass = np.full(K, 1.0 / K)
        r_used_e = int(st["r_cur"])
        acc = m.e_step(samp, r_used_e, remap=remap)
        t1 = time.time()
        m.reduce(acc)
        m.update_noise_priors(acc)
        # tau2 of each class from this iteration's data: power of the unregularised (masked)
        # reconstruction less its noise power (1/<W> per n-box voxel, times the mask's mean square).
        # The previous map's power is no estimate beyond the previous resolution limit (no data was
        # inserted there, so its power is ~0 and would regularise those shells to zero for ever:
        # the resolution limit could not rise to where the conformations differ)
        msq = float(np.mean(m.mask3.astype(np.float64) ** 2))
        t2 = []
        for k in range(K):
            pu = m.power3([m.reconstruct(k, unfil=True) * m.mask3])[0]
            wn = m.mean_weight(k) * PAD ** 3
            t2.append(np.where(wn > 0, np.maximum(pu - msq / np.maximum(wn, 1e-300), 0.0), 0.0))
        t2 = np.asarray(t2)
        t2[:, r_used_e + 1:] = 0.0
        refs = np.stack([m.reconstruct(k, tau2=t2[k], fudge=fudge) * m.mask3 for k in range(K)]).astype(np.float32)
        tau2 = m.power3(refs)
        ssnr = cfg.tau2_fudge * tau2 * np.stack([m.mean_weight(k) for k in range(K)]) * PAD ** 3
        res_shell = 0
        for k in range(K):
            below = np.flatnonzero(ssnr[k, 1:] < 1.0)
            res_shell = max(res_shell, int(below[0] if below.size else m.nsh - 1))
        m.refs, m.tau2 = refs, tau2
        r_used = st["r_cur"]
        st["resolution"] = n * m.angpix / max(res_shell, 1)
        st["r_cur"] = int(min(n // 2, max(3, res_shell + cfg.margin_shells)))
        st["iteration"] += 1
        if first and K > 1:   # the random initial classes
            m.res["class"] = subset[m.idx] + 1
        results = m.gather_results()
        prev_all = {k: np.concatenate([p[k] for p in comm.allgather(prev)]) for k in prev}
        da, do = pose_changes(prev_all, results, m.ops)
        stats = {"iteration": st["iteration"], "r_cur": r_used, "resolution": st["resolution"],
                 "changes_classes": np.nan if first else float(np.mean(prev_all["class"] != results["class"])),
                 "changes_orient": np.nan if first else float(np.mean(da)),
                 "changes_offsets": np.nan if first else float(np.mean(do)),
                 "loglik": float(results["loglik"].sum()), "mean_nsig": float(results["nsig"].mean()),
                 "sigma_offset": m.sigma_offset, "t_estep": t1 - t0, "t_iter": time.time() - t0}
        state = {"refs": m.refs, "sigma2": m.sigma2, "tau2": m.tau2, "pclass": m.pclass,
                 "sigma_offset": m.sigma_offset, "r_cur": st["r_cur"], "iteration": st["iteration"],
                 "resolution": st["resolution"], "img_power": m.img_power, "results": results,
                 "config": asdict(cfg)}
        if comm.rank == 0:
            write_class3d_iteration(outdir, ps, m, state, stats, job)
            log("it %3d  r_cur %2d  res %6.2f A  dclass %5.3f  dang %6.2f deg  doff %5.2f A  sig_off %5.2f A  "
                "nsig %7.1f  classes %s  logL %.6e  (%.1f s, E-step %.1f s)" % (
                    stats["iteration"], r_used, stats["resolution"], stats["changes_classes"],
                    stats["changes_orient"], stats["changes_offsets"], m.sigma_offset, stats["mean_nsig"],
                    " ".join("%.2f" % p for p in m.pclass), stats["loglik"], stats["t_iter"], stats["t_estep"]))
        comm.barrier()
    return m


# ----------------------------------------------------------------------------- refine3d
def _ssnr_from_fsc(curve, full=False):
    """SSNR per shell from a half-map FSC: FSC/(1-FSC) for a half map, 2FSC/(1-FSC) for the
    combined map; zero from the first shell where the FSC falls to 0 on."""
    c = np.clip(np.asarray(curve, np.float64), 0.0, 0.999)
    ssnr = (2.0 if full else 1.0) * c / (1.0 - c)
    z = np.flatnonzero(c[1:] <= 0.0)
    if z.size:
        ssnr[z[0] + 1:] = 0.0
    ssnr[0] = max(ssnr[0], ssnr[1] if ssnr.size > 1 else 1.0)
    return ssnr


def max_order_for(cfg, n, angpix, radius_A):
    if cfg.max_healpix_order > 0:
        return int(cfg.max_healpix_order)
    need = np.rad2deg(2.0 * angpix / radius_A)
    o = 0
    while angular_step(o) > need and o < 7:
        o += 1
    return max(o, cfg.healpix_order)


def refine_3d(ps, ref, cfg: Map3DConfig, world, outdir, restart=None, log=print, job=None):
    """Gold-standard auto-refinement (see the module docstring). Rank 0 writes."""
    from ..core.fsc import fsc, resolution_at
    from ..parallel.decomp import half_groups
    from .map_em3d_io import write_refine_final, write_refine_iteration

    n, angpix = ps.box, float(ps.angpix)
    subsets = ps.random_subset()
    if subsets is None or not np.isin(subsets, (1, 2)).all() or len(np.unique(subsets)) < 2:
        subsets = 1 + (np.random.default_rng(cfg.random_seed).permutation(ps.n) % 2)
    if restart is not None:
        subsets = np.asarray(restart["subsets"])
    half, sub, _ = half_groups(world)
    hs = [1, 2] if half is None else [half]
    models = {h: Model3D(ps, np.flatnonzero(subsets == h), cfg, sub, log) for h in hs}
    m0 = models[hs[0]]
    radius_A = m0.radius_px * angpix
    max_order = max_order_for(cfg, n, angpix, radius_A)
    r0 = int(min(n // 2, max(3, round(shell_of(cfg.ini_high, n, angpix)))))
    samp0 = Sampling3D(cfg.healpix_order, cfg.sym, 0, cfg.offset_range, cfg.offset_step, 1, cfg.oversampling)
    check_memory(world, sum(m.memory_estimate(samp0, n // 2) for m in models.values()) / len(models), log,
                 "%d particles per half, %d directions x %d psi x %d translations at order %d, %d half group(s) of %d rank(s)"
                 % (m0.idx_all.size, samp0.nd, samp0.npsi, samp0.T, cfg.healpix_order, 2 if half else 1, sub.size))
    for m in models.values():
        m.prepare()
    st = {"iteration": 0, "order": cfg.healpix_order, "r_cur": r0, "resolution": np.inf, "best_shell": 0.0,
          "n_wo_res": 0, "n_wo_change": 0, "converged": 0, "n_at_order": 0, "offset_range": float(cfg.offset_range)}
    mask3 = m0.mask3
    if restart is not None:
        for k in st:
            st[k] = type(st[k])(restart["global"].get(k, st[k]))
        for h, m in models.items():
            hh = restart["half%d" % h]
            m.refs = np.asarray(hh["refs"], np.float32)
            m.sigma2, m.img_power = np.asarray(hh["sigma2"]), np.asarray(hh["img_power"])
            m.sigma_offset = float(hh["sigma_offset"])
            m.set_results({k: np.asarray(v)[m.idx_all] for k, v in restart["results"].items()})
        if world.rank == 0:
            log("continuing from iteration %d" % st["iteration"])
    else:
        r = initial_reference(ref, ps, cfg, mask3)
        for m in models.values():
            m.refs = r[None].copy()
            m.sigma2 = m.img_power.copy()
    while True:
        t0 = time.time()
        order = st["order"]
        samp = Sampling3D(order, cfg.sym, 0, st["offset_range"], cfg.offset_step, 1, cfg.oversampling)
        local = angular_step(order) * 0.75 if order >= cfg.auto_local_healpix_order else 0.0
        final = bool(st["converged"]) or st["iteration"] >= cfg.iters
        r_e = n // 2 if final else st["r_cur"]
        sums = np.zeros(4)
        for h, m in models.items():   # the halves (one per rank group; both on one rank)
            prev = {k: v.copy() for k, v in m.res.items()}
            acc = m.e_step(samp, r_e, local_sigma=local)
            m.reduce(acc)
            m.update_noise_priors(acc)
            if st["iteration"] > 0:
                da, do = pose_changes(prev, m.res, m.ops)
                sums += [da.sum(), do.sum(), da.size, (do ** 2).sum()]
        t1 = time.time()
        world.allreduce_(sums)
        # unfiltered half maps, exchanged between the groups, and their FSC
        unfil = {h: m.reconstruct(0, unfil=True) for h, m in models.items()}
        if half is not None:
            got = world.allgather((half, unfil[half] if sub.rank == 0 else None))
            unfil = {h: v for h, v in got if v is not None}
        _, curve = fsc(unfil[1], unfil[2], mask=mask3)
        _, curve_unmasked = fsc(unfil[1], unfil[2])
        curve[r_e + 1:] = 0.0             # no data beyond the E-step's limit (only gridding echoes)
        curve_unmasked[r_e + 1:] = 0.0
        res = resolution_at(curve, 0.143, n, angpix)
        if final:
            full_bp = _combine(models, half, sub, world, n)
            write_refine_final(outdir, ps, models, half, sub, world, st, unfil, curve, curve_unmasked,
                               full_bp, cfg, mask3, log, job)
            return st
        ssnr = _ssnr_from_fsc(curve)
        for m in models.values():
            W = np.maximum(m.mean_weight(0), 1e-30)
            tau2 = np.where(ssnr > 0, ssnr / W, 0.0)
            m.tau2 = tau2[None]
            m.refs = (m.reconstruct(0, tau2=tau2, fudge=cfg.tau2_fudge) * mask3)[None].astype(np.float32)
        # resolution, sampling, convergence
        st["iteration"] += 1
        shell = shell_of(res, n, angpix)
        gain = shell > st["best_shell"] + 1e-6
        st["best_shell"] = max(st["best_shell"], shell)
        st["resolution"] = res
        r_used = st["r_cur"]
        st["r_cur"] = int(min(n // 2, max(3, int(np.floor(st["best_shell"])) + cfg.margin_shells)))
        mean_da = sums[0] / max(sums[2], 1) if sums[2] else np.nan
        mean_do = sums[1] / max(sums[2], 1) if sums[2] else np.nan
        step = angular_step(order)
        small = sums[2] > 0 and mean_da < step and mean_do < cfg.offset_step * angpix
        st["n_wo_res"] = 0 if gain else st["n_wo_res"] + 1
        st["n_wo_change"] = st["n_wo_change"] + 1 if small else 0
        need = np.rad2deg(res / radius_A) if np.isfinite(res) else 90.0
        stalled = st["n_wo_res"] >= 1 and st["n_wo_change"] >= 1
        if order < max_order:
            # finer sampling when the step is much coarser than the accuracy the resolution
            # supports, or when the resolution stalls; but the switch from global to local searches
            # only once global searching has stalled: a particle still misaligned then stays
            # misaligned for the rest of the run (local searches cannot bring it back)
            to_local = order + 1 >= cfg.auto_local_healpix_order and order < cfg.auto_local_healpix_order
            st["n_at_order"] += 1
            if stalled or (step > 2.0 * need and (not to_local or st["n_at_order"] >= 5)):
                st["order"] = order + 1
                # the translation grid is centred on each particle's current origin: once the
                # poses have settled it need only cover the remaining offset changes (3 x their
                # RMS, at least 1.5 steps), which keeps the finer orders' searches affordable
                if sums[2] > 0:
                    rms_px = np.sqrt(sums[3] / sums[2]) / angpix
                    st["offset_range"] = float(min(st["offset_range"], max(1.5 * cfg.offset_step, 3.0 * rms_px)))
                st["n_wo_res"] = st["n_wo_change"] = st["n_at_order"] = 0
        elif st["n_wo_res"] >= 2 and st["n_wo_change"] >= 2:
            st["converged"] = 1
        stats = {"iteration": st["iteration"], "r_cur": r_used, "resolution": res, "order": order,
                 "local_sigma": local, "n_trans": samp.t_c.shape[0], "changes_orient": mean_da, "changes_offsets": mean_do,
                 "t_estep": t1 - t0, "t_iter": time.time() - t0}
        write_refine_iteration(outdir, ps, models, half, sub, world, st, subsets, curve, stats, cfg, log, job)


def _combine(models, half, sub, world, n):
    """Back-projector of both halves summed (on every rank)."""
    bp = BackProjector(n, pad=PAD)
    if half is None:
        for m in models.values():
            bp.data += m.bps[0].data
            bp.weight += m.bps[0].weight
        return bp
    m = models[half]
    if sub.rank == 0:
        bp.data += m.bps[0].data
        bp.weight += m.bps[0].weight
    world.allreduce_(bp.data)
    world.allreduce_(bp.weight)
    return bp
