"""How the models' probabilities are combined into one answer: a weighted log-linear pool.

`Predictor.ensemble` applies it with its weights; `training.calibrate` fits the weights and measures this same
function, so the recorded accuracy is that of the ensemble the app shows.
"""

from __future__ import annotations

import numpy as np


def log_linear_pool(probs: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray | None:
    """softmax(sum_m w_m log p_m) over the last axis.

    Args:
        probs: model name -> (..., C) probabilities.
        weights: model name -> weight, for every model in `probs`.

    Returns:
        (..., C) float32 probabilities, or None when `probs` is empty.
    """
    if not probs:
        return None
    scores = sum(weights[name] * np.log(np.maximum(p, 1e-12)) for name, p in probs.items())
    scores = scores - scores.max(axis=-1, keepdims=True)
    pooled = np.exp(scores)
    return (pooled / pooled.sum(axis=-1, keepdims=True)).astype(np.float32)
