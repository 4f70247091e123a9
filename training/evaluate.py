"""Evaluation protocols and their runner; every face enters the model through `fer_demo.preprocess.prepare`.

Protocols (each writes ``<run>/eval/<protocol>.json`` and, where it has one, a confusion-matrix HTML):

- ``fer2013``: FER2013 PrivateTest (the reported number) and PublicTest (used for model selection).
- ``ferplus``: FER+ test set (FER2013 PrivateTest relabelled by FER+ majority vote; seven expressions).
- ``cross``: the FER2013-trained model on other sets, argmax over its seven outputs: CK+ six basic expressions,
  JAFFE (seven), RaFD subset (neutral/happy/fear), NimStim subset (angry/happy/neutral), Yale (neutral, happy,
  sad, surprise).
- ``ckplus``: CK+ 7-class (six basic + contempt) subject-independent 10-fold cross-validation. Per fold the
  FER2013 weights are fine-tuned on the other nine folds with the method's own recipe and ``finetune`` settings;
  the 7-way FER2013 head is replaced by a 7-way head over `training.data.CKPLUS_CLASSES` whose six basic rows
  start from the FER2013 rows and whose contempt row starts fresh (DACL's class centers likewise). Predictions of
  the ten test folds are pooled into one confusion matrix. Each fold is stored with what it depends on
  (`fold_signature`), so an interrupted run resumes, a changed one fine-tunes again, and processes given disjoint
  ``folds`` share the work.
- ``probe``: identity leakage. A logistic regression predicts the CK+ subject from a frozen embedding; it is fitted
  on alternate sequences of every subject with at least two sequences and tested on that subject's other
  sequences (other expressions). Reported for the model's expression embedding, the softmax baseline's embedding
  (``--baseline-run``), raw pixels (shrunk to 24x24), and, for ED²L, the dispelling embedding f_p.
- ``expression_probe``: how linearly each representation of the model holds the expression. A standardised PCA
  (256 components) + logistic regression is fitted on a fixed stratified sample of FER2013 Training (up to 1,000
  faces per class) and tested on PrivateTest, for every per-face vector the model outputs besides its logits (the
  embedding; ED²L's dispelling embedding f_p; GCNet's query code En(X), reference code En(X_r) and their contrast
  delta; IDFERM's reference embedding; DACL's attention), next to the model's own classifier on the same faces and
  the same probe on raw pixels (24x24). It tells where expression is lost: in an encoder, or after it.
- ``neutral`` (IDFERM, GCNet): the trained generator's neutral faces of the pairs' held-out subjects
  (`training.neutral_eval`): rank-1 identification of the real neutral face, L1 and SSIM, and a grid PNG.

Exported weights are evaluated without their run folder too: `training.export.shipped_config` rebuilds the training
config from the weight file's manifest entry, after checking the file against its SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Collection
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from safetensors.torch import load_file, save
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fer_demo.labels import EXPRESSIONS
from fer_demo.models import FerModel, create_model, get_card
from training.augment import AugmentConfig
from training.checkpoint import write_json
from training.data import (
    CKPLUS_CLASSES,
    CKPLUS_SPLITS,
    CROSS_DATASETS,
    ckplus_folds,
    identity_probe_split,
    load_ckplus,
    load_cross,
    load_fer2013,
    load_ferplus,
    load_posed_like_ckplus,
    prepare_in_chunks,
    to_ckplus_head,
)
from training.inference import predict_faces
from training.methods import build_recipe
from training.metrics import summarize
from training.neutral_eval import evaluate_trained
from training.plots import confusion_figure, write_html
from training.trainer import fit

logger = logging.getLogger(__name__)

PROTOCOLS = ("fer2013", "ferplus", "cross", "ckplus", "probe", "expression_probe", "neutral")
GENERATIVE_PROTOCOLS = ("neutral",)
"""Protocols only the methods with a neutral-face generator (a ``generator_checkpoint`` in the config) have."""
CKPLUS_HEAD_ROWS: tuple[int | None, ...] = (0, 1, 2, 3, 4, 5, None)
"""FER2013 head row each CK+ class starts from (None: contempt, initialised fresh)."""


def model_state(model: FerModel, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's own tensors from a checkpoint; tensors that do not belong to the model are an error."""
    extra = sorted(set(tensors) - set(model.state_dict()))
    if extra:
        raise ValueError(f"Checkpoint tensors that are not part of {model.card.name!r}: {extra[:5]}")
    return dict(tensors)


