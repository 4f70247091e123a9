"""What every recipe shares: model, optimizer, learning rate, checkpoint tensors, head replacement."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from fer_demo.models import FerModel, create_model


def build_optimizer(parameters, settings: dict[str, Any]) -> torch.optim.Optimizer:
    """SGD or Adam from a config's ``optimizer`` entry (``name``, ``lr`` and the optimizer's own keywords)."""
    settings = dict(settings)
    name = settings.pop("name")
    if name == "sgd":
        return torch.optim.SGD(parameters, **settings)
    if name == "adam":
        return torch.optim.Adam(parameters, **settings)
    raise ValueError(f"Unknown optimizer {name!r}; expected 'sgd' or 'adam'")


def resized_rows(old: torch.Tensor, rows: Sequence[int | None], fresh: torch.Tensor) -> torch.Tensor:
    """Rows of `old` picked by `rows`; None takes the matching row of `fresh` (a freshly initialised tensor)."""
    return torch.stack([fresh[i] if row is None else old[row] for i, row in enumerate(rows)])


def resized_linear(old: nn.Linear, rows: Sequence[int | None]) -> nn.Linear:
    """A new linear layer with ``len(rows)`` outputs: output i copies ``old``'s row ``rows[i]``, or starts fresh."""
    new = nn.Linear(old.in_features, len(rows)).to(old.weight.device)
    with torch.no_grad():
        new.weight.copy_(resized_rows(old.weight, rows, new.weight))
        new.bias.copy_(resized_rows(old.bias, rows, new.bias))
    return new


class Recipe:
    """Base class of the training recipes.

    Attributes:
        config: The method config (see ``training/configs``).
        model: The unwrapped model (`fer_demo.models.create_model(config["model"])`).
        network: `model`, or its DistributedDataParallel wrapper after `distribute()`.
        optimizer: Optimizer over the model parameters.
    """

    def __init__(self, config: dict[str, Any], device: torch.device | str = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        self.model: FerModel = create_model(config["model"], **config.get("model_kwargs", {})).to(self.device)
        self.network: nn.Module = self.model
        self.optimizer = build_optimizer(self.model.parameters(), config["optimizer"])

    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    def distribute(self) -> None:
        """Wrap the model for DistributedDataParallel (call after the head is final)."""
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        self.network = DistributedDataParallel(self.model, device_ids=device_ids)

    def reset_optimizer(self, settings: dict[str, Any] | None = None) -> None:
        """Rebuild the optimizer (after a head change, or with fine-tuning settings)."""
        self.optimizer = build_optimizer(self.model.parameters(), settings or self.config["optimizer"])

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def training_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """One optimisation step on a batch; returns the logged loss terms and the batch accuracy."""
        raise NotImplementedError

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Everything a checkpoint must hold (the model state, including buffers such as DACL's centers)."""
        return dict(self.model.state_dict())

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Inverse of `state_tensors`."""
        self.model.load_state_dict(tensors, strict=True)

    def replace_head(self, rows: Sequence[int | None]) -> None:
        """Give the model a new class set; new class i starts from old class ``rows[i]`` or fresh when None."""
        raise NotImplementedError
