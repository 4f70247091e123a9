"""What every model shares: its card (input spec and provenance) and its typed forward output."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch
from torch import nn

from fer_demo.labels import EXPRESSIONS


@dataclass(frozen=True, slots=True)
class ModelCard:
    """Everything the predictor and the training recipes need to know about a model.

    Attributes:
        name: Registry name, also the stem of the weight file.
        title: Human-readable method name.
        paper: Citation of the paper the architecture follows.
        url: Link to the paper.
        input_size: (height, width) of the network input in pixels.
        channels: Number of input channels the network consumes (1 or 3).
        mean: Per-channel mean subtracted after scaling pixels to [0, 1].
        std: Per-channel standard deviation divided after subtracting the mean.
        equalize: Contrast normalisation applied to the grayscale face before scaling: "clahe", "hist" or None.
        embedding_dim: Size of the expression embedding the model returns.
        color: Whether the network was trained on colour; gray-trained 3-channel models see gray replicated.
        flip_average: At test time (`FerModel.infer`) average the logits over the face and its mirror image.
        classes: Output class order.
        license: Licence of the code and of the weights trained by this project.
        notes: Where the implementation departs from the paper, and why.
    """

    name: str
    title: str
    paper: str
    url: str
    input_size: tuple[int, int]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    equalize: str | None
    embedding_dim: int
    color: bool = False
    flip_average: bool = False
    classes: tuple[str, ...] = EXPRESSIONS
    license: str = "MIT (code); weights trained on research-only data, non-commercial use"
    notes: str = ""

    @property
    def weight_file(self) -> str:
        """File name of the trained weights in the weight store."""
        return f"{self.name}.safetensors"

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class ModelOutput:
    """The forward result every model returns; method-specific outputs subclass it.

    Attributes:
        logits: (N, C) class scores in the card's class order.
        embedding: (N, D) expression embedding (used for t-SNE and the identity-leakage probe).
        neutral: (N, 1, H, W) generated neutral reference in [0, 1], for generative methods.
        heatmaps: name -> (N, H, W) maps in [0, 1] at the input resolution.
        attention: (N, D) attention weights over the embedding elements, in (0, 1].
    """

    logits: torch.Tensor
    embedding: torch.Tensor
    neutral: torch.Tensor | None = None
    heatmaps: dict[str, torch.Tensor] = field(default_factory=dict)
    attention: torch.Tensor | None = None


class FerModel(nn.Module):
    """Base class of the four methods: a module with a card whose forward returns a `ModelOutput`.

    `temperature` divides the logits before the softmax (`probabilities`). It is 1 for a fresh model; trained
    weights bring the value fitted on FER2013 PublicTest (temperature scaling, recorded in the weights manifest),
    which calibrates the probabilities without changing any predicted class.
    """

    card: ModelCard
    temperature: float = 1.0

    def forward(self, x: torch.Tensor) -> ModelOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def infer(self, x: torch.Tensor) -> ModelOutput:
        """The test-time forward pass: `forward`, with the logits averaged over `x` and its mirror image when the
        card asks for it (`ModelCard.flip_average`). Every other output is that of `x` as given."""
        if not self.card.flip_average:
            return self(x)
        both = self(torch.cat([x, x.flip(-1)]))
        return replace(_first_rows(both, len(x)), logits=(both.logits[: len(x)] + both.logits[len(x) :]) / 2)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities: softmax(logits / temperature)."""
        return (logits.float() / self.temperature).softmax(-1)


def _first_rows(output: ModelOutput, rows: int) -> ModelOutput:
    """`output` restricted to its first `rows` samples (every tensor field, and every tensor of a dict field)."""
    kept = {}
    for item in fields(output):
        value = getattr(output, item.name)
        if isinstance(value, torch.Tensor):
            value = value[:rows]
        elif isinstance(value, dict):
            value = {key: tensor[:rows] for key, tensor in value.items()}
        kept[item.name] = value
    return replace(output, **kept)


def normalized_heatmap(features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Sum feature maps over channels, min-max normalise each map to [0, 1] and resize it to `size`.

    Args:
        features: (N, C, h, w) activations.
        size: (H, W) output size.

    Returns:
        (N, H, W) heat-maps.
    """
    summed = features.sum(dim=1, keepdim=True)
    flat = summed.flatten(1)
    low = flat.min(dim=1).values.view(-1, 1, 1, 1)
    high = flat.max(dim=1).values.view(-1, 1, 1, 1)
    scaled = (summed - low) / (high - low).clamp_min(1e-8)
    return nn.functional.interpolate(scaled, size=size, mode="bilinear", align_corners=False).squeeze(1)
