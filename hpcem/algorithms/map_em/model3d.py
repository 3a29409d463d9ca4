"""One 3D model over one particle set (a gold-standard half, or all particles for class3d) on the
ranks of a communicator: the class volumes, the noise and prior model, the per-particle results,
and its E-step / reduction / noise update / reconstruction (seed 000, section 3.1.1).

M-step reconstruction: ``V = data / (weight + 1 / (pad^3 T tau2))`` (the padded accumulators hold
pad^3 less weight per voxel than the n-box), or with --tv the regularised reconstruction of
:mod:`hpcem.recon.tv` (restrained to the class's previous map), flattened by the solvent mask
(:mod:`.solvent`).  Unfiltered maps (``unfil``) are always the Wiener reconstruction without prior.
"""
from __future__ import annotations

import numpy as np

from ...core.filters import lowpass, radial_average
from ...core.fourier import ft3
from ...core.masks import soft_circular_mask, soft_spherical_mask
from ...core.symmetry import symmetry_ops
from ...estep import FourierParticles, crosscorr, run_estep
from ...estep.corrections import Corrections
from ...estep.importance import SEED_EPOCH, ImportanceSampler
from ...parallel.decomp import block_range
from ...recon import mstep
from .results import gather_results, new_results
from .solvent import particle_mask
from .space3d import PAD, ProjectionSpace
from ...runtime.device import HOST


