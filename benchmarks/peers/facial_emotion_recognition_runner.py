"""Runner for `facial-emotion-recognition`: a small torch CNN on 48x48 gray faces, MTCNN detector (facenet-pytorch).

Executed by the python of ``benchmarks/.envs/facial-emotion-recognition``; see `runner_common`.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from unittest import mock

import cv2
import numpy as np
import runner_common
import torch

BATCH = 512


class _CountingDetector:
    """Wraps the MTCNN so that the pipeline can report how many faces it found."""

    def __init__(self, mtcnn) -> None:
        self.mtcnn = mtcnn
        self.faces = 0

    def detect(self, frame):
        boxes, probs = self.mtcnn.detect(frame)
        self.faces = 0 if boxes is None else len(boxes)
        return boxes, probs


def load(variant: str) -> runner_common.Peer:
    import facenet_pytorch
    import facial_emotion_recognition
    from facial_emotion_recognition import EmotionRecognition

    # Its constructor loads CUDA-saved tensors without map_location, which fails on a machine without CUDA.
    with mock.patch("torch.load", partial(torch.load, map_location="cpu")):
        recognizer = EmotionRecognition(device="cpu")
    detector = _CountingDetector(recognizer.mtcnn)
    recognizer.mtcnn = detector
    classes = [name for _, name in sorted(recognizer.emotions.items())]

    @torch.inference_mode()
    def classify(images: np.ndarray) -> np.ndarray:
        # Its own transform (resize 48x48, normalise 0.5/0.5) and network. The network ends in per-class sigmoids;
        # they are scaled to sum to 1 (the argmax, which is what the package reports, is unchanged).
        chunks = []
        for start in range(0, len(images), BATCH):
            batch = torch.stack([recognizer.transform(face) for face in images[start : start + BATCH]])
            scores = recognizer.network(batch)
            chunks.append((scores / scores.sum(1, keepdim=True)).numpy())
        return np.concatenate(chunks)

    def pipeline(frame: np.ndarray) -> int:
        recognizer.recognise_emotion(frame.copy())  # it draws into the frame it gets
        return detector.faces

    package = Path(facial_emotion_recognition.__file__).parent
    mtcnn_data = Path(facenet_pytorch.__file__).parent / "data"
    return runner_common.Peer(
        classes=classes,
        classify=classify,
        decode=cv2.imread,
        pipeline=pipeline,
        weights=[package / "model" / "model.pkl", *(mtcnn_data / f"{net}.pt" for net in ("pnet", "rnet", "onet"))],
        distributions=["facial-emotion-recognition", "facenet-pytorch", "torch", "torchvision", "numpy"],
        info={"torch_threads": torch.get_num_threads()},
    )


if __name__ == "__main__":
    runner_common.main(load)
