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
    """Grid of images (K, n, n) in the given order, each contrast-normalised: drawn as one tiled
    image on one axes (a label above each tile), not K axes laid out by matplotlib, which took
    seconds per plot (16 s for K = 50 on the loaded test machine, now 1 s)."""
    imgs = np.asarray(images)
    if imgs.ndim == 2:
        imgs = imgs[None]
    K, h, w = imgs.shape
    ncols = ncols or int(np.ceil(np.sqrt(K)))
    nrows = int(np.ceil(K / ncols))
    gap, top = max(1, w // 16), (max(6, h // 4) if labels is not None else 0)
    th, tw = h + gap + top, w + gap                      # one tile with its gap and label strip
    canvas = np.ones((nrows * th + gap, ncols * tw + gap))
    for i in range(K):
        r, c = divmod(i, ncols)
        y0, x0 = (nrows - 1 - r) * th + gap, c * tw + gap   # origin="lower": row 0 at the top
        canvas[y0:y0 + h, x0:x0 + w] = _norm(imgs[i])
    fig = plt.figure(figsize=(1.6 * ncols, 1.6 * nrows * th / tw + 0.1))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.axis("off")
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=1, origin="lower", interpolation="nearest")
    for i in range(K if labels is not None else 0):
        r, c = divmod(i, ncols)
        ax.text(c * tw + gap + w / 2, (nrows - 1 - r) * th + gap + h + top / 2, str(labels[i]),
                ha="center", va="center", fontsize=7)
    return _save(fig, path)


def line_plot(path, y, xlabel: str, ylabel: str, logy: bool = False, title=None) -> str:
    """One curve ``y`` against 1, 2, ... (a loss per epoch)."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(np.arange(1, len(y) + 1), y)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
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
    """The three orthogonal central slices (z, y, x = n//2) of a volume side by side; ``vol`` may be
    a dict ``{label: volume}``: one row per volume (e.g. with and without regularisation)."""
    rows = vol if isinstance(vol, dict) else {"": vol}
    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 3.2 * len(rows)), squeeze=False)
    for r, (label, vr) in enumerate(rows.items()):
        v = np.asarray(vr, dtype=np.float64)
        c = [s // 2 for s in v.shape]
        slices = [("xy (z=c)", v[c[0]]), ("xz (y=c)", v[:, c[1], :]), ("yz (x=c)", v[:, :, c[2]])]
        for ax, (name, s) in zip(axes[r], slices):
            ax.imshow(_norm(s), cmap="gray", vmin=0, vmax=1, origin="lower")
            ax.set_title("%s %s" % (label, name) if label else name, fontsize=9)
            ax.axis("off")
    if title:
        fig.suptitle(title)
    top = 1.0 - (0.45 + (0.35 if title else 0.0)) / (3.2 * len(rows))   # room for the titles (inches)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=top, wspace=0.04, hspace=0.18)
    return _save(fig, path)


def slices_with_picks(path, vol, coords=None, classes=None, radii=None, title=None) -> str:
    """Orthogonal central slices (xy, xz, yz) of a [z, y, x] volume with the picks (x, y, z voxels)
    whose centre lies within their radius (``radii[class - 1]``, voxels) of each slice drawn as
    circles coloured by class."""
    from matplotlib.patches import Circle

    v = np.asarray(vol, dtype=np.float64)
    cz, cy, cx = (s // 2 for s in v.shape)
    c = np.zeros((0, 3)) if coords is None else np.asarray(coords, np.float64).reshape(-1, 3)
    k = np.ones(len(c), int) if classes is None else np.asarray(classes, int)
    r = np.full(int(k.max(initial=1)), 3.0) if radii is None else np.asarray(radii, np.float64)
    views = [("xy (z=%d)" % cz, v[cz], 0, 1, 2, cz), ("xz (y=%d)" % cy, v[:, cy, :], 0, 2, 1, cy),
             ("yz (x=%d)" % cx, v[:, :, cx], 1, 2, 0, cx)]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2), gridspec_kw={"width_ratios": [s[1].shape[1] for s in views]})
    colours = plt.get_cmap("tab10")
    for ax, (name, img, a, b, axis, pos) in zip(axes, views):
        ax.imshow(_norm(img), cmap="gray", vmin=0, vmax=1, origin="lower")
        rad = r[k - 1] if len(c) else np.zeros(0)
        near = np.abs(c[:, axis] - pos) < rad
        for (x, y), kk, rr, d in zip(c[near][:, [a, b]], k[near], rad[near], np.abs(c[near][:, axis] - pos)):
            ax.add_patch(Circle((x, y), np.sqrt(max(rr * rr - d * d, 1.0)), fill=False, lw=1.0,
                                color=colours((kk - 1) % 10)))
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)
