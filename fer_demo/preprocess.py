"""Per-model input transforms, driven by each model's card (size, channels, equalisation, mean/std)."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from fer_demo.models.base import ModelCard

_CLAHE = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 4))


def to_gray(faces: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) RGB or (N, H, W) gray uint8 -> (N, H, W) gray uint8."""
    if faces.ndim == 3:
        return faces
    return np.stack([cv2.cvtColor(face, cv2.COLOR_RGB2GRAY) for face in faces])


def fit_to_card(faces: np.ndarray, card: ModelCard) -> np.ndarray:
    """Centre-crop square faces to the card's aspect ratio and resize them to its input size.

    Args:
        faces: (N, H, W) or (N, H, W, 3) uint8 face crops.
        card: The target model's card.

    Returns:
        (N, h, w[, 3]) uint8 at the card's input size, still unnormalised.
    """
    height, width = card.input_size
    _, rows, cols = faces.shape[:3]
    keep = min(cols, round(rows * width / height))
    left = (cols - keep) // 2
    cropped = faces[:, :, left : left + keep]
    interpolation = cv2.INTER_AREA if rows > height else cv2.INTER_LINEAR
    return np.stack([cv2.resize(face, (width, height), interpolation=interpolation) for face in cropped])


def equalize(gray: np.ndarray, method: str | None) -> np.ndarray:
    """Apply the card's contrast normalisation to (N, H, W) uint8 gray faces."""
    if method is None:
        return gray
    if method == "hist":
        return np.stack([cv2.equalizeHist(face) for face in gray])
    if method == "clahe":
        return np.stack([_CLAHE.apply(face) for face in gray])
    raise ValueError(f"Unknown equalisation {method!r}; expected 'hist', 'clahe' or None")


def normalize(faces: np.ndarray, card: ModelCard) -> torch.Tensor:
    """(N, h, w) or (N, h, w, 3) uint8 at the card size -> (N, C, h, w) float tensor scaled by mean/std."""
    array = faces.astype(np.float32) / 255.0
    array = array[:, None] if array.ndim == 3 else array.transpose(0, 3, 1, 2)
    if array.shape[1] != card.channels:
        array = np.repeat(array, card.channels, axis=1)
    mean = np.asarray(card.mean, np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(card.std, np.float32).reshape(1, -1, 1, 1)
    return torch.from_numpy(np.ascontiguousarray((array - mean) / std))


def prepare(faces: np.ndarray, card: ModelCard) -> torch.Tensor:
    """Face crops -> the model's input tensor: colour conversion, size, equalisation, normalisation.

    Args:
        faces: (N, H, W) gray or (N, H, W, 3) RGB uint8 face crops (aligned crops or data-set faces).
        card: The target model's card.

    Returns:
        (N, C, h, w) float32 tensor.
    """
    faces = np.asarray(faces)
    if faces.dtype != np.uint8 or faces.ndim not in (3, 4) or (faces.ndim == 4 and faces.shape[-1] != 3):
        raise ValueError(f"Expected (N, H, W) or (N, H, W, 3) uint8 faces, got {faces.dtype} {faces.shape}")
    if not card.color:
        faces = to_gray(faces)
    faces = fit_to_card(faces, card)
    if faces.ndim == 3:
        faces = equalize(faces, card.equalize)
    return normalize(faces, card)
