"""Runner for `fer` (justinshenk/fer): mini-Xception on TensorFlow, Haar cascade detector.

Variants: ``tflite`` (the package default, quantized TFLite) and ``keras`` (the .hdf5 Keras model,
``use_tflite=False``). Executed by the python of ``benchmarks/.envs/fer``; see `runner_common`.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import runner_common

BATCH = 256


def load(variant: str) -> runner_common.Peer:
    import fer
    import tensorflow as tf
    from fer.fer import FER

    detector = FER(use_tflite=variant == "tflite")
    classes = [name for _, name in sorted(FER._get_labels().items())]
    data = Path(fer.__file__).parent / "data"

    def classify(images: np.ndarray) -> np.ndarray:
        # The preprocessing of FER.detect_emotions for a face box covering the whole crop: resize to the model's
        # 64x64 (cv2.resize, bilinear), scale to [-1, 1]; then its classifier step without the 2-decimal rounding.
        chunks = []
        for start in range(0, len(images), BATCH):
            faces = np.stack([cv2.resize(face, (64, 64)) for face in images[start : start + BATCH]])
            faces = (faces.astype(np.float32) / 255.0 - 0.5) * 2.0
            if variant == "keras":
                faces = faces[..., None]
            chunks.append(np.asarray(detector._classify_emotions(faces), np.float32))
        return np.concatenate(chunks)

    return runner_common.Peer(
        classes=classes,
        classify=classify,
        decode=cv2.imread,
        pipeline=lambda frame: len(detector.detect_emotions(frame)),
        weights=[data / ("emotion_model_quantized.tflite" if variant == "tflite" else "emotion_model.hdf5")],
        distributions=["fer", "tensorflow-cpu", "opencv-python-headless", "numpy"],
        info={"tensorflow_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads()},
    )


if __name__ == "__main__":
    runner_common.main(load, variants=("tflite", "keras"))