class Model3D:
    def __init__(self, ps, idx, cfg, comm, log=print, device=HOST):
        self.ps, self.cfg, self.comm, self.log, self.device = ps, cfg, comm, log, device
        self.idx_all = np.asarray(idx, np.int64)
        self.n, self.angpix = ps.box, float(ps.angpix)
        n = self.n
        self.nsh = n // 2 + 1
        self.lo, self.hi = block_range(self.idx_all.size, comm.size, comm.rank)
        self.idx = self.idx_all[self.lo:self.hi]
        self.radius_px = (cfg.particle_diameter / 2.0 / self.angpix) if cfg.particle_diameter > 0 else 0.4 * n
        self.mask3 = soft_spherical_mask(n, self.radius_px, cfg.mask_width)
        self.fsc_mask = particle_mask(cfg, self.mask3)
        self.solvent = self.fsc_mask if cfg.flatten_solvent else None    # None: references not flattened
        self.parts = FourierParticles(ps, self.idx, soft_circular_mask(n, self.radius_px, cfg.mask_width),
                                      cfg.ctf, comm, zero_mask=cfg.zero_mask,
                                      intact_first_peak=cfg.ctf_intact_first_peak, device=device)
        self.ops = symmetry_ops(cfg.sym)
        gridding = 0 if cfg.skip_gridding else mstep.GRIDDING_ITERS
        self.plain = mstep.WienerMAP(gridding_iters=gridding)
        self.reconstructor = mstep.reconstructor_for(cfg, gridding)
        self.bp_kernel = getattr(cfg, "bp_kernel", "linear")
        self.refs = self.sigma2 = self.tau2 = None
        self.pclass = np.full(cfg.K, 1.0 / cfg.K)
        self.sigma_offset = max(cfg.offset_range, 1.0) * self.angpix / 2.0
        self.res = new_results(self.idx.size, ProjectionSpace.pose_keys, first_class=1)
        self.corr = Corrections(self.parts, self.res, cfg.norm, cfg.scale)
        self.bps = None
        self.cc = False
        self.sampler = None
        if getattr(cfg, "importance_sampling", False):
            self.add_sampler()

    # ------------------------------------------------------------ data
    def memory_items(self, samp, T: int, r_cur: int) -> dict:
        from ...estep.rank import batch_size, coarse_shell

        n, K, opts = self.n, self.cfg.K, self.cfg.estep_options()
        M = int(np.sum(self.parts.shell <= r_cur))
        r_c = min(int(r_cur), coarse_shell(n, self.angpix, self.radius_px, samp.coarse_step_deg,
                                           opts.coarse_factor if opts.oversampling else 0))
        Mc = int(np.sum(self.parts.shell <= r_c))   # the coarse pass's coefficients (run_estep's mc)
        J = K * samp.Jc1
        b = batch_size(opts, T, J, True)
        P = PAD * n
        return {"particles (transforms + CTFs)": self.parts.nbytes(),
                "coarse diff2 of one batch": b * T * J * 4,
                "coarse references": J * Mc * 8,
                "projectors and back-projectors": K * P * P * (P // 2 + 1) * 24 * 2,
                "batch work arrays": b * n * (n // 2 + 1) * 40 + 4 * T * M * 8,
                "fine references and sums": min(b * max(self.cfg.maxsig, 1) * 8, K * samp.Jf1) * M * 24}

    def prepare(self):
        self.parts.load()
        self.img_power = self.parts.img_power
        if self.cfg.sigma_ang > 0:
            self.start_from_input_poses()

    def start_from_input_poses(self):
        """This rank's poses and origins from the STAR file (local searches from the start)."""
        rot, tilt, psi = self.ps.poses(self.idx)
        o = self.ps.origins_angst(self.idx)
        self.res.update(rot=np.asarray(rot, np.float64), tilt=np.asarray(tilt, np.float64),
                        psi=np.asarray(psi, np.float64), ox=o[:, 0].copy(), oy=o[:, 1].copy())

    def add_sampler(self):
        """The importance sampler of this model's particles (its marginals start empty)."""
        self.sampler = ImportanceSampler(self.idx, self.cfg.K, self.cfg.s0, self.cfg.random_seed)

    def power3(self, vols):
        out = []
        for v in vols:
            F = ft3(np.asarray(v, np.float64))
            out.append(radial_average(F.real ** 2 + F.imag ** 2, dims=3)[:self.nsh])
        return np.array(out)

    # ------------------------------------------------------------ iteration
    def importance(self, iteration: int):
        """The importance sampler for the E-step of ``iteration`` (each iteration an epoch)."""
        self.sampler.position(SEED_EPOCH * iteration, iteration)
        self.sampler.frozen = False
        return self.sampler

    def e_step(self, samp, trans, r_cur: int, candidates=None, remap=None, uniform_priors=False, cc=False,
               subset=None):
        """Posteriors of this rank's particles (results updated in place); the fine sums go to
        ``self.bps`` (rank-local); returns the other sums.  ``cc``: the cross-correlation pass of
        --firstiter_cc (:mod:`hpcem.estep.crosscorr`); ``subset``: only these rank-local particles."""
        space = ProjectionSpace(samp, self.cfg.K, self.n, self.ops, self.bp_kernel, device=self.device)
        space.refs = self.refs
        prior = np.full(self.cfg.K, 1.0 / self.cfg.K) if uniform_priors else self.pclass
        self.corr.apply(self.parts, self.res)
        self.cc = bool(cc)
        sigma2, opts = self.sigma2, self.cfg.estep_options()
        if cc:
            sigma2, opts, space.row_norm = crosscorr.setup(self.parts, r_cur, self.sigma2, opts, self.comm)
        if remap is not None and self.device.gpu:    # a host remap (class3d's first iteration) on device pairs
            remap = _remap_on(self.device, remap)
        sums = run_estep(self.parts, space, trans, self.res, sigma2=sigma2, sigma_offset=self.sigma_offset,
                         log_class_prior=np.log(np.maximum(prior, 1e-30)), r_cur=r_cur,
                         radius_px=self.radius_px, opts=opts, candidates=candidates, remap=remap,
                         subset=subset, class_segments=candidates is self.sampler and self.sampler is not None
                         and self.cfg.K > 1)
        self.bps = space.bps
        return sums

    def reduce(self, sums):
        """One Allreduce per accumulator over this model's ranks (the accumulators first come
        back from the device)."""
        for bp in self.bps:
            bp.to_host()
            self.comm.allreduce_(bp.data)
            self.comm.allreduce_(bp.weight)
        sums.reduce(self.comm)

    def update_noise_priors(self, sums):
        """sigma2 (shells <= r_cur), class priors, sigma_offset from reduced sums."""
        counts = mstep.shell_counts(self.parts.shell, self.nsh)
        if not self.cc:   # the residuals of a cross-correlation pass are not on the noise model's scale
            self.sigma2 = mstep.sigma2_update(self.img_power, sums.noise, counts, self.parts.group_counts,
                                              sums.r_cur)
            self.corr.update(self.parts, self.res, sums, self.comm)
        self.pclass = mstep.class_priors(sums.class_weight)
        self.sigma_offset = mstep.sigma_offset(sums.offset2, self.idx_all.size)

    def mean_weight(self, k):
        """Mean back-projected weight per shell (n-box units), symmetry included."""
        return self.bps[k].shell_mean_weight()[:self.nsh] * len(self.ops)

    def flatten(self, vol):
        """``vol`` times the solvent mask (unchanged with --no-flatten_solvent)."""
        return vol if self.solvent is None else vol * self.solvent

    @property
    def regularised(self) -> bool:
        return not self.reconstructor.uses_tau2

    def reconstruct(self, k, tau2=None, fudge=1.0, unfil=False):
        """Class k's map from this iteration's sums: ``unfil`` the Wiener reconstruction without a
        prior, else the reconstructor's (the previous map ``refs[k]`` for the regularised one)."""
        if unfil:
            return self.plain.reconstruct(self.bps[k], None, fudge, self.ops)
        prev = self.refs[k] if self.refs is not None else None
        return self.reconstructor.reconstruct(self.bps[k], tau2, fudge, self.ops, prev=prev)

    # ------------------------------------------------------------ state
    def gather_results(self):
        return gather_results(self.comm, self.res)

    def gather_sampler(self):
        """The importance sampler's marginals of all this model's particles (collective), or None
        (also while it has recorded none: class3d --auto_sampling's first stage)."""
        if self.sampler is None or not self.comm.allreduce(int(np.any(self.sampler.tau_prev >= 0))):
            return None
        parts = self.comm.allgather(self.sampler.state())
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def set_results(self, full):
        for k in self.res:
            self.res[k] = np.asarray(full[k])[self.lo:self.hi].astype(self.res[k].dtype)

    def load_state(self, st):
        self.refs = np.asarray(st["refs"], np.float32)
        self.sigma2 = np.asarray(st["sigma2"])
        self.img_power = np.asarray(st["img_power"])
        self.sigma_offset = float(st["sigma_offset"])
        if "tau2" in st:
            self.tau2 = np.asarray(st["tau2"])
        if "pclass" in st:
            self.pclass = np.asarray(st["pclass"])
        if self.sampler is not None and "sampler" in st:
            K, lo, hi = self.cfg.K, self.lo, self.hi
            self.sampler.load({k: np.asarray(v)[lo:hi] if k == "tau_prev" else np.asarray(v)[lo * K:hi * K]
                               for k, v in st["sampler"].items()})
        self.corr.load(st)


def initial_reference(ref, angpix, ini_high, solvent):
    """The reference low-passed to ``ini_high`` and multiplied by ``solvent`` (None: not masked)."""
    r = lowpass(np.asarray(ref, np.float64), ini_high, float(angpix), dims=3)
    return (r if solvent is None else r * solvent).astype(np.float32)


def shell_of(res_A, n, angpix):
    return n * angpix / res_A if np.isfinite(res_A) and res_A > 0 else 0.0


TV_KEYS = ("data", "l1", "tv", "restraint", "objective", "residual", "iterations", "seconds", "solve_seconds", "alpha",
           "beta", "gamma", "eps", "epsp", "S", "Nbar")


def tv_stats(last) -> dict | None:
    """The loggable numbers of a regularised reconstruction (``TVReconstructor.last``), or None."""
    return {k: last[k] for k in TV_KEYS} if last else None


def tv_lines(per_map: dict, final=None) -> str:
    """Log lines (each starting with a newline) of the regularised M-step of each half or class."""
    from ...recon.tv import summary

    out = "".join("\n    TV %s: %s" % (k, summary(v)) for k, v in sorted(per_map.items()) if v)
    return out + ("\n    TV final: %s" % summary(final) if final else "")


def _remap_on(dev, remap):
    """``remap(local_index, pair_j)`` of host arrays made to take and give ``dev``'s arrays (the
    pairs cross the bus: used in class3d's first iteration only)."""
    return lambda li, pj: dev.put(remap(dev.get(li), dev.get(pj)))
