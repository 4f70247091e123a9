"""Publish the weight store to a Hugging Face Hub model repository and pin the manifest to that commit.

`publish` verifies every file that ``weights/manifest.json`` lists against its SHA-256, stages those files, the
manifest and a Hub model card (``README.md``, generated from the manifest) in a folder, and uploads the folder in one
commit with ``HfApi.upload_folder`` (weight files of earlier commits that are no longer listed are deleted in the
same commit). It then writes the repository and that commit into the manifest's ``hub`` field, so that the app
downloads exactly the files just published; commit the manifest afterwards.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, HfApi

from fer_demo.hub import (
    MANIFEST_NAME,
    ChecksumError,
    WeightsNotFoundError,
    content_problem,
    default_weights_dir,
    load_manifest,
    write_manifest_hub,
)

logger = logging.getLogger(__name__)

CARD_NAME = "README.md"


def stage(out: Path, *, weights_dir: Path | None = None, repo_id: str | None = None, branch: str = "main") -> list[str]:
    """Copy the files the manifest lists, the manifest and the model card into `out`.

    The staged manifest names `repo_id` (default: the manifest's) and `branch` as its Hub target.

    Returns:
        The staged file names.

    Raises:
        fer_demo.hub.WeightsError: The manifest is malformed, or a listed file is missing or fails its SHA-256.
    """
    weights_dir = Path(weights_dir or default_weights_dir())
    manifest = load_manifest(weights_dir)
    names = sorted(manifest["files"])
    for name in names:
        source, entry = weights_dir / name, manifest["files"][name]
        if not source.is_file():
            raise WeightsNotFoundError(f"{source} is listed in the manifest but missing; export it again first.")
        problem = content_problem(source, entry)
        if problem is not None:
            raise ChecksumError(
                f"{source} does not match its manifest entry: {problem}. Export it again or restore it from version "
                "control before publishing."
            )
        shutil.copyfile(source, out / name)
    shutil.copyfile(weights_dir / MANIFEST_NAME, out / MANIFEST_NAME)
    write_manifest_hub(repo_id or manifest["hub"]["repo_id"], branch, weights_dir=out)
    (out / CARD_NAME).write_text(model_card(manifest), encoding="utf-8")
    return [*names, MANIFEST_NAME, CARD_NAME]


def publish(
    *,
    weights_dir: Path | None = None,
    repo_id: str | None = None,
    branch: str = "main",
    private: bool = False,
    api: HfApi | None = None,
) -> CommitInfo:
    """Upload the weight store in one commit and pin the local manifest's ``hub`` to it.

    Args:
        weights_dir: Weight store folder; `default_weights_dir()` when None.
        repo_id: Hub model repository (created if missing); the manifest's when None.
        branch: Branch the commit goes to.
        private: Create a missing repository as private.
        api: The Hub client (a default `HfApi`, which reads the token from ``HF_TOKEN`` or ``hf auth login``).

    Returns:
        The commit; its ``oid`` is now the manifest's ``hub.revision``.

    Raises:
        fer_demo.hub.WeightsError: See `stage`; nothing is uploaded then.
        huggingface_hub.errors.HfHubHTTPError, OSError: The Hub refused or could not be reached (offline mode
            included); the manifest is left unchanged.
    """
    weights_dir = Path(weights_dir or default_weights_dir())
    repo_id = repo_id or load_manifest(weights_dir)["hub"]["repo_id"]
    api = api or HfApi()
    with tempfile.TemporaryDirectory(prefix="fer-demo-publish-") as folder:
        names = stage(Path(folder), weights_dir=weights_dir, repo_id=repo_id, branch=branch)
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            repo_type="model",
            folder_path=folder,
            revision=branch,
            commit_message=f"fer-demo weights: {', '.join(name for name in names if name.endswith('.safetensors'))}",
            delete_patterns="*.safetensors",
        )
    write_manifest_hub(repo_id, commit.oid, weights_dir=weights_dir)
    logger.info("Published %d files to %s@%s; %s now pins that commit", len(names), repo_id, commit.oid, MANIFEST_NAME)
    return commit


def model_card(manifest: dict[str, Any]) -> str:
    """The Hub repository's README: metadata header, one row per listed file with its measured accuracy, licence."""
    rows = []
    for name, entry in sorted(manifest["files"].items()):
        metrics = entry.get("metrics", {})
        rows.append(
            f"| `{name}` | {entry.get('model', '')} | {entry.get('kind', 'weights')} | {entry.get('dtype', '')} "
            f"| {entry['size']:,} | `{entry['sha256'][:16]}…` | {_percent(metrics.get('fer2013_private_test'))} "
            f"| {_percent(metrics.get('ckplus7_10fold'))} |"
        )
    ensemble = manifest.get("ensemble", {})
    pool = ensemble.get("accuracy", {}).get("PrivateTest", {}).get("pool")
    if pool is not None:
        weights = ", ".join(f"{name} {weight:.2f}" for name, weight in sorted(ensemble["weights"].items()))
        ckplus = ensemble.get("ckplus7_10fold")
        pooled = f" ({', '.join(sorted(ckplus['models']))})" if ckplus and "models" in ckplus else ""
        rows.append(
            f"| (app's ensemble) | pool | weights {weights} | | | | {100 * pool:.2f} | {_percent(ckplus)}{pooled} |"
        )
    licences = sorted({entry["license"] for entry in manifest["files"].values() if entry.get("license")})
    return "\n".join(
        [
            "---",
            "license: other",
            "license_name: research-only",
            "library_name: pytorch",
            "pipeline_tag: image-classification",
            "tags:",
            "- facial-expression-recognition",
            "- safetensors",
            "- fer-demo",
            "---",
            "",
            "# fer-demo weights",
            "",
            "Trained weights of the four identity-disentangled facial expression recognition methods of fer-demo "
            "(DACL, ED²L, GCNet, IDFERM) and their t-SNE reference maps. The project's `fer_demo` "
            f"package loads them from this repository at the commit its `{MANIFEST_NAME}` pins, and only after "
            "their SHA-256 matches the manifest. Every file is safetensors.",
            "",
            "| file | model | kind | dtype | bytes | SHA-256 | FER2013 PrivateTest % | CK+ 10-fold % |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "FER2013 PrivateTest: 3,589 faces, logits averaged over the face and its mirror image. CK+: 7 classes, "
            "subject-independent 10-fold cross-validation, fine-tuned per fold. How each file was trained (data, "
            f"config, git commit) and everything else measured on it (FER+, cross-data set, identity probe, "
            f"calibration) is in `{MANIFEST_NAME}`; the model cards and the exact commands are in the project "
            "(`docs/MODEL_CARDS.md`, `training/README.md`).",
            "",
            "## Licence",
            "",
            *[f"- {licence}" for licence in licences],
            "",
        ]
    )


def _percent(metric: dict[str, Any] | None) -> str:
    return "–" if not metric or "accuracy" not in metric else f"{100 * metric['accuracy']:.2f}"
