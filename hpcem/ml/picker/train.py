"""Training the picker: the supervised baseline (DeepFinder's: Dice loss on the given labels),
RobPicker (label correction + data reweighting tuned on a clean meta set through the bi-level
step of :mod:`hpcem.ml.picker.meta`) and the seed's ablations (DR-only, LC-only), on the same
network, data, patches and number of segmentation-network steps.

The meta-learned methods first train ``warmup`` (a fraction of the steps) on the given labels,
as the supervised baseline does, then switch the label correction and reweighting on, the
correction's S head starting from the segmentation head (S is then the network's own
prediction): started from random weights, S spread about a fifth of each patch's target over
every species and the network learnt diffuse outputs (measured: no species-2 picks left).

:class:`PickerTrainer` is the state object: ``step()`` runs one lower-level step (and, every
``meta_every`` steps, one upper-level step); ``state()`` / ``restore()`` hold everything a
continued run needs (weights, optimiser moments, the patch sampler's random state), so a run
resumed from a checkpoint equals an uninterrupted one.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from .meta import hypergradient, meta_direction
from .nets import LabelCorrector, Reweighter, UNet3D, dice_per_sample, forward_with, one_hot

METHODS = ("robpicker", "supervised", "dr_only", "lc_only")
# oneDNN's 3D convolutions run their backward pass several times faster on channels-last
# tensors when the channels are few (8 channels at 32^3: 0.2 s against 0.57 s, measured)
MEMORY_FORMAT = torch.channels_last_3d


@dataclass(frozen=True)
class TrainConfig:
    n_classes: int                       # species + background
    method: str = "robpicker"
    widths: tuple = (8, 16, 24, 32)
    bottleneck: int = 48
    patch: int = 32
    batch: int = 4
    meta_batch: int = 4
    steps: int = 2000
    lr: float = 1e-3
    meta_lr: float = 1e-3
    meta_every: int = 1
    warmup: float = 0.2                  # fraction of the steps trained on the given labels first
    weight_decay: float = 0.0
    optimizer: str = "adam"
    seed: int = 0
    lc_alpha: float = 0.018              # the correction's mixing alpha at the start (its bias ~ -4)
    lc_lr: float = 0.0                   # the correction network's learning rate (0: meta_lr)
    lr_decay: float = 0.0                # fraction of the final steps over which lr falls to 0 (cosine)
    average: float = 0.0                 # fraction of the final steps whose weights are averaged (saved net)
    absent_volumes: tuple = ()           # per species, voxels: Dice of species absent from a patch (--absent_dice)
    absent_above: float = 0.5            # the absent species' Dice counts voxels above this probability

    def lr_factor(self, step: int) -> float:
        """The segmentation lr of 0-based step ``step`` over ``lr``: 1, then a half cosine to ~0
        over the last ``lr_decay`` of the steps."""
        n = int(round(self.lr_decay * self.steps))
        if n <= 0 or step < self.steps - n:
            return 1.0
        return 0.5 * (1.0 + float(np.cos(np.pi * (step - (self.steps - n) + 0.5) / n)))

    @property
    def average_from(self) -> int:
        """Steps done after which the weights enter the average (``steps``: none)."""
        return self.steps - int(round(self.average * self.steps))

    @property
    def warmup_steps(self) -> int:
        return int(round(self.warmup * self.steps)) if (self.uses_lc or self.uses_dr) else 0

    @property
    def uses_lc(self) -> bool:
        return self.method in ("robpicker", "lc_only")

    @property
    def uses_dr(self) -> bool:
        return self.method in ("robpicker", "dr_only")

    def network(self) -> dict:
        return {"n_classes": self.n_classes, "widths": list(self.widths), "bottleneck": self.bottleneck}


def build_unet(net: dict) -> UNet3D:
    return UNet3D(int(net["n_classes"]), tuple(net["widths"]), int(net["bottleneck"]))


def _optimizer(cfg: TrainConfig, params, lr):
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)


class PickerTrainer:
    def __init__(self, cfg: TrainConfig, train, meta=None, device: str = "cpu"):
        if cfg.method not in METHODS:
            raise ValueError("method must be one of %s" % ", ".join(METHODS))
        if (cfg.uses_lc or cfg.uses_dr) and meta is None:
            raise ValueError("%s needs a clean meta set" % cfg.method)
        self.cfg, self.train, self.meta, self.device = cfg, train, meta, torch.device(device)
        torch.manual_seed(cfg.seed)
        self.seg = build_unet(cfg.network()).to(self.device, memory_format=MEMORY_FORMAT)
        self.lc = (LabelCorrector(self.seg.n_features, cfg.n_classes, _logit(cfg.lc_alpha)).to(self.device)
                   if cfg.uses_lc else None)
        self.dr = Reweighter().to(self.device) if cfg.uses_dr else None
        self.names = [n for n, _ in self.seg.named_parameters()]
        self.params = [p for _, p in self.seg.named_parameters()]
        self.upper = [p for m in (self.lc, self.dr) if m is not None for p in m.parameters()]
        self.opt = _optimizer(cfg, self.params, cfg.lr)
        groups = [{"params": list(m.parameters()), "lr": lr} for m, lr in
                  ((self.lc, cfg.lc_lr or cfg.meta_lr), (self.dr, cfg.meta_lr)) if m is not None]
        self.meta_opt = torch.optim.Adam(groups, lr=cfg.meta_lr) if groups else None
        self.rng = np.random.default_rng([cfg.seed, 3])
        self.steps_done = 0
        self.avg, self.n_avg = None, 0           # running mean of the last steps' weights (cfg.average)
        self.warmup_steps = cfg.warmup_steps     # kept by a continued run whose --steps is raised
        self.absent = (torch.tensor((0.0,) + tuple(float(v) for v in cfg.absent_volumes), device=self.device)
                       if cfg.absent_volumes else None)

    # ---------------------------------------------------------------- the training loss (eq 1)
    def _tensor(self, a, dtype=torch.float32):
        return torch.as_tensor(a, device=self.device).to(dtype)

    def _input(self, a):
        return self._tensor(a).contiguous(memory_format=MEMORY_FORMAT)

    def _dice(self, probs, target):
        return dice_per_sample(probs, target, self.absent, self.cfg.absent_above)

    def _targets(self, feats, noisy, active: bool = True):
        return self.lc(feats, noisy) if self.lc is not None and active else noisy

    def _weights(self, losses, active: bool = True):
        """h(loss; R), normalised to mean 1 over the batch (Adam is blind to a common scale)."""
        if self.dr is None or not active:
            return torch.ones_like(losses)
        w = self.dr(losses)
        return w / (w.mean() + 1e-8)

    def step(self) -> dict:
        cfg = self.cfg
        xb, yb = self.train.batch(self.rng, cfg.batch)
        x, noisy = self._input(xb), one_hot(self._tensor(yb, torch.int64), cfg.n_classes)
        active = bool(self.upper) and self.steps_done >= self.warmup_steps
        if active and self.lc is not None and self.steps_done == self.warmup_steps:
            self.lc.start_from(self.seg.head)
        meta_now = active and (self.steps_done - self.warmup_steps) % cfg.meta_every == 0
        before = [p.detach().clone() for p in self.params] if meta_now else None
        feats = self.seg.features(x)
        probs = torch.softmax(self.seg.head(feats), dim=1)
        M = feats.detach()
        with torch.no_grad():
            target = self._targets(M, noisy, active)
        losses = self._dice(probs, target)
        with torch.no_grad():
            w = self._weights(losses.detach(), active)
        loss = (w * losses).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        for g in self.opt.param_groups:
            g["lr"] = cfg.lr * cfg.lr_factor(self.steps_done)
        self.opt.step()
        stats = {"loss": float(loss.detach()), "w_min": float(w.min()), "w_max": float(w.max())}
        if meta_now:
            stats["meta_loss"] = self._meta_step(x, noisy, M, losses.detach(), before)
        self.steps_done += 1
        if self.steps_done > cfg.average_from:
            self._accumulate()
        return stats

    # ---------------------------------------------------------------- weight averaging
    def _accumulate(self) -> None:
        """The running mean of the segmentation network's floating-point state (weights and batch
        normalisation's running statistics) over the steps since ``cfg.average_from``."""
        self.n_avg += 1
        with torch.no_grad():
            sd = {k: v.detach() for k, v in self.seg.state_dict().items() if v.is_floating_point()}
            if self.n_avg == 1:
                self.avg = {k: v.clone() for k, v in sd.items()}
            else:
                for k, v in sd.items():
                    self.avg[k] += (v - self.avg[k]) / self.n_avg

    def network(self):
        """The network to save: the segmentation U-Net, with the averaged weights when
        ``cfg.average`` > 0 and averaging has started."""
        if not self.n_avg:
            return self.seg
        net = build_unet(self.cfg.network()).to(self.device, memory_format=MEMORY_FORMAT)
        sd = self.seg.state_dict()
        sd.update(self.avg)
        net.load_state_dict(sd)
        return net

    # ---------------------------------------------------------------- the upper level (eqs 7-13)
    def meta_loss(self, weights=None, batch=None):
        xb, yb = batch if batch is not None else self.meta.batch(self.rng, self.cfg.meta_batch)
        x, y = self._input(xb), one_hot(self._tensor(yb, torch.int64), self.cfg.n_classes)
        logits = forward_with(self.seg, self.names, self.params if weights is None else weights, x)
        return self._dice(torch.softmax(logits, dim=1), y).mean()

    def _fd_loss(self, x, noisy, M, losses_before):
        def loss_at(weights):
            with torch.no_grad():
                probs = torch.softmax(forward_with(self.seg, self.names, weights, x), dim=1)
            losses = self._dice(probs, self._targets(M, noisy))
            return (self._weights(losses_before) * losses).mean()
        return loss_at

    def _meta_step(self, x, noisy, M, losses_before, before) -> float:
        lval = self.meta_loss()
        v = torch.autograd.grad(lval, self.params)
        u = meta_direction(self.opt, self.params, v)
        grads = hypergradient(self._fd_loss(x, noisy, M, losses_before), before, u, self.upper)
        self.meta_opt.zero_grad(set_to_none=True)
        for p, g in zip(self.upper, grads):
            p.grad = g
        self.meta_opt.step()
        return float(lval.detach())

    # ---------------------------------------------------------------- state
    def state(self) -> dict:
        st = {"steps_done": self.steps_done, "warmup_steps": self.warmup_steps, "seg": _tensors(self.seg.state_dict()),
              "opt": _opt_state(self.opt), "rng": _rng_state(self.rng)}
        for key, m in (("lc", self.lc), ("dr", self.dr)):
            if m is not None:
                st[key] = _tensors(m.state_dict())
        if self.meta_opt is not None:
            st["meta_opt"] = _opt_state(self.meta_opt)
        if self.n_avg:
            st["avg"], st["n_avg"] = _tensors(self.avg), self.n_avg
        return st

    def restore(self, st: dict) -> None:
        self.steps_done = int(st["steps_done"])
        self.warmup_steps = int(st["warmup_steps"])
        self.seg.load_state_dict(_from_numpy(st["seg"], self.device))
        for key, m in (("lc", self.lc), ("dr", self.dr)):
            if m is not None:
                m.load_state_dict(_from_numpy(st[key], self.device))
        _opt_restore(self.opt, st["opt"], self.device)
        if self.meta_opt is not None:
            _opt_restore(self.meta_opt, st["meta_opt"], self.device)
        self.rng.bit_generator.state = _rng_from(st["rng"])
        self.n_avg = int(st.get("n_avg", 0))
        self.avg = _from_numpy(st["avg"], self.device) if self.n_avg else None

    def settings(self) -> dict:
        d = asdict(self.cfg)
        d["widths"] = list(self.cfg.widths)
        return d


