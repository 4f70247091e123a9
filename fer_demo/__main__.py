"""Command line: `python -m fer_demo predict PATH...` over images, folders and videos, to JSON or CSV."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
from tqdm import tqdm

from fer_demo.faces import ImageError
from fer_demo.hub import WeightsError
from fer_demo.labels import EXPRESSIONS
from fer_demo.predictor import FaceResult, Predictor

logger = logging.getLogger("fer_demo")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}


def expand_paths(paths: list[str]) -> list[Path]:
    """Files given directly, plus the images and videos found (recursively) in folders, sorted."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(
                sorted(
                    p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES
                )
            )
        else:
            found.append(path)
    return found


def video_frames(path: Path, every: float) -> Iterator[tuple[int, float, object]]:
    """(frame index, time in seconds, RGB frame) sampled every `every` seconds."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ImageError(f"Cannot open video {path}")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    step = max(1, round(every * fps))
    index = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            if index % step == 0:
                yield index, index / fps, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            index += 1
    finally:
        capture.release()


def face_records(source: str, frame: int | None, time_s: float | None, faces: list[FaceResult]) -> list[dict]:
    """JSON-ready records, one per face."""
    records = []
    for i, face in enumerate(faces):
        models = {
            name: {"label": result.label, "probs": dict(zip(EXPRESSIONS, map(float, result.probs), strict=True))}
            for name, result in face.results.items()
        }
        ensemble = face.ensemble
        records.append(
            {
                "source": source,
                "frame": frame,
                "time_s": time_s,
                "face": i,
                "box": [round(float(v), 1) for v in face.box],
                "score": round(float(face.face.score), 4),
                "ensemble": None if ensemble is None else EXPRESSIONS[int(ensemble.argmax())],
                "models": models,
            }
        )
    return records


def predict_path(predictor: Predictor, path: Path, every: float) -> list[dict]:
    """Records for one image or video; a record with an "error" key when the file cannot be read."""
    try:
        if path.suffix.lower() in VIDEO_SUFFIXES:
            records = []
            for index, time_s, frame in video_frames(path, every):
                records.extend(face_records(str(path), index, round(time_s, 3), predictor.predict(frame)))
            return records
        faces = predictor.predict(path)
        if not faces:
            return [{"source": str(path), "frame": None, "time_s": None, "face": None, "error": "no face found"}]
        return face_records(str(path), None, None, faces)
    except (ImageError, OSError) as error:
        logger.error("%s: %s", path, error)
        return [{"source": str(path), "frame": None, "time_s": None, "face": None, "error": str(error)}]


def write_csv(records: list[dict], stream) -> None:
    """One row per (face, model) with the seven probabilities as columns."""
    columns = ["source", "frame", "time_s", "face", "x0", "y0", "x1", "y1", "model", "label", *EXPRESSIONS, "error"]
    writer = csv.DictWriter(stream, fieldnames=columns)
    writer.writeheader()
    for record in records:
        base = {key: record.get(key) for key in ("source", "frame", "time_s", "face", "error")}
        if "box" in record:
            base.update(zip(("x0", "y0", "x1", "y1"), record["box"], strict=True))
        if not record.get("models"):
            writer.writerow(base)
        for name, answer in record.get("models", {}).items():
            writer.writerow({**base, "model": name, "label": answer["label"], **answer["probs"]})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fer_demo", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser("predict", help="predict expressions for images, folders and videos")
    predict.add_argument("paths", nargs="+", help="image or video files, or folders to search recursively")
    predict.add_argument("--models", help="comma-separated model names (default: every model with weights)")
    predict.add_argument("--format", choices=("json", "csv"), default="json")
    predict.add_argument("--output", "-o", help="output file (default: standard output)")
    predict.add_argument("--every", type=float, default=1.0, help="seconds between sampled video frames")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    names = args.models.split(",") if args.models else None
    try:
        predictor = Predictor.load(names)
    except (ValueError, WeightsError) as error:  # an unknown or unusable model named in --models
        logger.error("Cannot load --models %s: %s", args.models, error)
        return 2
    if not predictor.models:
        reasons = "".join(f"\n- {name}: {reason}" for name, reason in predictor.unavailable.items())
        logger.error("No model has trained weights:%s", reasons)
        return 2
    records: list[dict] = []
    for path in tqdm(expand_paths(args.paths), desc="predict", unit="file", file=sys.stderr):
        records.extend(predict_path(predictor, path, args.every))

    stream = open(args.output, "w", newline="", encoding="utf-8") if args.output else sys.stdout
    try:
        if args.format == "json":
            json.dump(records, stream, indent=2)
            stream.write("\n")
        else:
            write_csv(records, stream)
    finally:
        if args.output:
            stream.close()
    return 0 if any("error" not in record for record in records) else 1


if __name__ == "__main__":
    sys.exit(main())
