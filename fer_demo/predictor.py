"""`Predictor`: detect and align every face once, run every loaded model on it, return typed results.

The one entry point of the UI, the CLI and the benchmarks.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from fer_demo.ensemble import log_linear_pool
from fer_demo.faces import Face, FaceDetector, load_image
from fer_demo.hub import ResolvedWeights, WeightsError, load_manifest
from fer_demo.labels import EXPRESSIONS
from fer_demo.models import FerModel, create_model, list_models
from fer_demo.preprocess import prepare

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, eq=False)
class ModelResult:
    """One model's answer for one face.

    Attributes:
        model: Registry name of the model.
        probs: (7,) calibrated probabilities (`FerModel.probabilities`) in `EXPRESSIONS` order.
        embedding: (D,) expression embedding.
        neutral: (H, W) uint8 generated neutral reference, for generative methods.
        heatmaps: name -> (H, W) float32 map in [0, 1] at the model's input size.
        attention: (512,) attention weights in (0, 1], for DACL.
        center: (D,) the model's learned center of the predicted class, for models that keep class centers.
    """

    model: str
    probs: np.ndarray
    embedding: np.ndarray
    neutral: np.ndarray | None = None
    heatmaps: dict[str, np.ndarray] = field(default_factory=dict)
    attention: np.ndarray | None = None
    center: np.ndarray | None = None

    @property
    def label(self) -> str:
        """The most probable expression."""
        return EXPRESSIONS[int(self.probs.argmax())]

    @property
    def confidence(self) -> float:
        return float(self.probs.max())

    def __repr__(self) -> str:
        return f"ModelResult({self.model}: {self.label} {self.confidence:.2f})"


@dataclass(frozen=True, slots=True, eq=False)
class FaceResult:
    """Every model's answer for one detected face.

    Attributes:
        face: The detection (box, key points, aligned crop, alignment matrix).
        results: model name -> `ModelResult`.
        ensemble: (7,) the models' probabilities combined by `Predictor.ensemble`, or None when no model ran.
    """

    face: Face
    results: dict[str, ModelResult]
    ensemble: np.ndarray | None = None

    @property
    def box(self) -> np.ndarray:
        """(4,) x0, y0, x1, y1 in image pixels."""
        return self.face.box

    def __repr__(self) -> str:
        box = ", ".join(f"{v:.0f}" for v in self.box)
        answers = ", ".join(f"{name}={result.label}" for name, result in self.results.items())
        return f"FaceResult(box=[{box}], {answers})"


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


class Predictor:
    """Face detector plus a set of trained models.

    Build it with `Predictor.load()`; `unavailable` names the models that could not be loaded and why, and
    `sources` says where each loaded model's weights came from (hub, cache or bundled).

    The models of a frame run side by side on a small thread pool (one small face batch keeps a core's worth of
    torch threads only partly busy), the slowest model of the previous frame first.

    `ensemble_weights` (model -> weight) combine the models' calibrated probabilities (see `ensemble`); `load` takes
    them from the manifest when they were fitted for exactly the loaded weight files.
    """

    def __init__(
        self,
        models: dict[str, FerModel],
        detector: FaceDetector | None = None,
        unavailable: dict[str, str] | None = None,
        ensemble_weights: dict[str, float] | None = None,
    ) -> None:
        self.models = models
        self.detector = detector or FaceDetector()
        self.unavailable = dict(unavailable or {})
        self.ensemble_weights = (
            dict(ensemble_weights) if ensemble_weights else {name: 1 / len(models) for name in models}
        )
        for model in models.values():
            # NHWC convolutions are faster on the CPU for these small inputs; outputs agree to float32 rounding
            model.eval().to(memory_format=torch.channels_last)
        self._seconds: dict[str, float] = {}
        workers = max(1, min(len(models), os.cpu_count() or 1))
        self._workers = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fer-demo-model")

    @classmethod
    def load(cls, names: Sequence[str] | None = None, detector: FaceDetector | None = None) -> Predictor:
        """Load trained models by name.

        Args:
            names: Models to load. None loads every registered model that has trained weights and records the
                others in `unavailable`; explicitly named models must load.
            detector: Face detector to use (a default `FaceDetector` otherwise).

        Raises:
            ValueError: An unknown model name.
            fer_demo.hub.WeightsError: An explicitly named model has no usable weights.
        """
        models: dict[str, FerModel] = {}
        unavailable: dict[str, str] = {}
        for name in names if names is not None else list_models():
            try:
                models[name] = create_model(name, pretrained=True)
            except WeightsError as error:
                if names is not None:
                    raise
                logger.warning("Model %s unavailable: %s", name, error)
                unavailable[name] = str(error)
        return cls(models, detector, unavailable, _fitted_ensemble_weights(models))

    def ensemble(self, probs: dict[str, np.ndarray]) -> np.ndarray | None:
        """Log-linear pool of the models' probabilities: softmax(sum_m w_m log p_m) over the last axis.

        With the weights fitted on FER2013 PublicTest (`python -m training calibrate`) the pool is the ensemble that
        predicts those labels best; without them every model weighs 1/M (the normalised geometric mean).

        Args:
            probs: model name -> (..., 7) probabilities, for models of this predictor.

        Returns:
            (..., 7) probabilities, or None when `probs` is empty.
        """
        return log_linear_pool(probs, self.ensemble_weights)

    @property
    def sources(self) -> dict[str, ResolvedWeights | None]:
        """model name -> where its weights were loaded from (None for untrained models)."""
        return {name: getattr(model, "weights_source", None) for name, model in self.models.items()}

    def __repr__(self) -> str:
        return f"Predictor(models={list(self.models)}, unavailable={list(self.unavailable)})"

    def predict(self, image) -> list[FaceResult]:
        """Detect every face in `image` and run every model on each.

        Args:
            image: A path, bytes, PIL image or array (see `fer_demo.faces.load_image`).

        Returns:
            One `FaceResult` per detected face, largest face first; [] when there is no face.

        Raises:
            fer_demo.faces.ImageError: The input is not a readable image.
        """
        faces = self.detector.detect(load_image(image))
        return self.predict_faces(faces)

    def predict_faces(self, faces: Sequence[Face]) -> list[FaceResult]:
        """Run every model on already detected and aligned faces."""
        if not faces:
            return []
        crops = np.stack([face.aligned for face in faces])
        slowest_first = sorted(self.models, key=lambda name: -self._seconds.get(name, 0.0))
        runs = self._workers.map(lambda name: self._run(name, crops), slowest_first)
        answers = dict(zip(slowest_first, runs, strict=True))
        per_model = {name: answers[name] for name in self.models}
        ensemble = self.ensemble(
            {name: np.stack([result.probs for result in results]) for name, results in per_model.items()}
        )
        return [
            FaceResult(
                face,
                {name: results[i] for name, results in per_model.items()},
                None if ensemble is None else ensemble[i],
            )
            for i, face in enumerate(faces)
        ]

    @torch.inference_mode()
    def _run(self, name: str, crops: np.ndarray) -> list[ModelResult]:
        model = self.models[name]
        started = time.perf_counter()
        output = model.infer(prepare(crops, model.card))
        self._seconds[name] = time.perf_counter() - started
        probs = model.probabilities(output.logits).numpy()
        embedding = output.embedding.float().numpy()
        neutral = None if output.neutral is None else _to_uint8(output.neutral[:, 0])
        heatmaps = {key: value.float().numpy() for key, value in output.heatmaps.items()}
        attention = None if output.attention is None else output.attention.float().numpy()
        centers = getattr(model, "centers", None)
        centers = None if centers is None else centers.float().numpy()
        return [
            ModelResult(
                model=name,
                probs=probs[i],
                embedding=embedding[i],
                neutral=None if neutral is None else neutral[i],
                heatmaps={key: value[i] for key, value in heatmaps.items()},
                attention=None if attention is None else attention[i],
                center=None if centers is None else centers[int(probs[i].argmax())],
            )
            for i in range(len(crops))
        ]

    @torch.inference_mode()
    def predict_crops(self, crops: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
        """Calibrated class probabilities for face crops that need no detection (e.g. data-set faces).

        Args:
            crops: (N, H, W) gray or (N, H, W, 3) RGB uint8 faces.
            batch_size: Faces per forward pass.

        Returns:
            model name -> (N, 7) probabilities in `EXPRESSIONS` order.
        """
        crops = np.asarray(crops)
        out: dict[str, np.ndarray] = {}
        for name, model in self.models.items():
            chunks = [
                model.probabilities(model.infer(prepare(crops[start : start + batch_size], model.card)).logits).numpy()
                for start in range(0, len(crops), batch_size)
            ]
            out[name] = np.concatenate(chunks) if chunks else np.zeros((0, len(EXPRESSIONS)), np.float32)
        return out


def _fitted_ensemble_weights(models: dict[str, FerModel]) -> dict[str, float] | None:
    """The manifest's ensemble weights if they were fitted for exactly these models' weight files, else None."""
    try:
        ensemble = load_manifest().get("ensemble")
    except WeightsError:
        return None
    if not ensemble or not models:
        return None
    loaded = {name: getattr(model.weights_source, "sha256", None) for name, model in models.items()}
    if ensemble["sha256"] != loaded:
        logger.info(
            "Ensemble weights in the manifest were fitted for %s, not the loaded %s: using the geometric mean",
            sorted(ensemble["sha256"]),
            sorted(loaded),
        )
        return None
    return {name: float(weight) for name, weight in ensemble["weights"].items()}
