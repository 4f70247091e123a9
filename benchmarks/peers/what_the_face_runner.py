"""Runner for `what-the-face-classification`: a small torch CNN on 48x48 gray faces, Haar cascade detector.

Executed by the python of ``benchmarks/.envs/what-the-face``; see `runner_common`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import runner_common
import torch
from PIL import Image

BATCH = 512


def load(variant: str) -> runner_common.Peer:
    import what_the_face_classification
    from what_the_face_classification.inference import Image_classifier

    classifier = Image_classifier()
    classifier.net.eval()

    @torch.inference_mode()
    def classify(images: np.ndarray) -> np.ndarray:
        # The classifier's own transform and network on the crop; predict() would first run its Haar detector.
        chunks = []
        for start in range(0, len(images), BATCH):
            batch = torch.stack([classifier.transform(Image.fromarray(face)) for face in images[start : start + BATCH]])
            chunks.append(classifier.net(batch).softmax(1).numpy())
        return np.concatenate(chunks)

    def decode(path: str) -> Image.Image:
        image = Image.open(path)
        image.load()
        return image

    def pipeline(image: Image.Image) -> int:
        label, _ = classifier.predict(image)
        return int(label in classifier.classes)

    return runner_common.Peer(
        classes=list(classifier.classes),
        classify=classify,
        decode=decode,
        pipeline=pipeline,
        weights=[Path(what_the_face_classification.__file__).parent / "active_model.pth"],
        distributions=["what-the-face-classification", "torch", "torchvision", "numpy"],
        info={"torch_threads": torch.get_num_threads()},
    )


if __name__ == "__main__":
    runner_common.main(load)
