"""Figures (PNG) for FSC curves, class-average montages and map slices.

Matplotlib with the Agg backend; every file is written to a temporary name in
the target folder and renamed, so a killed run never leaves half a PNG.
"""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .io.atomic import atomic_write  # noqa: E402


def _save(fig, path) -> str:
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    try:
        with atomic_write(path) as tmp:   # .<name>.tmp-<pid>: --continue removes a killed run's
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
    return path


def _norm(img: np.ndarray) -> np.ndarray:
    a = np.asarray(img, dtype=np.float64)
    lo, hi = np.percentile(a, [0.5, 99.5]) if a.size > 1 else (0.0, 1.0)
    if hi <= lo:
        return np.zeros_like(a)
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0)


def plot_fsc(path, curves: dict, n: int, angpix: float, thresholds=(0.143, 0.5), title=None) -> str:
    """FSC curves ``{label: (shells, fsc)}`` against resolution; horizontal lines at the thresholds."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (shells, c) in curves.items():
        ax.plot(np.asarray(shells) / (n * angpix), c, label=str(label))
    for t in thresholds:
        ax.axhline(t, color="grey", lw=0.8, ls="--")
    ax.set_ylim(-0.1, 1.05)
    ax.set_xlim(0, (n // 2) / (n * angpix))
    ax.set_xlabel("resolution (A)")
    ax.set_ylabel("FSC")
    ticks = ax.get_xticks()
    ticks = ticks[(ticks >= 0) & (ticks <= (n // 2) / (n * angpix) + 1e-12)]
    ax.set_xticks(ticks)
    ax.set_xticklabels(["inf" if t <= 0 else f"{1.0 / t:.1f}" for t in ticks])
    if title:
        ax.set_title(title)
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    return _save(fig, path)


def montage(path, images, labels=None, ncols: int | None = None) -> str:
    """Grid of images (K, n, n) in the given order, each contrast-normalised."""
    imgs = np.asarray(images)
    if imgs.ndim == 2:
        imgs = imgs[None]
    K = imgs.shape[0]
    ncols = ncols or int(np.ceil(np.sqrt(K)))
    nrows = int(np.ceil(K / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.6 * ncols, 1.6 * nrows + 0.1), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i < K:
            ax.imshow(_norm(imgs[i]), cmap="gray", vmin=0, vmax=1, origin="lower")
            if labels is not None:
                ax.set_title(str(labels[i]), fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def series(path, x, curves: dict, xlabel: str = "", log: bool = False, title=None) -> str:
    """Curves ``{label: y}`` against ``x``, one panel each (log y axes with ``log``)."""
    fig, axes = plt.subplots(len(curves), 1, figsize=(6, 2.2 * len(curves)), sharex=True, squeeze=False)
    for ax, (label, y) in zip(axes[:, 0], curves.items()):
        y = np.asarray(y, np.float64)
        ax.plot(x, y, lw=1)
        if log and np.all(y[np.isfinite(y)] > 0):
            ax.set_yscale("log")
        ax.set_ylabel(label, fontsize=8)
    axes[-1, 0].set_xlabel(xlabel)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def central_slices(path, vol, title=None) -> str:
    """The three orthogonal central slices (z, y, x = n//2) of a volume side by side."""
    v = np.asarray(vol, dtype=np.float64)
    c = [s // 2 for s in v.shape]
    slices = [("xy (z=c)", v[c[0]]), ("xz (y=c)", v[:, c[1], :]), ("yz (x=c)", v[:, :, c[2]])]
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.2))
    for ax, (name, s) in zip(axes, slices):
        ax.imshow(_norm(s), cmap="gray", vmin=0, vmax=1, origin="lower")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)
