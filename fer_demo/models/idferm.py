"""IDFERM: identity-disentangled facial expression recognition machine.

X. Liu, B. V. K. Vijaya Kumar, P. Jia and J. You, "Hard negative generation for identity-disentangled facial
expression recognition", Pattern Recognition 88 (2019) 1-12. https://doi.org/10.1016/j.patcog.2018.11.001

Two parts. The hard negative generator (HNG) is an encoder to a 256-d latent z and a decoder of fractional-stride
convolutions to a 64x64 gray face, trained against a discriminator that tells generated faces from real frontal
neutral faces (the guiding set). The radial metric learning (RML) network is a stack of inception conv groups
(1x1, 3x3 and 5x5 convs in parallel) and two FC branches: the expression-classification (EC) branch with the
softmax loss and the metric-learning (ML) branch, joined by the connecting layer FC4 = P1^T FC2-2 + P2^T FC2-3
(Eq. 17). The ML branch's embedding f is compared with class centers C_y through the learned quadratic form H
(Eqs. 10-14), which folds the Mahalanobis distance and the adaptive threshold into one FC-parameterised function.
At test time the query and its generated reference both pass through the RML network; the EC branch of the query
classifies it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from fer_demo.models.base import FerModel, ModelCard, ModelOutput
from fer_demo.models.registry import register_model

__all__ = ["IDFERM", "IDFERMOutput", "HardNegativeGenerator", "Discriminator", "RMLNetwork", "QuadraticDistance"]

LATENT_DIM = 256
METRIC_DIM = 128
LEAK = 0.1


@dataclass(frozen=True)
class IDFERMOutput(ModelOutput):
    """`ModelOutput` whose `neutral` is the HNG's generated reference and `embedding` the ML-branch feature f.

    Attributes:
        reference_embedding: (N, 128) f* of the generated reference.
        center_distance: (N, C) H(f, C_k) to every class center (negative = inside the class radius).
        reference_center_distance: (N, C) H(f*, C_k) of the generated reference.
    """

    reference_embedding: torch.Tensor | None = None
    center_distance: torch.Tensor | None = None
    reference_center_distance: torch.Tensor | None = None


def _down(in_channels: int, out_channels: int, norm: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(in_channels, out_channels, 4, 2, 1, bias=not norm)]
    if norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.LeakyReLU(LEAK, inplace=True))
    return nn.Sequential(*layers)


def _up(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(in_channels, out_channels, 4, 2, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class HardNegativeGenerator(nn.Module):
    """Enc: 64x64 gray -> z (256); Dec: z -> 64x64 gray in [0, 1] by fractional-stride convolutions."""

    def __init__(self, channels: int = 1) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            _down(channels, 64, norm=False),
            _down(64, 128),
            _down(128, 256),
            _down(256, 512),
            nn.Flatten(),
            nn.Linear(512 * 4 * 4, LATENT_DIM),
        )
        self.project = nn.Sequential(nn.Linear(LATENT_DIM, 512 * 4 * 4), nn.BatchNorm1d(512 * 4 * 4), nn.ReLU(True))
        self.decoder = nn.Sequential(
            _up(512, 256), _up(256, 128), _up(128, 64), nn.ConvTranspose2d(64, channels, 4, 2, 1), nn.Sigmoid()
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.project(z).view(-1, 512, 4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


class Discriminator(nn.Module):
    """Dis: real frontal neutral face (guiding set) vs generated face; returns one logit per image."""

    def __init__(self, channels: int = 1) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            _down(channels, 64, norm=False), _down(64, 128), _down(128, 256), nn.Conv2d(256, 1, 8), nn.Flatten()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).squeeze(1)


class InceptionGroup(nn.Module):
    """1x1, 3x3 and 5x5 convolutions in parallel, concatenated, then 2x2 max-pooling."""

    def __init__(self, in_channels: int, widths: tuple[int, int, int]) -> None:
        super().__init__()
        self.paths = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(in_channels, width, k, padding=k // 2, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            )
            for width, k in zip(widths, (1, 3, 5), strict=True)
        )
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.cat([path(x) for path in self.paths], dim=1))


class QuadraticDistance(nn.Module):
    """H(f1, f2) = 1/2|L_A f1|^2 + 1/2|L_A f2|^2 - (L_B f1)^T (L_B f2) + c^T [f1; f2] + b  (Eqs. 12-14).

    With L_A = L_B this is half the squared Mahalanobis distance; the free parts learn the adaptive threshold.
    The cross term carries the minus sign that makes B negative semi-definite, as Eq. 13 assumes.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.l_a = nn.Linear(dim, dim, bias=False)
        self.l_b = nn.Linear(dim, dim, bias=False)
        self.linear = nn.Linear(2 * dim, 1)
        with torch.no_grad():
            self.l_b.weight.copy_(self.l_a.weight)
            nn.init.zeros_(self.linear.weight)

    def forward(self, f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
        a1, a2 = self.l_a(f1), self.l_a(f2)
        cross = (self.l_b(f1) * self.l_b(f2)).sum(-1)
        return 0.5 * a1.pow(2).sum(-1) + 0.5 * a2.pow(2).sum(-1) - cross + self.linear(torch.cat([f1, f2], -1))[..., 0]


class RMLNetwork(nn.Module):
    """Inception conv groups + two-branch FC layers joined by the connecting layer."""

    def __init__(self, card: ModelCard, fc_dim: int = 512, connect_dim: int = 256) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(card.channels, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            InceptionGroup(64, (32, 64, 32)),
            InceptionGroup(128, (64, 128, 64)),
            InceptionGroup(256, (96, 192, 96)),
            nn.Flatten(),
        )
        height, width = card.input_size
        trunk_dim = 384 * (height // 16) * (width // 16)
        self.fc1 = nn.Sequential(nn.Dropout(0.5), nn.Linear(trunk_dim, 2 * fc_dim), nn.ReLU(inplace=True))
        self.fc2_2 = nn.Sequential(nn.Linear(2 * fc_dim, fc_dim), nn.ReLU(inplace=True))  # EC branch
        self.fc2_3 = nn.Sequential(nn.Linear(2 * fc_dim, fc_dim), nn.ReLU(inplace=True))  # ML branch
        self.connect = nn.Linear(2 * fc_dim, connect_dim)  # FC4 = P^T [FC2-2; FC2-3]
        self.metric = nn.Sequential(nn.ReLU(inplace=True), nn.Linear(connect_dim, METRIC_DIM))
        self.classifier = nn.Linear(fc_dim, card.num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (EC-branch logits, ML-branch embedding f)."""
        shared = self.fc1(self.trunk(x))
        ec, ml = self.fc2_2(shared), self.fc2_3(shared)
        return self.classifier(ec), self.metric(self.connect(torch.cat([ec, ml], dim=1)))


@contextmanager
def _running_statistics_kept(module: nn.Module) -> Iterator[None]:
    """Training-mode BatchNorm layers of `module` normalise by the batch but leave their running statistics as
    they are (momentum 0 while inside)."""
    norms = [layer for layer in module.modules() if isinstance(layer, nn.modules.batchnorm._BatchNorm)]
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0
    try:
        yield
    finally:
        for layer, momentum in zip(norms, momenta, strict=True):
            layer.momentum = momentum


class IDFERM(FerModel):
    """HNG (generator + discriminator) and the RML network with its class centers and quadratic distance H."""

    def __init__(self, card: ModelCard) -> None:
        super().__init__()
        self.card = card
        self.generator = HardNegativeGenerator(card.channels)
        self.discriminator = Discriminator(card.channels)
        self.rml = RMLNetwork(card)
        self.distance = QuadraticDistance(METRIC_DIM)
        self.register_buffer("centers", torch.zeros(card.num_classes, METRIC_DIM))

    def center_distance(self, f: torch.Tensor) -> torch.Tensor:
        """(N, C): H(f_i, C_k) for every class center, on L2-normalised f and C_k (so H stays bounded)."""
        n, c = f.shape[0], self.centers.shape[0]
        f, centers = F.normalize(f, dim=-1), F.normalize(self.centers, dim=-1)
        return self.distance(f.unsqueeze(1).expand(n, c, -1), centers.unsqueeze(0).expand(n, c, -1))

    def forward(self, x: torch.Tensor) -> IDFERMOutput:
        reference, reference_input = self._reference(x)
        if self.training:  # queries and references each normalised by their own batch; the running statistics,
            logits, f = self.rml(x)  # which normalise at test time, are the queries' (the faces being classified)
            with _running_statistics_kept(self.rml):
                _, f_ref = self.rml(reference_input)
        else:  # running statistics: one pass over both gives the same outputs in less time
            logits, both = self.rml(torch.cat([x, reference_input]))
            logits, (f, f_ref) = logits[: len(x)], both.split(len(x))
        return self._output(logits, f, reference, f_ref)

    def infer(self, x: torch.Tensor) -> IDFERMOutput:
        """`FerModel.infer` without the mirror image's unused outputs: its logits come from the query alone, so
        the generator runs on `x` only and the RML network takes `x`, its mirror image and the reference in one
        batch (the same outputs as `FerModel.infer`, in about two thirds of the time)."""
        if self.training or not self.card.flip_average:
            return super().infer(x)
        n = len(x)
        reference, reference_input = self._reference(x)
        logits, f = self.rml(torch.cat([x, x.flip(-1), reference_input]))
        return self._output((logits[:n] + logits[n : 2 * n]) / 2, f[:n], reference, f[2 * n :])

    def _reference(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The generated reference of `x` (normalised input) as a [0, 1] image and as normalised input."""
        mean, std = self.card.mean[0], self.card.std[0]
        reference = self.generator(x * std + mean)
        return reference, (reference - mean) / std

    def _output(
        self, logits: torch.Tensor, f: torch.Tensor, reference: torch.Tensor, f_ref: torch.Tensor
    ) -> IDFERMOutput:
        return IDFERMOutput(
            logits=logits,
            embedding=f,
            neutral=reference,
            reference_embedding=f_ref,
            center_distance=self.center_distance(f),
            reference_center_distance=self.center_distance(f_ref),
        )


def _create_idferm(card: ModelCard, **kwargs) -> IDFERM:
    return IDFERM(card, **kwargs)


_NOTES = (
    "64x64 grayscale with histogram equalisation as in the paper (no 60x60 crop at test time: the full 64x64 "
    "face is used). The HNG encoder follows a DCGAN-style layout because the paper defers it to its ref. [7]; "
    "the decoder ends in a sigmoid so the reference is a [0, 1] image. The pretrained VGG-Face (perceptual loss) "
    "and Light CNN (identity loss) are replaced by networks trained in this project (see the model card). The "
    "learned distance H compares L2-normalised embeddings and centers: on raw embeddings H is unbounded, and RML "
    "training with it diverged here (loss growing past 100 within half an epoch, no expression learned)."
)

IDFERM_CARD = ModelCard(
    name="idferm",
    title="IDFERM (Hard Negative Generation + Radial Metric Learning)",
    paper="Liu, Vijaya Kumar, Jia & You, Hard negative generation for identity-disentangled facial expression "
    "recognition, Pattern Recognition 88, 2019",
    url="https://doi.org/10.1016/j.patcog.2018.11.001",
    input_size=(64, 64),
    channels=1,
    mean=(0.5,),
    std=(0.25,),
    equalize="hist",
    embedding_dim=METRIC_DIM,
    flip_average=True,
    notes=_NOTES,
)


@register_model(IDFERM_CARD)
def idferm(**kwargs) -> IDFERM:
    """IDFERM: hard negative generator + discriminator + inception RML network with the learned distance H."""
    return _create_idferm(IDFERM_CARD, **kwargs)