def _logit(p: float) -> float:
    p = min(max(float(p), 1e-6), 1 - 1e-6)
    return float(np.log(p / (1.0 - p)))


def _tensors(sd) -> dict:
    """A snapshot: copies, not views of the live tensors (numpy() of a CPU tensor shares its memory)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in sd.items()}


def _from_numpy(d: dict, device) -> dict:
    return {k: torch.tensor(np.asarray(v), device=device) for k, v in d.items()}


def _opt_state(opt) -> dict:
    return {str(i): {k: (v.detach().cpu().numpy().copy() if torch.is_tensor(v) else np.array(v)) for k, v in s.items()}
            for i, s in opt.state_dict()["state"].items()}


def _opt_restore(opt, saved: dict, device) -> None:
    sd = opt.state_dict()
    sd["state"] = {int(i): {k: torch.tensor(np.asarray(v), device=device if k != "step" else "cpu")
                            for k, v in s.items()} for i, s in saved.items()}
    opt.load_state_dict(sd)


def _rng_state(rng) -> dict:
    s = rng.bit_generator.state
    return {"bit_generator": s["bit_generator"], "state": str(s["state"]["state"]), "inc": str(s["state"]["inc"]),
            "has_uint32": int(s["has_uint32"]), "uinteger": int(s["uinteger"])}


def _rng_from(d: dict) -> dict:
    return {"bit_generator": str(d["bit_generator"]), "state": {"state": int(d["state"]), "inc": int(d["inc"])},
            "has_uint32": int(d["has_uint32"]), "uinteger": int(d["uinteger"])}


def predict_probs(seg, x: torch.Tensor) -> torch.Tensor:
    return F.softmax(seg(x), dim=1)
