"""RobPicker's three networks (seed 004, Methods): the segmentation 3D U-Net, the label-correction
network sharing its feature extractor, and the data-reweighting MLP; and the Dice loss (eq 15).

U-Net (DeepFinder's shape): four down-blocks of four 3x3x3 convolutions (batch normalisation +
ReLU each) with a 2x2x2 max-pooling between the second and third, a bottleneck of two
convolutions, four up-blocks (2x2x2 transposed convolution, concatenation with the block's skip,
two convolutions) and a 1x1x1 convolution to species + background.  Widths are scaled to the CPU
(``widths``).  Batch normalisation as the seed's: at inference its running statistics of the
training patches normalise every patch alike, where a per-patch normalisation (GroupNorm, tried)
blew the noise of empty background patches up to particle contrast and labelled whole regions
as particles (measured: clusters of 10^6 voxels).  The bi-level step's extra forward passes run
on copies of the running statistics (:func:`forward_with`).  Patches must be multiples of 16.

Label correction (eq 14): S = softmax(conv1x1(M)) of the U-Net's last feature map M (shared,
not its own parameters), alpha = sigmoid(conv1x1(relu(conv1x1([S, L])))), corrected label
C = alpha S + (1 - alpha) L.  Data reweighting: w = sigmoid(MLP 1 -> 500 -> 1 (ReLU)) of a
sample's loss.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

DICE_SMOOTH = 1.0     # voxels: an absent class predicted absent costs nothing


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, padding=1), nn.BatchNorm3d(cout), nn.ReLU(inplace=True))


class UNet3D(nn.Module):
    def __init__(self, n_classes: int, widths=(8, 16, 24, 32), bottleneck: int = 48):
        super().__init__()
        self.n_classes = int(n_classes)
        self.widths = tuple(int(w) for w in widths)
        cin = 1
        self.down_pre, self.down_post = nn.ModuleList(), nn.ModuleList()
        for w in self.widths:
            self.down_pre.append(nn.Sequential(_conv(cin, w), _conv(w, w)))
            self.down_post.append(nn.Sequential(_conv(w, w), _conv(w, w)))
            cin = w
        self.bottleneck = nn.Sequential(_conv(cin, bottleneck), _conv(bottleneck, bottleneck))
        self.up_t, self.up_conv = nn.ModuleList(), nn.ModuleList()
        cin = bottleneck
        for w in reversed(self.widths):
            self.up_t.append(nn.ConvTranspose3d(cin, w, 2, stride=2))
            self.up_conv.append(nn.Sequential(_conv(2 * w, w), _conv(w, w)))
            cin = w
        self.head = nn.Conv3d(self.widths[0], self.n_classes, 1)

    @property
    def n_features(self) -> int:
        return self.widths[0]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map M (B, widths[0], D, H, W) of input (B, 1, D, H, W)."""
        skips = []
        for pre, post in zip(self.down_pre, self.down_post):
            x = pre(x)
            skips.append(x)
            x = post(F.max_pool3d(x, 2))
        x = self.bottleneck(x)
        for up, conv, skip in zip(self.up_t, self.up_conv, reversed(skips)):
            x = conv(torch.cat([up(x), skip], dim=1))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, n_classes, D, H, W); class 0 is the background."""
        return self.head(self.features(x))


class LabelCorrector(nn.Module):
    """g(L, M; C) of eq 14 on the U-Net's feature map M; about (F + 3c + 3) c parameters."""

    def __init__(self, n_features: int, n_classes: int, alpha_bias: float = -4.0):
        super().__init__()
        c = int(n_classes)
        self.s_head = nn.Conv3d(n_features, c, 1)
        self.mix1 = nn.Conv3d(2 * c, c, 1)
        self.mix2 = nn.Conv3d(c, c, 1)
        nn.init.constant_(self.mix2.bias, alpha_bias)      # start at the given labels (alpha ~ 0.02)

    def start_from(self, head: nn.Conv3d) -> None:
        """S starts as the segmentation network's own prediction (its head's weights)."""
        with torch.no_grad():
            self.s_head.weight.copy_(head.weight)
            self.s_head.bias.copy_(head.bias)

    def forward(self, features: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
        S = torch.softmax(self.s_head(features), dim=1)
        alpha = torch.sigmoid(self.mix2(F.relu(self.mix1(torch.cat([S, noisy], dim=1)))))
        return alpha * S + (1.0 - alpha) * noisy


class Reweighter(nn.Module):
    """h(loss; R): a weight in (0, 1) per sample from its loss (1 -> hidden -> 1, ReLU, sigmoid).
    The output layer starts at zero weights, so h starts flat (every sample weighted alike): with
    PyTorch's default initialisation h already fell with the loss before any meta step (measured,
    seed 0: h(0.9) / h(0.05) = 0.84 and 0.69 for the two seeded runs), a head start for turning the
    high-loss patches (the rare species') down."""

    def __init__(self, hidden: int = 500):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(losses.reshape(-1, 1))).reshape(-1)


