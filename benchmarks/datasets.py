"""The evaluation sets of the benchmark, loaded through `training.data` so they are the training evaluation's sets.

Labels are indices into `training.data.CLASSES`: the seven expressions plus contempt (7), which only CK+ has and
no model predicts; contempt faces therefore count as errors for every model, and results say so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data import DEFAULT_DATA_DIR, FaceSet, load_ckplus, load_fer2013, load_ferplus, load_posed

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EvalSet:
    """One evaluation set: how to load it and what it is."""

    name: str
    title: str
    description: str
    load: Callable[[Path | None], FaceSet]


EVAL_SETS: dict[str, EvalSet] = {
    s.name: s
    for s in (
        EvalSet(
            "fer2013_private",
            "FER2013 PrivateTest",
            "FER2013 PrivateTest, original labels, all 3,589 faces (48x48 gray, in the wild)",
            lambda d: load_fer2013("PrivateTest", d),
        ),
        EvalSet(
            "fer2013_public",
            "FER2013 PublicTest",
            "FER2013 PublicTest, original labels, all 3,589 faces",
            lambda d: load_fer2013("PublicTest", d),
        ),
        EvalSet(
            "ferplus_test",
            "FER+ test",
            "FER2013 PrivateTest relabelled by the FER+ majority vote (FERPlus 'majority' mode); faces whose majority "
            "is contempt, unknown or not-a-face, and the faces without a FER+ image, are dropped",
            lambda d: load_ferplus("PrivateTest", d),
        ),
        EvalSet(
            "ckplus",
            "CK+ (all 981)",
            "CK+48, all 981 peak frames of the 327 labelled sequences, zero-shot (no CK+ training); includes 54 "
            "contempt frames, a class no model has (counted as errors); no neutral faces",
            lambda d: load_ckplus(d, contempt=True),
        ),
        EvalSet(
            "jaffe",
            "JAFFE",
            "JAFFE, 213 posed faces of 10 Japanese women, seven expressions (128x128 crops)",
            lambda d: load_posed("jaffe", d),
        ),
        EvalSet(
            "rafd_subset",
            "RaFD subset",
            "RaFD frontal subset, 117 faces of 39 Caucasian adults: neutral, happy, fearful (128x128 crops)",
            lambda d: load_posed("rafd_subset", d),
        ),
        EvalSet(
            "nimstim_subset",
            "NimStim subset",
            "NimStim closed-mouth subset, 110 faces of 37 actors: angry, happy, neutral (128x128 crops)",
            lambda d: load_posed("nimstim_subset", d),
        ),
        EvalSet(
            "yale_faces",
            "Yale Faces",
            "Yale Faces, 59 expression-labelled images of 15 subjects: neutral, happy, sad, surprise (128x128 crops)",
            lambda d: load_posed("yale_faces", d),
        ),
    )
}
"""Every evaluation set, by name, in report order."""

QUICK_SETS = ("fer2013_private",)
"""Sets of the quick (CI) run."""


def subsample(faces: FaceSet, limit: int | None, seed: int = 0) -> FaceSet:
    """A seeded random subset of `limit` faces in their original order (all faces when `limit` is None or larger)."""
    if limit is None or limit >= len(faces):
        return faces
    index = np.sort(np.random.default_rng(seed).choice(len(faces), limit, replace=False))
    return faces.subset(index, f"{faces.name} ({limit} of {len(faces)})")


def load_sets(names: tuple[str, ...], data_dir: Path | None = None, limit: int | None = None) -> dict[str, FaceSet]:
    """Load evaluation sets by name; a set whose file is missing is skipped with a warning."""
    sets = {}
    for name in names:
        try:
            sets[name] = subsample(EVAL_SETS[name].load(data_dir), limit)
        except FileNotFoundError as error:
            logger.warning("Skipping %s: %s", name, error)
    if not sets:
        logger.warning("No evaluation set found under %s", data_dir or DEFAULT_DATA_DIR)
    return sets
