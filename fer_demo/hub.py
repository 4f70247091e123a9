"""The weight store: map weight file names to verified local safetensors files and state dicts.

Trained weights live in ``weights/`` at the repository root (``FER_DEMO_WEIGHTS_DIR`` overrides the folder) as
``<model>.safetensors`` files, described by ``weights/manifest.json``::

    {
      "format": 1,
      "hub": {"repo_id": "fer-demo/fer-demo-weights", "revision": "<40-hex commit or a tag>"},
      "files": {
        "dacl.safetensors": {"sha256": "<64 hex>", "size": 12345, "model": "dacl", "dtype": "float16"}
      }
    }

- ``format``: manifest version, always 1.
- ``hub``: the Hugging Face Hub model repository and revision the files are published to (``python -m training
  publish`` uploads them and pins the commit it made, `write_manifest_hub`). The environment variables
  ``FER_DEMO_HUB_REPO`` and ``FER_DEMO_HUB_REVISION`` override them; ``HF_ENDPOINT`` is read at call time.
- ``files``: one entry per weight file, keyed by its bare file name, with its lowercase hex ``sha256`` and its
  ``size`` in bytes. ``model`` names the model the file belongs to; every other key (``dtype``, ``data``,
  ``config``, ``git_commit``, ``metrics``, ``calibration``, ``license``, ...) is free-form provenance. ``files`` may
  be empty.
- ``ensemble`` (optional): how `fer_demo.Predictor` combines the models, ``{"weights": {model: weight},
  "sha256": {model: sha256 of the weight file it was fitted with}, ...}`` (`write_manifest_ensemble`).

Only files listed in the manifest are ever loaded, and only when their SHA-256 matches the entry.
`resolve_weights` looks for a file, in this order:

1. the local Hugging Face cache (`WeightSource.CACHE`), without any network request. The manifest pins the
   content, so a cached copy with the listed hash is exactly the file the Hub would serve;
2. the Hub (`WeightSource.HUB`), unless offline (``HF_HUB_OFFLINE=1`` or ``offline=True``); a cached copy that
   failed verification is downloaded again. A single HEAD request without retries probes the Hub first, so an
   unreachable Hub costs one short connection attempt (``etag_timeout`` 5 s, ``HF_HUB_ETAG_TIMEOUT`` overrides it)
   instead of the ~23 s of retries huggingface_hub makes before giving up;
3. the bundled copy ``weights/<file>`` (`WeightSource.BUNDLED`).

A cache or Hub copy that fails verification, and any Hub failure, logs one warning and falls through to the next
source; a bundled copy that fails verification raises `ChecksumError`. Weights are read with safetensors only, which
stores raw tensors and cannot run code on load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx2
import safetensors
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import EntryNotFoundError, HFValidationError, LocalEntryNotFoundError
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

DEFAULT_HUB_REPO = "fer-demo/fer-demo-weights"
"""Hub repository of the published weights when neither the manifest nor ``FER_DEMO_HUB_REPO`` names one."""
DEFAULT_HUB_REVISION = "main"
"""Revision written into a newly created manifest; ``python -m training publish`` pins the commit it makes."""
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
ETAG_TIMEOUT_S = 5.0
"""Seconds to wait for the Hub's answer to a metadata request before falling back."""

_DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
_CHUNK_BYTES = 1 << 20
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_TRUE_VALUES = frozenset({"1", "on", "yes", "true"})
# OSError covers HfHubHTTPError (RepositoryNotFoundError, RevisionNotFoundError, RemoteEntryNotFoundError, ...),
# LocalEntryNotFoundError and OfflineModeIsEnabled; httpx2.HTTPError covers refused connections and timeouts.
_HUB_ERRORS = (httpx2.HTTPError, OSError, EntryNotFoundError, HFValidationError)


class WeightSource(StrEnum):
    """Where a resolved weight file came from."""

    HUB = "hub"
    CACHE = "cache"
    BUNDLED = "bundled"


@dataclass(frozen=True, slots=True)
class ResolvedWeights:
    """A local weight file whose content matched its manifest entry (`entry`, which also holds its provenance)."""

    path: Path
    source: WeightSource
    sha256: str
    filename: str
    entry: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


class WeightsError(RuntimeError):
    """Weights cannot be used; the message names the file and how to fix it."""


class WeightsNotFoundError(WeightsError):
    """No source has the weight file, or the manifest does not list it."""


