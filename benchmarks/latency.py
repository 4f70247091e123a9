"""Per-frame latency of the full fer-demo pipeline and of each stage, against the peers' own full pipelines.

One process measures ours on two images: the astronaut photo (1 face, ``examples/astronaut.jpg``) and a 4-face
composite made from it. Each repetition runs every stage in turn, so load changes hit all stages alike:

- ``decode``: `fer_demo.faces.load_image` on the JPEG bytes;
- ``detect_align``: `FaceDetector.detect` (MediaPipe detection + similarity alignment of every face);
- ``model:<name>``: one model alone on every face (`Predictor.predict_faces`: preprocessing, forward, result
  packing);
- ``models``: all models on every face, as the app runs them (`Predictor.predict_faces`, models side by side);
- ``tsne_place``: `ReferenceMap.place` of the selected face in every model's t-SNE map;
- ``render``: `DemoApp.render`, every per-frame figure of `fer_demo.viz` (boxes, probabilities, neutral
  references, heat-maps, attention, t-SNE maps);
- ``full``: `DemoApp.analyze_frame` on the decoded frame, the whole server work of one webcam frame.

Derived: ``figures`` (tsne_place + render) and ``models_figures_per_face`` ((models + figures) / faces). Peers run
their own detect-and-classify pipeline on the same JPEG files with the same warm-up and repetitions, each in its own
process and environment (see `benchmarks.peers`).
"""

from __future__ import annotations

import logging
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from benchmarks import common
from benchmarks.peers import PEERS, PeerError, ensure_env, run_runner
from fer_demo import Predictor
from fer_demo.embedding import load_reference_maps
from fer_demo.faces import load_image
from fer_demo.predictor import FaceResult
from fer_demo.ui import DemoApp, Session

logger = logging.getLogger(__name__)

ASTRONAUT = common.ROOT / "examples" / "astronaut.jpg"
PEER_TIMEOUT_S = 1800


def group_photo(image: np.ndarray) -> np.ndarray:
    """Four faces on one gray canvas: the astronaut's face, a mirrored copy and two smaller copies."""
    face = image[0:220, 120:300]
    canvas = np.full((420, 1100, 3), 128, np.uint8)
    canvas[100:320, 20:200] = face
    canvas[100:320, 300:480] = face[:, ::-1]
    canvas[120:285, 600:735] = cv2.resize(face, (135, 165))
    canvas[130:280, 850:973] = cv2.resize(face[:, ::-1], (123, 150))
    return canvas


