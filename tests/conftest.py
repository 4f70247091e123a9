"""Shared fixtures: real face photos and a weight store of seeded, randomly initialised models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fer_demo.hub import save_state_dict, write_manifest_entry
from fer_demo.models import create_model, list_models


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """scikit-image's astronaut photo: one frontal face, RGB uint8 (512, 512, 3)."""
    from skimage import data

    return data.astronaut()


def make_weight_store(folder: Path, names: list[str]) -> Path:
    """A weights folder with seeded random weights for `names` and a manifest listing them."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(
        json.dumps({"format": 1, "hub": {"repo_id": "fer-demo/test", "revision": "main"}, "files": {}})
    )
    for i, name in enumerate(names):
        torch.manual_seed(i)
        model = create_model(name)
        path = folder / model.card.weight_file
        save_state_dict(model.state_dict(), path)
        write_manifest_entry(path.name, path, weights_dir=folder, model=name)
    return folder


@pytest.fixture(scope="session")
def random_store(tmp_path_factory) -> Path:
    """Weights folder with random (untrained) weights for every model; used to exercise the pipeline only."""
    return make_weight_store(tmp_path_factory.mktemp("weights"), list_models())


@pytest.fixture
def use_store(monkeypatch):
    """Point the weight store at a folder, offline (no Hub look-up)."""

    def use(folder: Path) -> Path:
        monkeypatch.setenv("FER_DEMO_WEIGHTS_DIR", str(folder))
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        return folder

    return use