def load_trained(model_name: str, path: Path, model_kwargs: dict[str, Any] | None = None) -> FerModel:
    """Build a registered model and load a checkpoint or exported safetensors file into it (eval mode)."""
    model = create_model(model_name, **(model_kwargs or {}))
    own = model.state_dict()
    state = {
        key: value.to(own[key].dtype) if key in own else value
        for key, value in model_state(model, load_file(path)).items()
    }
    model.load_state_dict(state, strict=True)
    return model.eval()


def run_config(run_dir: Path) -> dict[str, Any]:
    """The config a run was trained with (from ``best.json``)."""
    return json.loads((Path(run_dir) / "best.json").read_text(encoding="utf-8"))["config"]


def evaluate_faces(model: FerModel, faces, classes: tuple[str, ...] = EXPRESSIONS) -> dict:
    """Accuracy, mean per-class accuracy and confusion of a model on a `FaceSet` (argmax of the logits)."""
    return logits_report(faces, predict_faces(model, faces.images)["logits"], classes)


def logits_report(faces, logits: np.ndarray, classes: tuple[str, ...] = EXPRESSIONS) -> dict:
    """`evaluate_faces` from a model's (N, C) logits on `faces`, already computed."""
    report = summarize(faces.labels, logits.argmax(1), classes)
    report["data"] = faces.name
    return report


def evaluate_fer2013(model: FerModel, data_dir: Path | None = None) -> dict[str, dict]:
    """FER2013 PrivateTest and PublicTest reports."""
    return {split: evaluate_faces(model, load_fer2013(split, data_dir)) for split in ("PrivateTest", "PublicTest")}


def evaluate_ferplus(model: FerModel, data_dir: Path | None = None) -> dict[str, dict]:
    """FER+ test (majority vote, seven expressions) report."""
    return {"test": evaluate_faces(model, load_ferplus("PrivateTest", data_dir))}


def evaluate_cross(model: FerModel, data_dir: Path | None = None) -> dict[str, dict]:
    """Cross-data set reports of a FER2013-trained model (see the module docstring)."""
    return {name: evaluate_faces(model, load_cross(name, data_dir)) for name in CROSS_DATASETS}


def probe_accuracy(features: np.ndarray, subjects: np.ndarray, train: np.ndarray, test: np.ndarray) -> float:
    """Test accuracy of a standardised logistic regression predicting the subject from `features`."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    probe.fit(features[train], subjects[train])
    return float(probe.score(features[test], subjects[test]))


def _small_pixels(images: np.ndarray, size: int = 24) -> np.ndarray:
    """Faces shrunk to size x size (area average) and flattened: the raw-pixel reference of the probe."""
    return (
        np.stack([cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA) for image in images])
        .reshape(len(images), -1)
        .astype(np.float32)
    )


def identity_probe(model: FerModel, baseline: FerModel | None = None, data_dir: Path | None = None) -> dict[str, Any]:
    """Identity-leakage probe on CK+ (see the module docstring); lower means less identity in the embedding."""
    faces = load_ckplus(data_dir)
    train, test = identity_probe_split(faces)
    subjects = faces.subjects
    outputs = predict_faces(model, faces.images)
    results: dict[str, Any] = {
        "subjects": int(len(np.unique(subjects[train]))),
        "train_faces": int(len(train)),
        "test_faces": int(len(test)),
        "chance": float(np.bincount(subjects[test]).max() / len(test)),
        "embedding": probe_accuracy(outputs["embedding"], subjects, train, test),
        "pixels": probe_accuracy(_small_pixels(faces.images), subjects, train, test),
    }
    if "dispel_embedding" in outputs:
        results["dispel_embedding"] = probe_accuracy(outputs["dispel_embedding"], subjects, train, test)
    if baseline is not None:
        results["baseline_embedding"] = probe_accuracy(
            predict_faces(baseline, faces.images)["embedding"], subjects, train, test
        )
    return results


def expression_probe(
    model: FerModel, data_dir: Path | None = None, per_class: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Linear expression probe of every representation the model outputs (see the module docstring)."""
    training = load_fer2013("Training", data_dir, drop_inexact=True)
    test = load_fer2013("PrivateTest", data_dir)
    rng = np.random.default_rng(seed)
    sample = np.sort(
        np.concatenate(
            [rng.permutation(np.flatnonzero(training.labels == label))[:per_class] for label in range(len(EXPRESSIONS))]
        )
    )
    train_out = predict_faces(model, training.images[sample], fields=None)
    test_out = predict_faces(model, test.images, fields=None)

    def accuracy(train_features: np.ndarray, test_features: np.ndarray) -> float:
        components = min(256, *train_features.shape)
        probe = make_pipeline(StandardScaler(), PCA(components, random_state=seed), LogisticRegression(max_iter=3000))
        probe.fit(train_features, training.labels[sample])
        return float(probe.score(test_features, test.labels))

    return {
        "train": f"{training.name} ({len(sample)} faces, up to {per_class} per class)",
        "test": test.name,
        "classifier": float((test_out["logits"].argmax(1) == test.labels).mean()),
        "pixels": accuracy(_small_pixels(training.images[sample]), _small_pixels(test.images)),
        **{name: accuracy(train_out[name], test_out[name]) for name in train_out if not name.endswith("logits")},
    }


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state as the CK+ folds record their starting weights (its tensors serialised, float32)."""
    return hashlib.sha256(save(tensors)).hexdigest()


def float_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, floating-point ones as float32 (the CK+ fine-tuning's starting state)."""
    return {key: value.float() if value.is_floating_point() else value for key, value in load_file(path).items()}