class ChecksumError(WeightsError):
    """A weight file's content does not match its manifest entry."""


@dataclass(frozen=True, slots=True)
class _HubTarget:
    repo_id: str
    revision: str
    endpoint: str | None

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.revision}"


def default_weights_dir() -> Path:
    """The weight store folder: ``FER_DEMO_WEIGHTS_DIR`` if set, else ``weights/`` at the repository root."""
    override = os.environ.get("FER_DEMO_WEIGHTS_DIR")
    return Path(override).expanduser() if override else _DEFAULT_WEIGHTS_DIR


def load_manifest(weights_dir: Path | None = None) -> dict[str, Any]:
    """Read and validate ``manifest.json`` of the weight store.

    Args:
        weights_dir: Weight store folder; `default_weights_dir()` when None.

    Returns:
        The manifest as parsed JSON, with the structure described in the module docstring.

    Raises:
        WeightsError: The manifest is missing, unreadable, not valid JSON or not structured as documented.
    """
    path = Path(weights_dir or default_weights_dir()) / MANIFEST_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise WeightsError(
            f"Weights manifest {path} is missing. It ships with the repository: restore it with "
            f"`git checkout -- weights/{MANIFEST_NAME}`, or set FER_DEMO_WEIGHTS_DIR to a folder that has one."
        ) from None
    except OSError as error:
        raise WeightsError(f"Cannot read weights manifest {path}: {error}.") from error
    try:
        manifest = json.loads(raw)
    except ValueError as error:
        raise WeightsError(
            f"Weights manifest {path} is not valid JSON ({error}). Fix it or restore it from version control."
        ) from error
    problems = _manifest_problems(manifest)
    if problems:
        raise WeightsError(
            f"Weights manifest {path} is malformed: {'; '.join(problems)}. "
            "See weights/README.md and the fer_demo.hub docstring for the format."
        )
    return manifest


