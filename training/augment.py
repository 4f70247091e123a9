"""Batch augmentation on prepared input tensors: random flip, rotation, scale and translation in one warp.

The training data are run through `fer_demo.preprocess.prepare` once (the exact evaluation input); each batch is
then warped by a random similarity transform. This plays the role of the papers' random crops (DACL: corner and
centre crops and their mirrors; ED²L: ten crops of the aligned face) and small affine jitter without leaving
the evaluation scale, and costs one ``grid_sample`` per batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass(frozen=True, slots=True)
class AugmentConfig:
    """Ranges of the random similarity transform.

    Attributes:
        flip: Mirror half of the faces horizontally.
        rotation: Maximum rotation in degrees (uniform in [-rotation, rotation]).
        scale: Maximum relative zoom (uniform in [1 - scale, 1 + scale]).
        translate: Maximum shift as a fraction of the image size, per axis.
    """

    flip: bool = True
    rotation: float = 10.0
    scale: float = 0.1
    translate: float = 0.1

    @classmethod
    def from_dict(cls, values: dict | None) -> AugmentConfig:
        return cls(**(values or {}))


def random_similarity(x: torch.Tensor, config: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Warp each image of a batch by its own random flip/rotation/scale/translation.

    Args:
        x: (N, C, H, W) float input tensors (already normalised; borders are replicated).
        config: Ranges of the transform.
        generator: Random generator, for reproducible epochs.

    Returns:
        (N, C, H, W) augmented batch.
    """
    n = x.shape[0]

    def uniform(bound: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator) * 2 - 1) * bound

    angle = uniform(math.radians(config.rotation))
    zoom = 1 + uniform(config.scale)
    mirror = torch.ones(n)
    if config.flip:
        mirror = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    shift_x, shift_y = uniform(2 * config.translate), uniform(2 * config.translate)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [torch.stack([cos * mirror, -sin, shift_x], 1), torch.stack([sin * mirror, cos, shift_y], 1)], 1
    ).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