def fold_signature(config: dict[str, Any], fer_tensors: dict[str, torch.Tensor], n_splits: int, seed: int) -> dict:
    """What a stored CK+ fold result depends on besides its fold: the starting weights, the fine-tuning recipe, the
    augmentation, the test-time view (`ModelCard.flip_average`) and the fold assignment."""
    signature = {
        "weights_sha256": tensors_digest(fer_tensors),
        "finetune": config["finetune"],
        "augment": config.get("augment"),
        "flip_average": get_card(config["model"]).flip_average,
        "n_splits": n_splits,
        "seed": seed,
    }
    return json.loads(json.dumps(signature))  # the form it takes in a fold file


def ckplus_cross_validation(
    config: dict[str, Any],
    fer_tensors: dict[str, torch.Tensor],
    fold_dir: Path,
    *,
    data_dir: Path | None = None,
    n_splits: int = CKPLUS_SPLITS,
    seed: int = 0,
    folds: Collection[int] | None = None,
) -> dict[str, Any] | None:
    """CK+ 7-class subject-independent cross-validation with per-fold fine-tuning (see the module docstring).

    Args:
        config: The method config; its ``finetune`` entry sets epochs, batch size, optimizer and schedule, and
            ``extra_sets`` names posed sets whose faces join every fold's training faces
            (`training.data.load_posed_like_ckplus`).
        fer_tensors: FER2013 training state (``best.safetensors`` of the run).
        fold_dir: Folder of the per-fold results (``fold_XX.json``); a finished fold is reused when its
            `fold_signature` matches, and run again otherwise.
        data_dir: Folder of the shared data sets.
        n_splits: Number of folds.
        seed: Seed of the fold assignment and of the fine-tuning.
        folds: Fine-tune only these folds (0-based), e.g. to share the folds among processes that write to the
            same `fold_dir`; stored folds are reused either way. Default all.

    Returns:
        Pooled report over all test folds plus the per-fold accuracies; None while some fold is not yet stored.
    """
    faces = load_ckplus(data_dir)
    labels = to_ckplus_head(faces.labels)
    finetune = config["finetune"]
    extra = load_posed_like_ckplus(finetune.get("extra_sets", ()), data_dir)
    extra_rows = len(faces) + np.arange(len(extra))  # where the extra faces follow CK+'s in `inputs`
    train_labels = np.concatenate([labels, extra.labels])
    predictions = np.full(len(faces), -1)
    fold_accuracy = []
    card = None
    inputs = None
    signature = fold_signature(config, fer_tensors, n_splits, seed)
    for fold, (train, test) in enumerate(ckplus_folds(faces, n_splits, seed)):
        path = Path(fold_dir) / f"fold_{fold:02d}.json"
        done = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        if done.get("signature") == signature:
            predictions[done["test"]] = done["predictions"]
            fold_accuracy.append(done["accuracy"])
            continue
        if folds is not None and fold not in folds:
            continue
        if done:
            logger.warning("%s was made with other weights or settings; fine-tuning that fold again", path)
        torch.manual_seed(seed + fold)
        recipe = build_recipe(config)
        recipe.load_state_tensors(fer_tensors)
        recipe.replace_head(CKPLUS_HEAD_ROWS)
        recipe.reset_optimizer(finetune["optimizer"])
        if inputs is None or card != recipe.model.card:
            card = recipe.model.card
            inputs = prepare_in_chunks(np.concatenate([faces.images, extra.images]), card)
        fit_rows = np.concatenate([train, extra_rows])
        fit(
            recipe,
            inputs[fit_rows],
            train_labels[fit_rows],
            epochs=finetune["epochs"],
            batch_size=finetune["batch_size"],
            optimizer=finetune["optimizer"],
            schedule=finetune["schedule"],
            augment=AugmentConfig.from_dict(config.get("augment")),
            seed=seed + fold,
        )
        fold_logits = predict_faces(recipe.model, faces.images[test])["logits"]
        fold_predictions = fold_logits.argmax(1)
        accuracy = float((fold_predictions == labels[test]).mean())
        logger.info("CK+ fold %d/%d: %d test faces, accuracy %.4f", fold + 1, n_splits, len(test), accuracy)
        write_json(
            {
                "fold": fold,
                "test": test.tolist(),
                "predictions": fold_predictions.tolist(),
                "logits": np.round(fold_logits, 5).tolist(),
                "accuracy": accuracy,
                "subjects": sorted(set(faces.subjects[test].tolist())),
                "signature": signature,
            },
            path,
        )
        predictions[test] = fold_predictions
        fold_accuracy.append(accuracy)
    if len(fold_accuracy) < n_splits:
        logger.info(
            "CK+: %d of %d folds stored in %s; the report waits for the others", len(fold_accuracy), n_splits, fold_dir
        )
        return None
    report = summarize(labels, predictions, CKPLUS_CLASSES)
    report.update(
        data="ckplus (7 classes, subject-independent 10-fold)",
        fold_accuracy=fold_accuracy,
        fold_accuracy_mean=float(np.mean(fold_accuracy)),
        fold_accuracy_std=float(np.std(fold_accuracy)),
        finetune=finetune,
    )
    return report