def sha256_file(path: Path) -> str:
    """Lowercase hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        while chunk := stream.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def content_problem(path: Path, entry: dict[str, Any], *, always_hash: bool = True) -> str | None:
    """Why a file does not match its manifest entry, or None when it does.

    A size mismatch is reported without hashing unless ``always_hash`` asks for the actual hash too.
    """
    expected = entry["sha256"]
    size = path.stat().st_size
    if size != entry["size"] and not always_hash:
        return f"size {size} bytes, expected {entry['size']} bytes"
    actual = sha256_file(path)
    if actual == expected and size == entry["size"]:
        return None
    return f"expected sha256 {expected} ({entry['size']} bytes), got sha256 {actual} ({size} bytes)"


def resolve_weights(
    filename: str,
    *,
    weights_dir: Path | None = None,
    offline: bool | None = None,
    cache_dir: Path | None = None,
) -> ResolvedWeights:
    """Find a verified local copy of a weight file: Hugging Face cache, then the Hub, then ``weights/``.

    Args:
        filename: Bare file name listed in the manifest, e.g. ``"dacl.safetensors"``.
        weights_dir: Weight store folder; `default_weights_dir()` when None.
        offline: Skip the Hub (the local cache is still used). When None, offline if ``HF_HUB_OFFLINE`` is set now
            or was set when huggingface_hub was imported.
        cache_dir: Hugging Face Hub cache folder; huggingface_hub's default (``HF_HUB_CACHE``) when None.

    Returns:
        The verified file and where it came from.

    Raises:
        WeightsNotFoundError: The manifest does not list the file, or no source has it.
        ChecksumError: Only the bundled copy is available and its content does not match the manifest.
        WeightsError: The manifest is missing or malformed.
    """
    weights_dir = Path(weights_dir or default_weights_dir())
    manifest = load_manifest(weights_dir)
    entry = manifest["files"].get(filename)
    model = _model_name(filename, entry)
    if entry is None:
        raise WeightsNotFoundError(
            f"No trained weights for model '{model}' ({filename}): not in {weights_dir / MANIFEST_NAME}. "
            f"Train and export them with `python -m training export {model}`, which writes the file and its "
            "manifest entry, or set FER_DEMO_WEIGHTS_DIR to a weight store whose manifest lists it."
        )
    hub = _hub_target(manifest)
    offline = _offline_from_env() if offline is None else offline
    misses: list[str] = []

    cached = _from_cache(hub, filename, cache_dir, misses)
    if cached is not None:
        resolved = _accept(cached, WeightSource.CACHE, filename, entry, misses)
        if resolved is not None:
            return resolved
    if offline:
        misses.append("the Hub was not tried (offline)")
    else:
        downloaded = _from_hub(hub, filename, cache_dir, misses, force=cached is not None)
        if downloaded is not None:
            resolved = _accept(downloaded, WeightSource.HUB, filename, entry, misses)
            if resolved is not None:
                return resolved

    bundled = weights_dir / filename
    if bundled.is_file():
        problem = content_problem(bundled, entry, always_hash=True)
        if problem is not None:
            raise ChecksumError(
                f"Bundled weights file '{filename}' at {bundled} does not match {weights_dir / MANIFEST_NAME}: "
                f"{problem}. Other sources: {'; '.join(misses)}. The file is corrupt or stale: restore it from "
                f"version control, or re-export it with `python -m training export {model}`, which rewrites the "
                "file and its manifest entry."
            )
        return ResolvedWeights(bundled, WeightSource.BUNDLED, entry["sha256"], filename, entry)
    misses.append(f"not bundled at {bundled}")
    raise WeightsNotFoundError(
        f"No trained weights for model '{model}' ({filename}): listed in {weights_dir / MANIFEST_NAME} but "
        f"{'; '.join(misses)}. Connect to the Hub (unset HF_HUB_OFFLINE), or train and export them with "
        f"`python -m training export {model}`."
    )


def load_state_dict(
    filename: str,
    *,
    weights_dir: Path | None = None,
    offline: bool | None = None,
    cache_dir: Path | None = None,
) -> tuple[dict[str, torch.Tensor], ResolvedWeights]:
    """Resolve a weight file (see `resolve_weights`) and read its tensors onto the CPU.

    Returns:
        The state dict and the resolved file.

    Raises:
        WeightsError: Any `resolve_weights` error, or the verified file is not a readable safetensors file.
    """
    resolved = resolve_weights(filename, weights_dir=weights_dir, offline=offline, cache_dir=cache_dir)
    try:
        state_dict = load_file(resolved.path, device="cpu")
    except (safetensors.SafetensorError, OSError, ValueError) as error:
        raise WeightsError(
            f"Weights file '{filename}' ({resolved.source.value}: {resolved.path}) matches its manifest hash but is "
            f"not a valid safetensors file: {error}. Re-export it with "
            f"`python -m training export {_model_name(filename, None)}`."
        ) from error
    return state_dict, resolved


def save_state_dict(state_dict: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write tensors as a safetensors file atomically (temporary file, then ``os.replace``).

    Args:
        state_dict: Contiguous tensors that do not share memory, as `safetensors.torch.save_file` requires.
        path: Destination file; its folder is created if needed.
        metadata: At most one string key/value stored in the safetensors header (safetensors writes several keys
            in an order that changes from process to process, so the same tensors would get another SHA-256).

    Raises:
        ValueError: More than one metadata key.
    """
    if metadata and len(metadata) > 1:
        raise ValueError(
            f"save_state_dict stores at most one metadata key (got {sorted(metadata)}): with more, "
            "the file's bytes and SHA-256 would change between runs; record the rest in the manifest."
        )
    _write_atomically(Path(path), lambda tmp: save_file(state_dict, tmp, metadata=metadata))


def write_manifest_entry(
    filename: str, path: Path, *, weights_dir: Path | None = None, **metadata: Any
) -> dict[str, Any]:
    """Record a weight file in the manifest with its SHA-256, its size and free-form metadata.

    The manifest is created with the default Hub target when missing, and rewritten atomically with sorted keys.

    Args:
        filename: Bare file name the entry is listed under, e.g. ``"dacl.safetensors"``.
        path: The file to hash.
        weights_dir: Weight store folder; `default_weights_dir()` when None.
        **metadata: JSON-serialisable entry fields, e.g. ``model``, ``dtype``, ``data``, ``git_commit``, ``metrics``.

    Returns:
        The entry written.

    Raises:
        ValueError: ``metadata`` sets ``sha256`` or ``size``.
        WeightsError: The existing manifest is malformed, or the file name or ``model`` is invalid.
    """
    reserved = sorted({"sha256", "size"} & metadata.keys())
    if reserved:
        raise ValueError(f"write_manifest_entry computes {', '.join(reserved)} itself; do not pass them.")
    weights_dir = Path(weights_dir or default_weights_dir())
    manifest_path = weights_dir / MANIFEST_NAME
    entry = {**metadata, "sha256": sha256_file(path), "size": Path(path).stat().st_size}
    problems = _entry_problems(filename, entry)
    if problems:
        raise WeightsError(f"Cannot record '{filename}' in {manifest_path}: {'; '.join(problems)}.")
    manifest = _manifest_or_new(weights_dir)
    manifest["files"][filename] = entry
    _write_manifest(manifest_path, manifest)
    logger.info("Recorded %s (sha256 %s, %d bytes) in %s", filename, entry["sha256"], entry["size"], manifest_path)
    return entry


