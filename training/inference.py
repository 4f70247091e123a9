"""Batched inference of a model on prepared inputs (the evaluation path)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from fer_demo.models import FerModel, ModelOutput
from training.data import prepare_in_chunks

DEFAULT_FIELDS = ("logits", "embedding", "dispel_embedding")


@torch.no_grad()
def forward_batches(
    model: FerModel, inputs: torch.Tensor, batch_size: int = 256, fields: tuple[str, ...] | None = DEFAULT_FIELDS
) -> dict[str, np.ndarray]:
    """Run `model` in eval mode (`FerModel.infer`, as the app does) over prepared inputs and gather its outputs.

    Args:
        model: Any `FerModel`.
        inputs: (N, C, H, W) tensors from `fer_demo.preprocess.prepare`.
        batch_size: Faces per forward pass.
        fields: Output fields to gather, where the model has them; None gathers every per-face vector (each
            (N, D) tensor field of the model's output, e.g. GCNet's query and reference codes).

    Returns:
        Field name -> float32 array; by default "logits" (N, C), "embedding" (N, D) and "dispel_embedding" where
        the model has one.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    gathered: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(inputs), batch_size):
        out: ModelOutput = model.infer(inputs[start : start + batch_size].to(device))
        for item in dataclasses.fields(out):
            value = getattr(out, item.name)
            wanted = item.name in fields if fields is not None else isinstance(value, torch.Tensor) and value.ndim == 2
            if wanted and value is not None:
                gathered.setdefault(item.name, []).append(value.float().cpu().numpy())
    model.train(was_training)
    return {key: np.concatenate(values) for key, values in gathered.items()}


def predict_faces(
    model: FerModel, images: np.ndarray, batch_size: int = 256, fields: tuple[str, ...] | None = DEFAULT_FIELDS
) -> dict[str, np.ndarray]:
    """`forward_batches` on raw uint8 faces, fed through `fer_demo.preprocess.prepare` exactly like the app."""
    return forward_batches(model, prepare_in_chunks(images, model.card), batch_size, fields)
