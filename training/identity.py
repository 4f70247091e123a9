"""Small identity CNNs trained in this package, standing in for the pretrained face networks of the papers.

IDFERM's perceptual loss uses VGG-Face (conv features up to its 5th conv layer) and its identity-preserving loss
the last two layers of Light CNN; neither can be downloaded here. `IdentityNet` replaces both: a four-block CNN
(conv 3x3 + BN + ReLU + 2x2 max-pool; 32, 64, 128, 128 channels) with a 128-d embedding and a subject classifier,
trained to recognise the subjects of a face set (flip and similarity-warp augmentation).

- perceptual features: block 3 before pooling (128 x 16 x 16 for a 64x64 face), a quarter of the input
  resolution like VGG-Face's 5th conv layer (conv3_1);
- identity layers: the last conv block's output (128 x 4 x 4) and the 128-d embedding, the last two layers before
  the classifier (Light CNN: its last conv block and its 256-d feature layer);
- embedding: cosine-compared for rank-1 identification of generated neutral faces (`training.neutral_eval`).

Inputs are 64x64 gray faces in [0, 1] after the model card's equalisation (the generators' domain).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fer_demo.hub import WeightsError, sha256_file
from training.augment import AugmentConfig, random_similarity
from training.checkpoint import load_checkpoint, save_tensors, write_json

logger = logging.getLogger(__name__)

CHANNELS = (32, 64, 128, 128)
EMBEDDING_DIM = 128
AUGMENT = AugmentConfig(flip=True, rotation=10.0, scale=0.1, translate=0.08)
"""Default augmentation of the identity networks' training faces."""


@dataclass(frozen=True)
class IdentityFeatures:
    """Activations of `IdentityNet` for a batch.

    Attributes:
        perceptual: (N, 128, H/4, W/4) block-3 features (perceptual loss).
        identity: The last conv block's output and the embedding (identity-preserving loss).
        embedding: (N, 128) identity embedding.
        logits: (N, S) subject scores of the training subjects.
    """

    perceptual: torch.Tensor
    identity: tuple[torch.Tensor, torch.Tensor]
    embedding: torch.Tensor
    logits: torch.Tensor


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class IdentityNet(nn.Module):
    """Four conv blocks, a 128-d embedding and a subject classifier (see the module docstring)."""

    def __init__(self, num_subjects: int, input_size: int = 64) -> None:
        super().__init__()
        self.input_size = input_size
        widths = (1, *CHANNELS)
        self.blocks = nn.ModuleList(_block(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.pool = nn.MaxPool2d(2)
        side = input_size // 2 ** len(CHANNELS)
        self.embed = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(CHANNELS[-1] * side * side, EMBEDDING_DIM))
        self.classifier = nn.Linear(EMBEDDING_DIM, num_subjects)

    def forward(self, images: torch.Tensor) -> IdentityFeatures:
        x = (images - 0.5) / 0.25
        perceptual = None
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index == 2:
                perceptual = x
            x = self.pool(x)
        embedding = self.embed(x)
        return IdentityFeatures(perceptual, (x, embedding), embedding, self.classifier(embedding))


def freeze(network: nn.Module) -> nn.Module:
    """Eval mode and no parameter gradients (a fixed loss or evaluation network)."""
    network.eval()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network


def train_identity(
    images: torch.Tensor,
    subjects: np.ndarray,
    *,
    epochs: int = 40,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 5e-4,
    augment: AugmentConfig = AUGMENT,
    seed: int = 0,
) -> IdentityNet:
    """Train an `IdentityNet` to classify `subjects` (Adam, cosine learning-rate decay); returned frozen.

    Args:
        images: (N, 1, 64, 64) faces in [0, 1].
        subjects: (N,) subject ids (any integers).
        epochs: Passes over the faces.
        batch_size: Faces per step.
        lr: Adam learning rate at the start.
        weight_decay: Adam weight decay.
        augment: Random flip and similarity warp per face.
        seed: Seed of the initialisation, the batch order and the warps.
    """
    torch.manual_seed(seed)
    _, targets = np.unique(subjects, return_inverse=True)
    targets = torch.as_tensor(targets, dtype=torch.long)
    network = IdentityNet(int(targets.max()) + 1, images.shape[-1])
    optimizer = torch.optim.Adam(network.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(len(targets) // batch_size, 1)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    network.train()
    for epoch in range(epochs):
        order = torch.randperm(len(targets), generator=generator)
        loss_sum, correct = 0.0, 0
        for step in range(steps_per_epoch):
            batch = order[step * batch_size : (step + 1) * batch_size]
            logits = network(random_similarity(images[batch], augment, generator)).logits
            loss = F.cross_entropy(logits, targets[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.item()
            correct += int((logits.argmax(1) == targets[batch]).sum())
        if (epoch + 1) % 10 == 0 or epoch + 1 == epochs:
            logger.info(
                "identity net epoch %d/%d: loss %.3f, train accuracy %.3f",
                epoch + 1,
                epochs,
                loss_sum / steps_per_epoch,
                correct / (steps_per_epoch * batch_size),
            )
    return freeze(network)


def save_identity(network: IdentityNet, folder: Path, stem: str, info: dict[str, Any]) -> None:
    """Write ``<folder>/<stem>.{safetensors,json}``; the JSON records the number of subjects and the SHA-256 of the
    tensors file."""
    path = Path(folder) / f"{stem}.safetensors"
    save_tensors(network.state_dict(), path)
    shape = {"num_subjects": network.classifier.out_features, "input_size": network.input_size}
    write_json({**info, **shape, "sha256": sha256_file(path)}, path.with_suffix(".json"))


def load_identity(folder: Path, stem: str) -> IdentityNet:
    """Inverse of `save_identity`; the network comes back frozen.

    Raises:
        fer_demo.hub.WeightsError: The tensors file differs from the SHA-256 its JSON records.
    """
    tensors, info = load_checkpoint(folder, stem)
    path = Path(folder) / f"{stem}.safetensors"
    if "sha256" in info and sha256_file(path) != info["sha256"]:
        raise WeightsError(f"{path} does not match the SHA-256 in {path.with_suffix('.json').name}")
    network = IdentityNet(info["num_subjects"], info["input_size"])
    network.load_state_dict(tensors, strict=True)
    return freeze(network)


@torch.no_grad()
def embed(network: IdentityNet, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """L2-normalised identity embeddings of [0, 1] faces (for cosine comparison)."""
    network.eval()
    parts = [network(images[start : start + batch_size]).embedding for start in range(0, len(images), batch_size)]
    return F.normalize(torch.cat(parts), dim=1).numpy()
