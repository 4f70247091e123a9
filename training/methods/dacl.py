"""DACL recipe (dissertation ch. 4, Algorithm 3): softmax loss + lambda * sparse center loss.

Per batch: forward gives the deep features x, the attention weights a and the logits; L = L_S + lambda * L_SC
(Eq. 4.11) is back-propagated to the CNN, the classifier and the attention network (Eqs. 4.12-4.13); the
centers move by the attention-weighted moving average of Eq. 4.14 with rate alpha; then the parameters step.
The centers live in the model's ``centers`` buffer, so they are checkpointed and exported with the weights.
g-DACL is the same recipe with ``model_kwargs: {"gated": true}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from training.losses import softmax_loss, sparse_center_loss, update_centers
from training.methods.base import Recipe, resized_linear, resized_rows


def _he_centers(num_classes: int, dim: int) -> torch.Tensor:
    centers = torch.empty(num_classes, dim)
    nn.init.kaiming_normal_(centers)
    return centers


class DACLRecipe(Recipe):
    """DACL: ResNet-18 + attention network, softmax loss + lambda * sparse center loss (lambda 0.01, alpha 0.5)."""

    def __init__(self, config: dict[str, Any], device: torch.device | str = "cpu") -> None:
        super().__init__(config, device)
        self.lam = float(config["loss"]["lambda"])
        self.alpha = float(config["loss"]["alpha"])
        with torch.no_grad():
            self.model.centers.copy_(_he_centers(*self.model.centers.shape))

    @property
    def num_classes(self) -> int:
        return self.model.fc.out_features

    def training_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        out = self.network(x)
        softmax = softmax_loss(out.logits, y)
        sparse_center = sparse_center_loss(out.embedding, y, self.model.centers, out.attention)
        total = softmax + self.lam * sparse_center
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        update_centers(self.model.centers, out.embedding.detach(), y, self.alpha, out.attention.detach())
        self.optimizer.step()
        accuracy = (out.logits.argmax(1) == y).float().mean()
        return {
            "loss": total.item(),
            "softmax": softmax.item(),
            "sparse_center": sparse_center.item(),
            "accuracy": accuracy.item(),
        }

    def replace_head(self, rows: Sequence[int | None]) -> None:
        self.model.fc = resized_linear(self.model.fc, rows)
        fresh = _he_centers(len(rows), self.model.centers.shape[1]).to(self.device)
        self.model.centers = resized_rows(self.model.centers, rows, fresh)
        self.reset_optimizer()