def stored_fold_logits(fold_dir: Path, weights: Path, data_dir: Path | None = None) -> dict[str, Any]:
    """The logits a finished `ckplus_cross_validation` stored for every CK+ face, checked against `weights`.

    Args:
        fold_dir: Folder of the ``fold_XX.json`` files (``<run>/eval/ckplus_folds``); the number of folds and their
            seed are those its first fold records.
        weights: The weight file the folds must have been fine-tuned from.
        data_dir: Folder of the shared data sets.

    Returns:
        "logits": (N, 7) logits of each face by the model fine-tuned without its fold, in `load_ckplus` order;
        "labels": (N,) `training.data.CKPLUS_CLASSES` indices; "folds": the test indices of each fold.

    Raises:
        ValueError: A fold is missing, was fine-tuned from other weights or on another fold assignment, or stores
            no logits (fold files written before they were recorded).
    """
    faces = load_ckplus(data_dir)
    digest = tensors_digest(float_tensors(weights))
    logits = np.zeros((len(faces), len(CKPLUS_CLASSES)), dtype=np.float32)
    tests = []

    def read(fold: int) -> dict[str, Any]:
        path = Path(fold_dir) / f"fold_{fold:02d}.json"
        if not path.is_file():
            raise ValueError(f"{path} is missing: run `python -m training evaluate ... --protocol ckplus` first")
        return {**json.loads(path.read_text(encoding="utf-8")), "path": path}

    first = read(0)["signature"]
    for fold, (_, test) in enumerate(ckplus_folds(faces, first["n_splits"], first["seed"])):
        done = read(fold)
        path = done["path"]
        if "logits" not in done:
            raise ValueError(f"{path} stores predictions but no logits; remove it and fine-tune that fold again")
        if done["signature"]["weights_sha256"] != digest or done["test"] != test.tolist():
            raise ValueError(f"{path} was fine-tuned from other weights than {weights} or on other folds")
        logits[test] = done["logits"]
        tests.append(test)
    return {"logits": logits, "labels": to_ckplus_head(faces.labels), "folds": tests}


def _write_confusions(reports: dict[str, dict], prefix: str, folder: Path) -> None:
    for name, report in reports.items():
        if "confusion" in report:
            title = f"{prefix} {name}: accuracy {report['accuracy']:.4f}"
            write_html(
                confusion_figure(report["confusion"], report["classes"], title),
                folder / f"confusion_{prefix}_{name.replace('/', '_')}.html",
            )


