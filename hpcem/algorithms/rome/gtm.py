"""ROME statistical manifold learning (GTM with CTF) for deep 2D classification.

Model (ROME Online Methods, eqs 1-17)
    Latent points ``x_k`` (k = 1..K) on a regular grid of dimension L = 1, 2 or 3 with a
    uniform prior (eq 1).  ``M_NL`` Gaussian basis functions of common width ``sigma`` on a
    coarser grid plus one constant basis (eq 4) give ``Phi`` (K x M); the class image of
    latent point k is ``y_k = sum_m phi_km W_m`` (eq 3), in Fourier space.  A particle is
    ``t_n = CTF_n y_k + noise`` with white Gaussian noise of precision ``beta`` (eq 2, with
    ROME's mean beta, eq 14).

Data vector
    Each particle is put into the class frame with its pose (shift by +origin, rotate by
    -psi, as ROME applies a previous 2D alignment), multiplied by a soft circular mask
    (rotation invariant, so no pose-dependent corners), Fourier transformed (hpcem's ft2)
    and restricted to the half-grid coefficients with ``min_shell <= |k| <= max_shell``
    (rounded shells).  Sums over the half grid carry the hermitian weights ``h_d`` so they
    equal full-grid sums (``sum_d h_d |t_nd - c y|^2`` is the real-space squared distance
    of the band-limited images, up to the constant n^2).  The CTF is evaluated in the
    class frame (astigmatism angle + psi).  The data are divided by one global scale so
    that the mean of ``h |t|^2`` per coefficient is 1; ``alpha`` is in those units.

E-step (eq 9), as matrix products
    ``delta_nk = sum_d h_d |t_nd - c_nd y_kd|^2 = a_n + Z_n . Ymat_k`` with
    ``a_n = sum_d h|t|^2``, ``Z_n = [h c t (re, im interleaved) | h c^2]`` (fixed for the run)
    and ``Ymat_k = [-2 y_k | |y_k|^2]``: one SGEMM (N x 3D x K, :func:`gtm_distances`).
    ``r_kn = softmax_k(-beta/2 delta_nk)`` with log-sum-exp (:func:`gtm_responsibilities`).

M-step
    Mean beta (eqs 13-14) from the E-step distances and responsibilities, as ROME's
    algorithm listing does (``1/beta = sum_nk r_kn delta_nk / (N D_eff)``, ``D_eff =
    sum_d h_d``); then, with ``G_kd = sum_n r_kn c_nd^2`` and ``H_kd = sum_n r_kn c_nd t_nd``
    (one SGEMM ``R^T Z``), each pixel's M x M system ``(Phi^T diag(G_d) Phi + alpha/beta I)
    w_d = Phi^T H_d`` (eqs 15-16, with the prior of eq 11) is solved by batched Cholesky
    (:func:`gtm_solve`).  Updating beta before W is an ECM step: both increase the MAP
    objective.

Initialisation (GTM's standard PCA initialisation, chosen because it is deterministic
given the seed, needs no extra EM runs and spreads the latent grid over the directions of
largest variance, so neighbouring latent points start as distinct, plausible images):
the top L principal components of the phase-flipped (CTF-corrected) particles are found
by randomised subspace iteration over the pixel-split data; the grid (unit variance per
axis) is mapped to ``mean + sum_l x_l sqrt(lambda_l) v_l`` (rescaled per pixel by
``mean|c| / mean c^2`` into the CTF-free space, the mean being the CTF-weighted least
squares mean), and W is solved by least squares (:func:`gtm_solve` with G = 1).  The
initial 1/beta is the data variance outside the top L components per coefficient.

Class averages (eq 17)
    ``A_kd = sum_n r_kn c_nd t_nd / (sum_n r_kn c_nd^2 + alpha/beta)`` over the full grid
    (the printed eq 17 has ``t_nd^2`` in the denominator; the Wiener-type average it
    describes, and the M-step it derives from, have ``CTF_nd^2``).

Parallelism
    Coefficients are split over ranks (``block_range``); every rank holds all N particles
    for its block.  Per iteration the partial distances (N x K) are summed by one
    Reduce_scatter into particle-row blocks, each rank computes the responsibilities of its
    rows, and one Allgatherv gives every rank all of them (together the volume of one
    Allreduce, with the softmax split rather than repeated); responsibilities are then
    identical everywhere and the per-pixel solves need no communication.

GPU (``device``)
    The particle block Z goes to the device once (after the initialisation, which runs on the
    host), W and the basis stay there: distances, responsibilities, the M-step products and the
    per-pixel solves run on the device.  With one rank nothing else crosses the bus per iteration
    but the class sizes; with several the N x K distances come to the host for the reduction and
    the responsibilities go back (the volume MPI moves anyway).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ...core.fourier import ift2
from ...core.masks import soft_circular_mask
from ...kernels import gtm_accumulate, gtm_distances, gtm_responsibilities, gtm_solve
from ...parallel.decomp import block_range
from ...runtime.device import HOST
from ...runtime.params import AT_LEAST_1, NON_NEGATIVE, POSITIVE, Params, param
from .gtm_data import aligned_ctf, aligned_transforms, basis_functions, coefficient_selection, latent_shape


@dataclass(frozen=True)
class GTMConfig(Params):
    K: int = param(100, "number of classes (latent grid points)", check=AT_LEAST_1)
    dimension: int = param(2, "latent grid dimension", choices=(1, 2, 3))
    basis: int = param(0, "basis functions along the longest latent axis (0: 1.5 sqrt(side))", check=NON_NEGATIVE)
    basis_width: float = param(1.0, "basis width sigma in units of the basis spacing", check=POSITIVE)
    alpha: float = param(1.0, "Gaussian prior on W (eq 11), in units of the normalised data", check=NON_NEGATIVE)
    max_shell: float = param(0.0, "highest Fourier shell used (0: n/4)", check=NON_NEGATIVE)
    min_shell: int = param(1, "lowest Fourier shell used", check=NON_NEGATIVE)
    iters: int = param(30, "number of EM iterations", flag="--iter", check=NON_NEGATIVE)
    ctf: bool = param(True, "model the CTF")
    mask_radius_px: float = param(0.0, "soft mask radius (px; 0: 0.45 n)", check=NON_NEGATIVE)
    seed: int = param(0, "seed of the PCA initialisation", flag="--random_seed")
    pca_particles: int = param(4000, "particles used for the PCA initialisation", check=AT_LEAST_1)
    chunk: int = param(512, "particles per image-processing chunk", check=AT_LEAST_1)

# ----------------------------------------------------------------------------- the model
@dataclass
class GTMState:
    W: np.ndarray               # (M, D_local) complex64
    beta: float
    iteration: int = 0
    history: list = field(default_factory=list)   # per iteration dicts


class GTM:
    """GTM classifier over this rank's block of Fourier coefficients."""

    def __init__(self, ps, comm, cfg: GTMConfig, log=None, device=HOST):
        self.ps, self.comm, self.cfg, self.device = ps, comm, cfg, device
        self._dev = None       # (Z, a, h, Phi) on the device, made at the first E-step
        self.log = log or (lambda *a: None)
        n = ps.box
        self.n = n
        self.max_shell = cfg.max_shell if cfg.max_shell > 0 else n / 4.0
        self.max_shell = min(self.max_shell, n // 2)
        self.sel_all, self.h_all = coefficient_selection(n, cfg.min_shell, self.max_shell)
        self.D = len(self.sel_all)
        if self.D < comm.size:
            raise ValueError(f"only {self.D} Fourier coefficients for {comm.size} ranks")
        self.d0, self.d1 = block_range(self.D, comm.size, comm.rank)
        self.sel = self.sel_all[self.d0:self.d1]
        self.h = self.h_all[self.d0:self.d1].astype(np.float32)
        self.D_eff = float(self.h_all.sum())
        self.shape = latent_shape(cfg.K, cfg.dimension)
        self.Phi, self.X, self.mu, self.sigma = basis_functions(self.shape, cfg.basis, cfg.basis_width)
        self.K, self.M = self.Phi.shape
        radius = cfg.mask_radius_px if cfg.mask_radius_px > 0 else 0.45 * n
        self.mask = soft_circular_mask(n, min(radius, n / 2.0 - 1), min(5.0, max(1.0, n / 16)))
        self.Z = None
        self.a = None
        self.scale = 1.0

    # ------------------------------------------------------------------ data
    def load(self) -> None:
        """Z (N x 3D_local) and a (N) for this rank's coefficient block; one allreduce for a."""
        N, Dl, ch = self.ps.n, self.d1 - self.d0, self.cfg.chunk
        Z = np.empty((N, 3 * Dl), np.float32)
        a = np.zeros(N, np.float64)
        h = self.h
        for s in range(0, N, ch):
            idx = np.arange(s, min(N, s + ch))
            T = aligned_transforms(self.ps, idx, self.mask).reshape(len(idx), -1)[:, self.sel]
            C = aligned_ctf(self.ps, idx, self.cfg.ctf).reshape(len(idx), -1)[:, self.sel]
            hct = (h * C) * T
            Z[idx, 0:2 * Dl:2] = hct.real
            Z[idx, 1:2 * Dl:2] = hct.imag
            Z[idx, 2 * Dl:] = h * C * C
            a[idx] = (h * (T.real ** 2 + T.imag ** 2)).sum(axis=1, dtype=np.float64)
        self.comm.allreduce_(a)
        s2 = float(a.mean()) / self.D_eff if N else 1.0
        self.scale = math.sqrt(s2) if s2 > 0 else 1.0
        Z[:, :2 * Dl] /= self.scale
        self.a = a / (self.scale ** 2)
        self.Z = Z

    # ------------------------------------------------------------------ initialisation
    def _pca(self, rank_L: int):
        """Top principal directions of the phase-flipped particles (randomised subspace
        iteration over the pixel-split data). Returns (mean_y, V (2Dl, p), lam, total)."""
        comm, cfg, Z = self.comm, self.cfg, self.Z
        N, Dl = Z.shape[0], self.d1 - self.d0
        rng = np.random.default_rng(cfg.seed)
        sub = np.sort(rng.permutation(N)[:min(N, cfg.pca_particles)])
        hct = Z[sub, :2 * Dl].reshape(len(sub), Dl, 2)
        c2h = Z[sub, 2 * Dl:]
        # phase flip: sign(c) t = sign(c) (h c t) / (h |c|)
        habsc = np.sqrt(np.maximum(c2h, 0) * self.h)       # h |c|
        with np.errstate(divide="ignore", invalid="ignore"):
            f = np.where(habsc > 0, 1.0 / habsc, 0.0).astype(np.float32)
        Xf = (hct * f[..., None]).reshape(len(sub), 2 * Dl)  # phase-flipped t (re, im)
        sw = np.repeat(np.sqrt(self.h), 2).astype(np.float32)  # hermitian metric
        Xf *= sw
        mean = Xf.mean(axis=0)
        Xf -= mean
        tot = np.array([float((Xf.astype(np.float64) ** 2).sum()) / max(len(sub) - 1, 1)])
        comm.allreduce_(tot)
        p = max(1, min(rank_L + 6, len(sub)))      # a class of a few particles has fewer directions
        Vfull = np.random.default_rng(cfg.seed + 1).normal(size=(2 * self.D, p)).astype(np.float32)
        V = np.ascontiguousarray(Vfull[2 * self.d0:2 * self.d1])
        for _ in range(6):
            U = np.ascontiguousarray(Xf @ V, dtype=np.float64)
            comm.allreduce_(U)
            U, _ = np.linalg.qr(U)
            V = (Xf.T @ U.astype(np.float32)).astype(np.float64)
            Gm = np.ascontiguousarray(V.T @ V)
            comm.allreduce_(Gm)
            Lc = np.linalg.cholesky(Gm + (1e-12 * np.trace(Gm) + 1e-30) * np.eye(p))
            V = np.linalg.solve(Lc, V.T).T.astype(np.float32)
        U = np.ascontiguousarray(Xf @ V, dtype=np.float64)
        comm.allreduce_(U)
        Uu, S, Vt = np.linalg.svd(U, full_matrices=False)
        V = V.astype(np.float64) @ Vt.T                      # principal directions (this block)
        lam = S ** 2 / max(len(sub) - 1, 1)
        if p < rank_L + 1:                                   # pad: no variance along missing directions
            V = np.concatenate([V, np.zeros((V.shape[0], rank_L + 1 - p))], axis=1)
            lam = np.concatenate([lam, np.zeros(rank_L + 1 - p)])
        return mean, sw, V, lam, float(tot[0])

    def initialise(self) -> GTMState:
        L = len(self.shape)
        Z, Dl = self.Z, self.d1 - self.d0
        mean_f, sw, V, lam, total = self._pca(L)
        # CTF-weighted least-squares mean over all particles (local per pixel)
        cols = gtm_accumulate(np.ones((Z.shape[0], 1), np.float32), Z)[0]
        ht = cols[:2 * Dl].reshape(Dl, 2)
        c2 = cols[2 * Dl:]
        ybar = (ht[:, 0] + 1j * ht[:, 1]) / (c2 + 1e-3 * c2.mean() + 1e-30)
        # per-pixel factor from the phase-flipped to the CTF-free space
        habs = np.sqrt(np.maximum(Z[:, 2 * Dl:], 0) * self.h).astype(np.float64)
        cbar = (habs / self.h).mean(axis=0)
        c2bar = (Z[:, 2 * Dl:] / self.h).mean(axis=0)
        fac = cbar / (c2bar + 1e-3)
        Xs = self.X - self.X.mean(axis=0)
        sd = Xs.std(axis=0)
        Xs = Xs / np.where(sd > 0, sd, 1.0)
        dirs = (V[:, :L] * np.sqrt(lam[:L])[None, :]) / sw[:, None]   # (2Dl, L), unweighted
        Yoff = Xs @ dirs.T                                           # (K, 2Dl)
        Yc = Yoff[:, 0::2] + 1j * Yoff[:, 1::2]
        Y = ybar[None, :] + Yc * fac[None, :]
        G1 = np.ones((self.K, Dl), np.float32)
        lam_ls = 1e-3 * float(self.K) / self.M
        W = gtm_solve(self.Phi, G1, np.ascontiguousarray(Y, dtype=np.complex64), lam_ls)
        resid = max(total - float(lam[:L].sum()), 1e-6 * total, 1e-6 * self.D_eff)
        beta = self.D_eff / resid
        self.log("  PCA: top eigenvalues %s, 1/beta0 = %.4g" % (
            np.array2string(lam[:L + 1] / self.D_eff, precision=3), 1.0 / beta))
        return GTMState(W=W, beta=float(beta))

    # ------------------------------------------------------------------ EM
    def on_device(self):
        """(Z, a, h, Phi) where the iterations run (copied to a GPU once)."""
        if not self.device.gpu:
            return self.Z, self.a, self.h, self.Phi
        if self._dev is None:
            self._dev = tuple(self.device.put(x) for x in (self.Z, self.a, self.h, self.Phi))
        return self._dev

    def predictions(self, W) -> np.ndarray:
        return self.on_device()[3].astype(np.complex64) @ W           # (K, Dl)

    def e_step(self, st: GTMState):
        """Distances (summed over the pixel blocks of all ranks) -> responsibilities R (N, K)
        float32, identical on every rank (on the device)."""
        Dl, dev = self.d1 - self.d0, self.device
        Z, a = self.on_device()[:2]
        Y = self.predictions(dev.put(st.W))
        Ymat = dev.xp.empty((self.K, 3 * Dl), dtype=np.float32)
        Ymat[:, 0:2 * Dl:2] = -2.0 * Y.real
        Ymat[:, 1:2 * Dl:2] = -2.0 * Y.imag
        Ymat[:, 2 * Dl:] = Y.real ** 2 + Y.imag ** 2
        delta = gtm_distances(Z, Ymat)
        comm, N = self.comm, delta.shape[0]
        if comm.size == 1:
            logZ, rdelta, kmax, rmax = gtm_responsibilities(delta, a, st.beta)
        else:
            delta = dev.get(delta)
            # partial distances summed straight into row blocks (Reduce_scatter); every rank
            # turns its block into responsibilities; Allgatherv gives all ranks all of R (the
            # volume of one Allreduce, and the softmax is split instead of repeated)
            r0, r1 = block_range(N, comm.size, comm.rank)
            mine = comm.reduce_scatter_rows(delta)
            part = gtm_responsibilities(mine, self.a[r0:r1], st.beta)
            comm.allgather_rows(mine, delta)
            logZ, rdelta, kmax, rmax = (comm.allgather_rows(x) for x in part)
            delta = dev.put(delta)                  # R for the M-step's products on the device
        ll = float(logZ.sum()) - N * math.log(self.K) + 0.5 * N * self.D_eff * math.log(st.beta / (2 * math.pi))
        return delta, logZ, rdelta, kmax, rmax, ll

    def m_step(self, st: GTMState, R: np.ndarray, rdelta: np.ndarray) -> GTMState:
        Dl, xp = self.d1 - self.d0, self.device.xp
        Z, _, h, Phi = self.on_device()
        N = R.shape[0]
        beta = N * self.D_eff / float(rdelta.sum())           # eqs 13-14 (mean beta)
        RZ = gtm_accumulate(R, Z)
        H = (RZ[:, 0:2 * Dl:2] + 1j * RZ[:, 1:2 * Dl:2]) / h
        G = RZ[:, 2 * Dl:] / h
        W = gtm_solve(Phi, xp.ascontiguousarray(G, dtype=np.float32),
                      xp.ascontiguousarray(H, dtype=np.complex64), self.cfg.alpha / beta)
        return GTMState(W=W, beta=float(beta), iteration=st.iteration + 1, history=st.history)

    # ------------------------------------------------------------------ W across ranks
    def gather_W(self, W) -> np.ndarray | None:
        parts = self.comm.gather(self.device.get(W), root=0)
        return None if parts is None or self.comm.rank != 0 else np.concatenate(parts, axis=1)

    def local_W(self, W_full) -> np.ndarray:
        return np.ascontiguousarray(W_full[:, self.d0:self.d1], dtype=np.complex64)

    # ------------------------------------------------------------------ eq 17
    def class_averages(self, R: np.ndarray, beta: float) -> np.ndarray | None:
        """Eq 17 averages over the full grid (K, n, n) on rank 0 (None elsewhere).
        Each rank computes its block of the full half grid, streaming the particles."""
        n, N, ch = self.n, self.ps.n, self.cfg.chunk
        nh = n * (n // 2 + 1)
        b0, b1 = block_range(nh, self.comm.size, self.comm.rank)
        Db = b1 - b0
        num = np.zeros((self.K, 3 * Db), np.float64)
        for s in range(0, N, ch):
            idx = np.arange(s, min(N, s + ch))
            T = aligned_transforms(self.ps, idx, self.mask).reshape(len(idx), -1)[:, b0:b1]
            C = aligned_ctf(self.ps, idx, self.cfg.ctf).reshape(len(idx), -1)[:, b0:b1]
            Zc = np.empty((len(idx), 3 * Db), np.float32)
            ct = C * T
            Zc[:, 0:2 * Db:2] = ct.real
            Zc[:, 1:2 * Db:2] = ct.imag
            Zc[:, 2 * Db:] = C * C
            num += gtm_accumulate(np.ascontiguousarray(R[idx]), Zc)
        lam = self.cfg.alpha / beta
        A = (num[:, 0:2 * Db:2] + 1j * num[:, 1:2 * Db:2]) / (num[:, 2 * Db:] + lam)
        parts = self.comm.gather(A.astype(np.complex64), root=0)
        if self.comm.rank != 0:
            return None
        F = np.concatenate(parts, axis=1).reshape(self.K, n, n // 2 + 1)
        return ift2(F, n).astype(np.float32)
