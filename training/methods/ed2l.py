"""ED²L recipe (Bai et al., PRICAI 2019, Sect. 2.2-2.4): L = lambda_t * l_t + lambda_p * (l_a + l_p).

Per batch, one forward and one backward of L, then one optimizer step, with each term's gradient routed as the
paper prescribes:

- l_t (AM-softmax on f_t): distilling branch, its classifier and the base net;
- l_a (the dispeller's cross-entropy on f_p): the expression dispeller only (f_p is detached);
- l_p (Eq. 5, uniform target): the dispelling branch and the base net only (the dispeller is frozen in it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from training.losses import am_softmax_loss, dispeller_loss, dispelling_loss
from training.methods.base import Recipe, resized_linear, resized_rows


class ED2LRecipe(Recipe):
    """ED²L: base net + distilling branch (AM-softmax, m 0.35, s 30) + adversarial dispelling branch."""

    def __init__(self, config: dict[str, Any], device: torch.device | str = "cpu") -> None:
        super().__init__(config, device)
        loss = config["loss"]
        self.margin = float(loss["margin"])
        self.lambda_t = float(loss["lambda_t"])
        self.lambda_p = float(loss["lambda_p"])

    @property
    def num_classes(self) -> int:
        return self.model.classifier.weight.shape[0]

    def training_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        out = self.network(x)
        classifier = self.model.classifier
        distilling = am_softmax_loss(out.logits / classifier.scale, y, self.margin, classifier.scale)
        adversary = dispeller_loss(self.model.dispeller, out.dispel_embedding, y)
        dispelling = dispelling_loss(self.model.dispeller, out.dispel_embedding)
        total = self.lambda_t * distilling + self.lambda_p * (adversary + dispelling)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        accuracy = (out.logits.argmax(1) == y).float().mean()
        dispeller_accuracy = (out.dispel_logits.argmax(1) == y).float().mean()
        return {
            "loss": total.item(),
            "am_softmax": distilling.item(),
            "dispeller": adversary.item(),
            "dispelling": dispelling.item(),
            "accuracy": accuracy.item(),
            "dispeller_accuracy": dispeller_accuracy.item(),
        }

    def replace_head(self, rows: Sequence[int | None]) -> None:
        classifier, dispeller = self.model.classifier, self.model.dispeller
        fresh = torch.empty(len(rows), classifier.weight.shape[1], device=self.device)
        nn.init.xavier_uniform_(fresh)
        classifier.weight = nn.Parameter(resized_rows(classifier.weight.detach(), rows, fresh))
        self.model.dispeller = resized_linear(dispeller, rows)
        self.reset_optimizer()
