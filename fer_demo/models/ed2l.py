"""ED²L: expression distilling and dispelling learning.

M. Bai, X. Jia, W. Xie and L. Shen, "Adversarial Feature Distillation for Facial Expression Recognition",
PRICAI 2019, LNAI 11672, pp. 80-92. https://doi.org/10.1007/978-3-030-29894-4_7

A SphereFace-20-style base net S (Table 1: Conv1-Conv3, each a stride-2 down-sample layer followed by residual
units, every conv followed by BN and PReLU) feeds two parallel branches of the same shape: the distilling branch
B_t (ED²L-t, expression features f_t, classified with an additive-margin softmax) and the dispelling branch B_p
(ED²L-p, features f_p that keep what is not expression). A linear expression dispeller reads f_p; during training
it learns to recognise expressions from f_p while B_p and S learn to make its output uniform (Eq. 5). The
heat-maps of Fig. 5 are the channel sums of each branch's down-sample layer, normalised to [0, 1] and resized to
the input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fer_demo.models.base import FerModel, ModelCard, ModelOutput, normalized_heatmap
from fer_demo.models.registry import register_model

__all__ = ["ED2L", "ED2LOutput", "Branch", "CosineClassifier"]

FEATURE_DIM = 256


@dataclass(frozen=True)
class ED2LOutput(ModelOutput):
    """`ModelOutput` plus the dispelling branch.

    `logits` are the distilling branch's scaled cosine scores s*cos(theta) (the AM-softmax margin applies in
    training only); `embedding` is f_t; `heatmaps` holds "distilling" and "dispelling".

    Attributes:
        dispel_embedding: (N, 256) non-expression features f_p.
        dispel_logits: (N, C) the expression dispeller's scores on f_p.
    """

    dispel_embedding: torch.Tensor | None = None
    dispel_logits: torch.Tensor | None = None


def _conv_bn_prelu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.PReLU(out_channels),
    )


class ResidualUnit(nn.Module):
    """[3x3, c; 3x3, c] with an identity shortcut."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn_prelu(channels, channels), _conv_bn_prelu(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Stage(nn.Module):
    """A stride-2 down-sample layer followed by `units` residual units (one row of Table 1)."""

    def __init__(self, in_channels: int, out_channels: int, units: int) -> None:
        super().__init__()
        self.downsample = _conv_bn_prelu(in_channels, out_channels, stride=2)
        self.units = nn.Sequential(*(ResidualUnit(out_channels) for _ in range(units)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (stage output, down-sample layer output)."""
        down = self.downsample(x)
        return self.units(down), down


def _downsampled(size: int, stages: int) -> int:
    for _ in range(stages):
        size = (size + 1) // 2
    return size


class Branch(nn.Module):
    """B_t or B_p: [3x3, 256] S-2, one residual unit, FC-256."""

    def __init__(self, in_channels: int, spatial: tuple[int, int]) -> None:
        super().__init__()
        self.stage = Stage(in_channels, FEATURE_DIM, units=1)
        self.fc = nn.Linear(FEATURE_DIM * spatial[0] * spatial[1], FEATURE_DIM)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (256-d features, down-sample layer activations)."""
        out, down = self.stage(x)
        return self.fc(out.flatten(1)), down


class CosineClassifier(nn.Module):
    """Classifier of the additive-margin softmax: s * cos(theta_j) between f and the class weights W_j."""

    def __init__(self, in_features: int, num_classes: int, scale: float = 30.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.xavier_uniform_(self.weight)
        self.scale = scale

    def cosine(self, features: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(nn.functional.normalize(features), nn.functional.normalize(self.weight))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * self.cosine(features)


class ED2L(FerModel):
    """Base net + distilling branch (AM-softmax classifier) + dispelling branch (expression dispeller)."""

    def __init__(self, card: ModelCard) -> None:
        super().__init__()
        self.card = card
        self.base = nn.ModuleList([Stage(card.channels, 32, units=1), Stage(32, 64, units=2), Stage(64, 128, units=4)])
        height, width = card.input_size
        spatial = (_downsampled(height, 4), _downsampled(width, 4))
        self.distill = Branch(128, spatial)
        self.dispel = Branch(128, spatial)
        self.classifier = CosineClassifier(FEATURE_DIM, card.num_classes)
        self.dispeller = nn.Linear(FEATURE_DIM, card.num_classes)

    def base_features(self, x: torch.Tensor) -> torch.Tensor:
        """S_theta(x): the shared base net."""
        for stage in self.base:
            x, _ = stage(x)
        return x

    def forward(self, x: torch.Tensor) -> ED2LOutput:
        shared = self.base_features(x)
        f_t, down_t = self.distill(shared)
        f_p, down_p = self.dispel(shared)
        size = self.card.input_size
        return ED2LOutput(
            logits=self.classifier(f_t),
            embedding=f_t,
            heatmaps={"distilling": normalized_heatmap(down_t, size), "dispelling": normalized_heatmap(down_p, size)},
            dispel_embedding=f_p,
            dispel_logits=self.dispeller(f_p),
        )


def _create_ed2l(card: ModelCard, **kwargs) -> ED2L:
    return ED2L(card, **kwargs)


_NOTES = (
    "Input is 1x64x56 grayscale (the paper's 112x96 crop of a 128x110 alignment, at about 0.57 scale) because "
    "FER2013 faces are 48x48 and a 2-core CPU must finish an epoch in minutes; the layer table is unchanged, "
    "so each branch's down-sample map is 4x4 instead of 7x6 and FC-256 reads 256x4x4 features."
)

ED2L_CARD = ModelCard(
    name="ed2l",
    title="ED²L (Expression Distilling and Dispelling Learning)",
    paper="Bai, Jia, Xie & Shen, Adversarial Feature Distillation for Facial Expression Recognition, PRICAI 2019",
    url="https://doi.org/10.1007/978-3-030-29894-4_7",
    input_size=(64, 56),
    channels=1,
    mean=(0.5,),
    std=(0.25,),
    equalize=None,
    flip_average=True,
    embedding_dim=FEATURE_DIM,
    notes=_NOTES,
)


@register_model(ED2L_CARD)
def ed2l(**kwargs) -> ED2L:
    """ED²L: base net, distilling branch with AM-softmax, dispelling branch with an expression dispeller."""
    return _create_ed2l(ED2L_CARD, **kwargs)