def forward_with(seg: UNet3D, names, weights, x: torch.Tensor) -> torch.Tensor:
    """Logits of ``seg`` at other weights (``names`` -> ``weights``), its normalisation's running
    statistics left untouched (the forward pass updates copies)."""
    from torch.func import functional_call

    state = dict(zip(names, weights))
    state.update({k: b.clone() for k, b in seg.named_buffers()})
    return functional_call(seg, state, (x,))


def one_hot(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(B, D, H, W) int64 -> (B, C, D, H, W) float one-hot."""
    return F.one_hot(labels.long(), n_classes).permute(0, 4, 1, 2, 3).to(torch.float32)


def dice_per_sample(probs: torch.Tensor, target: torch.Tensor, absent_smooth=None,
                    absent_above: float = 0.0) -> torch.Tensor:
    """Eq 15 for each sample, (B,): the mean over the channels present in the sample's target of
    1 - (2|A B| + s) / (|A| + |B| + s); a channel is present when some voxel of the target holds
    it with weight >= 1/2 (a one-hot label: any voxel; a corrected label: a confident one, not
    the diffuse mass alpha S spreads over the patch).  Eq 15's term of a channel absent from the
    target is 0/0; counted as 1 (s = 1) it charges every patch the whole loss of each species it
    does not hold unless that species' probabilities summed over the patch stay below one voxel,
    which drives rare species to zero everywhere (measured: no picks of the two rarest species
    after 400 steps).  Wrong voxels of an absent species then cost only through the channels
    present (the background's): on the training patches of a 5000-step supervised run, 2.3e-5
    of loss a voxel called species 3 around a species-4 particle against 1.1e-3 a missed
    species-4 voxel (issue 15, seventh pass), so a network that paints every small particle
    "4 inside, 3 around" pays little for it.

    ``absent_smooth`` (C,) (pick3d ``--absent_dice``, experimental): a channel absent from the
    sample's target whose entry is > 0 is counted too, with that smoothing (one particle's volume
    in voxels): 1 - s / (|A| + s), so a whole false particle of it costs 1/2; the mean is then over
    the channels counted.  Measured (s1, supervised, 5000 steps): it ends the cross-painting of
    the two small species but kills the 150 A and 100 A channels from the start (at the first
    steps every channel spreads ~1/C of each patch, |A| >> s, so each absent species is pushed to
    zero everywhere) and they never come back: mean F1 0.399 against 0.764 without it.
    ``absent_above`` (pick3d ``--absent_above``, 0.5): |A| of an absent channel sums only the
    voxels where its probability is above this, so a channel nowhere confident (not yet learnt) is
    never pushed down, while a painted particle still is (in the 5000-step run's held-out painting
    93-97% of the wrongly called small-species voxels hold p > 1/2).  Measured (issue 15, eighth
    pass, same run at 0.5): seed 0 0.946 / 0.985 / 0.976 / 0.909, mean F1 0.954, the two small
    species told apart at their centres; seed 1 0.703 against 0.956 without it (painted alike).  A ramp of the
    full-mass term in over steps 2000-3000 instead kept species 2 and 3 but lost species 4 (0.716).
    """
    dims = (2, 3, 4)
    inter = (probs * target).sum(dims)
    mass = probs.sum(dims)
    per_channel = 1.0 - (2.0 * inter + DICE_SMOOTH) / (mass + target.sum(dims) + DICE_SMOOTH)
    present = (target.detach().amax(dim=dims) >= 0.5).to(per_channel.dtype)
    if absent_smooth is None:
        return (per_channel * present).sum(dim=1) / present.sum(dim=1).clamp(min=1.0)
    s = torch.as_tensor(absent_smooth, dtype=mass.dtype, device=mass.device)
    absent = (1.0 - present) * (s > 0).to(mass.dtype)
    if absent_above > 0:
        mass = (probs * (probs.detach() > absent_above).to(probs.dtype)).sum(dims)
    term = present * per_channel + absent * mass / (mass + s.clamp(min=1e-6))
    return term.sum(dim=1) / (present + absent).sum(dim=1).clamp(min=1.0)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
