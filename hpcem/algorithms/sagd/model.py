"""The data side of ab initio SAGD on one rank: the particles (a contiguous block of the set), the
E-step of a mini-batch over the current quadrature (the shared E-step, :func:`hpcem.estep.run_estep`,
with the importance sampler or the full grid), the noise model and the random initial maps.

Translations are searched around the box centre on every visit (the seed's fixed quadrature over
R^2 with a broad Gaussian prior centred in the image): the E-step's working results keep their
origins at 0, and each visit's best pose is copied into the particle's results.

Noise (cryoSPARC's running estimate): ``sigma2 = (S + priorw sigma0^2) / (C + priorw)`` per optics
group and shell, ``sigma0^2`` the images' power, ``S`` / ``C`` the residual power and particle
counts of the mini-batches, forgotten by ``FORGET`` per iteration, started as ``initw`` images of
``scale sigma0^2``; ``scale`` makes the mean effective sample size of the first mini-batch's pose
posteriors ``target_initial_ess_fraction`` of the quadrature (:meth:`SagdModel.ess_fraction`).
With ``robust_noise`` (default) the images' power and each mini-batch's residual power are the
*median* particle's per shell, scaled by mean / median of the chi-square of the shell's 2 m degrees
of freedom (:func:`robust_shell_power`): junk images (ice gradients and carbon edges of 2-8 x the
particle's contrast) otherwise inflate the low shells' noise 4-8x and the map is lost (issue 12).
"""
from __future__ import annotations

import numpy as np

from ...core.masks import soft_circular_mask, soft_spherical_mask
from ...core.symmetry import symmetry_ops
from ...estep import EStepOptions, FourierParticles, FullGrid, TranslationSampling, run_estep
from ...parallel.decomp import block_range
from ...recon import mstep
from ..map_em.results import new_results
from ..map_em.space3d import ProjectionSpace, Sampling3D

FORGET = 1.0 - 1.0 / 50.0     # the noise estimate's memory: about 50 mini-batches
POSES = ProjectionSpace.pose_keys
POWER_SAMPLE = 4000           # images whose median power is the robust sigma0^2


def robust_shell_power(P, groups, G: int, cnt) -> np.ndarray:
    """(G, shells) per-group median over the rows of ``P`` (particles x shells: a shell's power summed
    over its ``cnt`` coefficients) times mean / median of chi-square with 2 cnt degrees of freedom (the
    mean for pure Gaussian noise; junk rows move the median little), summed over the group's rows
    (the sum of ``len`` rows at that level), so that it replaces a plain sum."""
    from scipy.stats import chi2

    k = 2.0 * np.maximum(np.asarray(cnt, np.float64)[:P.shape[1]], 1.0)
    out = np.zeros((G, P.shape[1]))
    for g in range(G):
        rows = P[groups == g]
        if len(rows):
            out[g] = np.median(rows, axis=0) * (k / chi2.median(k)) * len(rows)
    return out


class _Probe(FullGrid):
    """The full grid, recording each particle's sum of squared posteriors (its 1 / ESS)."""

    def __init__(self, nb: int):
        self.s2 = np.zeros(nb)

    def observe(self, sel, res, o_px):
        np.add.at(self.s2, np.asarray(sel)[res.pair_i], np.asarray(res.weight, np.float64) ** 2)


