"""Live t-SNE: each model's reference map, fitted offline with openTSNE, and placement of new faces on it.

A reference map file `<model>.tsne.npz` (written by `python -m training export`) holds:
    embeddings: (M, D) float reference embeddings (a stratified sample of FER2013 PrivateTest faces);
    coords: (M, 2) float their t-SNE coordinates;
    labels: (M,) int expression index of each reference face;
    perplexity: () float the perplexity of the reference affinities.
It is loaded without pickle (`allow_pickle=False`) after SHA-256 verification by `fer_demo.hub`.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
from openTSNE import TSNEEmbedding
from openTSNE.affinity import PerplexityBasedNN

from fer_demo.hub import WeightsError, resolve_weights

logger = logging.getLogger(__name__)

PLACEMENT_ITERATIONS = 15
"""Optimisation steps per placed point (openTSNE's `transform` uses 250): the median initialisation already puts
the point among its nearest reference neighbours, and a few steps settle it while keeping live video interactive."""

_REQUIRED = ("embeddings", "coords", "labels", "perplexity")


class ReferenceMap:
    """A model's t-SNE reference map, able to place new embeddings among the reference points."""

    def __init__(self, embeddings: np.ndarray, coords: np.ndarray, labels: np.ndarray, perplexity: float) -> None:
        self.labels = labels.astype(np.int64)
        affinities = PerplexityBasedNN(
            embeddings.astype(np.float32), perplexity=perplexity, method="exact", n_jobs=1, verbose=False
        )
        coords = coords.astype(np.float64)
        coords = coords - (coords.max(axis=0) + coords.min(axis=0)) / 2
        self._embedding = TSNEEmbedding(coords, affinities, negative_gradient_method="bh", n_jobs=1, verbose=False)
        self._lock = threading.Lock()

    @property
    def coords(self) -> np.ndarray:
        """(M, 2) reference coordinates."""
        return np.asarray(self._embedding)

    @classmethod
    def load(cls, model: str) -> ReferenceMap:
        """Load and verify `<model>.tsne.npz` from the weight store.

        Raises:
            fer_demo.hub.WeightsError: Missing, unverified or malformed file.
        """
        resolved = resolve_weights(f"{model}.tsne.npz")
        try:
            with np.load(resolved.path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in _REQUIRED}
        except (OSError, ValueError, KeyError) as error:
            raise WeightsError(f"Reference map {resolved.path} of model {model!r} is unreadable: {error}") from error
        return cls(arrays["embeddings"], arrays["coords"], arrays["labels"], float(arrays["perplexity"]))

    def place(self, points: np.ndarray) -> np.ndarray:
        """(N, D) embeddings -> (N, 2) positions on the map.

        The two steps of openTSNE's `TSNEEmbedding.transform` with its default parameters: `prepare_partial` (median
        of the k nearest reference points) and an optimisation of the new points against the fixed reference map,
        here with `PLACEMENT_ITERATIONS` steps and without `transform`'s empty early-exaggeration pass.
        """
        points = np.atleast_2d(np.asarray(points, np.float32))
        with self._lock:
            placed = self._embedding.prepare_partial(points, initialization="median", k=25, perplexity=5)
            placed.optimize(
                n_iter=PLACEMENT_ITERATIONS,
                learning_rate=0.1,
                exaggeration=1.5,
                momentum=0.8,
                max_grad_norm=0.25,
                inplace=True,
            )
        return np.asarray(placed)


def load_reference_maps(models: list[str]) -> dict[str, ReferenceMap]:
    """Reference maps of the given models; models without a usable map are skipped with a warning."""
    maps = {}
    for model in models:
        try:
            maps[model] = ReferenceMap.load(model)
        except WeightsError as error:
            logger.warning("No t-SNE reference map for %s: %s", model, error)
    return maps