def run_evaluation(
    run_dir: Path,
    protocols: tuple[str, ...] = PROTOCOLS,
    *,
    weights: Path | None = None,
    baseline_run: Path | None = None,
    data_dir: Path | None = None,
    config: dict[str, Any] | None = None,
    folds: Collection[int] | None = None,
) -> dict[str, Any]:
    """Run protocols on a training run and write ``<run>/eval/<protocol>.json`` plus confusion HTML files.

    Args:
        run_dir: Training run folder (its ``best.json`` gives the config).
        protocols: Subset of `PROTOCOLS`.
        weights: Weights to evaluate (default ``<run>/best.safetensors``); the CK+ fine-tuning starts from
            ``<run>/best.safetensors`` (the float32 training state) where the run has one, else from `weights`.
        baseline_run: Softmax-baseline run for the identity probe (skipped with a warning when absent).
        data_dir: Folder of the shared data sets.
        config: The run's config with changes for this evaluation (e.g. another CK+ ``finetune``); default the
            run's own config.
        folds: CK+ folds (0-based) this call fine-tunes (`ckplus_cross_validation`); ``ckplus.json`` is written
            once all ten are stored.

    Returns:
        Protocol name -> results.
    """
    run_dir = Path(run_dir)
    unknown = sorted(set(protocols) - set(PROTOCOLS))
    if unknown:
        raise ValueError(f"Unknown protocols {unknown}; available: {list(PROTOCOLS)}")
    config = config or run_config(run_dir)
    if "generator_checkpoint" not in config:
        inapplicable = [protocol for protocol in protocols if protocol in GENERATIVE_PROTOCOLS]
        if inapplicable and len(protocols) == len(inapplicable):
            raise ValueError(f"{config['method']} has no neutral-face generator: protocol {inapplicable[0]!r}")
        protocols = tuple(protocol for protocol in protocols if protocol not in GENERATIVE_PROTOCOLS)
    weights = Path(weights or run_dir / "best.safetensors")
    model = load_trained(config["model"], weights, config.get("model_kwargs"))
    out = run_dir / "eval"
    results: dict[str, Any] = {}
    for protocol in protocols:
        if protocol == "fer2013":
            result = evaluate_fer2013(model, data_dir)
        elif protocol == "ferplus":
            result = evaluate_ferplus(model, data_dir)
        elif protocol == "cross":
            result = evaluate_cross(model, data_dir)
        elif protocol == "ckplus":
            start = run_dir / "best.safetensors" if (run_dir / "best.safetensors").is_file() else weights
            report = ckplus_cross_validation(
                config, float_tensors(start), out / "ckplus_folds", data_dir=data_dir, folds=folds
            )
            if report is None:
                continue
            result = {"ckplus7": report}
        elif protocol == "expression_probe":
            result = expression_probe(model, data_dir)
        elif protocol == "neutral":
            result = evaluate_trained(model, config, out, data_dir)
        else:
            baseline = None
            if baseline_run is not None and (Path(baseline_run) / "best.safetensors").is_file():
                baseline_config = run_config(baseline_run)
                baseline = load_trained(
                    baseline_config["model"],
                    Path(baseline_run) / "best.safetensors",
                    baseline_config.get("model_kwargs"),
                )
            else:
                logger.warning("No softmax baseline run at %s; the probe reports this model only", baseline_run)
            result = identity_probe(model, baseline, data_dir)
            result["baseline_run"] = str(baseline_run) if baseline is not None else None
        result = {**result, "weights": str(weights)} if protocol == "probe" else result
        if protocol not in ("probe", "expression_probe", "neutral"):
            _write_confusions(result, protocol, out)
        write_json(result, out / f"{protocol}.json")
        logger.info("%s: %s", protocol, _headline(result))
        results[protocol] = result
    return results


def _headline(result: dict[str, Any]) -> str:
    if "pixels" in result:
        return ", ".join(f"{key} {value:.4f}" for key, value in result.items() if isinstance(value, float))
    return ", ".join(
        f"{name} acc {report['accuracy']:.4f} / mean class {report['mean_class_accuracy']:.4f}"
        for name, report in result.items()
        if isinstance(report, dict) and "accuracy" in report
    )
