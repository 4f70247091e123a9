"""Data sets of ``../shared/datasets``: loaders, one label map per set, subject-aware splits.

Every loader returns a `FaceSet` whose labels are indices into `CLASSES` (the seven canonical expressions of
`fer_demo.labels.EXPRESSIONS`, plus contempt where a set has it); rows whose label has no canonical class are
dropped by the loader and counted in the log.

Files (described in ``../shared/datasets/README.md``):

- ``fer2013.npz``: FER2013 (``usage`` 0/1/2 = Training/PublicTest/PrivateTest) and the FER+ votes.
- ``ckplus.npz``: CK+48, the three peak frames of the 327 labelled sequences (118 subjects; contempt, no neutral).
- ``jaffe.npz``, ``rafd_subset.npz``, ``nimstim_subset.npz``, ``yale_faces.npz``: 128x128 posed faces with
  subject ids, used for cross-data set evaluation (and, optionally, as extra CK+ fine-tuning faces).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from sklearn.model_selection import StratifiedGroupKFold

from fer_demo.labels import CONTEMPT, EXPRESSIONS
from fer_demo.models.base import ModelCard
from fer_demo.preprocess import prepare

logger = logging.getLogger(__name__)

DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"
"""``../shared/datasets`` relative to the repository root."""

CKPLUS_SPLITS = 10
"""Folds of the CK+ subject-independent cross-validation."""

CLASSES: tuple[str, ...] = (*EXPRESSIONS, "contempt")
"""Label space of every `FaceSet`: the seven expressions (indices 0-6) and contempt (`CONTEMPT` = 7)."""

CKPLUS_CLASSES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "contempt")
"""Classes of the 7-way CK+ head used for CK+ fine-tuning (the six basic expressions and contempt)."""

FER2013_USAGE = {"Training": 0, "PublicTest": 1, "PrivateTest": 2}

FERPLUS_COLUMNS = (
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
    "unknown",
    "NF",
)
FERPLUS_TO_CLASS = np.array([6, 3, 5, 4, 0, 1, 2, CONTEMPT, -1, -1])
"""FER+ vote column -> `CLASSES` index; -1 for unknown and not-a-face."""

CROSS_DATASETS = ("ckplus", "jaffe", "rafd_subset", "nimstim_subset", "yale_faces")
"""Sets used for cross-data set evaluation of FER2013-trained models."""

_POSED_SETS = ("jaffe", "rafd_subset", "nimstim_subset", "yale_faces")

POSED_FACE_BOX = (slice(5, 112), slice(11, 117))
"""Rows and columns of the Haar face box inside a 128x128 posed crop (the crop is 1.2 times the box, its centre
0.05 box heights below the box's): the framing of CK+48's faces."""


@dataclass(frozen=True)
class FaceSet:
    """Faces with labels in `CLASSES` order.

    Attributes:
        name: Data set and split, e.g. "fer2013/PrivateTest".
        images: (N, H, W) uint8 grayscale faces.
        labels: (N,) int64 indices into `CLASSES`.
        subjects: (N,) int64 subject ids, or None where the set has none.
        sequences: (N,) int64 sequence ids within a subject (CK+), or None.
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    subjects: np.ndarray | None = None
    sequences: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray, name: str | None = None) -> FaceSet:
        """Rows `index` of this set (a boolean mask or integer indices)."""
        subjects = None if self.subjects is None else self.subjects[index]
        sequences = None if self.sequences is None else self.sequences[index]
        return FaceSet(name or self.name, self.images[index], self.labels[index], subjects, sequences)

    def class_counts(self) -> np.ndarray:
        """(len(CLASSES),) number of faces per class."""
        return np.bincount(self.labels, minlength=len(CLASSES))


def _open(data_dir: Path | str | None, filename: str) -> dict[str, np.ndarray]:
    path = (Path(data_dir or DEFAULT_DATA_DIR) / filename).resolve()
    if not path.is_file():
        raise FileNotFoundError(
            f"Data set file {path} not found. Pass --data-dir pointing at the folder of the shared data sets "
            f"(default {DEFAULT_DATA_DIR})."
        )
    return _read(path)


