"""What every peer runner shares; runs inside the peer's environment, so it needs only the standard library and numpy.

Command line of a runner::

    <runner>.py accuracy IN.npz OUT.npz [--variant NAME]
        IN: one (N, H, W) uint8 gray array per data set; OUT: one (N, K) float32 probability array per data set,
        and OUT.json: the peer's class names, versions, weight files and seconds per set.
    <runner>.py latency OUT.json IMAGE [IMAGE ...] --warmup W --repeats R
        Times the peer's own full pipeline (decoded image in, faces and expressions out) R times per image after W
        warm-up calls; writes per-call wall-clock and CPU milliseconds (all threads of the process), faces found,
        load time and peak RSS.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import platform
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

logger = logging.getLogger("peer_runner")


@dataclass
class Peer:
    """A loaded peer.

    Attributes:
        classes: Class names of the classifier's outputs, in output order, as the peer spells them.
        classify: (N, H, W) uint8 gray data-set crops -> (N, len(classes)) probabilities (classifier only).
        decode: Image path -> the input its pipeline takes (decoded outside the timed call).
        pipeline: Decoded image -> number of faces it reported (the peer's own detect + classify).
        weights: Weight files the peer loads, checked to lie inside its installed package.
        distributions: Installed distributions to report versions of.
        info: Anything else worth recording (threads, model variant).
    """

    classes: Sequence[str]
    classify: Callable[[np.ndarray], np.ndarray]
    decode: Callable[[str], object]
    pipeline: Callable[[object], int]
    weights: Sequence[Path]
    distributions: Sequence[str]
    info: dict = field(default_factory=dict)


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB.

    Read from VmHWM, which starts afresh at exec; ru_maxrss would also count the parent's memory at the fork.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def describe(peer: Peer, load_seconds: float) -> dict:
    """Versions, weight files (with SHA-256 and size) and load time of a loaded peer."""
    weights = []
    for path in peer.weights:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Weight file {path} is not inside the installed package")
        weights.append({"file": str(path), "size": path.stat().st_size, "sha256": _sha256(path)})
    return {
        "classes": list(peer.classes),
        "versions": {name: metadata.version(name) for name in peer.distributions},
        "python": platform.python_version(),
        "weights": weights,
        "load_seconds": load_seconds,
        **peer.info,
    }


def _accuracy(peer: Peer, info: dict, source: Path, target: Path) -> None:
    probs, seconds = {}, {}
    with np.load(source) as data:
        for name in data.files:
            images = data[name]
            start = time.perf_counter()
            probs[name] = np.asarray(peer.classify(images), np.float32)
            seconds[name] = time.perf_counter() - start
            logger.info("%s: %d faces in %.1f s", name, len(images), seconds[name])
            if probs[name].shape != (len(images), len(peer.classes)):
                raise ValueError(f"{name}: probabilities of shape {probs[name].shape} for {len(images)} faces")
    np.savez_compressed(target, **probs)
    info.update(seconds=seconds, peak_rss_mb=peak_rss_mb())
    target.with_suffix(".json").write_text(json.dumps(info, indent=1))


def _latency(peer: Peer, info: dict, target: Path, images: list[str], warmup: int, repeats: int) -> None:
    timings = {}
    for path in images:
        frame = peer.decode(path)
        for _ in range(warmup):
            peer.pipeline(frame)
        milliseconds, cpu_milliseconds, faces = [], [], []
        for _ in range(repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            faces.append(peer.pipeline(frame))
            milliseconds.append((time.perf_counter() - start) * 1000)
            cpu_milliseconds.append((time.process_time() - cpu_start) * 1000)
        timings[Path(path).name] = {"ms": milliseconds, "cpu_ms": cpu_milliseconds, "faces": faces}
        logger.info("%s: median %.1f ms, faces %s", path, float(np.median(milliseconds)), sorted(set(faces)))
    info.update(images=timings, warmup=warmup, repeats=repeats, peak_rss_mb=peak_rss_mb())
    target.write_text(json.dumps(info, indent=1))


def main(load: Callable[[str], Peer], variants: Sequence[str] = ("default",)) -> None:
    """Parse the command line (see the module docstring), load the peer and run the requested measurement.

    Args:
        load: Loads the peer in the given variant (one of `variants`; the first is the peer's default).
        variants: Model variants the peer ships.
    """
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    accuracy = commands.add_parser("accuracy")
    accuracy.add_argument("source", type=Path)
    accuracy.add_argument("target", type=Path)
    accuracy.add_argument("--variant", choices=variants, default=variants[0])
    latency = commands.add_parser("latency")
    latency.add_argument("target", type=Path)
    latency.add_argument("images", nargs="+")
    latency.add_argument("--warmup", type=int, default=3)
    latency.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    variant = getattr(args, "variant", variants[0])
    start = time.perf_counter()
    peer = load(variant)
    info = {"variant": variant, **describe(peer, time.perf_counter() - start)}
    if args.command == "accuracy":
        _accuracy(peer, info, args.source, args.target)
    else:
        _latency(peer, info, args.target, args.images, args.warmup, args.repeats)
