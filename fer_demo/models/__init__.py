"""The four methods, one module each, built by name through the registry."""

from fer_demo.models import dacl, ed2l, gcnet, idferm  # noqa: F401  (register the builders)
from fer_demo.models.base import FerModel, ModelCard, ModelOutput
from fer_demo.models.registry import create_model, get_card, list_models, register_model

__all__ = ["FerModel", "ModelCard", "ModelOutput", "create_model", "get_card", "list_models", "register_model"]