class SagdModel:
    def __init__(self, ps, cfg, comm):
        self.ps, self.cfg, self.comm = ps, cfg, comm
        n, self.angpix = ps.box, float(ps.angpix)
        self.n, self.K = n, int(cfg.K)
        self.lo, self.hi = block_range(ps.n, comm.size, comm.rank)
        self.idx = np.arange(self.lo, self.hi)
        self.radius_px = cfg.particle_diameter / 2.0 / self.angpix if cfg.particle_diameter > 0 else 0.4 * n
        self.mask3 = soft_spherical_mask(n, self.radius_px, cfg.mask_width).astype(np.float64)
        self.parts = FourierParticles(ps, self.idx, soft_circular_mask(n, self.radius_px, cfg.mask_width), cfg.ctf,
                                      comm)
        self.ops = symmetry_ops(cfg.sym)
        self.res = new_results(self.idx.size, POSES, first_class=0)
        self.search = new_results(self.idx.size, POSES, first_class=1)
        self.opts = EStepOptions(frac=0.999, maxsig=cfg.maxsig, batch=cfg.batch,
                                 coarse_factor=1.2 if cfg.oversampling else 0.0, oversampling=cfg.oversampling,
                                 class_overlap=bool(cfg.split_merge) and self.K >= 3)
        self.sigma_offset = max(cfg.offset_range, 1.0) * self.angpix / 2.0
        self.sigma0 = self.S = self.C = None
        self.pnoise = None       # (nb, shells) each particle's residual power of its last E-step

    def load(self):
        self.parts.load()
        self.sigma0 = np.asarray(self.parts.img_power, np.float64)
        self.pnoise = np.zeros((self.idx.size, self.sigma0.shape[1]))
        if self.cfg.robust_noise:
            self.sigma0 = self._robust_image_power()

    def _robust_image_power(self) -> np.ndarray:
        """The images' power per group and shell from the median image of an evenly spaced sample of
        at most POWER_SAMPLE (the same for any rank count; collective)."""
        pa, nsh = self.parts, self.sigma0.shape[1]
        sample = np.unique(np.linspace(0, self.ps.n - 1, min(self.ps.n, POWER_SAMPLE)).astype(np.int64))
        mine = sample[(sample >= self.lo) & (sample < self.hi)] - self.lo
        onehot = np.zeros((pa.shell.size, nsh))
        inside = np.flatnonzero(pa.shell < nsh)
        onehot[inside, pa.shell[inside]] = 1.0
        rows = np.zeros((mine.size, nsh))
        for s in range(0, mine.size, 256):
            X = pa.X[mine[s:s + 256]]
            rows[s:s + 256] = (X.real.astype(np.float64) ** 2 + X.imag.astype(np.float64) ** 2) @ onehot
        parts = self.comm.allgather((rows, pa.groups[mine]))
        rows, groups = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        cnt = np.maximum(mstep.shell_counts(pa.shell, nsh), 1.0)
        counts = np.maximum(np.bincount(groups, minlength=pa.G), 1.0)[:, None]
        return robust_shell_power(rows, groups, pa.G, cnt) / counts / cnt[None, :]

    def local(self, members):
        """Rank-local indices of the global particles ``members`` held here."""
        m = np.asarray(members)
        return m[(m >= self.lo) & (m < self.hi)] - self.lo

    # ------------------------------------------------------------ the E-step of a mini-batch
    def space(self, quad):
        """The hypothesis space and translations whose fine level is the quadrature ``quad`` (with
        oversampling, the coarse level has half its sampling in every dimension)."""
        os = 1 if (self.cfg.oversampling and quad.order > 0) else 0
        samp = Sampling3D(quad.order - os, self.cfg.sym, quad.psi_step * (1 + os), os)
        sp = ProjectionSpace(samp, self.K, self.n, self.ops)
        sp.residual = True
        return sp, TranslationSampling(self.cfg.offset_range, quad.t_step * (1 + os), os)

    def e_step(self, V, r: int, quad, sub, sigma2, candidates, class_mix=None, accumulate=True, record=None):
        """E-step of the rank-local particles ``sub`` against the maps ``V`` (K, n, n, n) up to shell
        ``r``; returns (sums, space: its back-projectors hold the residual and weight sums); ``record``
        (default: ``accumulate``) copies the particles' classes and poses into their results."""
        space, trans = self.space(quad)
        space.refs = np.asarray(V, np.float32)
        sums = run_estep(self.parts, space, trans, self.search, sigma2=sigma2, sigma_offset=self.sigma_offset,
                         log_class_prior=np.full(self.K, -np.log(self.K)), r_cur=int(r), radius_px=self.radius_px,
                         opts=self.opts, candidates=candidates, subset=np.asarray(sub, np.int64),
                         class_segments=self.K > 1, class_mix=class_mix, accumulate=accumulate,
                         particle_noise=self.pnoise if accumulate else None)
        if accumulate if record is None else record:
            for k in self.res:
                self.res[k][sub] = self.search[k][sub]
        self.search["ox"][:] = 0.0
        self.search["oy"][:] = 0.0
        return sums, space

    def batch_loglik(self, sub) -> float:
        """Sum over all ranks of the last E-step's log-likelihoods of the mini-batch (collective)."""
        s = np.array([float(self.search["loglik"][sub].sum())])
        self.comm.allreduce_(s)
        return float(s[0])

    def group_counts(self, sub) -> np.ndarray:
        g = np.bincount(self.parts.groups[np.asarray(sub, np.int64)], minlength=self.parts.G).astype(np.float64)
        self.comm.allreduce_(g)
        return g

    # ------------------------------------------------------------ noise
    def sigma2(self) -> np.ndarray:
        p = self.cfg.noise_priorw
        return (self.S + p * self.sigma0) / np.maximum(self.C + p, 1e-300)

    def start_noise(self, scale: float) -> None:
        w = self.cfg.noise_initw
        self.S = w * float(scale) * self.sigma0
        self.C = np.full(self.sigma0.shape, float(w))

    def update_noise(self, noise, counts_g, r: int, sub=None) -> None:
        """Add a mini-batch's residual power (``noise`` (G, nsh) sums, ``counts_g`` particles per group;
        with ``robust_noise`` the median particle's of the rank-local mini-batch ``sub`` instead of
        ``noise``: collective)."""
        cnt = mstep.shell_counts(self.parts.shell, self.sigma0.shape[1])
        if self.cfg.robust_noise:
            sub = np.asarray(sub, np.int64)
            parts = self.comm.allgather((self.pnoise[sub], self.parts.groups[sub]))
            rows, groups = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
            noise = robust_shell_power(rows, groups, self.parts.G, cnt)
        self.S *= FORGET
        self.C *= FORGET
        upd = np.arange(self.sigma0.shape[1]) <= r
        self.S[:, upd] += np.asarray(noise)[:, upd] / np.maximum(cnt[upd], 1.0)
        self.C[:, upd] += np.asarray(counts_g, np.float64)[:, None]

    def ess_fraction(self, V, r, quad, sub, scale: float) -> float:
        """Mean over the mini-batch ``sub`` (all ranks) of each particle's posterior effective sample
        size over the quadrature's size, with the noise ``scale sigma0^2`` (collective)."""
        probe = _Probe(self.idx.size)
        space, trans = self.space(quad)
        self.e_step(V, r, quad, sub, scale * self.sigma0, probe, accumulate=False)
        size = float(self.K * space.Jf1 * len(trans.fine))
        s = np.array([float(np.sum(1.0 / np.maximum(probe.s2[sub], 1e-300)) / size), float(len(sub))])
        self.comm.allreduce_(s)
        return s[0] / max(s[1], 1.0)

    # ------------------------------------------------------------ start
    def random_maps(self, seed: int, signal_sd: float, cutoff: float) -> np.ndarray:
        """(K, n, n, n): sums of random solid spheres inside the particle (the seed's random starts),
        low-passed to Fourier radius ``cutoff``, windowed, scaled so that their projections' standard
        deviation inside the particle is the data's."""
        from ...core.fourier import ft3, ift3, radius3
        from ...core.symalign import symmetrise

        n, R = self.n, self.radius_px
        c = np.arange(n) - n // 2
        z, y, x = np.meshgrid(c, c, c, indexing="ij")
        out = np.zeros((self.K, n, n, n))
        lp = radius3(n) <= cutoff
        for k in range(self.K):
            rng = np.random.default_rng([seed, 41, k])
            for _ in range(20):
                d = rng.normal(size=3)
                centre = d / np.linalg.norm(d) * 0.6 * R * rng.uniform() ** (1 / 3)
                rad = R * rng.uniform(0.1, 0.3)
                out[k] += ((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) <= rad ** 2
            v = np.maximum(ift3(ft3(out[k]) * lp, n), 0.0) * self.mask3
            if len(self.ops) > 1:
                v = symmetrise(v, self.ops)
            proj = v.sum(axis=0)
            inside = (c[:, None] ** 2 + c[None, :] ** 2) < R ** 2
            out[k] = v * signal_sd / max(float(proj[inside].std()), 1e-30)
        return out
