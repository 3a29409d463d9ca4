"""The class ranker's network, evaluated in numpy from a weights file (no torch needed).

Architecture (seed 000, Fig. 1A/B in small): the class average, cropped to the mask diameter and
resized to 64 x 64 (:func:`cnn_input`), goes through three CNN blocks, each a 3x3 convolution
keeping the size and a strided 3x3 convolution halving it (8, 16 and 32 channels, ReLU after
each), then a global average over the 8 x 8 positions; the 32 values and the standardised
feature vector (:mod:`hpcem.ml.features`) go through two fully connected layers (ReLU between)
to one value, squashed to [0, 1] by a logistic function.  The score of a class is the mean over
the eight rotations by 90 degrees and mirrors of its image (the class average has no preferred
in-plane orientation).

Weights file: a plain ``.npz`` (numbers and strings only), read with ``allow_pickle=False`` so that
a file from anywhere cannot run code; every array is checked for its name, dtype and shape before
use, and anything else is one :class:`hpcem.errors.InputError`.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import InputError
from ..io.resample import fourier_resize, window
from .features import NAMES, N_FEATURES

FORMAT = "hpcem-class-ranker-1"
IMAGE_SIZE = 64
CHANNELS = (1, 8, 8, 16, 16, 32, 32)       # conv i maps CHANNELS[i] -> CHANNELS[i + 1]
STRIDES = (1, 2, 1, 2, 1, 2)
HIDDEN = 32
SHIPPED = os.path.join(os.path.dirname(__file__), "data", "class_ranker.npz")


def shapes() -> dict:
    """Name -> shape of every array of a weights file."""
    s = {}
    for i, st in enumerate(STRIDES):
        s["conv%d_w" % i] = (CHANNELS[i + 1], CHANNELS[i], 3, 3)
        s["conv%d_b" % i] = (CHANNELS[i + 1],)
    s.update(fc1_w=(HIDDEN, CHANNELS[-1] + N_FEATURES), fc1_b=(HIDDEN,), fc2_w=(1, HIDDEN), fc2_b=(1,),
             feat_mean=(N_FEATURES,), feat_std=(N_FEATURES,))
    return s


def load_weights(path: str | None = None) -> dict:
    """The arrays of a weights file (the shipped one by default), validated."""
    path = path or SHIPPED
    if not os.path.isfile(path):
        raise InputError("ranker weights not found", file=path, field="--model")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as exc:      # numpy refuses object arrays without allow_pickle
        raise InputError("refused: the file holds Python objects (only numeric arrays are read; %s)" % exc,
                         file=path, field="--model") from None
    except Exception as exc:
        raise InputError("not a weights file (.npz): %s" % exc, file=path, field="--model") from None
    fmt = str(arrays.get("format", ""))
    if fmt != FORMAT:
        raise InputError("format %r, expected %r" % (fmt, FORMAT), file=path, field="format")
    names = tuple(str(x) for x in arrays.get("feature_names", ()))
    if names != NAMES:
        raise InputError("features %s do not match this hpcem's" % (names,), file=path, field="feature_names")
    out = {}
    for name, shape in shapes().items():
        a = arrays.get(name)
        if a is None or a.dtype.kind != "f" or a.shape != shape or not np.all(np.isfinite(a)):
            raise InputError("missing, not finite or not a float array of shape %s" % (shape,), file=path,
                             field=name)
        out[name] = a.astype(np.float32)
    return out


def save_weights(path: str, weights: dict, **info) -> None:
    """Write a weights file (atomically); ``info``: strings or numbers kept beside the arrays."""
    from ..io.atomic import atomic_write

    arrays = {k: np.asarray(weights[k], np.float32) for k in shapes()}
    for k, shape in shapes().items():
        if arrays[k].shape != shape:
            raise ValueError("%s has shape %s, expected %s" % (k, arrays[k].shape, shape))
    meta = {k: np.asarray(v) for k, v in info.items()}
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, format=np.asarray(FORMAT), feature_names=np.asarray(NAMES), **meta, **arrays)


def cnn_input(images, angpix: float, diameter: float) -> np.ndarray:
    """(K, 64, 64) float32: class averages cropped to the mask diameter (an even box of
    ``ceil(diameter / angpix) + 1`` pixels, as RELION's ranker), resized to 64 x 64 in Fourier
    space, each scaled to zero mean and unit standard deviation."""
    imgs = np.asarray(images, np.float64)
    n = imgs.shape[-1]
    w = min(n, int(np.ceil(diameter / angpix)) + 1)
    w += w % 2
    x = fourier_resize(window(imgs, w), IMAGE_SIZE)
    x -= x.mean(axis=(1, 2), keepdims=True)
    x /= np.maximum(x.std(axis=(1, 2), keepdims=True), 1e-12)
    return x.astype(np.float32)


def standardise(feats, weights) -> np.ndarray:
    """Features as the network takes them: (f - mean) / std, clipped to [-6, 6]."""
    z = (np.asarray(feats, np.float32) - weights["feat_mean"]) / weights["feat_std"]
    return np.clip(np.nan_to_num(z), -6.0, 6.0).astype(np.float32)


def _conv(x, w, b, stride):
    """3x3 convolution (cross-correlation, zero padding 1), bias and ReLU of channels-last images
    x (B, H, W, C) with w (O, C, 3, 3): the nine shifted copies side by side (im2col), one matrix
    product."""
    B, H, W, C = x.shape
    Ho, Wo = (H - 1) // stride + 1, (W - 1) // stride + 1
    xp = np.zeros((B, H + 2, W + 2, C), np.float32)
    xp[:, 1:-1, 1:-1] = x
    cols = np.empty((B, Ho, Wo, 9, C), np.float32)
    for i in range(3):
        for j in range(3):
            cols[:, :, :, 3 * i + j] = xp[:, i:i + stride * Ho:stride, j:j + stride * Wo:stride]
    out = cols.reshape(-1, 9 * C) @ w.transpose(2, 3, 1, 0).reshape(9 * C, -1)
    out += b
    return np.maximum(out, 0.0, out=out).reshape(B, Ho, Wo, -1)


def forward(images, feats, weights) -> np.ndarray:
    """Scores (B,) in [0, 1] of network inputs ``images`` (B, 64, 64) and standardised ``feats``."""
    x = np.asarray(images, np.float32)[..., None]
    for i, st in enumerate(STRIDES):
        x = _conv(x, weights["conv%d_w" % i], weights["conv%d_b" % i], st)
    h = np.concatenate([x.mean(axis=(1, 2)), np.asarray(feats, np.float32)], axis=1)
    h = np.maximum(h @ weights["fc1_w"].T + weights["fc1_b"], 0.0)
    z = (h @ weights["fc2_w"].T + weights["fc2_b"])[:, 0]
    return 1.0 / (1.0 + np.exp(-z.astype(np.float64)))


def dihedral(images) -> list:
    """The eight rotations by 90 degrees and mirrors of images (B, m, m)."""
    out = []
    for flip in (False, True):
        a = images[:, :, ::-1] if flip else images
        out += [np.rot90(a, k, axes=(1, 2)) for k in range(4)]
    return out


def score(images, feats, weights, chunk: int = 64) -> np.ndarray:
    """Class scores (B,): the network's mean over :func:`dihedral` of each image (``images`` from
    :func:`cnn_input`, ``feats`` raw feature vectors), in chunks of ``chunk`` classes."""
    z = standardise(feats, weights)
    out = np.empty(len(images))
    for s in range(0, len(images), chunk):
        views = dihedral(images[s:s + chunk])
        out[s:s + chunk] = np.mean([forward(np.ascontiguousarray(v), z[s:s + chunk], weights) for v in views], axis=0)
    return out
