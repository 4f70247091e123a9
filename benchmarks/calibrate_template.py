"""Calibrate `fer_demo.faces.TEMPLATE`: median `FaceDetector` key points over FER2013 PublicTest faces.

Each 48x48 face is upsampled to 192x192 (INTER_CUBIC), turned into RGB and run through `FaceDetector`; the key
points of the largest face, in units of the image side, are collected and their per-coordinate median is printed
in the form of the `TEMPLATE` constant.

Usage (from the repository root): python -m benchmarks.calibrate_template [--data PATH/fer2013.npz] [--count 500]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import cv2
import numpy as np

from fer_demo.faces import FaceDetector

logger = logging.getLogger(__name__)

PUBLIC_TEST = 1
LOSSLESS = 0
SIDE = 192


def calibrate(images: np.ndarray) -> tuple[np.ndarray, int]:
    """Median relative key points over the faces found in (N, 48, 48) gray images; (template (4, 2), faces used)."""
    points = []
    with FaceDetector() as detector:
        for gray in images:
            big = cv2.resize(gray, (SIDE, SIDE), interpolation=cv2.INTER_CUBIC)
            faces = detector.detect(cv2.cvtColor(big, cv2.COLOR_GRAY2RGB))
            if faces:
                points.append(faces[0].landmarks / SIDE)
    if not points:
        raise RuntimeError("No face found in any image")
    return np.median(np.stack(points), axis=0), len(points)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/work/shared/datasets/fer2013.npz"), help="fer2013.npz")
    parser.add_argument("--count", type=int, default=500, help="PublicTest faces to use (the first ones)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    with np.load(args.data) as data:
        keep = (data["usage"] == PUBLIC_TEST) & (data["pixel_source"] == LOSSLESS)
        images = data["images"][keep][: args.count]
    template, found = calibrate(images)
    logger.info("Faces found in %d of %d PublicTest images", found, len(images))
    rows = "\n".join(f"        [{x:.4f}, {y:.4f}]," for x, y in template)
    print(f"# median FaceDetector key points over {found} of {len(images)} FER2013 PublicTest faces")
    print(f"TEMPLATE = np.array(\n    [\n{rows}\n    ]\n)")


if __name__ == "__main__":
    main()
