"""Fourier projectors and back-projectors (policy here, arithmetic in hpcem.kernels).

Projection
    ``Projector.from_volume(V, pad)`` divides the real-space volume by the gridding
    correction of trilinear interpolation on the padded grid (the Fourier transform
    of the triangle kernel: ``sinc^2(x/P) sinc^2(y/P) sinc^2(z/P)``, ``P = pad*n``,
    separable in the volume frame, which is exact for trilinear interpolation),
    zero-pads it to ``P`` (origin at ``P//2``) and keeps its complex64 half
    transform.  ``project(A)`` returns slices in hpcem's ft2 layout with
    ``ift2(slice) ~= sum_z V(A^T r)``.

Reconstruction
    ``BackProjector`` holds padded accumulators ``data`` (complex128 by default)
    and ``weight`` (float64), public so that ranks can ``Allreduce`` them.
    ``insert`` back-projects ``slices`` (already multiplied by whatever the caller
    wants, e.g. CTF/sigma2) and ``weights`` (e.g. CTF^2/sigma2).  ``reconstruct``:

    1. completes the x = 0 plane of the half grid with its Friedel mirror (a
       half-grid sample near x = 0 also belongs, conjugated, at -k);
    2. optionally symmetrises both accumulators (``symmetry_ops``: sum over R of
       the accumulator at ``R^T k``, trilinear, in C++);
    3. estimates the transform from the accumulators, the prior being, per shell (n-box
       units, ``round(|k_pad| / pad)``), ``reg = 1/(tau2_fudge * tau2[shell])`` when
       ``tau2`` is given (MAP; shells with ``tau2 <= 0`` or beyond ``len(tau2)`` are set to
       0), else ``wiener_const`` if given: by default the gridding estimate
       ``F = w data`` with density-compensation weights ``w`` of ``weight + reg``
       (:mod:`hpcem.recon.gridding`, RELION's estimator; no floor is needed without a prior),
       with ``gridding_iters=0`` the voxel-wise ``F = data / (weight + reg)`` (without a
       prior, ``reg = 1e-3 * mean(weight over the shell)``);
    4. inverse transforms on the padded grid, crops the centre ``n`` box, divides by the
       gridding correction and blends the corners beyond n/2 to their mean.

    ``tau2`` is in the units of ``|ft3(V)|^2`` on the n box (the padded transform
    has the same values at ``pad*k``), with weights in the units of the inserted
    ``weights``; no oversampling factor is applied (the caller may fold one into
    ``tau2_fudge``).

Devices
    ``Projector(...).to(device)`` moves the padded transform to a GPU (``hpcem.runtime.device``;
    the kernels then project there); ``BackProjector(n, device=...)`` keeps its accumulators there
    until ``to_host()`` (once per iteration, before the reduction over ranks and the M-step).
"""
from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from hpcem import kernels
from hpcem.core.fourier import fft_workers, ft3, ft_padded, ift2, ift3
from hpcem.recon.gridding import correction_profile, density_weights, soft_mask_outside
from hpcem.runtime.device import HOST

GRIDDING_ITERS = 10   # density-compensation iterations of a 3D reconstruction (RELION's --iter)


# ---------------------------------------------------------------- helpers
def gridding_correction(n: int, P: int, ndim: int = 3, kernel: str = "linear") -> np.ndarray:
    """Real-space attenuation of interpolation on a P grid (``linear``, or the ``gauss`` kernel of the
    back-projection option), sampled on the n box (:func:`hpcem.recon.gridding.correction_profile`)."""
    c = correction_profile(int(n), int(P), kernel)
    if ndim == 2:
        return c[:, None] * c[None, :]
    return c[:, None, None] * c[None, :, None] * c[None, None, :]


