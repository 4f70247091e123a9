"""Pickle-free checkpoints: tensors in safetensors files, everything else in JSON.

A checkpoint ``<stem>`` in a run folder is three files:

- ``<stem>.safetensors``: the training state tensors (model parameters and buffers, e.g. DACL's class centers);
- ``<stem>.optim.safetensors``: the optimizer state, flattened as ``"<param index>.<name>"`` tensors;
- ``<stem>.json``: epoch, step, metrics history, config and the optimizer's param groups.

Each file is written to a temporary name and moved into place, the JSON last, so an interrupted write never
leaves a checkpoint whose JSON points at missing tensors.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from fer_demo.hub import sha256_file


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call `write` on a temporary file next to `path`, then move it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(name))
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write tensors (cloned contiguous, on CPU) to a safetensors file atomically."""
    state = {key: value.detach().cpu().contiguous().clone() for key, value in tensors.items()}
    atomic_write(Path(path), lambda tmp: save_file(state, tmp, metadata=metadata))


def write_json(data: Any, path: Path) -> None:
    """Write JSON atomically with indentation."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    atomic_write(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Flatten an optimizer state dict into tensors and JSON-able param groups."""
    state = optimizer.state_dict()
    tensors = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            tensors[f"{index}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, state["param_groups"]


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    """Inverse of `optimizer_tensors`."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(
    folder: Path,
    stem: str,
    tensors: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | None,
    info: dict[str, Any],
) -> None:
    """Write checkpoint ``<folder>/<stem>.*`` (see the module docstring)."""
    folder = Path(folder)
    save_tensors(tensors, folder / f"{stem}.safetensors")
    info = dict(info)
    if optimizer is not None:
        optim_tensors, groups = optimizer_tensors(optimizer)
        save_tensors(optim_tensors, folder / f"{stem}.optim.safetensors")
        info["optimizer_param_groups"] = groups
    write_json(info, folder / f"{stem}.json")


def load_checkpoint(
    folder: Path, stem: str, optimizer: torch.optim.Optimizer | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read checkpoint ``<folder>/<stem>.*``; restore `optimizer` in place when given.

    Returns:
        The training state tensors and the JSON info.
    """
    folder = Path(folder)
    info = json.loads((folder / f"{stem}.json").read_text(encoding="utf-8"))
    tensors = load_file(folder / f"{stem}.safetensors")
    if optimizer is not None:
        load_optimizer(optimizer, load_file(folder / f"{stem}.optim.safetensors"), info["optimizer_param_groups"])
    return tensors, info


def init_seed(seed: int, init: str | Path | None) -> int:
    """`seed`, or for a run that starts from the weight file `init`, `seed` mixed with the file's SHA-256."""
    if not init:
        return seed
    digest = sha256_file(Path(init))
    return int(np.random.SeedSequence([seed, int(digest[:16], 16)]).generate_state(1)[0]) % 1_000_000
