"""Softmax baseline: the DACL network trained with the softmax loss only (DACL with lambda = 0).

It serves as the reference of the identity-leakage probe: same backbone, same data, no center loss.
"""

from __future__ import annotations

from typing import Any

import torch

from training.methods.dacl import DACLRecipe


class BaselineRecipe(DACLRecipe):
    """ResNet-18 + softmax loss; the sparse center loss is computed with weight 0 (logged, not trained)."""

    def __init__(self, config: dict[str, Any], device: torch.device | str = "cpu") -> None:
        super().__init__(config, device)
        self.lam = 0.0
