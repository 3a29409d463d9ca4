"""3D classification by regularised-likelihood (MAP) EM, as RELION does it (seed 000, section 3.1.1).

Hypotheses: K x HEALPix directions of the asymmetric unit x psi x translations (global search
through the shared E-step, :class:`~.space3d.ProjectionSpace`).  Initialisation: the first
iteration aligns every particle to the low-passed reference and back-projects it into a random
class (seeded by particle index), so the K starting maps are reconstructions from K random
subsets (RELION's random perturbation of the classes).  The E-step uses uniform class priors (the
estimated pi_k are reported): with the estimated priors, the class that starts larger (more, and
misaligned, particles while the poses are still converging) pulls in more particles every
iteration and the split drifts to a junk/size split (blobs SNR 0.1, 2000 particles: sizes
660/1340, ARI 0.10 at iteration 14; with uniform priors 870/1130, ARI 0.18).

M-step: ``tau2`` of each class from this iteration's sums (power of the unregularised masked
reconstruction less its noise power, zero beyond the E-step's limit), the class maps, class
priors, sigma_offset, sigma2, and the next resolution limit where ``T tau2 <W>`` (SSNR) drops
below 1.
"""
from __future__ import annotations

import numpy as np

from ...estep import LocalSearch, TranslationSampling
from ...recon import mstep
from ...runtime.memory import MemoryPlan
from .model3d import Model3D, initial_reference, shell_of
from .results import pose_change_stats
from .space3d import PAD, ProjectionSpace, Sampling3D


class Class3D:
    kind = "class3d"
    checkpoint_name = "checkpoint.h5"

    def __init__(self, ps, ref, cfg, comm, log=print):
        self.ps, self.ref, self.config, self.comm, self.log = ps, ref, cfg, comm, log
        self.n, self.K = ps.box, cfg.K
        self.m = Model3D(ps, np.arange(ps.n), cfg, comm, log)
        self.samp = Sampling3D(cfg.healpix_order, cfg.sym, cfg.psi_step, cfg.oversampling)
        self.trans = TranslationSampling(cfg.offset_range, cfg.offset_step, cfg.oversampling)
        self.space = ProjectionSpace(self.samp, self.K, self.n, self.m.ops)
        r0 = int(min(self.n // 2, max(3, round(shell_of(cfg.ini_high, self.n, ps.angpix)))))
        self.st = {"iteration": 0, "r_cur": r0, "resolution": np.inf}
        self.subset = np.random.default_rng(cfg.random_seed).permutation(ps.n) % self.K

    def memory_plan(self):
        s = self.samp
        return MemoryPlan(self.m.memory_items(s, self.trans.T, self.n // 2),
                          what="%d particles, K=%d, %d directions x %d psi x %d translations"
                          % (self.m.idx.size, self.K, s.nd, s.npsi, self.trans.T),
                          hint="run on more ranks/nodes, or lower --batch, --healpix_order, --offset_range or --K")

    def prepare(self):
        self.m.prepare()

    def initialise(self):
        m = self.m
        r = initial_reference(self.ref, self.ps.angpix, self.config.ini_high, m.solvent)
        m.refs = np.repeat(r[None], self.K, axis=0)
        m.sigma2 = m.img_power.copy()
        m.tau2 = m.power3(m.refs)

    def restore(self, st):
        self.m.load_state(st)
        self.m.set_results(st["results"])
        self.st = {"iteration": int(st["iteration"]), "r_cur": int(st["r_cur"]), "resolution": float(st["resolution"])}

    def done(self):
        return self.st["iteration"] >= self.config.iters

    def e_step(self):
        m = self.m
        self.prev = {k: v.copy() for k, v in m.res.items()}
        self.first = self.st["iteration"] == 0
        remap = None
        if self.first and self.K > 1:
            sub, J = self.subset, self.samp.Jf1
            remap = lambda li, pj: sub[m.idx[li]] * J + pj % J  # noqa: E731
        cand = LocalSearch(self.config.sigma_ang, all_classes=True) if self.config.sigma_ang > 0 else None
        if m.sampler is not None:
            cand = m.importance(self.st["iteration"])
        return m.e_step(self.samp, self.trans, int(self.st["r_cur"]), candidates=cand, remap=remap,
                        uniform_priors=True, cc=self.first and self.config.firstiter_cc)

    def reduce(self, sums):
        self.m.reduce(sums)
        self.evaluated = sums.fraction_evaluated

    def m_step(self, sums):
        m, cfg, K, n = self.m, self.config, self.K, self.n
        m.update_noise_priors(sums)
        msq = float(np.mean(m.mask3.astype(np.float64) ** 2))
        t2 = np.asarray([mstep.tau2_from_unfiltered(m.power3([m.reconstruct(k, unfil=True) * m.mask3])[0],
                                                    m.mean_weight(k) * PAD ** 3, msq, sums.r_cur)
                         for k in range(K)])
        fudge = cfg.tau2_fudge * PAD ** 3
        refs = np.stack([m.flatten(m.reconstruct(k, tau2=t2[k], fudge=fudge)) for k in range(K)]).astype(np.float32)
        tau2 = m.power3(refs)
        ssnr = cfg.tau2_fudge * tau2 * np.stack([m.mean_weight(k) for k in range(K)]) * PAD ** 3
        res_shell = mstep.resolution_shell(ssnr)
        m.refs, m.tau2 = refs, tau2
        r_used = self.st["r_cur"]
        self.st["resolution"] = n * m.angpix / max(res_shell, 1)
        self.st["r_cur"] = mstep.next_r_cur(res_shell, cfg.margin_shells, n)
        self.st["iteration"] += 1
        if self.first and K > 1:   # the random initial classes
            m.res["class"] = self.subset[m.idx] + 1
        stats = pose_change_stats(self.comm, self.prev, m.res, self.space, first=self.first)
        stats.update(iteration=self.st["iteration"], r_cur=r_used, resolution=self.st["resolution"],
                     sigma_offset=m.sigma_offset, pclass=m.pclass.copy(), evaluated=self.evaluated)
        return stats

    def state(self):
        m = self.m
        st = {"refs": m.refs, "sigma2": m.sigma2, "tau2": m.tau2, "pclass": m.pclass,
              "sigma_offset": m.sigma_offset, "img_power": m.img_power, "results": m.gather_results(),
              **m.corr.state(), **self.st}
        smp = m.gather_sampler()
        if smp is not None:
            st["sampler"] = smp
        return st

    def write(self, root, state, stats):
        from .io3d import write_class3d_iteration

        return write_class3d_iteration(root, self.ps, state, stats, self.config)

    def plot(self, root, state, stats):
        from .iofiles import central_slices_png

        it = int(state["iteration"])
        for k in range(self.K):
            central_slices_png(root.iteration(it, "class%03d.png" % (k + 1)), state["refs"][k],
                               "class %d: %.1f%%" % (k + 1, 100 * state["pclass"][k]))

    def log_line(self, st):
        return ("it %3d  r_cur %2d  res %6.2f A  dclass %5.3f  dang %6.2f deg  doff %5.2f A  sig_off %5.2f A  "
                "nsig %7.1f  classes %s  logL %.6e  poses evaluated %.2e  (%.1f s, E-step %.1f s)" % (
                    st["iteration"], st["r_cur"], st["resolution"], st["changes_classes"], st["changes_orient"],
                    st["changes_offsets"], st["sigma_offset"], st["mean_nsig"],
                    " ".join("%.2f" % p for p in st["pclass"]), st["loglik"], st.get("evaluated", float("nan")),
                    st["t_iter"], st["t_estep"]))

    def finish(self, root):
        pass
