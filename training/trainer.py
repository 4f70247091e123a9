"""The training loop shared by every recipe: batches, augmentation, schedule, validation, checkpoints, DDP.

A run folder holds ``last.*`` (written after every epoch; ``--resume`` continues from it), ``best.*`` (the epoch
with the best validation accuracy), ``history.json``, ``curves.html`` and ``confusion_val.html``. See
`training.checkpoint` for the file format (safetensors + JSON, no pickle).

Under ``torchrun`` (``WORLD_SIZE`` > 1) every process trains on its share of each batch through
DistributedDataParallel (gloo on CPU, NCCL on GPUs); rank 0 validates and writes the files.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from tqdm import tqdm

from fer_demo.labels import EXPRESSIONS
from training.augment import AugmentConfig, random_similarity
from training.checkpoint import init_seed, load_checkpoint, save_checkpoint, write_json
from training.data import FaceSet, load_fer2013, prepare_in_chunks
from training.inference import forward_batches
from training.methods import Recipe, build_recipe
from training.metrics import summarize
from training.plots import confusion_figure, training_curves, write_html

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def set_dotted(config: dict[str, Any], key: str, value: Any) -> None:
    """Set ``config[a][b] = value`` for the dotted key ``"a.b"``, creating missing levels."""
    *parents, leaf = key.split(".")
    for parent in parents:
        config = config.setdefault(parent, {})
    config[leaf] = value


def load_config(method: str, name: str) -> dict[str, Any]:
    """The config ``name`` ("paper" or "cpu") of ``configs/<method>.json``."""
    path = CONFIG_DIR / f"{method}.json"
    if not path.is_file():
        available = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
        raise ValueError(f"Unknown method {method!r}; configs exist for {available}")
    configs = json.loads(path.read_text(encoding="utf-8"))
    if name not in configs:
        raise ValueError(f"Unknown config {name!r} for {method}; available: {sorted(configs)}")
    return {**configs[name], "config_name": name}


@dataclass(frozen=True, slots=True)
class Distributed:
    """Process group facts: this process's rank, the number of processes, and its device."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Distributed:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1); a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world == 1:
        return Distributed(device=torch.device("cuda" if cuda else "cpu"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    device = torch.device("cpu")
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return Distributed(rank, world, device)


def set_threads(threads: int) -> None:
    """Limit intra-op CPU threads (0 keeps PyTorch's default)."""
    if threads > 0:
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


def learning_rate(schedule: dict[str, Any], base_lr: float, step: int, steps_per_epoch: int, epochs: int) -> float:
    """Learning rate at optimisation step `step` (0-based) as a pure function of the step.

    Schedules: ``constant``; ``step`` (multiply by ``gamma`` at each epoch in ``milestones``); ``cosine``
    (linear warm-up over ``warmup_epochs``, then cosine decay to zero at the last step).
    """
    name = schedule["name"]
    epoch = step / steps_per_epoch
    if name == "constant":
        return base_lr
    if name == "step":
        return base_lr * schedule["gamma"] ** sum(epoch >= milestone for milestone in schedule["milestones"])
    if name == "cosine":
        warmup = schedule.get("warmup_epochs", 0.0) * steps_per_epoch
        total = epochs * steps_per_epoch
        if step < warmup:
            return base_lr * (step + 1) / warmup
        progress = (step - warmup) / max(total - warmup, 1)
        return base_lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    raise ValueError(f"Unknown schedule {name!r}; expected 'constant', 'step' or 'cosine'")


def _progress(iterable, **kwargs) -> tqdm:
    # Outside a terminal (nohup logs) refresh rarely so the log stays readable.
    interval = 0.1 if sys.stderr.isatty() else 60.0
    return tqdm(iterable, mininterval=interval, dynamic_ncols=True, **kwargs)


def validate(recipe: Recipe, inputs: torch.Tensor, labels: np.ndarray, classes: tuple[str, ...], batch: int) -> dict:
    """Accuracy, mean per-class accuracy and confusion of the recipe's model on prepared inputs."""
    outputs = forward_batches(recipe.model, inputs, batch)
    return summarize(labels, outputs["logits"].argmax(1), classes)


def fit(
    recipe: Recipe,
    train_inputs: torch.Tensor,
    train_labels: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    optimizer: dict[str, Any],
    schedule: dict[str, Any],
    augment: AugmentConfig,
    seed: int,
    val: tuple[torch.Tensor, np.ndarray] | None = None,
    classes: tuple[str, ...] = EXPRESSIONS,
    run_dir: Path | None = None,
    resume: bool = False,
    eval_batch_size: int = 256,
    distributed: Distributed = Distributed(),
    info: dict[str, Any] | None = None,
) -> list[dict]:
    """Train `recipe` for `epochs` epochs; checkpoint every epoch when `run_dir` is given.

    Args:
        recipe: The method's recipe (model, optimizer, losses).
        train_inputs: (N, C, H, W) prepared training inputs (`prepare_in_chunks`), augmented per batch.
        train_labels: (N,) class indices.
        epochs: Total number of epochs (a resumed run continues up to it).
        batch_size: Global batch size (split over the processes).
        optimizer: The optimizer settings (its ``lr`` is the schedule's base rate).
        schedule: Learning-rate schedule (see `learning_rate`).
        augment: Augmentation ranges.
        seed: Seed of the batch order and the augmentation (per epoch, so resumed epochs repeat exactly;
            `batch_seed` gives a warm restart its own).
        val: (prepared inputs, labels) to validate on after each epoch; selects ``best.*``.
        classes: Class names of the model outputs (for the reports).
        run_dir: Folder for checkpoints and reports; None trains without writing anything.
        resume: Continue from ``run_dir/last.*``.
        eval_batch_size: Faces per validation forward pass.
        distributed: Process group facts (`init_distributed`).
        info: Extra JSON (config, data) stored in every checkpoint.

    Returns:
        The per-epoch history (train loss terms, validation metrics, timing).
    """
    history: list[dict] = []
    start_epoch, best = 0, -1.0
    if resume:
        tensors, state = load_checkpoint(run_dir, "last", recipe.optimizer)
        recipe.load_state_tensors(tensors)
        history, start_epoch, best = state["history"], state["epoch"], state["best_val_accuracy"]
        logger.info("Resumed %s at epoch %d of %d (best val accuracy %.4f)", run_dir, start_epoch, epochs, best)
    labels = torch.as_tensor(train_labels, dtype=torch.long)
    local_batch = batch_size // distributed.world
    steps = len(labels) // batch_size
    base_lr = optimizer["lr"]
    for epoch in range(start_epoch, epochs):
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        jitter = torch.Generator().manual_seed(seed * 1000 + epoch + 7919 * (distributed.rank + 1))
        recipe.model.train()
        sums: dict[str, float] = {}
        started = time.perf_counter()
        bar = _progress(range(steps), desc=f"epoch {epoch + 1}/{epochs}", disable=not distributed.main)
        for step in bar:
            batch = order[step * batch_size : (step + 1) * batch_size]
            batch = batch[distributed.rank * local_batch : (distributed.rank + 1) * local_batch]
            x = random_similarity(train_inputs[batch], augment, jitter).to(distributed.device)
            recipe.set_lr(learning_rate(schedule, base_lr, epoch * steps + step, steps, epochs))
            terms = recipe.training_step(x, labels[batch].to(distributed.device))
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + value
            rate = (step + 1) * batch_size / (time.perf_counter() - started)
            bar.set_postfix(
                loss=f"{sums['loss'] / (step + 1):.3f}",
                acc=f"{sums['accuracy'] / (step + 1):.3f}",
                img_s=f"{rate:.0f}",
                refresh=False,
            )
            if distributed.main and ((step + 1) in (50, 200) or (step + 1) % 500 == 0):
                logger.info(
                    "epoch %d step %d/%d: %.1f img/s, epoch ETA %.1f min, loss %.4f",
                    epoch + 1,
                    step + 1,
                    steps,
                    rate,
                    (steps - step - 1) * batch_size / rate / 60,
                    sums["loss"] / (step + 1),
                )
        row = {
            "epoch": epoch + 1,
            "train": {key: value / steps for key, value in sums.items()},
            "lr_end": recipe.optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - started,
            "images_per_second": steps * batch_size / (time.perf_counter() - started),
        }
        if distributed.main and val is not None:
            report = validate(recipe, val[0], val[1], classes, eval_batch_size)
            row["val"] = {key: report[key] for key in ("accuracy", "mean_class_accuracy")}
            logger.info(
                "epoch %d: train %s | val accuracy %.4f, mean class accuracy %.4f (%.0f s)",
                epoch + 1,
                {key: round(value, 4) for key, value in row["train"].items()},
                report["accuracy"],
                report["mean_class_accuracy"],
                row["seconds"],
            )
        history.append(row)
        if distributed.main and run_dir is not None:
            improved = val is not None and row["val"]["accuracy"] > best
            best = max(best, row["val"]["accuracy"]) if val is not None else best
            state = {
                **(info or {}),
                "epoch": epoch + 1,
                "epochs": epochs,
                "history": history,
                "best_val_accuracy": best,
            }
            tensors = recipe.state_tensors()
            save_checkpoint(run_dir, "last", tensors, recipe.optimizer, state)
            if improved:
                save_checkpoint(run_dir, "best", tensors, None, {**state, "val_report": report})
                write_html(
                    confusion_figure(report["confusion"], classes, f"validation, epoch {epoch + 1}"),
                    run_dir / "confusion_val.html",
                )
            write_json(history, run_dir / "history.json")
            if val is not None:
                write_html(training_curves(history, f"{run_dir.name}"), run_dir / "curves.html")
        if distributed.world > 1:
            dist.barrier()
    return history


def batch_seed(config: dict[str, Any], run_dir: Path, resume: bool) -> int:
    """Seed of a run's batch order and augmentation: the config's ``seed``, or, for a run that starts from
    ``init`` weights, the seed mixed with the SHA-256 of that file.

    Every epoch's batches are drawn from ``seed * 1000 + epoch``, so a warm restart with the config's seed would
    replay, epoch by epoch, the augmented batches of the run that produced its starting weights. Mixing in the
    weights' digest gives each stage batches of its own and stays reproducible from the same files. A resumed run
    keeps the seed it started with (its ``init`` file may have been overwritten since).
    """
    if resume:
        state = json.loads((Path(run_dir) / "last.json").read_text(encoding="utf-8"))
        return state.get("batch_seed", config["seed"])  # runs written before the seed was recorded used the config's
    return init_seed(config["seed"], config.get("init"))


def train(
    config: dict[str, Any],
    run_dir: Path,
    *,
    data_dir: Path | None = None,
    resume: bool = False,
    train_set: FaceSet | None = None,
    val_set: FaceSet | None = None,
) -> list[dict]:
    """Train a method on FER2013 Training, validating on PublicTest (or on the given sets).

    Args:
        config: A method config (`load_config`), possibly with overrides; its optional ``init`` names a weight
            file the model starts from (a fresh optimizer and schedule follow).
        run_dir: Run folder (checkpoints, history, reports).
        data_dir: Folder of the shared data sets.
        resume: Continue from ``run_dir/last.*``.
        train_set: Training faces instead of FER2013 Training.
        val_set: Validation faces instead of FER2013 PublicTest.

    Returns:
        The per-epoch history.
    """
    distributed = init_distributed()
    set_threads(config.get("threads", 0))
    torch.manual_seed(config["seed"])
    run_dir = Path(run_dir)
    if distributed.main and not resume and (run_dir / "last.json").exists():
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it or pick another --out")
    train_set = train_set or load_fer2013("Training", data_dir, drop_inexact=config.get("drop_inexact", False))
    val_set = val_set or load_fer2013("PublicTest", data_dir)
    recipe = build_recipe(config, device=distributed.device)
    seed = batch_seed(config, run_dir, resume)
    if config.get("init") and not resume:
        recipe.load_state_tensors(load_file(config["init"]))  # load_state_dict casts float16 files to the model
        logger.info("Initialised %s from %s (batch seed %d)", config["method"], config["init"], seed)
    if distributed.world > 1:
        recipe.distribute()
    card = recipe.model.card
    started = time.perf_counter()
    train_inputs = prepare_in_chunks(train_set.images, card)
    val_inputs = prepare_in_chunks(val_set.images, card)
    logger.info(
        "Prepared %d training and %d validation faces at %s in %.0f s (rank %d of %d, %d threads)",
        len(train_set),
        len(val_set),
        tuple(train_inputs.shape[1:]),
        time.perf_counter() - started,
        distributed.rank,
        distributed.world,
        torch.get_num_threads(),
    )
    info = {
        "config": config,
        "train_data": train_set.name,
        "val_data": val_set.name,
        "train_size": len(train_set),
        "world_size": distributed.world,
        "batch_seed": seed,
    }
    return fit(
        recipe,
        train_inputs,
        train_set.labels,
        epochs=config["epochs"],
        batch_size=config["batch_size"],
        optimizer=config["optimizer"],
        schedule=config["schedule"],
        augment=AugmentConfig.from_dict(config.get("augment")),
        seed=seed,
        val=(val_inputs, val_set.labels),
        run_dir=run_dir,
        resume=resume,
        eval_batch_size=config.get("eval_batch_size", 256),
        distributed=distributed,
        info=info,
    )
