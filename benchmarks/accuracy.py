"""Accuracy of every fer-demo model, their ensemble and the peer packages on the same data-set faces.

Ours: `Predictor.predict_crops` (the path of the app and of the manifest numbers) on each set; the ensemble is
`Predictor.ensemble` of the models' probabilities, as the app shows it. CK+ 10-fold (fine-tuned per fold) numbers
are read from the weight manifest, where `python -m training export` records them (the ensemble's where
`python -m training calibrate --ckplus-folds` pooled the models' folds). Peers: each runner classifies
the same crops in its own environment (see `benchmarks.peers`); its class names are mapped to ours by name, and a
class it lacks is reported, its faces counted as errors.

Metrics per set: accuracy, mean per-class accuracy, per-class accuracy and the confusion matrix (rows: true class
in `training.data.CLASSES`, columns: predicted class).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common
from benchmarks.datasets import EVAL_SETS, QUICK_SETS, load_sets
from benchmarks.peers import PEERS, SKIPPED, PeerError, ensure_env, result_name, run_runner
from fer_demo import Predictor
from training.data import CLASSES, FaceSet
from training.metrics import summarize

logger = logging.getLogger(__name__)

QUICK_LIMIT = 300
"""Faces per set in the quick run."""
PEER_TIMEOUT_S = 3 * 3600
MANIFEST_TOLERANCE = 0.003
"""Largest accepted gap between the accuracy measured here and the manifest's (0.3 points)."""

SYNONYMS = {
    "anger": "angry",
    "disgusted": "disgust",
    "fearful": "fear",
    "happiness": "happy",
    "sadness": "sad",
    "surprised": "surprise",
    "neutrality": "neutral",
    "contemptuous": "contempt",
}
"""Other spellings of our class names found in peers' label lists."""


def class_mapping(names: list[str]) -> np.ndarray:
    """Index into `CLASSES` of each of a classifier's output names.

    Raises:
        ValueError: A name that matches none of our classes.
    """
    mapped = []
    for name in names:
        key = SYNONYMS.get(name.strip().lower(), name.strip().lower())
        if key not in CLASSES:
            raise ValueError(f"Class {name!r} has no counterpart in {list(CLASSES)}")
        mapped.append(CLASSES.index(key))
    return np.asarray(mapped)


def score(probs: np.ndarray, names: list[str], faces: FaceSet) -> dict[str, Any]:
    """Metrics of (N, K) probabilities over classes `names` against a set's labels.

    The prediction is the argmax over the classifier's own outputs. Classes present in the set that the classifier
    cannot output are listed under ``missing_classes``; their ``missing_faces`` all count as errors.
    """
    mapping = class_mapping(names)
    report = summarize(faces.labels, mapping[probs.argmax(1)], CLASSES)
    present = np.unique(faces.labels)
    missing = [CLASSES[k] for k in present if k not in set(mapping.tolist())]
    report["missing_classes"] = missing
    report["missing_faces"] = int(np.isin(faces.labels, [CLASSES.index(name) for name in missing]).sum())
    return report