def write_manifest_ensemble(
    weights: dict[str, float], sha256: dict[str, str], *, weights_dir: Path | None = None, **metadata: Any
) -> dict[str, Any]:
    """Record how the models are combined: a weight per model and the weight files it was fitted with.

    Args:
        weights: model name -> non-negative weight.
        sha256: model name -> SHA-256 of the weight file the weight was fitted with.
        weights_dir: Weight store folder; `default_weights_dir()` when None.
        **metadata: JSON-serialisable provenance (method, data, measured accuracy, ...).

    Returns:
        The ``ensemble`` object written.

    Raises:
        WeightsError: The existing manifest is malformed, or a weight is negative or not a number.
    """
    weights_dir = Path(weights_dir or default_weights_dir())
    ensemble = {**metadata, "weights": weights, "sha256": sha256}
    problems = _ensemble_problems(ensemble)
    if problems:
        raise WeightsError(f"Cannot record the ensemble in {weights_dir / MANIFEST_NAME}: {'; '.join(problems)}.")
    manifest = _manifest_or_new(weights_dir)
    manifest["ensemble"] = ensemble
    _write_manifest(weights_dir / MANIFEST_NAME, manifest)
    return ensemble


def write_manifest_hub(repo_id: str, revision: str, *, weights_dir: Path | None = None) -> dict[str, str]:
    """Point the manifest at the Hub repository and revision the files are published to (``hub``).

    Raises:
        WeightsError: The existing manifest is malformed, or `repo_id` or `revision` is not a non-empty string.
    """
    weights_dir = Path(weights_dir or default_weights_dir())
    manifest = _manifest_or_new(weights_dir)
    manifest["hub"] = {"repo_id": repo_id, "revision": revision}
    problems = _manifest_problems(manifest)
    if problems:
        raise WeightsError(f"Cannot record the Hub target in {weights_dir / MANIFEST_NAME}: {'; '.join(problems)}.")
    _write_manifest(weights_dir / MANIFEST_NAME, manifest)
    return manifest["hub"]


def _manifest_or_new(weights_dir: Path) -> dict[str, Any]:
    if (weights_dir / MANIFEST_NAME).exists():
        return load_manifest(weights_dir)
    return {
        "format": MANIFEST_FORMAT,
        "hub": {"repo_id": DEFAULT_HUB_REPO, "revision": DEFAULT_HUB_REVISION},
        "files": {},
    }


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    _write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _manifest_problems(manifest: object) -> list[str]:
    if not isinstance(manifest, dict):
        return [f"the top level is a JSON {type(manifest).__name__}, expected an object"]
    problems = []
    version = manifest.get("format")
    if isinstance(version, bool) or version != MANIFEST_FORMAT:
        problems.append(f"'format' is {version!r}, expected {MANIFEST_FORMAT}")
    hub = manifest.get("hub")
    if isinstance(hub, dict):
        problems.extend(
            f"'hub.{key}' must be a non-empty string"
            for key in ("repo_id", "revision")
            if not isinstance(hub.get(key), str) or not hub[key]
        )
    else:
        problems.append("'hub' must be an object with 'repo_id' and 'revision'")
    files = manifest.get("files")
    if isinstance(files, dict):
        for name, entry in files.items():
            problems.extend(f"files['{name}']: {problem}" for problem in _entry_problems(name, entry))
    else:
        problems.append("'files' must be an object mapping file names to entries")
    if "ensemble" in manifest:
        problems.extend(f"ensemble: {problem}" for problem in _ensemble_problems(manifest["ensemble"]))
    return problems


