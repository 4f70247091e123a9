"""Training recipes, one per method: the losses, their update order and what a checkpoint holds.

A recipe owns the model (possibly wrapped for DistributedDataParallel) and its optimizer. `build_recipe(config)`
picks the recipe named by ``config["method"]``.
"""

from __future__ import annotations

from typing import Any

from training.methods.base import Recipe
from training.methods.baseline import BaselineRecipe
from training.methods.dacl import DACLRecipe
from training.methods.ed2l import ED2LRecipe
from training.methods.gcnet import GCNetRecipe
from training.methods.idferm import IDFERMRecipe

RECIPES: dict[str, type[Recipe]] = {
    "dacl": DACLRecipe,
    "ed2l": ED2LRecipe,
    "idferm": IDFERMRecipe,
    "gcnet": GCNetRecipe,
    "baseline": BaselineRecipe,
}

__all__ = ["RECIPES", "Recipe", "build_recipe"]


def build_recipe(config: dict[str, Any], **kwargs: Any) -> Recipe:
    """Instantiate the recipe named by ``config["method"]``; kwargs go to its constructor."""
    method = config["method"]
    if method not in RECIPES:
        raise ValueError(f"Unknown method {method!r}; available: {sorted(RECIPES)}")
    return RECIPES[method](config, **kwargs)
