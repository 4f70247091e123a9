"""GCNet: deep generative-contrastive networks.

Y. Kim, B. Yoo, Y. Kwak, C. Choi and J. Kim, "Deep generative-contrastive networks for facial expression
recognition", arXiv:1703.07140 (2017).

A convolutional encoder-decoder G (Table I: three conv/BN/ReLU/max-pool layers; three max-unpool/deconv layers)
generates a reference (neutral-like) face X_r from the query X. A contrastive encoder En(.; theta_e) with the same
three conv layers encodes X and X_r; the contrastive representation is the element-wise distance of the
L2-normalised codes, delta_j = |En(X)_j/||En(X)|| - En(X_r)_j/||En(X_r)|||  (Eq. 2). Dropout 0.5, an FC layer of
(0.5*64)^2*3/2^3 = 384 units and a softmax classify delta. Two reconstruction decoders (same shape as G's decoder,
unpooling with the contrastive encoder's indices) rebuild the input from En(X) and the reference from En(X_r);
they are trained (variants R1) but not needed at test time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fer_demo.models.base import FerModel, ModelCard, ModelOutput
from fer_demo.models.registry import register_model

__all__ = ["GCNet", "GCNetOutput", "ConvEncoder", "UnpoolDecoder"]

ENCODER_CHANNELS = (32, 64, 96)
ENCODER_KERNELS = (5, 3, 3)
EMBEDDING_DIM = 384


@dataclass(frozen=True)
class GCNetOutput(ModelOutput):
    """`ModelOutput` whose `neutral` is the generated reference X_r and `embedding` the FC-384 features.

    Attributes:
        query_code: (N, 96*h*w) En(X), the contrastive encoding of the query.
        reference_code: (N, 96*h*w) En(X_r), the contrastive encoding of the generated reference.
        delta: (N, 96*h*w) the contrastive representation of Eq. 2.
        recon_input: (N, 1, H, W) De_i(En(X)), or None when reconstruction is not requested.
        recon_reference: (N, 1, H, W) De_r(En(X_r)), or None when reconstruction is not requested.
    """

    query_code: torch.Tensor | None = None
    reference_code: torch.Tensor | None = None
    delta: torch.Tensor | None = None
    recon_input: torch.Tensor | None = None
    recon_reference: torch.Tensor | None = None


class ConvEncoder(nn.Module):
    """Three (conv, BN, ReLU, 2x2 max-pool) layers; returns the code and the pooling indices."""

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        layers = []
        for out_channels, kernel in zip(ENCODER_CHANNELS, ENCODER_KERNELS, strict=True):
            layers.append(
                nn.Sequential(
                    nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2),
                    nn.BatchNorm2d(out_channels),
                    nn.ReLU(inplace=True),
                )
            )
            in_channels = out_channels
        self.layers = nn.ModuleList(layers)
        self.pool = nn.MaxPool2d(2, return_indices=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        indices = []
        for layer in self.layers:
            x, index = self.pool(layer(x))
            indices.append(index)
        return x, indices


class UnpoolDecoder(nn.Module):
    """Three (2x2 max-unpool, deconv) layers mirroring `ConvEncoder`, ending in a [0, 1] image.

    Table I ends with BN + ReLU; the last layer here ends with a sigmoid instead so that the generated face is a
    bounded image that can be shown as is.
    """

    def __init__(self, out_channels: int = 1) -> None:
        super().__init__()
        self.unpool = nn.MaxUnpool2d(2)
        self.layers = nn.ModuleList(
            [
                nn.Sequential(nn.ConvTranspose2d(96, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(inplace=True)),
                nn.Sequential(nn.ConvTranspose2d(64, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(inplace=True)),
                nn.Sequential(nn.ConvTranspose2d(32, out_channels, 5, padding=2), nn.Sigmoid()),
            ]
        )

    def forward(self, code: torch.Tensor, indices: list[torch.Tensor]) -> torch.Tensor:
        x = code
        for layer, index in zip(self.layers, reversed(indices), strict=True):
            x = layer(self.unpool(x, index))
        return x


class Generator(nn.Module):
    """G = De(En(X; psi_e); psi_d): the reference-face generator."""

    def __init__(self, channels: int = 1) -> None:
        super().__init__()
        self.encoder = ConvEncoder(channels)
        self.decoder = UnpoolDecoder(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        code, indices = self.encoder(x)
        return self.decoder(code, indices)


def contrastive_representation(query: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Eq. 2 with the normalised element-wise distance: |q/||q|| - r/||r|||."""
    return (nn.functional.normalize(query, dim=1) - nn.functional.normalize(reference, dim=1)).abs()


class GCNet(FerModel):
    """Generator + contrastive encoder + classifier on delta + two reconstruction decoders."""

    def __init__(self, card: ModelCard) -> None:
        super().__init__()
        self.card = card
        height, width = card.input_size
        code_dim = ENCODER_CHANNELS[-1] * (height // 8) * (width // 8)
        self.generator = Generator(card.channels)
        self.encoder = ConvEncoder(card.channels)
        self.fc = nn.Sequential(nn.Dropout(0.5), nn.Linear(code_dim, EMBEDDING_DIM), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(EMBEDDING_DIM, card.num_classes)
        self.recon_input = UnpoolDecoder(card.channels)
        self.recon_reference = UnpoolDecoder(card.channels)

    def forward(self, x: torch.Tensor, reconstruct: bool = False) -> GCNetOutput:
        """Classify `x` (normalised input) against its generated reference.

        The generator works on images in [0, 1]; `x` is mapped back with the card's mean/std first.
        """
        mean, std = self.card.mean[0], self.card.std[0]
        reference = self.generator(x * std + mean)
        query_code, query_indices = self.encoder(x)
        reference_code, reference_indices = self.encoder((reference - mean) / std)
        delta = contrastive_representation(query_code.flatten(1), reference_code.flatten(1))
        embedding = self.fc(delta)
        recon_input = recon_reference = None
        if reconstruct:
            recon_input = self.recon_input(query_code, query_indices)
            recon_reference = self.recon_reference(reference_code, reference_indices)
        return GCNetOutput(
            logits=self.classifier(embedding),
            embedding=embedding,
            neutral=reference,
            query_code=query_code.flatten(1),
            reference_code=reference_code.flatten(1),
            delta=delta,
            recon_input=recon_input,
            recon_reference=recon_reference,
        )


def _create_gcnet(card: ModelCard, **kwargs) -> GCNet:
    return GCNet(card, **kwargs)


_NOTES = (
    "64x64 grayscale input with CLAHE as in the paper. The generator's last layer ends in a sigmoid instead of "
    "BN + ReLU so the reference is a bounded [0, 1] image; the encoders are trained here instead of being "
    "pre-trained on CASIA-WebFace, which is not available."
)

GCNET_CARD = ModelCard(
    name="gcnet",
    title="GCNet (Generative-Contrastive Networks)",
    paper="Kim, Yoo, Kwak, Choi & Kim, Deep generative-contrastive networks for facial expression recognition, 2017",
    url="https://arxiv.org/abs/1703.07140",
    input_size=(64, 64),
    channels=1,
    mean=(0.5,),
    std=(0.25,),
    equalize="clahe",
    flip_average=True,
    embedding_dim=EMBEDDING_DIM,
    notes=_NOTES,
)


@register_model(GCNET_CARD)
def gcnet(**kwargs) -> GCNet:
    """GCNet (S1R1 architecture; the variant only changes the training losses)."""
    return _create_gcnet(GCNET_CARD, **kwargs)