def padded_shells(P: int, pad, ndim: int) -> np.ndarray:
    """Shell (n-box units, rounded |k| / pad) of every coefficient of a padded half grid."""
    f = np.fft.fftfreq(P, 1.0 / P)
    fx = np.arange(P // 2 + 1)
    if ndim == 3:
        r2 = f[:, None, None] ** 2 + f[None, :, None] ** 2 + fx[None, None, :] ** 2
    else:
        r2 = f[:, None] ** 2 + fx[None, :] ** 2
    return np.rint(np.sqrt(r2) / pad).astype(np.int64)


def _padded_radius2(P: int) -> np.ndarray:
    """|k|^2 (padded-grid units) of every voxel of a 3D half grid of box P."""
    f = np.fft.fftfreq(P, 1.0 / P)
    fx = np.arange(P // 2 + 1)
    return f[:, None, None] ** 2 + f[None, :, None] ** 2 + fx[None, None, :] ** 2


def _mirror_index(P: int) -> np.ndarray:
    return (-np.arange(P)) % P


def _complete_x0(D: np.ndarray, W: np.ndarray, three_d: bool) -> None:
    """Add the Friedel mirror of the x = 0 plane/column (last axis index 0), in place."""
    m = _mirror_index(D.shape[-2])
    if three_d:  # (P, P, Ph): mirror z and y
        D0, W0 = D[:, :, 0].copy(), W[:, :, 0].copy()
        D[:, :, 0] = D0 + np.conj(D0[np.ix_(m, m)])
        W[:, :, 0] = W0 + W0[np.ix_(m, m)]
    else:  # 2D stack (K, P, Ph): mirror y
        D0, W0 = D[..., 0].copy(), W[..., 0].copy()
        D[..., 0] = D0 + np.conj(D0[..., m])
        W[..., 0] = W0 + W0[..., m]


def _regulariser(W: np.ndarray, shells: np.ndarray, tau2, tau2_fudge, wiener_const):
    """Per-voxel denominator term and a mask of voxels to zero."""
    nsh = int(shells.max()) + 1
    if tau2 is not None:
        t = np.asarray(tau2, dtype=np.float64).ravel()
        tt = np.zeros(nsh)
        m = min(nsh, t.size)
        tt[:m] = t[:m]
        good = tt > 0
        inv = np.where(good, 1.0 / (tau2_fudge * np.where(good, tt, 1.0)), 0.0)
        return inv[shells], ~good[shells]
    if wiener_const is not None:
        return np.full(shells.shape, float(wiener_const)), np.zeros(shells.shape, bool)
    sums = np.bincount(shells.ravel(), weights=W.ravel(), minlength=nsh)
    cnt = np.bincount(shells.ravel(), minlength=nsh)
    mean_w = sums / np.maximum(cnt, 1)
    return 1e-3 * mean_w[shells], np.zeros(shells.shape, bool)


def _divide(D, W, reg, zero):
    den = W + reg
    ok = (den > 0) & ~zero
    F = np.zeros(D.shape, dtype=np.complex128)
    np.divide(D, den, out=F, where=ok)
    return F


def _padded_transform(arr, pad, ndim: int):
    """``(complex64 half transform of the gridding-corrected, zero-padded array, n)`` of a volume
    (``ndim`` 3) or a stack of images (``ndim`` 2, leading axis); origin at P//2."""
    n = arr.shape[-1]
    P = int(round(pad * n))
    corrected = (arr / gridding_correction(n, P, ndim)).astype(np.float32)
    return np.ascontiguousarray(ft_padded(corrected, P, ndim), dtype=np.complex64), n


class _Padded:
    """A padded half transform of box ``pad * n`` with the default radius of its slices."""

    def __init__(self, ft_pad, n: int, pad=2, r_max=None):
        self.data = ft_pad
        self.n = int(n)
        self.pad = pad
        self.P = int(round(pad * n))
        self.r_max = n / 2.0 if r_max is None else float(r_max)

    def to(self, device):
        """This projector with its padded transform on ``device`` (returned; a GPU gets a copy)."""
        self.data = device.put(self.data)
        return self


def _accumulators(bp, n: int, pad, dtype, lead: tuple, three_d: bool = True, device=HOST) -> None:
    """Zeroed data (complex128 or complex64) and weight (float64 / float32) accumulators of a
    padded half grid, ``lead + (P, P, P//2+1)`` (3D) or ``lead + (P, P//2+1)`` (2D), on ``device``."""
    bp.n, bp.pad, bp.P = int(n), pad, int(round(pad * n))
    dt = np.dtype(dtype)
    if dt not in (np.complex128, np.complex64):
        raise ValueError(f"{type(bp).__name__}: dtype must be complex128 or complex64, got {dt}")
    P = bp.P
    shape = lead + ((P, P, P // 2 + 1) if three_d else (P, P // 2 + 1))
    bp.device = device
    bp.data = device.zeros(shape, dt)
    bp.weight = device.zeros(shape, np.float64 if dt == np.complex128 else np.float32)


# ---------------------------------------------------------------- 3D
class Projector(_Padded):
    """Padded Fourier transform of a volume, ready for :func:`hpcem.kernels.project3d`."""

    @classmethod
    def from_volume(cls, vol, pad=2, r_max=None) -> "Projector":
        v = np.asarray(vol, dtype=np.float64)
        if v.ndim != 3 or len(set(v.shape)) != 1:
            raise ValueError(f"Projector.from_volume: volume must be a cube (n, n, n), got {v.shape}")
        return cls(*_padded_transform(v, pad, 3), pad, r_max)

    def project(self, rotations, r_max=None):
        """Slices ``(B, n, n//2+1)`` complex64 for poses ``(B, 3, 3)`` (or one ``(3, 3)``)."""
        rot = np.asarray(rotations)
        single = rot.ndim == 2
        out = kernels.project3d(self.data, rot[None] if single else rot, self.n,
                                self.r_max if r_max is None else r_max, self.pad)
        return out[0] if single else out


class BackProjector:
    """Accumulates Fourier slices into padded 3D accumulators and reconstructs; ``kernel`` the
    back-projection kernel (``linear``: trilinear, the adjoint of the projector; ``gauss``: seed 002's
    Gaussian kernel regression, eqs 23-29), whose real-space attenuation the reconstruction undoes."""

    def __init__(self, n: int, pad=2, dtype=np.complex128, kernel: str = "linear", device=HOST):
        _accumulators(self, n, pad, dtype, (), device=device)
        correction_profile(self.n, self.P, kernel)   # validates the name
        self.kernel = kernel

    def to_host(self) -> "BackProjector":
        """The accumulators brought to the host (from a GPU; nothing is copied on the CPU)."""
        self.data, self.weight = self.device.get(self.data), self.device.get(self.weight)
        self.device = HOST
        return self

    def insert(self, slices, weights=None, rotations=None, r_max=None):
        """Back-project slices ``(B, n, n//2+1)`` with weights (broadcastable; None: 1) at poses ``(B, 3, 3)``."""
        s = self.device.xp.ascontiguousarray(slices, dtype=np.complex64)
        if s.ndim == 2:
            s = s[None]
            rotations = np.asarray(rotations)[None] if np.asarray(rotations).ndim == 2 else rotations
        kernels.backproject3d(s, weights, rotations, self.data, self.weight,
                              self.n / 2.0 if r_max is None else r_max, self.pad, kernel=self.kernel)

    def shell_index(self) -> np.ndarray:
        """Shell (n-box units) of every padded accumulator voxel."""
        return padded_shells(self.P, self.pad, 3)

    def shell_mean_weight(self) -> np.ndarray:
        """Mean accumulated weight per shell (n-box units) over the padded grid."""
        sh = padded_shells(self.P, self.pad, 3)
        return np.bincount(sh.ravel(), weights=self.weight.ravel()) / np.maximum(np.bincount(sh.ravel()), 1)

    def reconstruct(self, tau2=None, tau2_fudge=1.0, wiener_const=None, symmetry_ops=None,
                    gridding_iters: int = GRIDDING_ITERS, mask_outside: bool = True) -> np.ndarray:
        """The map (n, n, n) float32 from the accumulators (see the module docstring); with
        ``gridding_iters`` > 0 the gridding estimate of :mod:`hpcem.recon.gridding`, else the
        voxel-wise ``D / (W + reg)``; ``mask_outside`` blends the corners beyond n/2 to their mean."""
        F, _ = self.estimate(tau2, tau2_fudge, wiener_const, symmetry_ops, gridding_iters)
        return padded_to_volume(F, self.n, self.pad, mask_outside, self.kernel).astype(np.float32)

    def estimate(self, tau2=None, tau2_fudge=1.0, wiener_const=None, symmetry_ops=None,
                 gridding_iters: int = GRIDDING_ITERS):
        """``(F, W)``: the padded half-grid estimate of the map's transform (before the inverse
        transform and the gridding correction) and the completed, symmetrised weights."""
        D, W = self.completed()
        if symmetry_ops is not None and len(symmetry_ops) > 1:
            D, W = kernels.symmetrise3d(D, W, np.asarray(symmetry_ops, dtype=np.float64), self.P / 2.0)
        shells = padded_shells(self.P, self.pad, 3)
        n, P = self.n, self.P
        if gridding_iters > 0:
            if tau2 is None and wiener_const is None:
                wiener_const = 0.0    # the density compensation needs no floor under W
            reg, zero = _regulariser(W, shells, tau2, tau2_fudge, wiener_const)
            inside = (_padded_radius2(P) < (self.pad * n / 2.0) ** 2) & ~zero
            return D * density_weights(W + reg, inside, P, self.pad, gridding_iters), W
        reg, zero = _regulariser(W, shells, tau2, tau2_fudge, wiener_const)
        return _divide(D, W, reg, zero), W

    def completed(self):
        """Copies of the accumulators (complex128, float64) with the x = 0 plane completed."""
        D = self.data.astype(np.complex128, copy=True)
        W = self.weight.astype(np.float64, copy=True)
        _complete_x0(D, W, True)
        return D, W


def summed_backprojector(bps, like=None) -> BackProjector:
    """A new host back-projector (complex128 / float64) holding the sum of ``bps`` (e.g. the two
    halves' sums of one class), with their box, padding and kernel, so that its reconstruction
    applies the right gridding correction; ``like`` gives those when ``bps`` may be empty (a rank
    that only takes part in the reduction)."""
    bps = list(bps)
    first = like if like is not None else bps[0]
    out = BackProjector(first.n, pad=first.pad, kernel=first.kernel)
    for bp in bps:
        if (bp.n, bp.P, bp.kernel) != (out.n, out.P, out.kernel):
            raise ValueError("summed_backprojector: back-projectors of different boxes, paddings or kernels")
        out.data += bp.data
        out.weight += bp.weight
    return out


def padded_crop(F, n: int, pad=2) -> np.ndarray:
    """The centre n box (float64) of the inverse transform of a padded half transform (not corrected)."""
    P = int(round(pad * n))
    o = P // 2 - n // 2
    return ift3(F, P)[o:o + n, o:o + n, o:o + n]


def padded_to_volume(F, n: int, pad=2, mask_outside: bool = False, kernel: str = "linear") -> np.ndarray:
    """The n-box map (float64) of a padded half transform: inverse transform, centre crop, divided
    by the gridding correction of ``kernel``; ``mask_outside`` blends the corners beyond n/2 to their mean."""
    v = padded_crop(F, n, pad) / gridding_correction(n, int(round(pad * n)), 3, kernel)
    return soft_mask_outside(v, n / 2.0) if mask_outside else v


def padded_estimate(D, W, n: int, pad=2, ndim: int = 3):
    """The voxel-wise estimate of padded half-grid accumulators taken to the n box: ``(X, Wn)``,
    X the n-box half transform of ``D / (W + 1e-3 mean_shell(W))`` (inverse transform on the
    padded grid, centre crop, gridding correction; ``D``/``W`` a volume (P, P, P//2+1) or, with
    ``ndim`` 2, images (..., P, P//2+1), x = 0 already completed) and Wn the weight at the padded
    voxels of the n-box frequencies (``pad k``) times pad^ndim (n-box units).  Cheaper than a
    gridding reconstruction and a few percent off it: VDAM's mini-batch estimates."""
    P = int(round(pad * n))
    sh = padded_shells(P, pad, ndim)
    Wf = W.reshape((-1,) + sh.shape)
    nsh = int(sh.max()) + 1
    cnt = np.maximum(np.bincount(sh.ravel(), minlength=nsh), 1)
    w_shell = np.stack([np.bincount(sh.ravel(), weights=w.ravel(), minlength=nsh) / cnt for w in Wf])
    X = D / np.where(W > 0, W + 1e-3 * w_shell[:, sh].reshape(W.shape), 1.0)
    f = (int(pad) * np.fft.fftfreq(n, 1.0 / n).astype(np.int64)) % P
    fx = int(pad) * np.arange(n // 2 + 1)
    if ndim == 3:
        return ft3(padded_to_volume(X, n, pad)), W[np.ix_(f, f, fx)] * pad ** 3
    # ft2 of the centre n box of ift2(X, P), corrected: the box read straight out of the unshifted
    # inverse transform in ifftshifted order (the same values as ift2's fftshift, crop and ft2's
    # ifftshift, without rolling the padded stack twice)
    a = sfft.irfft2(X, s=(P, P), axes=(-2, -1), workers=fft_workers())
    i = np.fft.ifftshift((np.arange(n) - n // 2) % P)
    corr = np.fft.ifftshift(gridding_correction(n, P, 2))
    v = a[..., i[:, None], i[None, :]] / corr
    return sfft.rfft2(v, axes=(-2, -1), workers=fft_workers()), W[..., f, :][..., fx] * pad ** 2


# ---------------------------------------------------------------- 2D
class Projector2D(_Padded):
    """Padded transforms of K 2D references, for :func:`hpcem.kernels.project2d`."""

    @classmethod
    def from_images(cls, refs, pad=2, r_max=None) -> "Projector2D":
        r = np.asarray(refs, dtype=np.float64)
        if r.ndim == 2:
            r = r[None]
        if r.ndim != 3 or r.shape[1] != r.shape[2]:
            raise ValueError(f"Projector2D.from_images: references must be (K, n, n), got {np.shape(refs)}")
        return cls(*_padded_transform(r, pad, 2), pad, r_max)

    def project(self, rotations2d, ref_index=None, r_max=None):
        """Rotated references ``(B, n, n//2+1)``: output b is reference ``ref_index[b]`` under
        ``rotations2d[b]`` (image ``ref(R^T r)``); all classes in one call."""
        return kernels.project2d(self.data, rotations2d, self.n, self.r_max if r_max is None else r_max, self.pad,
                                 ref_index=ref_index)


class BackProjector2D:
    """K 2D accumulators (class averages)."""

    def __init__(self, n: int, n_classes: int = 1, pad=2, dtype=np.complex128):
        self.K = int(n_classes)
        _accumulators(self, n, pad, dtype, (self.K,), three_d=False)

    def insert(self, slices, weights=None, rotations2d=None, ref_index=None, r_max=None):
        s = np.ascontiguousarray(slices, dtype=np.complex64)
        kernels.backproject2d(s, weights, rotations2d, self.data, self.weight,
                              self.n / 2.0 if r_max is None else r_max, self.pad, ref_index=ref_index)

    def completed(self):
        """Copies of the accumulators (complex128, float64) with the x = 0 column completed."""
        D = self.data.astype(np.complex128, copy=True)
        W = self.weight.astype(np.float64, copy=True)
        _complete_x0(D, W, False)
        return D, W

    def reconstruct(self, tau2=None, tau2_fudge=1.0, wiener_const=None) -> np.ndarray:
        """Class images ``(K, n, n)`` float32; ``tau2`` per shell, ``(nshell,)`` or ``(K, nshell)``."""
        D, W = self.completed()
        shells = padded_shells(self.P, self.pad, 2)
        out = np.empty((self.K, self.n, self.n), dtype=np.float32)
        n, P = self.n, self.P
        o = P // 2 - n // 2
        corr = gridding_correction(n, P, 2)
        for k in range(self.K):  # a loop over classes, not particles
            t = None
            if tau2 is not None:
                t = np.asarray(tau2)
                t = t[k] if t.ndim == 2 else t
            reg, zero = _regulariser(W[k], shells, t, tau2_fudge, wiener_const)
            F = _divide(D[k], W[k], reg, zero)
            out[k] = (ift2(F, P)[o:o + n, o:o + n] / corr).astype(np.float32)
        return out
