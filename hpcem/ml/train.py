"""Training the class ranker (PyTorch, the optional ``[ml]`` extra, imported only here).

The network is :mod:`hpcem.ml.net`'s, layer for layer, so that the trained parameters export to
the same weights file that numpy evaluates.  The loss is the mean-square error between the
predicted and the target scores (seed 000, section 3.2), optimised by Adam; every batch sees each
class average under a random rotation by 90 degrees, a random mirror and a random in-plane
rotation.  Training is reproducible: the seed fixes the initial weights, the batch order and the
augmentations, and torch runs on a fixed number of threads.
"""
from __future__ import annotations

import time

import numpy as np

from ..errors import InputError
from . import net


def require_torch():
    try:
        import torch
    except ImportError:
        raise InputError("training needs PyTorch: pip install 'hpcem[ml]' (inference does not)",
                         field="--train") from None
    return torch


def build_model(torch):
    nn = torch.nn

    class RankerNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = nn.ModuleList(nn.Conv2d(net.CHANNELS[i], net.CHANNELS[i + 1], 3, stride=s, padding=1)
                                       for i, s in enumerate(net.STRIDES))
            self.fc1 = nn.Linear(net.CHANNELS[-1] + len(net.NAMES), net.HIDDEN)
            self.fc2 = nn.Linear(net.HIDDEN, 1)

        def forward(self, x, f):
            for c in self.convs:
                x = torch.relu(c(x))
            h = torch.cat([x.mean(dim=(2, 3)), f], dim=1)
            return torch.sigmoid(self.fc2(torch.relu(self.fc1(h))))[:, 0]

    return RankerNet()


def export(model, feat_mean, feat_std) -> dict:
    """The model's parameters as a weights dictionary (:func:`hpcem.ml.net.save_weights`)."""
    w = {"feat_mean": np.asarray(feat_mean, np.float32), "feat_std": np.asarray(feat_std, np.float32)}
    for i, c in enumerate(model.convs):
        w["conv%d_w" % i] = c.weight.detach().numpy().copy()
        w["conv%d_b" % i] = c.bias.detach().numpy().copy()
    for name in ("fc1", "fc2"):
        layer = getattr(model, name)
        w[name + "_w"] = layer.weight.detach().numpy().copy()
        w[name + "_b"] = layer.bias.detach().numpy().copy()
    return w


def load_into(model, weights: dict, torch) -> None:
    with torch.no_grad():
        for i, c in enumerate(model.convs):
            c.weight.copy_(torch.from_numpy(weights["conv%d_w" % i]))
            c.bias.copy_(torch.from_numpy(weights["conv%d_b" % i]))
        for name in ("fc1", "fc2"):
            getattr(model, name).weight.copy_(torch.from_numpy(weights[name + "_w"]))
            getattr(model, name).bias.copy_(torch.from_numpy(weights[name + "_b"]))


def _augment(x, gen, torch):
    """Random dihedral transform and in-plane rotation of a batch (B, 1, m, m)."""
    B = x.shape[0]
    k = int(torch.randint(0, 4, (1,), generator=gen))
    x = torch.rot90(x, k, dims=(2, 3))
    if int(torch.randint(0, 2, (1,), generator=gen)):
        x = torch.flip(x, dims=(3,))
    a = (torch.rand(B, generator=gen) - 0.5) * (np.pi / 2)
    theta = torch.zeros(B, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = a.cos(), -a.sin(), a.sin(), a.cos()
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, padding_mode="zeros", align_corners=False)


def robust_scale(f):
    """(centre, scale) per feature: median and 1.4826 x the median absolute deviation (the
    standard deviation where that is zero), so that heavy-tailed features (kurtosis) do not set
    the scale of every other class."""
    med = np.median(f, axis=0)
    mad = 1.4826 * np.median(np.abs(f - med), axis=0)
    return med, np.where(mad > 1e-12, mad, np.maximum(f.std(axis=0), 1e-6))


def fit(images, feats, targets, init: dict | None = None, epochs: int = 100, lr: float = 1e-3, batch: int = 64,
        seed: int = 0, threads: int = 1, sample_weight=None, val=None, every=None, conv_lr_scale: float = 1.0,
        log=print) -> tuple:
    """Train on class images (B, 64, 64) (:func:`hpcem.ml.net.cnn_input`), raw feature vectors
    (B, F) and target scores (B,) in [0, 1]; ``init`` weights to fine-tune (their feature
    standardisation kept), else a fresh network with the features standardised over this data
    (:func:`robust_scale`).
    ``val`` (images, features, targets) of held-out classes: their loss is logged with the
    training loss.  ``every`` (n, callback): callback(epoch, weights) after every n-th epoch (to
    keep the weights of a long run).  ``conv_lr_scale``: the convolution layers learn at that multiple of
    ``lr`` (fine-tuning the image pathway more slowly than the fully connected head).  Returns (weights, per-epoch mean training losses)."""
    torch = require_torch()
    torch.set_num_threads(max(1, int(threads)))
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build_model(torch)
    f = np.asarray(feats, np.float64)
    if init is not None:
        load_into(model, init, torch)
        mean, std = init["feat_mean"], init["feat_std"]
    else:
        mean, std = robust_scale(f)
    stats = {"feat_mean": np.asarray(mean, np.float32), "feat_std": np.asarray(std, np.float32)}
    X = torch.from_numpy(np.asarray(images, np.float32)[:, None])
    Fz = torch.from_numpy(net.standardise(f, stats))
    Y = torch.from_numpy(np.asarray(targets, np.float32))
    Wt = torch.from_numpy(np.ones(len(Y), np.float32) if sample_weight is None else np.asarray(sample_weight, np.float32))
    head = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.Adam([{"params": head}, {"params": list(model.convs.parameters()), "lr": lr * conv_lr_scale}], lr=lr)
    history = []
    t0 = time.time()
    for ep in range(int(epochs)):
        model.train()
        perm = torch.randperm(len(Y), generator=gen)
        total = 0.0
        for s in range(0, len(Y), batch):
            b = perm[s:s + batch]
            pred = model(_augment(X[b], gen, torch), Fz[b])
            loss = (Wt[b] * (pred - Y[b]) ** 2).sum() / Wt[b].sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
        history.append(total / len(Y))
        if log and (ep == 0 or (ep + 1) % 10 == 0 or ep + 1 == epochs):
            extra = ""
            if val is not None:
                vs = net.score(val[0], val[1], export(model, stats["feat_mean"], stats["feat_std"]))
                extra = "  held-out loss %.5f" % float(np.mean((vs - val[2]) ** 2))
            log("epoch %4d  loss %.5f%s  (%.0f s)" % (ep + 1, history[-1], extra, time.time() - t0))
        if every and (ep + 1) % every[0] == 0:
            every[1](ep + 1, export(model, stats["feat_mean"], stats["feat_std"]))
    return export(model, stats["feat_mean"], stats["feat_std"]), history
