"""The trained picker on disk: ``model.pt`` holds the segmentation network's weights only (a
state dict of tensors) and ``model.json`` beside it the settings (network shape, species and
their diameters, voxel size, patch, method).

A model file is code if it is unpickled: the weights are read with ``torch.load(...,
weights_only=True)``, which refuses any pickle that is not plain tensors and containers, and a
file that is refused, is not a state dict of tensors or does not fit the settings is one
InputError naming the file.
"""
from __future__ import annotations

import json
import os

from ...errors import InputError
from ...io.atomic import atomic_write

FORMAT = "hpcem-picker-1"


def settings_path(model_path: str) -> str:
    return os.path.splitext(str(model_path))[0] + ".json"


def save_model(path: str, seg, settings: dict) -> None:
    """Write the weights (``torch.save`` of the state dict) and the settings JSON, atomically."""
    import torch

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path) as tmp:
        torch.save({k: v.detach().cpu() for k, v in seg.state_dict().items()}, tmp)
    with atomic_write(settings_path(path)) as tmp:
        with open(tmp, "w") as f:
            json.dump(dict(settings, format=FORMAT), f, indent=1)


def read_settings(path: str) -> dict:
    sp = settings_path(path)
    if not os.path.isfile(path):
        raise InputError("model file not found", file=path, field="--model")
    if not os.path.isfile(sp):
        raise InputError("settings file %s missing beside the weights" % os.path.basename(sp), file=path,
                         field="--model")
    try:
        with open(sp) as f:
            s = json.load(f)
    except (OSError, ValueError) as exc:
        raise InputError("cannot read the settings (%s)" % exc, file=sp, field="format") from None
    if s.get("format") != FORMAT:
        raise InputError("not an hpcem picker model (format %r)" % s.get("format"), file=sp, field="format")
    for key in ("network", "diameters", "angpix", "patch"):
        if key not in s:
            raise InputError("missing setting", file=sp, field=key)
    return s


def load_model(path: str, device="cpu"):
    """(segmentation network in eval mode, settings) of a saved model; weights only."""
    import torch

    from .train import build_unet

    settings = read_settings(path)
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:   # the unpickler's refusal, or a file torch cannot read at all
        raise InputError("refused: not a weights-only model file (%s)" % str(exc).splitlines()[0][:160],
                         file=path, field="--model") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError("refused: not a state dict of tensors", file=path, field="--model")
    seg = build_unet(settings["network"])
    try:
        seg.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InputError("weights do not fit the settings (%s)" % str(exc).splitlines()[0][:160], file=path,
                         field="--model") from None
    return seg.to(device, memory_format=torch.channels_last_3d).eval(), settings