def _ensemble_problems(ensemble: object) -> list[str]:
    if not isinstance(ensemble, dict) or not isinstance(ensemble.get("weights"), dict):
        return ["must be an object with 'weights' (model -> weight) and 'sha256' (model -> hash)"]
    problems = [
        f"the weight of '{name}' must be a non-negative number"
        for name, weight in ensemble["weights"].items()
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight >= 0
    ]
    hashes = ensemble.get("sha256")
    if not isinstance(hashes, dict) or hashes.keys() != ensemble["weights"].keys():
        problems.append("'sha256' must name the weight file hash of every weighted model")
    return problems


def _entry_problems(name: str, entry: object) -> list[str]:
    problems = []
    if not name or name.startswith(".") or "/" in name or "\\" in name:
        problems.append("the key must be a bare file name inside the weights folder")
    if not isinstance(entry, dict):
        return [*problems, "the entry must be an object"]
    sha256 = entry.get("sha256")
    if not isinstance(sha256, str) or not _SHA256_RE.fullmatch(sha256):
        problems.append("'sha256' must be 64 lowercase hex digits")
    size = entry.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        problems.append("'size' must be a non-negative integer")
    if "model" in entry and (not isinstance(entry["model"], str) or not entry["model"]):
        problems.append("'model' must be a non-empty string")
    return problems


def _model_name(filename: str, entry: dict[str, Any] | None) -> str:
    return entry["model"] if entry and "model" in entry else filename.removesuffix(".safetensors")


def _hub_target(manifest: dict[str, Any]) -> _HubTarget:
    endpoint = os.environ.get("HF_ENDPOINT")
    return _HubTarget(
        repo_id=os.environ.get("FER_DEMO_HUB_REPO") or manifest["hub"]["repo_id"],
        revision=os.environ.get("FER_DEMO_HUB_REVISION") or manifest["hub"]["revision"],
        endpoint=endpoint.rstrip("/") if endpoint else None,
    )


def _offline_from_env() -> bool:
    return hf_constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE_VALUES


def _etag_timeout() -> float:
    # huggingface_hub lets HF_HUB_ETAG_TIMEOUT win over the argument; the probe does the same.
    if hf_constants.HF_HUB_ETAG_TIMEOUT != hf_constants.DEFAULT_ETAG_TIMEOUT:
        return hf_constants.HF_HUB_ETAG_TIMEOUT
    return ETAG_TIMEOUT_S


def _reason(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _from_cache(hub: _HubTarget, filename: str, cache_dir: Path | None, misses: list[str]) -> Path | None:
    try:
        path = hf_hub_download(hub.repo_id, filename, revision=hub.revision, cache_dir=cache_dir, local_files_only=True)
    except LocalEntryNotFoundError:
        misses.append(f"not in the Hugging Face cache for {hub}")
        return None
    except _HUB_ERRORS as error:
        logger.warning("Cannot look up %s in the Hugging Face cache for %s: %s", filename, hub, _reason(error))
        misses.append(f"the Hugging Face cache lookup failed ({_reason(error)})")
        return None
    return Path(path)


def _from_hub(hub: _HubTarget, filename: str, cache_dir: Path | None, misses: list[str], *, force: bool) -> Path | None:
    timeout = _etag_timeout()
    try:
        url = hf_hub_url(hub.repo_id, filename, revision=hub.revision, endpoint=hub.endpoint)
        get_hf_file_metadata(url, timeout=timeout, endpoint=hub.endpoint)
        path = hf_hub_download(
            hub.repo_id,
            filename,
            revision=hub.revision,
            cache_dir=cache_dir,
            endpoint=hub.endpoint,
            etag_timeout=timeout,
            force_download=force,
        )
    except _HUB_ERRORS as error:
        logger.warning(
            "Cannot download %s from the Hugging Face Hub (%s, endpoint %s): %s; falling back.",
            filename,
            hub,
            hub.endpoint or hf_constants.ENDPOINT,
            _reason(error),
        )
        misses.append(f"not downloadable from {hub} ({_reason(error)})")
        return None
    return Path(path)


def _accept(
    path: Path, source: WeightSource, filename: str, entry: dict[str, Any], misses: list[str]
) -> ResolvedWeights | None:
    problem = content_problem(path, entry, always_hash=False)
    if problem is None:
        return ResolvedWeights(path, source, entry["sha256"], filename, entry)
    logger.warning("Ignoring the %s copy of %s at %s: %s; falling back.", source.value, filename, path, problem)
    misses.append(f"the {source.value} copy at {path} does not match the manifest ({problem})")
    return None


def _write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        tmp.chmod(0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
