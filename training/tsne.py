"""t-SNE reference maps: a fixed, stratified FER2013 PrivateTest sample embedded offline with openTSNE.

`build_reference_map` fits the map; `fer_demo.embedding.save_reference_map` writes it as
``<model>.tsne.safetensors`` (the format is documented there) and `fer_demo.embedding.ReferenceMap` places new
faces on it, so the app and this package share one reader and one writer.
"""

from __future__ import annotations

import numpy as np
from openTSNE import TSNE

PERPLEXITY = 30.0
PER_CLASS = 100
"""Reference faces per class (all of a class when it has fewer, e.g. the 55 disgust faces)."""


def reference_sample(labels: np.ndarray, per_class: int = PER_CLASS, seed: int = 0) -> np.ndarray:
    """Sorted indices of a stratified sample: `per_class` random rows of each class (all rows when fewer)."""
    rng = np.random.default_rng(seed)
    picked = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        picked.append(rows if len(rows) <= per_class else rng.choice(rows, per_class, replace=False))
    return np.sort(np.concatenate(picked))


def build_reference_map(
    embeddings: np.ndarray, *, perplexity: float = PERPLEXITY, seed: int = 0
) -> tuple[np.ndarray, dict[str, str]]:
    """Fit t-SNE on reference embeddings.

    Args:
        embeddings: (n, D) expression embeddings of the reference faces.
        perplexity: t-SNE perplexity.
        seed: Random state of the fit.

    Returns:
        (n, 2) coordinates and the fit's parameters as header metadata.
    """
    tsne = TSNE(perplexity=perplexity, metric="euclidean", neighbors="exact", random_state=seed, n_jobs=1)
    coords = np.asarray(tsne.fit(np.asarray(embeddings, np.float32)), np.float32)
    return coords, {"metric": "euclidean", "neighbors": "exact", "random_state": str(seed), "dof": "1.0"}
