"""Export a trained run to the weight store: ``weights/<model>.safetensors``, its t-SNE map, manifest entries.

Steps (``python -m training export <model> --run runs/<model>``):

1. Load ``<run>/best.safetensors``, the model's state (DACL's class centers are a model buffer and ship with the
   weights: the demo compares a face with the center of its predicted class).
2. Measure FER2013 PublicTest accuracy in float32 and after a float16 round trip; store float16 only when it
   costs at most `FP16_TOLERANCE` (0.1 point).
3. Write the weights with `fer_demo.hub.save_state_dict`; re-measure FER2013 Private/PublicTest with the stored
   tensors, as the app will load them.
4. Fit the temperature that calibrates the stored model's probabilities on PublicTest (`training.calibrate`).
5. Build the t-SNE reference map (`training.tsne`) from the stored weights.
6. Record both files with `fer_demo.hub.write_manifest_entry`: SHA-256, size, dtype, data, config, git commit,
   the measured metrics (the re-measured FER2013 numbers plus FER+, CK+ 10-fold, cross-data set and the identity
   probe read from ``<run>/eval/*.json``), the calibration and the licence note.
"""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from fer_demo.embedding import reference_map_file, save_reference_map
from fer_demo.hub import (
    MANIFEST_NAME,
    WeightsError,
    default_weights_dir,
    load_manifest,
    save_state_dict,
    sha256_file,
    write_manifest_ensemble,
    write_manifest_entry,
)
from fer_demo.models import FerModel, get_card
from training.calibrate import calibration_report, ckplus_pool_report, ensemble_report, split_logits
from training.data import load_fer2013
from training.evaluate import (
    evaluate_faces,
    load_trained,
    logits_report,
    model_state,
    run_config,
    stored_fold_logits,
)
from training.inference import predict_faces
from training.pairs import PAIR_SETS, load_generator, resolve
from training.trainer import load_config, set_dotted
from training.tsne import PERPLEXITY, build_reference_map, reference_sample

logger = logging.getLogger(__name__)

FP16_TOLERANCE = 0.001
"""Largest PublicTest accuracy drop (as a fraction: 0.1 point) accepted for float16 weights."""

LICENSE_NOTE = (
    "Code MIT. Weights derived from FER2013 (and CK+ for the fine-tuned CK+ numbers only): research-only, "
    "non-commercial use; do not use commercially or redistribute the training data."
)


def half_round_trip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating-point tensors cast to float16 (integer buffers such as BN step counts unchanged)."""
    return {key: value.half() if value.is_floating_point() else value for key, value in state.items()}


def _accuracy_with(model: FerModel, state: dict[str, torch.Tensor], faces) -> float:
    own = model.state_dict()
    model.load_state_dict({key: value.to(own[key].dtype) for key, value in state.items()}, strict=True)
    return evaluate_faces(model, faces)["accuracy"]


def choose_dtype(model: FerModel, state: dict[str, torch.Tensor], faces) -> tuple[dict[str, torch.Tensor], dict]:
    """float16 state when its accuracy on `faces` is within `FP16_TOLERANCE` of float32, else float32."""
    fp32 = _accuracy_with(model, state, faces)
    half = half_round_trip(state)
    fp16 = _accuracy_with(model, half, faces)
    keep_half = fp32 - fp16 <= FP16_TOLERANCE
    check = {
        "data": faces.name,
        "float32_accuracy": fp32,
        "float16_accuracy": fp16,
        "dtype": "float16" if keep_half else "float32",
    }
    logger.info("float32 %.4f vs float16 %.4f on %s -> %s", fp32, fp16, faces.name, check["dtype"])
    return ({key: value.contiguous() for key, value in half.items()} if keep_half else state), check


def git_commit(repo: Path) -> dict[str, Any]:
    """HEAD commit of the repository and whether the working tree had changes."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {"git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": None, "git_dirty": None}


def config_overrides(config: dict[str, Any]) -> dict[str, Any]:
    """The values of a run's config that differ from its named config in ``configs/<method>.json`` (``--set``,
    ``--epochs``, ``--threads``, ``--init``), as dotted keys."""

    def flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in values.items():
            out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
        return out

    run, named = flat(config), flat(load_config(config["method"], config["config_name"]))
    return {key: value for key, value in run.items() if named.get(key, object()) != value}


