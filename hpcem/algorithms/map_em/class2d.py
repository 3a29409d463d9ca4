"""Reference-free 2D classification by regularised likelihood (MAP) EM, as RELION does it.

Model (seed 000, section 3.1.1, eqs 1-6): a particle's transform ``X`` is its class reference
``V_k`` rotated in-plane by ``psi``, shifted by ``t``, times its CTF, plus Gaussian noise of power
``sigma2`` per shell (per optics group); references have a Gaussian prior of power ``tau2_k`` per
shell; offsets a Gaussian prior of width ``sigma_offset``; classes priors ``pi_k``.

One iteration: the shared E-step (:func:`hpcem.estep.run_estep` over :class:`InPlaneSpace`: coarse
pass over all classes x psi x translations, significant set, 2 x 4 children each, fine pass,
dense sums per (class, fine psi)); the sums rotated back into the class frames and reduced (one
Allreduce per accumulator); the M-step (:mod:`hpcem.recon.average2d`, :mod:`hpcem.recon.mstep`):
``V = data / (weight + 1 / (T tau2_k))``, sigma2, class priors, sigma_offset, tau2 (reference
power) and the next resolution limit (where ``T tau2 <weight>``, the data-vs-prior SSNR, falls
below 1, plus a margin); classes below half their fair share are re-seeded from the largest.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...core.filters import lowpass, radial_average
from ...core.fourier import ft2, ift2, shell_index2, shift_phases
from ...core.masks import soft_circular_mask
from ...estep import EStepOptions, FourierParticles, TranslationSampling, run_estep
from ...estep.corrections import Corrections
from ...parallel.decomp import block_range
from ...recon import mstep
from ...recon.average2d import PAD, class_averages, rotate_back
from ...runtime.device import HOST
from ...runtime.memory import MemoryPlan
from ...runtime.params import AT_LEAST_1, NON_NEGATIVE, POSITIVE, param
from ..vdam.options import GradOptions
from .class_accuracy import expected_accuracies, mean_ctf2, shells_above, shells_to_angstrom
from .options import ImageOptions
from .results import gather_results, new_results, pose_change_stats
from .space2d import InPlaneSpace


@dataclass(frozen=True)
class Class2DConfig(ImageOptions, GradOptions):
    K: int = param(10, "number of classes", check=AT_LEAST_1, group="model")
    iters: int = param(25, "number of EM iterations", flag="--iter", check=AT_LEAST_1, group="model")
    particle_diameter: float = param(0.0, "mask diameter in A (0: 80%% of the box)", check=NON_NEGATIVE,
                                     group="model")
    ctf: bool = param(False, "CTF-aware likelihood and class averages", action="store_true", group="model")
    tau2_fudge: float = param(2.0, "regularisation parameter T", check=POSITIVE, group="model")
    ini_high: float = param(30.0, "low-pass (A) of the initial references and first resolution limit",
                            check=POSITIVE, group="model")
    random_seed: int = param(0, "seed of the initialisation", group="model")
    init: str = param("particles", "initial references: K random particles (fast symmetry breaking) or "
                      "averages of K random subsets (RELION's start)", choices=("particles", "subsets"),
                      group="model")
    center_classes: bool = param(False, "re-centre class averages on their centre of mass",
                                 action="store_true", group="model")
    psi_step: float = param(10.0, "in-plane angular step (deg)", check=(lambda v: 0 < v <= 180, "in (0, 180]"),
                            group="sampling")
    offset_range: float = param(5.0, "translation search range (pixels)", check=NON_NEGATIVE, group="sampling")
    offset_step: float = param(1.0, "translation step (pixels)", check=POSITIVE, group="sampling")
    grad_final_offset_range: float = param(3.0, "VDAM (--grad): translation search range (pixels) of the final "
                                           "pass over all particles, around each particle's origin from its last "
                                           "mini-batch (at most --offset_range; hpcem's flag, not RELION's)",
                                           check=NON_NEGATIVE, group="sampling")
    oversampling: int = param(1, "adaptive oversampling order (1: children at half the step)", choices=(0, 1),
                              group="sampling")
    maxsig: int = param(200, "most significant coarse hypotheses oversampled per particle (0: all)",
                        check=NON_NEGATIVE, group="sampling")
    batch: int = param(0, "particles per kernel call (0: automatic)", check=NON_NEGATIVE, group="compute")
    frac: float = param(0.999, cli=False)            # posterior mass kept in the significant set
    margin_shells: int = param(4, cli=False)         # shells beyond the SSNR = 1 resolution in the next E-step
    mask_width: float = param(5.0, cli=False)        # px, soft edge of the masks
    coarse_factor: float = param(1.2, cli=False)     # coarse-pass resolution limit (see hpcem.estep.rank)

    def estep_options(self) -> EStepOptions:
        return EStepOptions(self.frac, self.maxsig, self.batch, self.coarse_factor, self.oversampling)


class Class2D:
    """State and iterations of 2D classification on one rank (SPMD; rank 0 writes)."""

    kind = "class2d"
    checkpoint_name = "checkpoint.h5"

    def __init__(self, ps, cfg: Class2DConfig, comm, log=print, device=HOST):
        self.ps, self.config, self.comm, self.log, self.device = ps, cfg, comm, log, device
        self.n, self.angpix, self.N = ps.box, float(ps.angpix), ps.n
        n = self.n
        self.nsh = n // 2 + 1
        self.lo, self.hi = block_range(self.N, comm.size, comm.rank)
        self.radius_px = (cfg.particle_diameter / 2.0 / self.angpix) if cfg.particle_diameter > 0 else 0.4 * n
        self.mask = soft_circular_mask(n, self.radius_px, cfg.mask_width)
        self.parts = FourierParticles(ps, np.arange(self.lo, self.hi), self.mask, cfg.ctf, comm,
                                      zero_mask=cfg.zero_mask, intact_first_peak=cfg.ctf_intact_first_peak,
                                      device=device)
        self.space = InPlaneSpace(cfg.K, cfg.psi_step, cfg.oversampling, n, device=device)
        self.trans = TranslationSampling(cfg.offset_range, cfg.offset_step, cfg.oversampling)
        self.refs = self.sigma2 = self.tau2 = None   # (K, n, n), (G, nsh), (K, nsh)
        self.pclass = np.full(cfg.K, 1.0 / cfg.K)
        self.sigma_offset = max(cfg.offset_range, 1.0) * self.angpix / 2.0  # A
        self.r_cur, self.iteration, self.resolution = 0, 0, np.inf
        self.class_res = np.full(cfg.K, np.inf)   # (K,) A, each class's own resolution
        self.res = new_results(self.hi - self.lo, self.space.pose_keys)
        self.corr = Corrections(self.parts, self.res, cfg.norm, cfg.scale)
        self.prev = None

    # ------------------------------------------------------------ data
    def memory_plan(self) -> MemoryPlan:
        nb, n, K, T = self.hi - self.lo, self.n, self.config.K, self.trans.T
        coef = n * (n // 2 + 1)
        J, Jf = K * self.space.Jc1, K * self.space.Jf1
        b = self.batch_size()
        return MemoryPlan({"particles (transforms + CTFs)": self.parts.nbytes(),
                           "coarse diff2 of one batch": b * T * J * 4,
                           "rotated references (coarse + fine)": (J + Jf) * coef * 8,
                           "M-step sums per (class, psi), reduced": Jf * coef * 48,
                           "batch work arrays": b * coef * 32 + 4 * T * coef * 8,
                           "padded references": K * (PAD * n) ** 2 * 8},
                          what="%d particles, K=%d, %d psi x %d translations, batch %d" % (nb, K, self.space.npsi, T, b),
                          hint="run on more ranks/nodes, or lower --batch, --K or widen --psi_step")

    def batch_size(self) -> int:
        from ...estep.rank import batch_size
        return batch_size(self.config.estep_options(), self.trans.T, self.config.K * self.space.Jc1, True)

    def prepare(self):
        """Read this rank's particles; translations are searched around each particle's current
        origin (RELION), starting at the input's."""
        self.parts.load()
        self.ctf2 = mean_ctf2(self.parts, self.comm, self.nsh)
        o = self.ps.origins_angst(np.arange(self.lo, self.hi)) if self.hi > self.lo else np.zeros((0, 2))
        self.res["ox"][:], self.res["oy"][:] = o[:, 0], o[:, 1]

    def initialise(self):
        """Initial references (seeded, rank-independent), low-passed to ``ini_high``.

        ``init='particles'`` (default): K distinct random particles, one per class.  Low-passed
        single particles differ in view, so classes start apart and EM breaks the symmetry between
        them in a few iterations (measured: ARI 0.90 vs 0.76 after 5 iterations on 10,000
        particles, K=10, SNR 0.05). ``init='subsets'``: averages of K random subsets (RELION's
        reference-free start; nearly identical blobs that take longer to separate)."""
        cfg, n, K = self.config, self.n, self.config.K
        rng = np.random.default_rng(cfg.random_seed)
        if cfg.init == "particles":
            pick = rng.choice(self.N, size=min(K, self.N), replace=False)
            member = np.full(self.N, -1)
            member[pick] = np.arange(len(pick))
        else:
            member = rng.permutation(self.N) % K
        refs = self._member_averages(member)
        refs = lowpass(refs, cfg.ini_high, self.angpix, dims=2) * self.mask
        # equal power per shell: no class starts with a systematic advantage in ||c R||^2
        pw = self._power(refs)
        gain = np.sqrt(pw.mean(0)[None, :] / np.maximum(pw, 1e-300))[:, np.minimum(shell_index2(n), self.nsh - 1)]
        self.refs = (ift2(ft2(refs) * gain, n) * self.mask).astype(np.float32)
        self.sigma2 = self.parts.img_power.copy()
        self.tau2 = self._power(self.refs)
        self.r_cur = int(min(n // 2, max(3, round(n * self.angpix / cfg.ini_high))))
        self.iteration = 0

    def _member_averages(self, member):
        """Averages (K, n, n) of the particles (at their input origins) with member[i] = k."""
        n, K = self.n, self.config.K
        sub_loc = member[self.lo:self.hi]
        sums = np.zeros((K, n, n))
        o_px = np.stack([self.res["ox"], self.res["oy"]], 1) / self.angpix
        for s in range(0, sub_loc.size, 512):
            sel = np.flatnonzero(sub_loc[s:s + 512] >= 0) + s
            if sel.size:
                F = self.parts.X[sel] * shift_phases(n, o_px[sel]).reshape(sel.size, -1)
                np.add.at(sums, sub_loc[sel], ift2(F.reshape(-1, n, n // 2 + 1), n))
        self.comm.allreduce_(sums)
        cnt = np.bincount(member[member >= 0], minlength=K).astype(np.float64)
        return sums / np.maximum(cnt, 1.0)[:, None, None]

    def _power(self, refs):
        F = ft2(np.asarray(refs, np.float64))
        return radial_average(F.real ** 2 + F.imag ** 2, dims=2)

    # ------------------------------------------------------------ iterations
    def done(self) -> bool:
        return self.iteration >= self.config.iters

    def e_step(self):
        self.prev = {k: v.copy() for k, v in self.res.items()}
        self.corr.apply(self.parts, self.res)
        return self.estep_on(self.refs)

    def estep_on(self, refs, subset=None, slots=None, n_slots=1, accumulate=True):
        """The shared E-step of this rank's particles (``subset``: only those; ``slots``: their sums
        into ``n_slots`` row blocks; ``accumulate`` False: no data sums) against ``refs``."""
        self.space.refs = refs
        return run_estep(self.parts, self.space, self.trans, self.res, sigma2=self.sigma2,
                         sigma_offset=self.sigma_offset, log_class_prior=np.log(np.maximum(self.pclass, 1e-30)),
                         r_cur=self.r_cur, radius_px=self.radius_px, opts=self.config.estep_options(),
                         subset=subset, slots=slots, n_slots=n_slots, accumulate=accumulate)

    def reduce(self, sums):
        self.D, self.W = self.rotated_sums()
        sums.reduce(self.comm)

    def rotated_sums(self):
        """The space's (class, psi) sums of the last E-step reduced over ranks into row blocks, each
        rank rotating its block back into the class frames (see :mod:`hpcem.recon.average2d`), then
        one Allreduce each: ``D, W`` (K, n, n//2+1)."""
        data, wsum, row0, kidx = self.reduced_rows()
        D, W = rotate_back(data, wsum, kidx, self.space.psi_f, self.config.K, self.n, self.r_cur, row0)
        for a in (D, W):
            self.comm.allreduce_(a)
        return D, W

    def reduced_rows(self):
        """This rank's block of the space's (slot, class, psi) sums of the last E-step, summed over
        ranks: ``(data, wsum, row0, kidx)``; the space's accumulators are released."""
        from ...estep import coefficients

        comm = self.comm
        kidx = coefficients(self.parts.shell, self.r_cur)
        data, wsum = self.space.host_sums()
        row0 = block_range(data.shape[0], comm.size, comm.rank)[0]
        data = comm.reduce_scatter_rows(data.view(wsum.dtype)).view(data.dtype)
        wsum = comm.reduce_scatter_rows(wsum)
        return data, wsum, row0, kidx

    def m_step(self, sums):
        cfg, n, K = self.config, self.n, self.config.K
        shell2 = shell_index2(n)
        r_used = self.r_cur
        refs = class_averages(self.D, self.W, self.tau2, cfg.tau2_fudge, shell2, shell2 <= self.r_cur, self.mask)
        if cfg.center_classes:
            refs = self._centre(refs)
        counts = mstep.shell_counts(self.parts.shell, self.nsh)
        self.sigma2 = mstep.sigma2_update(self.parts.img_power, sums.noise, counts, self.parts.group_counts,
                                          self.r_cur)
        # mean weight per shell and class -> data-vs-prior SSNR -> next radius
        wmean = np.stack([np.bincount(shell2.ravel(), weights=self.W[k].ravel(), minlength=self.nsh)[:self.nsh]
                          for k in range(K)]) / np.maximum(counts, 1.0)[None, :]
        tau2_new = self._power(refs)
        ssnr = cfg.tau2_fudge * tau2_new * wmean
        res_shell = mstep.resolution_shell(ssnr)
        self.resolution = n * self.angpix / max(res_shell, 1)
        self.class_res = shells_to_angstrom(shells_above(ssnr, 1.0), n, self.angpix)
        self.refs, self.tau2 = refs, tau2_new
        self.pclass = mstep.class_priors(sums.class_weight)
        self.sigma_offset = mstep.sigma_offset(sums.offset2, self.N)
        self.corr.update(self.parts, self.res, sums, self.comm)
        self.r_cur = mstep.next_r_cur(res_shell, cfg.margin_shells, n)
        self.D = self.W = None
        self._revive_empty_classes()
        self.iteration += 1
        stats = pose_change_stats(self.comm, self.prev, self.res, self.space, first=self.iteration == 1)
        stats.update(iteration=self.iteration, r_cur=r_used, resolution=self.resolution,
                     sigma_offset=self.sigma_offset)
        return stats

    def _centre(self, refs):
        """Shift each class average so the centre of mass of its positive density is at the box
        centre (RELION's --center_classes): keeps classes from drifting as the translation
        search follows each particle's origin."""
        n = self.n
        c = np.arange(n) - n // 2
        pos = np.maximum(refs.astype(np.float64), 0.0) * self.mask
        mass = pos.sum(axis=(1, 2))
        com = np.stack([(pos.sum(1) * c[None, :]).sum(1), (pos.sum(2) * c[None, :]).sum(1)], axis=1)
        com /= np.maximum(mass, 1e-30)[:, None]
        com[mass <= 0] = 0.0
        F = ft2(refs.astype(np.float64)) * shift_phases(n, -com, dtype=np.complex128)
        return (ift2(F, n) * self.mask).astype(np.float32)

    def _revive_empty_classes(self):
        """A nearly empty class (prior below ``--class_inactivity_threshold`` / K, RELION's VDAM
        rule and default 0.1) is re-seeded from the largest class (its average plus a seeded
        perturbation; both take half its prior), so that EM can split classes that merged early.
        Only in the first 3/4 of the iterations; identical on every rank.  (Half the fair share,
        the rule before issue 14, re-seeded every small class: junk of a few per cent of the
        particles never kept a class of its own and went into the good classes.)"""
        cfg = self.config
        if self.iteration + 1 > 0.75 * cfg.iters:
            return
        rng = np.random.default_rng([cfg.random_seed, self.iteration + 1])
        for k in np.flatnonzero(self.pclass < cfg.class_inactivity_threshold / cfg.K):
            big = int(np.argmax(self.pclass))
            ref = self.refs[big].astype(np.float64)
            noise = lowpass(rng.standard_normal(ref.shape), self.resolution if np.isfinite(self.resolution)
                            else cfg.ini_high, self.angpix, dims=2)
            noise *= 0.2 * ref.std() / max(noise.std(), 1e-30)
            self.refs[k] = ((ref + noise) * self.mask).astype(np.float32)
            self.refs[big] = ((ref - noise) * self.mask).astype(np.float32)
            self.tau2[k] = self.tau2[big]
            self.pclass[k] = self.pclass[big] = 0.5 * self.pclass[big]

    # ------------------------------------------------------------ state, files
    def state(self):
        return {"refs": self.refs, "sigma2": self.sigma2, "tau2": self.tau2, "pclass": self.pclass,
                "sigma_offset": self.sigma_offset, "r_cur": self.r_cur, "iteration": self.iteration,
                "resolution": self.resolution, "class_resolution": self.class_res,
                "img_power": self.parts.img_power,
                "results": gather_results(self.comm, self.res), **self.corr.state()}

    def restore(self, st):
        self.refs = np.asarray(st["refs"], np.float32)
        self.sigma2, self.tau2 = np.asarray(st["sigma2"]), np.asarray(st["tau2"])
        self.pclass = np.asarray(st["pclass"])
        self.sigma_offset, self.r_cur = float(st["sigma_offset"]), int(st["r_cur"])
        self.iteration, self.resolution = int(st["iteration"]), float(st["resolution"])
        self.class_res = np.asarray(st.get("class_resolution", np.full(self.config.K, self.resolution)), np.float64)
        for k in self.res:
            self.res[k] = np.asarray(st["results"][k])[self.lo:self.hi].astype(self.res[k].dtype)
        self.corr.load(st)

    def write(self, root, state, stats):
        from .io2d import write_iteration

        return write_iteration(root, self.ps, state, stats, self.config, self.angpix, self.class_columns(state))

    def class_columns(self, state) -> dict:
        """RELION's per-class columns of data_model_classes: resolution and alignment accuracies
        (:mod:`.class_accuracy`), from the noise spectrum averaged over the optics groups."""
        g = np.asarray(self.parts.group_counts, np.float64)
        sigma2 = g @ np.asarray(state["sigma2"]) / max(g.sum(), 1.0)
        rot, trans = expected_accuracies(state["refs"], sigma2, self.ctf2, int(state["r_cur"]), self.angpix)
        return {"rlnEstimatedResolution": np.asarray(state["class_resolution"], np.float64),
                "rlnAccuracyRotations": rot, "rlnAccuracyTranslationsAngst": trans}

    def plot(self, root, state, stats):
        from .io2d import plot_iteration

        plot_iteration(root, state)

    def log_line(self, st):
        return ("it %3d  r_cur %2d  res %6.2f A  dclass %5.3f  dpsi %6.2f deg  doff %5.2f A  sig_off %5.2f A  "
                "nsig %7.1f  logL %.6e  (%.1f s, E-step %.1f s)" % (
                    st["iteration"], st["r_cur"], st["resolution"], st["changes_classes"], st["changes_orient"],
                    st["changes_offsets"], st["sigma_offset"], st["mean_nsig"], st["loglik"], st["t_iter"],
                    st["t_estep"]))

    def finish(self, root):
        pass
