"""DACL: Deep Attentive Center Loss, and its gated variant g-DACL.

A. H. Farzaneh and X. Qi, "Facial Expression Recognition in the Wild via Deep Attentive Center Loss",
WACV 2021; chapter 4 of A. H. Farzaneh, "Facial Expression Recognition in the Wild" (dissertation, Utah State
University, 2021). Upstream code: https://github.com/amirhfarzaneh/dacl (MIT).

A ResNet-18 yields the spatial feature map x* and, after average pooling, the 512-d deep feature x. The
attention network reads the flattened x* through the Context Encoder Unit (three FC layers with BN, Eq. 4.5;
gated in g-DACL, Eqs. 4.8-4.10) and 512 two-way inclusion/exclusion heads (Eqs. 4.6-4.7) that give one weight
a_j in (0, 1] per feature element. The weights steer the sparse center loss during training
(`training.losses.sparse_center_loss`), whose class centers are kept in the `centers` buffer; the classifier
is the softmax layer on x.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models import resnet18

from fer_demo.models.base import FerModel, ModelCard, ModelOutput
from fer_demo.models.registry import register_model

__all__ = ["DACL", "DACLOutput", "ContextEncoder", "GatedContextEncoder"]

FEATURE_DIM = 512
LATENT_DIM = 64


@dataclass(frozen=True)
class DACLOutput(ModelOutput):
    """`ModelOutput` whose `attention` is always set: (N, 512) weights a_ij of Eq. 4.7."""


def _fc_bn(in_features: int, out_features: int) -> list[nn.Module]:
    return [nn.Linear(in_features, out_features), nn.BatchNorm1d(out_features)]


class ContextEncoder(nn.Module):
    """CE-Unit, Eq. 4.5: e = tanh(BN(W3 relu(BN(W2 relu(BN(W1 flat(x*))))))."""

    def __init__(self, context_dim: int, hidden: tuple[int, int], latent_dim: int = LATENT_DIM) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *_fc_bn(context_dim, hidden[0]),
            nn.ReLU(inplace=True),
            *_fc_bn(hidden[0], hidden[1]),
            nn.ReLU(inplace=True),
            *_fc_bn(hidden[1], latent_dim),
            nn.Tanh(),
        )

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return self.layers(context.flatten(1))


class GatedContextEncoder(nn.Module):
    """Gated CE-Unit of g-DACL, Eqs. 4.8-4.10: e = tanh(BN(U h)) * sigmoid(BN(V h))."""

    def __init__(self, context_dim: int, hidden: tuple[int, int], latent_dim: int = LATENT_DIM) -> None:
        super().__init__()
        self.shared = nn.Sequential(
            *_fc_bn(context_dim, hidden[0]),
            nn.ReLU(inplace=True),
            *_fc_bn(hidden[0], hidden[1]),
            nn.ReLU(inplace=True),
        )
        self.tanh_branch = nn.Sequential(*_fc_bn(hidden[1], latent_dim), nn.Tanh())
        self.gate_branch = nn.Sequential(*_fc_bn(hidden[1], latent_dim), nn.Sigmoid())

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        hidden = self.shared(context.flatten(1))
        return self.tanh_branch(hidden) * self.gate_branch(hidden)


class DACL(FerModel):
    """ResNet-18 classifier with the DACL attention network over its 512 feature elements."""

    def __init__(self, card: ModelCard, gated: bool = False) -> None:
        super().__init__()
        self.card = card
        self.gated = gated
        backbone = resnet18(weights=None, num_classes=card.num_classes)
        if card.channels != 3:
            backbone.conv1 = nn.Conv2d(card.channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.features = nn.Sequential(*list(backbone.children())[:-2])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = backbone.fc
        height, width = card.input_size
        context_hw = _resnet_output_size(height) * _resnet_output_size(width)
        context_dim = FEATURE_DIM * context_hw
        # Upstream uses 512*7*7 -> 3584 -> 512 -> 64 at 224 px: the first layer keeps 1/7 of the context.
        hidden = (max(context_dim // 7, FEATURE_DIM), FEATURE_DIM)
        encoder = GatedContextEncoder if gated else ContextEncoder
        self.context_encoder = encoder(context_dim, hidden)
        self.heads = nn.Linear(LATENT_DIM, 2 * FEATURE_DIM)
        # Class centers c_k of the sparse center loss, kept so the demo can compare a face with its class center.
        self.register_buffer("centers", torch.zeros(card.num_classes, FEATURE_DIM))
        for module in [*self.context_encoder.modules(), self.heads]:
            if isinstance(module, nn.Linear):
                nn.init.kaiming_normal_(module.weight)
                nn.init.zeros_(module.bias)

    def attention(self, context: torch.Tensor) -> torch.Tensor:
        """Attention weights a in (0, 1]^512 from the spatial feature map (Eqs. 4.5-4.7)."""
        scores = self.heads(self.context_encoder(context)).view(-1, FEATURE_DIM, 2)
        return scores.softmax(dim=-1)[..., 0]

    def forward(self, x: torch.Tensor) -> DACLOutput:
        context = self.features(x)
        embedding = self.pool(context).flatten(1)
        return DACLOutput(logits=self.fc(embedding), embedding=embedding, attention=self.attention(context))


def _resnet_output_size(size: int) -> int:
    """Spatial size after ResNet-18's five stride-2 stages (conv1, maxpool, layer2-4)."""
    for _ in range(5):
        size = (size + 1) // 2
    return size


def _create_dacl(card: ModelCard, **kwargs) -> DACL:
    return DACL(card, **kwargs)


_NOTES = (
    "Input is 3x64x64 (FER2013's 48x48 faces, upscaled) instead of the paper's 224x224 crops, so a FER2013 epoch "
    "fits a 2-core CPU; ResNet-18 is trained from scratch (no ImageNet weights offline), so the context map is "
    "512x2x2 and the CE-Unit is 2048 -> 512 -> 512 -> 64 instead of 25088 -> 3584 -> 512 -> 64. FER2013 is "
    "grayscale, so the network sees the gray face in all three channels."
)

DACL_CARD = ModelCard(
    name="dacl",
    title="DACL (Deep Attentive Center Loss)",
    paper="Farzaneh & Qi, Facial Expression Recognition in the Wild via Deep Attentive Center Loss, WACV 2021",
    url="https://openaccess.thecvf.com/content/WACV2021/html/Farzaneh_Facial_Expression_Recognition_in_the_Wild_via_Deep_Attentive_Center_Loss_WACV_2021_paper.html",
    input_size=(64, 64),
    channels=3,
    mean=(0.5, 0.5, 0.5),
    std=(0.25, 0.25, 0.25),
    equalize=None,
    flip_average=True,
    embedding_dim=FEATURE_DIM,
    notes=_NOTES,
)


@register_model(DACL_CARD)
def dacl(**kwargs) -> DACL:
    """DACL: ResNet-18 + attention network for the sparse center loss (g-DACL with `gated=True`)."""
    return _create_dacl(DACL_CARD, **kwargs)