def shipped_config(weights: Path) -> dict[str, Any]:
    """The config exported weights were trained with, rebuilt from their manifest entry (the named config plus the
    recorded `config_overrides`), for evaluating them without their run folder.

    Raises:
        fer_demo.hub.WeightsError: The file is not in the manifest beside it, differs from its SHA-256 there, or its
            entry records no training config.
    """
    weights = Path(weights)
    recorded = _exported_fields(weights.name, weights.parent).get("config")
    if recorded is None:
        raise WeightsError(f"{weights} has no training config in {weights.parent / MANIFEST_NAME}")
    config = load_config(recorded["method"], recorded["name"])
    for key, value in recorded.get("overrides", {}).items():
        set_dotted(config, key, value)
    return config


def _headline(report: dict) -> dict[str, float]:
    return {"accuracy": report["accuracy"], "mean_class_accuracy": report["mean_class_accuracy"]}


def _neutral_metrics(report: dict) -> dict[str, Any]:
    return {key: value for key, value in report.items() if key not in ("grid", "loss_identity")}


def fer2013_metrics(fer2013: dict[str, dict]) -> dict[str, Any]:
    """Manifest metrics of the FER2013 PrivateTest and PublicTest reports of the stored weights."""
    return {
        "fer2013_private_test": _headline(fer2013["PrivateTest"]),
        "fer2013_public_test": _headline(fer2013["PublicTest"]),
    }


def collect_metrics(eval_dir: Path, fer2013: dict[str, dict], neutral: Path | None = None) -> dict[str, Any]:
    """Manifest metrics: FER2013 reports of the stored weights, whatever ``eval/*.json`` holds and, for the
    generative methods without an ``eval/neutral.json``, the neutral-face report of their generator pretraining
    (`neutral`)."""
    metrics: dict[str, Any] = {**fer2013_metrics(fer2013), **eval_metrics(eval_dir)}
    if "neutral_reference" not in metrics and neutral is not None and neutral.is_file():
        metrics["neutral_reference"] = _neutral_metrics(json.loads(neutral.read_text(encoding="utf-8")))
    return metrics


def eval_metrics(eval_dir: Path) -> dict[str, Any]:
    """Manifest metrics of the protocol reports in ``eval_dir`` (FER+, CK+ 10-fold, cross-data set, probe,
    neutral-face report)."""
    metrics: dict[str, Any] = {}

    def read(name: str) -> dict | None:
        path = eval_dir / f"{name}.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    if ferplus := read("ferplus"):
        metrics["ferplus_test"] = _headline(ferplus["test"])
    if ckplus := read("ckplus"):
        report = ckplus["ckplus7"]
        metrics["ckplus7_10fold"] = {
            **_headline(report),
            "fold_accuracy_std": report["fold_accuracy_std"],
            "protocol": "subject-independent 10-fold, fine-tuned per fold, pooled",
            "finetune": report["finetune"],
        }
    if cross := read("cross"):
        metrics["cross_dataset"] = {name: _headline(report) for name, report in cross.items()}
    if probe := read("probe"):
        metrics["identity_probe_ckplus"] = {
            key: value for key, value in probe.items() if key not in ("weights", "baseline_run")
        }
    if neutral := read("neutral"):
        metrics["neutral_reference"] = _neutral_metrics(neutral)
    return metrics


def record_metrics(
    model: str, run_dir: Path, *, weights_dir: Path | None = None, data_dir: Path | None = None
) -> dict[str, Any]:
    """Add the protocol reports of ``<run>/eval`` to the manifest entry of `model`'s already exported weights.

    For protocols run after `export` (the CK+ 10-fold cross-validation takes longest), or on the exported weights
    (``evaluate --weights``, whose run folder holds only ``eval/``): the weight file, its t-SNE map and every
    other field of the entry stay as they are; only the reported metrics are added or replaced. The FER2013 reports
    are measured again on the stored weights, as `export` measures them, so they follow a change of the model's
    test-time view (`ModelCard.flip_average`) made after the export.

    Returns:
        The updated manifest entry.

    Raises:
        fer_demo.hub.WeightsError: The model's weights are not in the manifest, or differ from their entry.
    """
    run_dir = Path(run_dir)
    weights_dir = Path(weights_dir or default_weights_dir())
    filename = get_card(model).weight_file
    fields = _exported_fields(filename, weights_dir)
    stored = load_trained(model, weights_dir / filename)
    splits = {split: load_fer2013(split, data_dir) for split in ("PrivateTest", "PublicTest")}
    logits = split_logits(stored, splits)
    fer2013 = {split: logits_report(faces, logits[split]) for split, faces in splits.items()}
    fields["metrics"] = {**fields.get("metrics", {}), **collect_metrics(run_dir / "eval", fer2013)}
    return write_manifest_entry(filename, weights_dir / filename, weights_dir=weights_dir, **fields)


