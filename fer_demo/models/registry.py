"""Model registry: `register_model` builders, `create_model(name, pretrained=True)`, `list_models()`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from fer_demo.models.base import FerModel, ModelCard

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Entry:
    builder: Callable[..., FerModel]
    card: ModelCard


_REGISTRY: dict[str, _Entry] = {}


def register_model(card: ModelCard) -> Callable[[Callable[..., FerModel]], Callable[..., FerModel]]:
    """Register a builder under `card.name`; registering a name twice is an error."""

    def decorator(builder: Callable[..., FerModel]) -> Callable[..., FerModel]:
        if card.name in _REGISTRY:
            raise ValueError(f"Model {card.name!r} is already registered")
        _REGISTRY[card.name] = _Entry(builder, card)
        return builder

    return decorator


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"Unknown model {name!r}; available: {list_models()}") from None


def get_card(name: str) -> ModelCard:
    """The card of a registered model."""
    return _entry(name).card


def create_model(name: str, pretrained: bool = False, **kwargs) -> FerModel:
    """Build a registered model, optionally loading its verified trained weights.

    Args:
        name: Registry name (see `list_models()`).
        pretrained: Load verified weights through `fer_demo.hub` (HF cache, then the Hub, then bundled `weights/`).
        **kwargs: Architecture options passed to the builder (e.g. `gated=True` for DACL).

    Returns:
        The model in eval mode when pretrained, with `weights_source` set to where the weights came from and
        `temperature` to the calibration recorded with them.

    Raises:
        ValueError: Unknown name.
        fer_demo.hub.WeightsError: Weights missing, corrupt, or not matching the architecture.
    """
    entry = _entry(name)
    model = entry.builder(**kwargs)
    model.weights_source = None
    if pretrained:
        from fer_demo.hub import WeightsError, load_state_dict

        state, resolved = load_state_dict(entry.card.weight_file)
        own = model.state_dict()
        state = {key: value.to(own[key].dtype) if key in own else value for key, value in state.items()}
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise WeightsError(
                f"Weights {entry.card.weight_file} ({resolved.source.value}: {resolved.path}) do not fit model "
                f"{name!r}: {error}. Re-export them with `python -m training export {name}`."
            ) from error
        model.weights_source = resolved
        model.temperature = float(resolved.entry.get("calibration", {}).get("temperature", 1.0))
        model.eval()
        logger.info("Loaded %s from %s (%s)", entry.card.weight_file, resolved.source.value, resolved.path)
    return model