@functools.lru_cache(maxsize=8)
def _read(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an npz file, decompressed once per process (callers index, never modify them)."""
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def load_fer2013(split: str, data_dir: Path | str | None = None, *, drop_inexact: bool = False) -> FaceSet:
    """FER2013 with its original labels.

    Args:
        split: "Training", "PublicTest" or "PrivateTest".
        data_dir: Folder holding ``fer2013.npz``.
        drop_inexact: Drop the rows whose pixels are not the original ones (``pixel_source != 0``, 151 in
            Training; mostly not-a-face images). Evaluation keeps them, so test numbers stay comparable.

    Returns:
        The split as a `FaceSet`.
    """
    if split not in FER2013_USAGE:
        raise ValueError(f"Unknown FER2013 split {split!r}; expected one of {sorted(FER2013_USAGE)}")
    data = _open(data_dir, "fer2013.npz")
    keep = data["usage"] == FER2013_USAGE[split]
    if drop_inexact:
        keep &= data["pixel_source"] == 0
    return FaceSet(f"fer2013/{split}", data["images"][keep], data["labels"][keep].astype(np.int64))


def ferplus_majority(votes: np.ndarray) -> np.ndarray:
    """FER+ majority-vote labels in `CLASSES` order, -1 where there is no usable majority.

    Follows FERPlus's ``majority`` mode: single votes are discarded as outliers, and a row gets a label only when
    its top emotion holds more than half of the remaining votes; rows whose majority is unknown or not-a-face map
    to -1.

    Args:
        votes: (N, 10) vote counts in `FERPLUS_COLUMNS` order.

    Returns:
        (N,) int64 labels (0-6, `CONTEMPT`, or -1).
    """
    votes = np.where(votes <= 1, 0, votes).astype(np.int64)
    top = votes.argmax(axis=1)
    has_majority = votes.max(axis=1) * 2 > votes.sum(axis=1)
    return np.where(has_majority, FERPLUS_TO_CLASS[top], -1)


def load_ferplus(split: str = "PrivateTest", data_dir: Path | str | None = None) -> FaceSet:
    """FER+ relabelled FER2013 split (PrivateTest is the FER+ test set), seven expressions only.

    Rows with inexact pixels (no FER+ image) and rows whose majority is contempt, unknown or not-a-face are
    dropped, so the labels are the seven canonical expressions.
    """
    if split not in FER2013_USAGE:
        raise ValueError(f"Unknown FER2013 split {split!r}; expected one of {sorted(FER2013_USAGE)}")
    data = _open(data_dir, "fer2013.npz")
    labels = ferplus_majority(data["ferplus_votes"])
    rows = (data["usage"] == FER2013_USAGE[split]) & (data["pixel_source"] == 0)
    keep = rows & (labels >= 0) & (labels != CONTEMPT)
    logger.debug("FER+ %s: kept %d of %d rows", split, keep.sum(), rows.sum())
    return FaceSet(f"ferplus/{split}", data["images"][keep], labels[keep])


def load_ckplus(data_dir: Path | str | None = None, *, contempt: bool = True) -> FaceSet:
    """CK+48: 981 peak frames of 327 sequences from 118 subjects.

    Args:
        data_dir: Folder holding ``ckplus.npz``.
        contempt: Keep the 54 contempt frames (label `CONTEMPT`); False gives the six basic expressions.
    """
    data = _open(data_dir, "ckplus.npz")
    labels = data["labels"].astype(np.int64)
    keep = np.ones(len(labels), bool) if contempt else labels != CONTEMPT
    return FaceSet(
        "ckplus" if contempt else "ckplus/six-basic",
        data["images"][keep],
        labels[keep],
        data["subject"][keep].astype(np.int64),
        data["sequence"][keep].astype(np.int64),
    )


def load_posed(name: str, data_dir: Path | str | None = None) -> FaceSet:
    """One of the 128x128 posed sets (JAFFE, RaFD subset, NimStim subset, Yale), expression-labelled rows only.

    Rows labelled -1 (Yale's glasses, lighting, wink, sleepy variants and its substituted sad image) are dropped.
    """
    if name not in _POSED_SETS:
        raise ValueError(f"Unknown posed data set {name!r}; expected one of {list(_POSED_SETS)}")
    data = _open(data_dir, f"{name}.npz")
    labels = data["labels"].astype(np.int64)
    keep = labels >= 0
    return FaceSet(name, data["images"][keep], labels[keep], data["subject"][keep].astype(np.int64))


def load_posed_like_ckplus(names: Sequence[str], data_dir: Path | str | None = None) -> FaceSet:
    """The six basic expressions of posed sets, framed and sized like CK+48 (`POSED_FACE_BOX` at 48x48).

    Neutral faces are dropped, since the CK+ head has no neutral class; the result joins CK+ fine-tuning data.
    """
    sets = [load_posed(name, data_dir) for name in names]
    sets = [faces.subset(faces.labels != EXPRESSIONS.index("neutral")) for faces in sets]
    images = [
        cv2.resize(image[POSED_FACE_BOX], (48, 48), interpolation=cv2.INTER_AREA) for s in sets for image in s.images
    ]
    return FaceSet(
        "+".join(names),
        np.asarray(images, np.uint8).reshape(-1, 48, 48),
        np.concatenate([faces.labels for faces in sets] or [np.zeros(0, np.int64)]),
    )


def load_cross(name: str, data_dir: Path | str | None = None) -> FaceSet:
    """A cross-data set evaluation set in the seven-expression label space (CK+ without contempt)."""
    return load_ckplus(data_dir, contempt=False) if name == "ckplus" else load_posed(name, data_dir)


def to_ckplus_head(labels: np.ndarray) -> np.ndarray:
    """`CLASSES` labels of CK+ -> indices into `CKPLUS_CLASSES` (contempt 7 -> 6)."""
    if np.any(labels == EXPRESSIONS.index("neutral")):
        raise ValueError("CK+ head labels have no neutral class")
    return np.where(labels == CONTEMPT, len(CKPLUS_CLASSES) - 1, labels)


def ckplus_folds(faces: FaceSet, n_splits: int = CKPLUS_SPLITS, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Subject-independent stratified folds: every subject (hence every sequence) lies in one test fold.

    Returns:
        `n_splits` (train indices, test indices) pairs.
    """
    if faces.subjects is None:
        raise ValueError(f"{faces.name} has no subject ids")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return [(train, test) for train, test in splitter.split(faces.images, faces.labels, groups=faces.subjects)]


def identity_probe_split(faces: FaceSet) -> tuple[np.ndarray, np.ndarray]:
    """Split for the identity-leakage probe: per subject with >= 2 sequences, alternate sequences.

    A subject's sequences (sorted by id) go alternately to train and test, so the probe must recognise a person
    from a different expression sequence than the ones it was fitted on. Subjects with one sequence are left out.

    Returns:
        (train indices, test indices) into `faces`.
    """
    if faces.subjects is None or faces.sequences is None:
        raise ValueError(f"{faces.name} needs subject and sequence ids")
    train, test = [], []
    for subject in np.unique(faces.subjects):
        rows = np.flatnonzero(faces.subjects == subject)
        sequences = np.unique(faces.sequences[rows])
        if len(sequences) < 2:
            continue
        for position, sequence in enumerate(sequences):
            (train if position % 2 == 0 else test).extend(rows[faces.sequences[rows] == sequence])
    return np.asarray(train, np.int64), np.asarray(test, np.int64)


def prepare_in_chunks(images: np.ndarray, card: ModelCard, chunk: int = 2048) -> torch.Tensor:
    """`fer_demo.preprocess.prepare` over many faces, chunk by chunk (the evaluation and training input)."""
    return torch.cat([prepare(images[start : start + chunk], card) for start in range(0, len(images), chunk)])
