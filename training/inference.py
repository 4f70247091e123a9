"""Batched inference of a model on prepared inputs (the evaluation path)."""

from __future__ import annotations

import numpy as np
import torch

from fer_demo.models import FerModel, ModelOutput
from training.data import prepare_in_chunks


@torch.no_grad()
def forward_batches(model: FerModel, inputs: torch.Tensor, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Run `model` in eval mode (`FerModel.infer`, as the app does) over prepared inputs and gather its outputs.

    Args:
        model: Any `FerModel`.
        inputs: (N, C, H, W) tensors from `fer_demo.preprocess.prepare`.
        batch_size: Faces per forward pass.

    Returns:
        "logits" (N, C) and "embedding" (N, D) float32 arrays, plus "dispel_embedding" where the model has one.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    gathered: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(inputs), batch_size):
        out: ModelOutput = model.infer(inputs[start : start + batch_size].to(device))
        fields = {
            "logits": out.logits,
            "embedding": out.embedding,
            "dispel_embedding": getattr(out, "dispel_embedding", None),
        }
        for key, value in fields.items():
            if value is not None:
                gathered.setdefault(key, []).append(value.float().cpu().numpy())
    model.train(was_training)
    return {key: np.concatenate(values) for key, values in gathered.items()}


def predict_faces(model: FerModel, images: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    """`forward_batches` on raw uint8 faces, fed through `fer_demo.preprocess.prepare` exactly like the app."""
    return forward_batches(model, prepare_in_chunks(images, model.card), batch_size)