def calibrate(
    models: list[str],
    *,
    weights_dir: Path | None = None,
    data_dir: Path | None = None,
    ckplus_folds: dict[str, Path] | None = None,
) -> dict[str, dict[str, Any]]:
    """Fit the temperature of already exported weights (`training.calibrate`) and record it in their manifest
    entries; with several models, also fit the ensemble weights over them and record them in the manifest. The
    weight files and every other field of their entries stay as they are.

    Args:
        models: Registered model names.
        weights_dir: Weight store (default `fer_demo.hub.default_weights_dir()`).
        data_dir: Folder of the shared data sets.
        ckplus_folds: model name -> the CK+ fold folder (``<run>/eval/ckplus_folds``) of its weight file, for two
            or more of the models: the ensemble record then also holds the CK+ 10-fold report of the pool of those
            models with their fitted weights (`ckplus_pool_report`; its ``models`` names them).

    Returns:
        model name -> its updated manifest entry, plus "ensemble" -> the ensemble record for several models.

    Raises:
        fer_demo.hub.WeightsError: A model's weights are not in the manifest, or differ from their entry.
        ValueError: `ckplus_folds` given for one model or for a model not in `models`, or folds that do not fit
            (`training.evaluate.stored_fold_logits`).
    """
    weights_dir = Path(weights_dir or default_weights_dir())
    ckplus = None
    if ckplus_folds:
        if len(ckplus_folds) < 2 or not set(ckplus_folds) <= set(models):
            raise ValueError(f"CK+ folds pool an ensemble: give them for two or more of {models}, not {ckplus_folds}")
        ckplus = {
            name: stored_fold_logits(folder, weights_dir / get_card(name).weight_file, data_dir)
            for name, folder in ckplus_folds.items()
        }
        assignments = [[test.tolist() for test in stored["folds"]] for stored in ckplus.values()]
        if any(folds != assignments[0] for folds in assignments):
            raise ValueError("The models' CK+ folds hold other faces: fine-tune them with the same folds and seed")
    splits = {split: load_fer2013(split, data_dir) for split in ("PublicTest", "PrivateTest")}
    labels = {split: faces.labels for split, faces in splits.items()}
    fields = {name: _exported_fields(get_card(name).weight_file, weights_dir) for name in models}
    logits, updated = {}, {}
    for name in models:
        filename = get_card(name).weight_file
        logits[name] = split_logits(load_trained(name, weights_dir / filename), splits)
        fields[name]["calibration"] = calibration_report(logits[name], labels, "PublicTest")
        updated[name] = write_manifest_entry(filename, weights_dir / filename, weights_dir=weights_dir, **fields[name])
    if len(models) > 1:
        temperatures = {name: fields[name]["calibration"]["temperature"] for name in models}
        report = ensemble_report(logits, temperatures, labels, "PublicTest")
        if ckplus is not None:
            first = next(iter(ckplus.values()))
            report["ckplus7_10fold"] = ckplus_pool_report(
                {name: stored["logits"] for name, stored in ckplus.items()},
                first["labels"],
                first["folds"],
                temperatures,
                {name: report["weights"][name] for name in ckplus},
            )
        updated["ensemble"] = write_manifest_ensemble(
            report.pop("weights"),
            {name: updated[name]["sha256"] for name in models},
            weights_dir=weights_dir,
            **report,
        )
    return updated


LOGIT_ROUNDING = 1e-4
"""Largest logit change `replace_generator` ascribes to float rounding (the batch holds queries and references)."""

