"""Live t-SNE: each model's reference map, fitted offline with openTSNE, and placement of new faces on it.

A reference map is a safetensors file `<model>.tsne.safetensors` (written by `python -m training export` through
`save_reference_map`), verified against the manifest like the weights, with the tensors:
    embeddings: (M, D) float32 reference embeddings (a stratified sample of FER2013 PrivateTest faces);
    coords: (M, 2) float32 their t-SNE coordinates;
    labels: (M,) int64 expression index of each reference face;
    perplexity: () float64 the perplexity of the reference affinities;
and how the map was made (data set, openTSNE parameters) as one JSON string in the header.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import numpy as np
import torch
from openTSNE import TSNEEmbedding
from openTSNE.affinity import PerplexityBasedNN
from threadpoolctl import ThreadpoolController

from fer_demo.hub import WeightsError, load_state_dict, save_state_dict

logger = logging.getLogger(__name__)

PLACEMENT_ITERATIONS = 15
"""Optimisation steps per placed point (openTSNE's `transform` uses 250): the median initialisation already puts
the point among its nearest reference neighbours, and a few steps settle it while keeping live video interactive."""

_REQUIRED = ("embeddings", "coords", "labels", "perplexity")

_THREADPOOLS = ThreadpoolController()
"""Placement runs its one-point nearest-neighbour search on one OpenMP thread: on a 2-core machine whose other core
runs the models, scikit-learn's parallel search waits for threads longer than it computes (3-4 times slower)."""


def reference_map_file(model: str) -> str:
    """File name of a model's reference map in the weight store."""
    return f"{model}.tsne.safetensors"


def save_reference_map(
    path: Path, embeddings: np.ndarray, coords: np.ndarray, labels: np.ndarray, perplexity: float, **metadata: str
) -> None:
    """Write a reference map (see the module docstring) atomically; `metadata` (how the map was made) goes into the
    header as one sorted JSON string under ``"map"``, so the same map always gives the same bytes."""
    tensors = {
        "embeddings": torch.from_numpy(np.ascontiguousarray(embeddings, np.float32)),
        "coords": torch.from_numpy(np.ascontiguousarray(coords, np.float32)),
        "labels": torch.from_numpy(np.ascontiguousarray(labels, np.int64)),
        "perplexity": torch.tensor(float(perplexity), dtype=torch.float64),
    }
    save_state_dict(tensors, path, {"map": json.dumps(metadata, sort_keys=True)} if metadata else None)


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
        """Load and verify a model's reference map from the weight store.

        Raises:
            fer_demo.hub.WeightsError: Missing, unverified or malformed file.
        """
        tensors, resolved = load_state_dict(reference_map_file(model))
        missing = [key for key in _REQUIRED if key not in tensors]
        if missing:
            raise WeightsError(f"Reference map {resolved.path} of model {model!r} lacks {missing}")
        arrays = {key: tensors[key].numpy() for key in _REQUIRED}
        return cls(arrays["embeddings"], arrays["coords"], arrays["labels"], float(arrays["perplexity"]))

    def place(self, points: np.ndarray) -> np.ndarray:
        """(N, D) embeddings -> (N, 2) positions on the map.

        The two steps of openTSNE's `TSNEEmbedding.transform` with its default parameters: `prepare_partial` (median
        of the k nearest reference points) and an optimisation of the new points against the fixed reference map,
        here with `PLACEMENT_ITERATIONS` steps and without `transform`'s empty early-exaggeration pass.
        """
        points = np.atleast_2d(np.asarray(points, np.float32))
        with self._lock, _THREADPOOLS.limit(limits=1, user_api="openmp"):
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
