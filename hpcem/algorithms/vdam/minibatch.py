"""What the 2D and 3D VDAM drivers share: the mini-batch draw, the noise model of a mini-batch,
and files, checkpoints and the log line every ``--grad_write_iter`` mini-batches.

Each particle belongs to one of two fixed random half sets; mini-batch t takes the next
``batch_size(t)`` particles of a seeded random order of the whole set (a new order every epoch),
so a resumed run draws the same batches and 1 or N ranks the same particles.
"""
from __future__ import annotations

import functools

import numpy as np

from ...recon import mstep
from .update import Moments

PRIOR_MEMORY = 0.9     # running average of the class priors over mini-batches


def batch_indices(seed: int, N: int, start: int, size: int) -> np.ndarray:
    """Global indices of the particles ``start .. start + size`` of the concatenated per-epoch
    random orders (epoch e: permutation seeded by (seed, e))."""
    out, pos = [], start
    while pos < start + size:
        e, off = divmod(pos, N)
        take = _epoch_order(seed, N, e)[off:off + start + size - pos]
        out.append(take)
        pos += take.size
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)


@functools.lru_cache(maxsize=2)
def _epoch_order(seed: int, N: int, e: int) -> np.ndarray:
    """The random order of epoch ``e`` (drawn once per epoch, not once per mini-batch; read-only)."""
    perm = np.random.default_rng([seed, 7919, e]).permutation(N)
    perm.flags.writeable = False
    return perm


def half_sets(seed: int, N: int) -> np.ndarray:
    """(N,) 0 / 1: the two fixed random half sets."""
    return np.random.default_rng([seed, 2]).permutation(N) % 2


def split_batch(seed: int, start: int, size: int, half, lo: int, hi: int):
    """This rank's (particles ``lo .. hi``) indices of the mini-batch, rank-local, per half."""
    g = batch_indices(seed, half.size, start, size)
    loc = g[(g >= lo) & (g < hi)]
    return [np.sort(loc[half[loc] == h] - lo) for h in (0, 1)]


def batch_noise(parts, sub, sums, comm, r_cur: int, n_batch: int):
    """(sigma2, sigma_offset, class priors) from the reduced sums of one mini-batch (``sub`` the
    rank-local particles in it)."""
    g = np.bincount(parts.groups[sub], minlength=parts.G).astype(np.float64)
    comm.allreduce_(g)
    counts = mstep.shell_counts(parts.shell, parts.nsh)
    sigma2 = mstep.sigma2_update(parts.img_power, sums.noise, counts, g, r_cur)
    return sigma2, mstep.sigma_offset(sums.offset2, n_batch), mstep.class_priors(sums.class_weight)


def running_priors(pclass, batch_priors):
    return PRIOR_MEMORY * np.asarray(pclass) + (1.0 - PRIOR_MEMORY) * np.asarray(batch_priors)


class GradFiles:
    """Mixin before the EM driver class: state (the EM state plus the class maps ``maps``, the
    moments ``mom`` and the particle position ``start`` of the mini-batch draw), files and plots
    only every ``--grad_write_iter`` mini-batches and at the last; the per-mini-batch log line.
    Needs ``self.iteration``."""

    @property
    def em_start(self) -> int:
        """The first EM iteration: the last ``config.em_iters()`` of ``--iter`` are EM iterations over all
        particles (``--grad_em_iters``, RELION's flag)."""
        return self.config.iters - self.config.em_iters()

    def em_phase(self) -> bool:
        return self.iteration >= self.em_start

    def _writes(self) -> bool:
        return self.iteration % self.config.grad_write_iter == 0 or self.iteration >= self.config.iters

    def state(self):
        if not self._writes():
            return None
        st = super().state()
        st.update(maps=self.maps, grad_start=self.start, **self.mom.state())
        return st

    def restore(self, st):
        super().restore(st)
        self.maps = np.asarray(st["maps"], np.float64)
        self.mom = Moments.load(st)
        self.start = int(st["grad_start"])

    def write(self, root, state, stats):
        return super().write(root, state, stats) if state is not None else {}

    def plot(self, root, state, stats):
        if state is not None:
            super().plot(root, state, stats)

    def log_line(self, st):
        if st.get("em"):
            return "EM " + super().log_line(st)
        rep = "-" if st["replaced"] is None else "%d<-%d" % (st["replaced"][0] + 1, st["replaced"][1] + 1)
        order = "  order %d" % st["order"] if "order" in st else ""
        tv = [t["seconds"] for t in st.get("tv", {}).values() if t]
        return ("batch %3d  size %5d  step %.3f  T %.2f  r_cur %2d  res %6.2f A%s  replaced %s  dclass %5.3f  "
                "sig_off %5.2f A  (%.1f s, E-step %.1f s%s)" % (
                    st["iteration"], st["batch"], st["step"], st["fudge"], st["r_cur"], st["resolution"], order, rep,
                    st["changes_classes"], st["sigma_offset"], st["t_iter"], st["t_estep"],
                    ", TV %.1f s" % sum(tv) if tv else ""))