GENERATOR_METRICS = ("ckplus7_10fold", "neutral_reference")
"""Manifest metrics that depend on a frozen generator: its neutral faces, and the CK+ folds, fine-tuned with the
references it generates (the RML loss)."""


def replace_generator(
    model_name: str,
    generator: Path,
    *,
    weights_dir: Path | None = None,
    data_dir: Path | None = None,
    repo: Path | None = None,
) -> dict[str, Any]:
    """Put a newer generator pretraining (``<pretrain run>/generator.safetensors``) into exported weights whose
    classifier does not read the generator at test time (IDFERM: its logits come from the query alone).

    The FER2013 logits are measured before and after the swap and must not move (`LOGIT_ROUNDING`), so the
    calibration, the ensemble weights and the t-SNE map stay valid; the entry records the generator's provenance
    and drops `GENERATOR_METRICS`, which ``evaluate --protocol ckplus --protocol neutral`` and ``export
    --metrics-only`` measure again.

    Returns:
        The updated manifest entry.

    Raises:
        ValueError: The model's logits depend on its generator (GCNet): retrain it with the new generator instead.
        fer_demo.hub.WeightsError: The model's weights are not in the manifest, or differ from their entry.
    """
    weights_dir = Path(weights_dir or default_weights_dir())
    generator = Path(generator)
    filename = get_card(model_name).weight_file
    path = weights_dir / filename
    fields = _exported_fields(filename, weights_dir)
    manifest = load_manifest(weights_dir)
    source = git_commit(repo or Path(__file__).resolve().parent.parent)
    model = load_trained(model_name, path)
    splits = {split: load_fer2013(split, data_dir) for split in ("PrivateTest", "PublicTest")}
    before = split_logits(model, splits)
    load_generator(model, generator)
    logits = split_logits(model, splits)
    shift = max(float(np.abs(logits[split] - before[split]).max()) for split in splits)
    if shift > LOGIT_ROUNDING:
        raise ValueError(
            f"{model_name}'s logits depend on its generator (they moved by up to {shift:.3g}); train it again with "
            "the new generator instead"
        )
    state = model.state_dict()
    save_state_dict(half_round_trip(state) if fields["dtype"] == "float16" else state, path, metadata={"format": "pt"})
    fer2013 = {split: logits_report(faces, logits[split]) for split, faces in splits.items()}
    info = json.loads(generator.with_suffix(".json").read_text(encoding="utf-8"))
    metrics = {key: value for key, value in fields.get("metrics", {}).items() if key not in GENERATOR_METRICS}
    fields["metrics"] = {**metrics, **fer2013_metrics(fer2013)}
    fields["generator"] = {
        "file": str(generator),
        "sha256": sha256_file(generator),
        "steps": info["step"],
        "batch_seed": info.get("batch_seed"),
        "overrides": config_overrides(info["config"]),
    }
    entry = write_manifest_entry(filename, path, weights_dir=weights_dir, **{**fields, **source})
    ensemble = manifest.get("ensemble")
    if ensemble and ensemble["sha256"].get(model_name) == manifest["files"][filename]["sha256"]:  # fitted on logits
        hashes = {**ensemble.pop("sha256"), model_name: entry["sha256"]}  # that have not moved: it stays valid
        write_manifest_ensemble(ensemble.pop("weights"), hashes, weights_dir=weights_dir, **ensemble)
    logger.info(
        "Replaced the generator of %s by %s; PrivateTest %.4f", path, generator, fer2013["PrivateTest"]["accuracy"]
    )
    return entry


def _exported_fields(filename: str, weights_dir: Path) -> dict[str, Any]:
    """The manifest entry of an exported weight file, less its SHA-256 and size, after checking the file."""
    entry = load_manifest(weights_dir)["files"].get(filename)
    if entry is None:
        raise WeightsError(f"{filename} is not in {weights_dir / MANIFEST_NAME}; export the run first")
    if sha256_file(weights_dir / filename) != entry["sha256"]:
        raise WeightsError(
            f"{weights_dir / filename} changed since it was recorded (its SHA-256 differs from the manifest's); "
            "export the run again"
        )
    return {key: value for key, value in entry.items() if key not in ("sha256", "size")}