def write_images(folder: Path) -> dict[str, Path]:
    """The benchmark's JPEG files: ``1-face.jpg`` (the example photo as is) and ``4-faces.jpg`` (quality 95)."""
    folder.mkdir(parents=True, exist_ok=True)
    single = folder / "1-face.jpg"
    single.write_bytes(ASTRONAUT.read_bytes())
    group = folder / "4-faces.jpg"
    rgb = group_photo(load_image(ASTRONAUT.read_bytes()))
    cv2.imwrite(str(group), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    return {"1-face": single, "4-faces": group}


def stats(milliseconds: list[float], cpu_milliseconds: list[float]) -> dict[str, Any]:
    """p50, p95 and mean of wall-clock milliseconds, p50 and p95 of CPU milliseconds, and the raw values."""
    wall, cpu = np.asarray(milliseconds, float), np.asarray(cpu_milliseconds, float)
    return {
        "p50": float(np.percentile(wall, 50)),
        "p95": float(np.percentile(wall, 95)),
        "mean": float(wall.mean()),
        "cpu_p50": float(np.percentile(cpu, 50)),
        "cpu_p95": float(np.percentile(cpu, 95)),
        "ms": [round(float(v), 3) for v in wall],
        "cpu_ms": [round(float(v), 3) for v in cpu],
    }


def current_rss_mb() -> float:
    """Resident set size of this process now, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Clock:
    """Wall-clock and CPU milliseconds (all threads of this process) of the calls it times, by stage."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def time(self, stage: str, fn, *args):
        start, cpu_start = time.perf_counter(), time.process_time()
        value = fn(*args)
        self.wall[stage] = (time.perf_counter() - start) * 1000
        self.cpu[stage] = (time.process_time() - cpu_start) * 1000
        return value


def _place_selected(app: DemoApp, results: list[FaceResult]) -> None:
    """Place the first face's embedding on every model's t-SNE map, as the app does for the selected face."""
    for name, reference in app.maps.items():
        if results and name in results[0].results:
            reference.place(results[0].results[name].embedding[None])


def measure_ours(app: DemoApp, data: bytes, warmup: int, repeats: int) -> dict[str, Any]:
    """Stage timings of our pipeline on one JPEG (see the module docstring)."""
    predictor = app.predictor
    singles = {name: Predictor({name: model}, predictor.detector) for name, model in predictor.models.items()}
    stream = Session()
    wall: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    faces_found = []
    for rep in range(warmup + repeats):
        clock = _Clock()
        image = clock.time("decode", load_image, data)
        faces = clock.time("detect_align", predictor.detector.detect, image)
        for name, single in singles.items():
            clock.time(f"model:{name}", single.predict_faces, faces)
        results = clock.time("models", predictor.predict_faces, faces)
        clock.time("tsne_place", _place_selected, app, results)
        clock.time("render", app.render, Session(faces=results, image=image), "")
        clock.time("full", app.analyze_frame, image, stream)
        if rep < warmup:
            continue
        faces_found.append(len(faces))
        for times in (clock.wall, clock.cpu):
            times["figures"] = times["tsne_place"] + times["render"]
            times["models_figures_per_face"] = (times["models"] + times["figures"]) / max(len(faces), 1)
        for key in clock.wall:
            wall.setdefault(key, []).append(clock.wall[key])
            cpu.setdefault(key, []).append(clock.cpu[key])
    return {"faces": sorted(set(faces_found)), "stages": {key: stats(wall[key], cpu[key]) for key in wall}}


def measure_peers(
    images: dict[str, Path], names: tuple[str, ...], warmup: int, repeats: int, build: bool = True
) -> dict[str, Any]:
    """Each peer's full pipeline on the same images, in its own environment and process."""
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fer-demo-latency-") as tmp:
        for name in names:
            spec = PEERS[name]
            target = Path(tmp) / f"{name}.json"
            args = ["latency", str(target), *map(str, images.values()), "--warmup", str(warmup)]
            try:
                if build:
                    ensure_env(spec)
                run_runner(spec, [*args, "--repeats", str(repeats)], PEER_TIMEOUT_S)
            except PeerError as error:
                logger.error("%s", error)
                results[name] = {"package": spec.package, "error": str(error)}
                continue
            info = common.load_result(target)
            per_image = {}
            for key, path in images.items():
                timing = info["images"][path.name]
                per_image[key] = {"faces": sorted(set(timing["faces"])), **stats(timing["ms"], timing["cpu_ms"])}
            results[name] = {
                "package": spec.package,
                "model": spec.model,
                "detector": spec.detector,
                "notes": spec.notes,
                "images": per_image,
                **{key: info[key] for key in ("versions", "load_seconds", "peak_rss_mb", "weights") if key in info},
                "threads": {key: value for key, value in info.items() if key.endswith("threads")},
            }
            logger.info("%s: %s", name, {key: round(value["p50"], 1) for key, value in per_image.items()})
    return results


def ratios(ours: dict[str, Any], peers: dict[str, Any]) -> dict[str, Any]:
    """Per peer and image: the peer's full-pipeline p50 divided by ours (> 1: ours is faster), for the whole frame
    and for our models + figures per face."""
    table: dict[str, Any] = {}
    for name, peer in peers.items():
        if "images" not in peer:
            continue
        table[name] = {}
        for image, timing in peer["images"].items():
            stages = ours[image]["stages"]
            table[name][image] = {
                "peer_full_over_ours_full": timing["p50"] / stages["full"]["p50"],
                "peer_full_over_ours_full_cpu": timing["cpu_p50"] / stages["full"]["cpu_p50"],
                "peer_full_over_ours_models_figures_per_face": timing["p50"] / stages["models_figures_per_face"]["p50"],
            }
    return table


def run(
    *,
    quick: bool = False,
    peers: tuple[str, ...] | None = None,
    warmup: int | None = None,
    repeats: int | None = None,
    out_dir: Path = common.RESULTS_DIR,
    predictor: Predictor | None = None,
    build_envs: bool = True,
    argv: list[str] | None = None,
) -> Path:
    """Measure latency and write ``<out_dir>/YYYY-MM-DD-<sha>-latency.json``.

    Args:
        quick: Ours only, 1 warm-up and 3 repetitions (the CI run).
        peers: Peers to time (all of `benchmarks.peers.PEERS` when None); ignored when `quick`.
        warmup: Warm-up calls per image (3, or 1 when quick).
        repeats: Timed calls per image (20, or 3 when quick).
        out_dir: Where the result goes.
        predictor: A loaded predictor (`Predictor.load()` when None).
        build_envs: Build missing peer environments.
        argv: The command line to record (by default the one equivalent to the arguments).

    Returns:
        The path of the result file.
    """
    warmup = warmup if warmup is not None else (1 if quick else 3)
    repeats = repeats if repeats is not None else (3 if quick else 20)
    if argv is None:
        argv = ["latency", *(["--quick"] if quick else []), "--warmup", str(warmup), "--repeats", str(repeats)]
        argv += [*(["--peers", *peers] if peers is not None and not quick else [])]
    metadata = common.run_metadata(argv)
    start = time.perf_counter()
    predictor = predictor or Predictor.load()
    app = DemoApp(predictor, load_reference_maps(list(predictor.models)))
    load_seconds = time.perf_counter() - start
    rss_loaded = current_rss_mb()
    with tempfile.TemporaryDirectory(prefix="fer-demo-images-") as tmp:
        images = write_images(Path(tmp))
        described = {
            key: {"file": path.name, "bytes": path.stat().st_size, "size": list(cv2.imread(str(path)).shape[1::-1])}
            for key, path in images.items()
        }
        ours = {key: measure_ours(app, path.read_bytes(), warmup, repeats) for key, path in images.items()}
        peak = peak_rss_mb()
        names = () if quick else tuple(PEERS) if peers is None else peers
        peer_results = measure_peers(images, names, warmup, repeats, build_envs)
    metadata["machine"]["loadavg_end"] = [round(value, 2) for value in os.getloadavg()]
    weights = metadata["weights"]["models"]
    result = {
        "kind": "latency",
        "mode": "quick" if quick else "full",
        **metadata,
        "pipeline_only": [name for name in predictor.models if not (weights.get(name) or {}).get("trained")],
        "unavailable": predictor.unavailable,
        "warmup": warmup,
        "repeats": repeats,
        "images": described,
        "ours": {
            "models": list(predictor.models),
            "tsne_models": list(app.maps),
            "torch_threads": torch.get_num_threads(),
            "load_seconds": load_seconds,
            "rss_after_load_mb": rss_loaded,
            "peak_rss_mb": peak,
            "images": ours,
        },
        "peers": peer_results,
        "ratios": ratios(ours, peer_results),
    }
    return common.write_result(result, common.result_path("latency", metadata, out_dir))