def evaluate_ours(
    predictor: Predictor,
    sets: dict[str, FaceSet],
    weights: dict[str, Any],
    complete: bool = True,
    ensemble_record: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Reports of each loaded model and of their ensemble on every set.

    Args:
        predictor: The loaded models.
        sets: Evaluation sets.
        weights: Per model, its `benchmarks.common.weights_info` entry.
        complete: Whether the sets are complete, so FER2013 PrivateTest can be checked against the manifest.
        ensemble_record: The manifest's ensemble record; its CK+ 10-fold report is the ensemble's when it was fitted
            for exactly the loaded weight files.
    """
    models: dict[str, Any] = {}
    ensemble: dict[str, dict[str, np.ndarray]] = {name: {} for name in sets}
    for name, model in predictor.models.items():
        single = Predictor({name: model}, predictor.detector)
        entry = weights.get(name) or {}
        results, seconds = {}, {}
        for set_name, faces in sets.items():
            start = time.perf_counter()
            probs = single.predict_crops(faces.images)[name]
            seconds[set_name] = time.perf_counter() - start
            results[set_name] = score(probs, list(model.card.classes), faces)
            ensemble[set_name][name] = probs
            logger.info("%s on %s: accuracy %.4f", name, set_name, results[set_name]["accuracy"])
        results.update(manifest_results(entry.get("metrics", {})))
        models[name] = {
            "kind": "ours",
            "title": model.card.title,
            "trained": bool(entry.get("trained")),
            "sha256": entry.get("sha256"),
            "classes": list(model.card.classes),
            "seconds": seconds,
            "manifest_check": manifest_check(results, entry.get("metrics", {})) if complete else None,
            "results": results,
        }
    if len(predictor.models) > 1:
        loaded = {name: (weights.get(name) or {}).get("sha256") for name in predictor.models}
        fitted = ensemble_record if ensemble_record and ensemble_record.get("sha256") == loaded else {}
        results = {
            set_name: score(predictor.ensemble(probs), list(CLASSES[:7]), sets[set_name])
            for set_name, probs in ensemble.items()
        }
        models["ensemble"] = {
            "kind": "ensemble",
            "title": f"log-linear pool of {', '.join(predictor.models)}",
            "weights": predictor.ensemble_weights,
            "trained": all(m["trained"] for m in models.values()),
            "classes": list(CLASSES[:7]),
            "results": {**results, **manifest_results(fitted, "python -m training calibrate --ckplus-folds")},
        }
    return models


def manifest_results(metrics: dict[str, Any], command: str = "python -m training evaluate/export") -> dict[str, Any]:
    """The CK+ 10-fold report recorded in a model's manifest metrics (or the ensemble record), marked with its
    source."""
    report = metrics.get("ckplus7_10fold")
    if not report:
        return {}
    return {"ckplus7_10fold": {**report, "source": f"weights/manifest.json ({command})"}}


def manifest_check(results: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any] | None:
    """FER2013 PrivateTest accuracy measured here vs the manifest's, within `MANIFEST_TOLERANCE`."""
    recorded = (metrics.get("fer2013_private_test") or {}).get("accuracy")
    measured = (results.get("fer2013_private") or {}).get("accuracy")
    if recorded is None or measured is None:
        return None
    ok = abs(measured - recorded) <= MANIFEST_TOLERANCE
    if not ok:
        logger.warning("FER2013 PrivateTest %.4f differs from the manifest's %.4f", measured, recorded)
    return {"manifest": recorded, "measured": measured, "within_tolerance": ok, "tolerance": MANIFEST_TOLERANCE}


def evaluate_peers(sets: dict[str, FaceSet], names: tuple[str, ...], build: bool = True) -> dict[str, Any]:
    """Reports of each peer variant on every set; a peer that cannot be built or run is reported with the reason."""
    models: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fer-demo-peers-") as tmp:
        source = Path(tmp) / "faces.npz"
        np.savez(source, **{name: faces.images for name, faces in sets.items()})
        for peer in names:
            spec = PEERS[peer]
            try:
                if build:
                    ensure_env(spec)
                for variant in spec.variants:
                    target = Path(tmp) / f"{peer}-{variant}.npz"
                    start = time.perf_counter()
                    run_runner(spec, ["accuracy", str(source), str(target), "--variant", variant], PEER_TIMEOUT_S)
                    info = common.load_result(target.with_suffix(".json"))
                    with np.load(target) as probs:
                        results = {name: score(probs[name], info["classes"], faces) for name, faces in sets.items()}
                    models[result_name(spec, variant)] = {
                        "kind": "peer",
                        "title": f"{spec.package} ({variant})",
                        "package": spec.package,
                        "variant": variant,
                        "model": spec.model,
                        "license": spec.license,
                        "url": spec.url,
                        "notes": spec.notes,
                        "classes": info["classes"],
                        "runner": info,
                        "wall_seconds": time.perf_counter() - start,
                        "results": results,
                    }
                    logger.info("%s: %s", result_name(spec, variant), _headline(results))
            except PeerError as error:
                logger.error("%s", error)
                models[peer] = {"kind": "peer", "package": spec.package, "error": str(error)}
    return models


def _headline(results: dict[str, Any]) -> str:
    return ", ".join(f"{name} {report['accuracy']:.4f}" for name, report in results.items() if "accuracy" in report)


def cached_peers(folder: Path, source: Path | None = None) -> tuple[dict[str, Any], str | None]:
    """Peer results of `source`, or of today's newest accuracy result in `folder` (for ``--ours-only``)."""
    if source is None:
        source = common.latest_result("accuracy", folder)
        if source is None or not source.name.startswith(common.now().date().isoformat()):
            return {}, None
    result = common.load_result(source)
    peers = {name: model for name, model in result["models"].items() if model.get("kind") == "peer"}
    return peers, (Path(source).name if peers else None)


def run(
    *,
    quick: bool = False,
    peers: tuple[str, ...] | None = None,
    ours_only: bool = False,
    peers_only: bool = False,
    peers_from: Path | None = None,
    limit: int | None = None,
    data_dir: Path | None = None,
    out_dir: Path = common.RESULTS_DIR,
    predictor: Predictor | None = None,
    build_envs: bool = True,
    argv: list[str] | None = None,
) -> Path:
    """Measure accuracy and write ``<out_dir>/YYYY-MM-DD-<sha>-accuracy.json``.

    Args:
        quick: Our models only, on `QUICK_LIMIT` faces of the `QUICK_SETS` (the CI run).
        peers: Peers to run (all of `benchmarks.peers.PEERS` when None); ignored when `quick` or `ours_only`.
        ours_only: Run our models only and copy the peers' results from `peers_from`, by default today's newest
            accuracy result in `out_dir`.
        peers_only: Run the peers only.
        peers_from: Accuracy result whose peer results `ours_only` copies.
        limit: Faces per set (a seeded sample); None for all.
        data_dir: Folder of the shared data sets.
        out_dir: Where the result goes.
        predictor: A loaded predictor (`Predictor.load()` when None and our models run).
        build_envs: Build missing peer environments.
        argv: The command line to record (by default the one equivalent to the arguments).

    Returns:
        The path of the result file.
    """
    if argv is None:
        argv = ["accuracy", *(["--quick"] if quick else []), *(["--ours-only"] if ours_only else [])]
        argv += [*(["--peers-only"] if peers_only else []), *(["--limit", str(limit)] if limit is not None else [])]
        argv += [*(["--peers", *peers] if peers is not None and not quick else [])]
    metadata = common.run_metadata(argv)
    set_names = QUICK_SETS if quick else tuple(EVAL_SETS)
    sets = load_sets(set_names, data_dir, QUICK_LIMIT if quick and limit is None else limit)
    weights = metadata["weights"]["models"]
    models: dict[str, Any] = {}
    if not peers_only:
        predictor = predictor or Predictor.load()
        complete = not quick and limit is None
        models.update(evaluate_ours(predictor, sets, weights, complete, metadata["weights"]["ensemble"]))
    peers_source = None
    if ours_only:
        cached, peers_source = cached_peers(out_dir, peers_from)
        models.update(cached)
        if peers_source is None:
            logger.warning("No peer results to copy (%s); the result has ours only", peers_from or f"today, {out_dir}")
        else:
            logger.info("Peer results copied from %s, not measured in this run", peers_source)
    elif not quick:
        models.update(evaluate_peers(sets, tuple(PEERS) if peers is None else peers, build_envs))
    metadata["machine"]["loadavg_end"] = [round(value, 2) for value in os.getloadavg()]
    result = {
        "kind": "accuracy",
        "mode": "quick" if quick else "full",
        **metadata,
        "pipeline_only": [name for name, model in models.items() if model["kind"] == "ours" and not model["trained"]],
        "unavailable": {} if predictor is None else predictor.unavailable,
        "peers_source": peers_source,
        "peers_skipped": SKIPPED,
        "classes": list(CLASSES),
        "sets": {
            name: {
                "title": EVAL_SETS[name].title,
                "description": EVAL_SETS[name].description,
                "data": faces.name,
                "n": len(faces),
                "class_counts": faces.class_counts().tolist(),
            }
            for name, faces in sets.items()
        },
        "models": models,
    }
    return common.write_result(result, common.result_path("accuracy", metadata, out_dir))