def export(
    run_dir: Path,
    *,
    weights_dir: Path | None = None,
    data_dir: Path | None = None,
    repo: Path | None = None,
) -> dict[str, Any]:
    """Export a run (see the module docstring).

    Args:
        run_dir: Training run folder with ``best.safetensors`` / ``best.json`` and, ideally, ``eval/*.json``.
        weights_dir: Weight store (default `fer_demo.hub.default_weights_dir()`).
        data_dir: Folder of the shared data sets.
        repo: Repository whose HEAD is recorded (default: this checkout).

    Returns:
        The manifest entry of the weight file.
    """
    run_dir = Path(run_dir)
    weights_dir = Path(weights_dir or default_weights_dir())
    source = git_commit(repo or Path(__file__).resolve().parent.parent)  # before this export changes weights/
    config = run_config(run_dir)
    best = json.loads((run_dir / "best.json").read_text(encoding="utf-8"))
    model = load_trained(config["model"], run_dir / "best.safetensors", config.get("model_kwargs"))
    name = model.card.name
    state = {
        key: value.float() if value.is_floating_point() else value
        for key, value in model_state(model, load_file(run_dir / "best.safetensors")).items()
    }
    public = load_fer2013("PublicTest", data_dir)
    state, dtype_check = choose_dtype(model, state, public)

    path = weights_dir / model.card.weight_file
    save_state_dict(state, path, metadata={"format": "pt"})  # model and dtype are in the manifest entry
    stored = load_trained(config["model"], path, config.get("model_kwargs"))
    private = load_fer2013("PrivateTest", data_dir)
    splits = {"PrivateTest": private, "PublicTest": public}
    logits = split_logits(stored, splits)  # one pass per split serves both the reports and the calibration
    fer2013 = {split: logits_report(faces, logits[split]) for split, faces in splits.items()}
    calibration = calibration_report(logits, {split: faces.labels for split, faces in splits.items()}, "PublicTest")

    sample = reference_sample(private.labels)
    embeddings = predict_faces(stored, private.images[sample])["embedding"]
    coords, fit = build_reference_map(embeddings)
    tsne_path = weights_dir / reference_map_file(name)
    save_reference_map(
        tsne_path, embeddings, coords, private.labels[sample], PERPLEXITY, data="fer2013/PrivateTest", **fit
    )

    generator = config.get("generator_checkpoint")
    neutral = None
    if generator:  # the trained model's report if `evaluate --protocol neutral` ran, else the pretraining one
        final = run_dir / "eval" / "neutral.json"
        neutral = final if final.is_file() else resolve(generator).parent / "neutral.json"
    provenance = {
        "data": {
            "train": best["train_data"],
            "train_size": best["train_size"],
            "selection": best["val_data"],
            "source": "../shared/datasets/fer2013.npz (FER2013 + FER+ votes), ckplus.npz (CK+48)"
            + (f"; generator pairs: {', '.join(f'{name}.npz' for name in PAIR_SETS)}" if generator else ""),
        },
        "config": {
            "name": config.get("config_name"),
            "method": config["method"],
            "epochs": config["epochs"],
            "best_epoch": best["epoch"],
            "file": f"training/configs/{config['method']}.json",
            "overrides": config_overrides(config),
        },
        **source,
        "license": LICENSE_NOTE,
    }
    metrics = collect_metrics(run_dir / "eval", fer2013, neutral)
    entry = write_manifest_entry(
        path.name,
        path,
        weights_dir=weights_dir,
        model=name,
        dtype=dtype_check["dtype"],
        dtype_check=dtype_check,
        metrics=metrics,
        calibration=calibration,
        **provenance,
    )
    write_manifest_entry(
        tsne_path.name,
        tsne_path,
        weights_dir=weights_dir,
        model=name,
        kind="tsne-reference-map",
        reference={
            "data": "fer2013/PrivateTest",
            "faces": int(len(sample)),
            "per_class": np.bincount(private.labels[sample], minlength=7).tolist(),
            "metric": fit["metric"],
            "perplexity": PERPLEXITY,
        },
        **provenance,
    )
    logger.info(
        "Exported %s (%s): PrivateTest %.4f, PublicTest %.4f",
        path,
        dtype_check["dtype"],
        fer2013["PrivateTest"]["accuracy"],
        fer2013["PublicTest"]["accuracy"],
    )
    return entry
