"""Run metadata (commit, machine, load, versions, weights) and the dated result files under ``benchmarks/results/``."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import shlex
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from fer_demo.hub import WeightsError, default_weights_dir, load_manifest
from fer_demo.models import get_card, list_models

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
GENERATED = ("benchmarks/results", "README.md", "docs/MODEL_CARDS.md")
"""What `python -m benchmarks` writes itself, relative to `ROOT`."""
DISTRIBUTIONS = ("torch", "numpy", "mediapipe", "opencv-contrib-python", "gradio", "plotly", "openTSNE", "scikit-learn")


def now() -> dt.datetime:
    """The current UTC time (result dates and file names are in UTC)."""
    return dt.datetime.now(dt.UTC)


def git_commit() -> dict[str, Any]:
    """HEAD commit, its short form and whether the working tree had changes (None outside a git checkout).

    Result files and the generated documents do not count as changes: a run writes them itself (the latency
    result exists before the accuracy run of the same `all` starts).
    """

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        changes = git("status", "--porcelain", "--", ".", *(f":!{path}" for path in GENERATED))
        return {"commit": commit, "short": commit[:7], "dirty": bool(changes)}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "short": "nogit", "dirty": None}


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """CPU model, cores available to this process, memory, OS and the load average now."""
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        pages = 0
    return {
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(pages / 2**30, 1),
        "os": platform.platform(),
        "loadavg": [round(value, 2) for value in os.getloadavg()],
        "nice": os.nice(0),
    }


def versions(distributions: tuple[str, ...] = DISTRIBUTIONS) -> dict[str, str | None]:
    """Python and the installed versions of the main distributions."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in distributions:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def weights_info() -> dict[str, Any]:
    """Per model: its manifest entry's SHA-256, data, metrics and calibration, and whether it is a trained model;
    and the manifest's ensemble record.

    An entry without training provenance (``data``) is an untrained placeholder: results from it measure the
    pipeline only.
    """
    folder = default_weights_dir()
    try:
        manifest = load_manifest(folder)
    except WeightsError as error:
        logger.warning("No usable weights manifest: %s", error)
        manifest = {}
    files = manifest.get("files", {})
    models = {}
    for name in list_models():
        entry = files.get(get_card(name).weight_file)
        models[name] = (
            None
            if entry is None
            else {
                "sha256": entry.get("sha256"),
                "dtype": entry.get("dtype"),
                "data": entry.get("data"),
                "git_commit": entry.get("git_commit"),
                "trained": bool(entry.get("data")),
                "metrics": entry.get("metrics", {}),
                "calibration": entry.get("calibration"),
            }
        )
    return {"folder": str(folder), "models": models, "ensemble": manifest.get("ensemble")}


def run_metadata(argv: list[str]) -> dict[str, Any]:
    """Everything a result file records about how it was made; `argv` is the ``python -m benchmarks`` command line."""
    env = " ".join(f"{key}={shlex.quote(os.environ[key])}" for key in ("FER_DEMO_WEIGHTS_DIR",) if key in os.environ)
    command = "python -m benchmarks " + shlex.join(argv)
    return {
        "date": now().isoformat(timespec="seconds"),
        "command": f"{env} {command}" if env else command,
        "git": git_commit(),
        "machine": machine(),
        "versions": versions(),
        "weights": weights_info(),
    }


def result_path(kind: str, metadata: dict[str, Any], folder: Path = RESULTS_DIR) -> Path:
    """``<folder>/YYYY-MM-DD-<shortsha>-<kind>.json`` for the date and commit recorded in `metadata`."""
    return Path(folder) / f"{metadata['date'][:10]}-{metadata['git']['short']}-{kind}.json"


def write_result(result: dict[str, Any], path: Path) -> Path:
    """Write a result dictionary as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    logger.info("Wrote %s", path)
    return path


def latest_result(kind: str, folder: Path = RESULTS_DIR) -> Path | None:
    """The newest ``*-<kind>.json`` in `folder` (by the date in its name, then modification time), or None."""
    paths = sorted(Path(folder).glob(f"*-{kind}.json"), key=lambda p: (p.name[:10], p.stat().st_mtime))
    return paths[-1] if paths else None


def load_result(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))
