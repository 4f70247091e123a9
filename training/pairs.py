"""Same-subject (expressive, neutral) face pairs for the neutral-face generators, and the loop that trains on them.

Sources (``../shared/datasets``, see its README): ``jaffe.npz`` (10 subjects), ``yale_faces.npz`` (15),
``rafd_subset.npz`` (39) and ``nimstim_subset.npz`` (37): 128x128 gray crops in which the face fills about 80%
of the frame. CK+48 has no neutral frames and is not used here.

- **Framing.** Each crop is centre-cropped to `CROP_FRACTION` (80%) of its side and resized to 48x48 with
  INTER_AREA, the framing and resolution of a FER2013 face (forehead to chin, ears at the edges). From there the
  faces take the exact evaluation path of the model (`fer_demo.preprocess.prepare`: 64x64, the card's
  equalisation), so the generator sees the same kind of input on the pairs as on FER2013.
- **Rows.** Every image of a subject is an input: the six basic expressions, Yale's non-expression variants
  (glasses, lighting, wink, sleepy; label -1, "non-compliant" inputs as in the IDFERM paper) and the neutral
  images themselves. Yale's byte-identical duplicates are dropped, keeping the neutral copy (the ``normal``
  files point at their ``noglasses``/``glasses`` twins; ``subject04.sad`` is a copy of ``subject04.normal``).
- **Pairs.** Each input is paired with every neutral image (label 6) of its subject; a neutral input is paired
  with the subject's other neutral images, or with itself when the subject has only one.
- **Split.** Subject-aware: per source data set, `sklearn.model_selection.GroupShuffleSplit` (fixed seed) holds out
  `VAL_FRACTION` of the subjects (rounded up), so every set is represented on both sides.
- **Guiding set** (the discriminator's real neutral frontal faces): the neutral images of the training subjects,
  optionally with the FER2013 Training neutrals (many, but noisy and not all frontal).
- **Sampling.** Batches draw pairs with replacement, every training subject equally likely (JAFFE's three
  neutrals per subject would otherwise dominate); input and target get the same random flip and similarity warp.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import torch
from safetensors.torch import load_file
from sklearn.model_selection import GroupShuffleSplit
from torch import nn

from fer_demo.labels import EXPRESSIONS
from fer_demo.models import FerModel, ModelCard
from training.augment import AugmentConfig, random_similarity
from training.checkpoint import save_checkpoint, write_json
from training.data import DEFAULT_DATA_DIR, load_fer2013, prepare_in_chunks

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
PAIR_SETS: tuple[str, ...] = ("jaffe", "yale_faces", "rafd_subset", "nimstim_subset")
NEUTRAL = EXPRESSIONS.index("neutral")
CROP_FRACTION = 0.8
"""Centre crop (fraction of the side) that gives the 128x128 crops a FER2013-like framing."""
FACE_SIZE = 48
"""Side of the stored faces: FER2013's resolution."""
VAL_FRACTION = 0.15
SUBJECT_STRIDE = 1000
"""Global subject id = source index * SUBJECT_STRIDE + the set's own subject id."""


@dataclass(frozen=True)
class PairFaces:
    """All usable faces of the pairs sets.

    Attributes:
        images: (N, 48, 48) uint8 gray faces in FER2013-like framing.
        labels: (N,) int64 expression labels (0-6), -1 for non-expression variants.
        subjects: (N,) int64 global subject ids (unique across sets).
        sources: (N,) int64 index into `PAIR_SETS`.
        filenames: (N,) original file names.
    """

    images: np.ndarray
    labels: np.ndarray
    subjects: np.ndarray
    sources: np.ndarray
    filenames: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class PairData:
    """Faces, the subject-aware split and the (input, target) pairs of each side.

    Attributes:
        faces: Every face of the four sets.
        train_subjects: Sorted global subject ids of the training side.
        val_subjects: Sorted global subject ids held out for validation.
        train_pairs: (P, 2) int64 (input row, neutral target row) into `faces`, training subjects only.
        val_pairs: (Q, 2) int64, held-out subjects only.
    """

    faces: PairFaces
    train_subjects: np.ndarray
    val_subjects: np.ndarray
    train_pairs: np.ndarray
    val_pairs: np.ndarray

    def rows(self, subjects: np.ndarray) -> np.ndarray:
        """Rows of `faces` that belong to `subjects`."""
        return np.flatnonzero(np.isin(self.faces.subjects, subjects))


def frame_faces(images: np.ndarray, fraction: float = CROP_FRACTION, size: int = FACE_SIZE) -> np.ndarray:
    """Centre-crop square faces to `fraction` of their side and resize them to `size` x `size` (INTER_AREA)."""
    side = images.shape[1]
    keep = int(round(side * fraction))
    start = (side - keep) // 2
    crops = images[:, start : start + keep, start : start + keep]
    return np.stack([cv2.resize(face, (size, size), interpolation=cv2.INTER_AREA) for face in crops])


def _duplicates_to_drop(labels: np.ndarray, duplicate_of: np.ndarray) -> np.ndarray:
    """Boolean mask of duplicate rows to drop: of each identical pair, the copy that is not neutral."""
    drop = np.zeros(len(labels), bool)
    for row in np.flatnonzero(duplicate_of >= 0):
        twin = duplicate_of[row]
        drop[twin if labels[row] == NEUTRAL else row] = True
    return drop


def load_pair_faces(
    data_dir: Path | str | None = None, fraction: float = CROP_FRACTION, size: int = FACE_SIZE
) -> PairFaces:
    """Load the four sets, drop Yale's duplicates and frame every face (see the module docstring)."""
    parts = []
    for source, name in enumerate(PAIR_SETS):
        path = Path(data_dir or DEFAULT_DATA_DIR) / f"{name}.npz"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; pass --data-dir pointing at the shared data sets folder")
        with np.load(path) as data:
            labels = data["labels"].astype(np.int64)
            keep = np.ones(len(labels), bool)
            if "duplicate_of" in data.files:
                keep &= ~_duplicates_to_drop(labels, data["duplicate_of"])
            parts.append(
                (
                    frame_faces(data["images"][keep], fraction, size),
                    labels[keep],
                    data["subject"][keep].astype(np.int64) + source * SUBJECT_STRIDE,
                    np.full(keep.sum(), source, np.int64),
                    data["filename"][keep],
                )
            )
            logger.debug("%s: %d faces kept of %d", name, keep.sum(), len(labels))
    return PairFaces(*(np.concatenate(column) for column in zip(*parts, strict=True)))


def build_pairs(faces: PairFaces, subjects: np.ndarray) -> np.ndarray:
    """(P, 2) (input row, neutral target row) pairs of `subjects` (see the module docstring)."""
    pairs = []
    for subject in subjects:
        rows = np.flatnonzero(faces.subjects == subject)
        neutrals = rows[faces.labels[rows] == NEUTRAL]
        for row in rows:
            targets = neutrals[neutrals != row] if len(neutrals) > 1 else neutrals
            pairs.extend((row, target) for target in targets)
    return np.asarray(pairs, np.int64).reshape(-1, 2)


def split_subjects(
    faces: PairFaces, val_fraction: float = VAL_FRACTION, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Subject-aware split, per source set: (training subjects, held-out subjects), both sorted."""
    train, val = [], []
    for source in np.unique(faces.sources):
        rows = np.flatnonzero(faces.sources == source)
        splitter = GroupShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
        train_rows, val_rows = next(splitter.split(rows, groups=faces.subjects[rows]))
        train.append(np.unique(faces.subjects[rows[train_rows]]))
        val.append(np.unique(faces.subjects[rows[val_rows]]))
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def load_pair_data(
    data_dir: Path | str | None = None, val_fraction: float = VAL_FRACTION, seed: int = 0, **framing: Any
) -> PairData:
    """Faces, subject split and pairs; `framing` goes to `load_pair_faces` (``fraction``, ``size``)."""
    faces = load_pair_faces(data_dir, **framing)
    without_neutral = np.setdiff1d(faces.subjects, faces.subjects[faces.labels == NEUTRAL])
    if len(without_neutral):
        raise ValueError(f"Subjects without a neutral image: {without_neutral.tolist()}")
    train, val = split_subjects(faces, val_fraction, seed)
    data = PairData(faces, train, val, build_pairs(faces, train), build_pairs(faces, val))
    logger.info(
        "Pairs: %d faces of %d subjects; %d training subjects (%d pairs), %d held out (%d pairs)",
        len(faces),
        len(np.unique(faces.subjects)),
        len(train),
        len(data.train_pairs),
        len(val),
        len(data.val_pairs),
    )
    return data


def guiding_faces(data: PairData, fer2013: bool = False, data_dir: Path | str | None = None) -> np.ndarray:
    """Real neutral faces for the discriminator: the training subjects' neutrals (+ FER2013 Training neutrals).

    Returns:
        (G, 48, 48) uint8 gray faces.
    """
    faces = data.faces
    own = faces.images[np.isin(faces.subjects, data.train_subjects) & (faces.labels == NEUTRAL)]
    if not fer2013:
        return own
    fer = load_fer2013("Training", data_dir, drop_inexact=True)
    return np.concatenate([own, fer.images[fer.labels == NEUTRAL]])


def unit_images(images: np.ndarray, card: ModelCard) -> torch.Tensor:
    """uint8 faces through the card's evaluation transform, mapped back to [0, 1] (the generators' domain)."""
    return prepare_in_chunks(images, card) * card.std[0] + card.mean[0]


@dataclass(frozen=True)
class PairBatch:
    """One batch of pairs, images in [0, 1].

    Attributes:
        inputs: (B, 1, H, W) faces to normalise.
        targets: (B, 1, H, W) neutral faces of the same subjects.
        labels: (B,) int64 expression labels of the inputs (-1: non-expression variant).
        guiding: (G, 1, H, W) real neutral faces for the discriminator, or None.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    labels: torch.Tensor
    guiding: torch.Tensor | None = None


class PairBatches(Iterator[PairBatch]):
    """Endless augmented batches of pairs: subjects equally likely, input and target warped together.

    Args:
        images: (N, 1, H, W) all pair faces in [0, 1] (`unit_images` of `PairFaces.images`).
        labels: (N,) labels of the faces.
        subjects: (N,) subject ids of the faces.
        pairs: (P, 2) rows (input, target) to draw from.
        batch_size: Pairs per batch.
        augment: Flip and similarity-warp ranges (one transform per pair, applied to both images).
        seed: Seed of the draws and the warps.
        guiding: (G, 1, H, W) real neutral faces in [0, 1], or None for no guiding batch.
        guiding_size: Guiding faces per batch (default `batch_size`).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: np.ndarray,
        subjects: np.ndarray,
        pairs: np.ndarray,
        batch_size: int,
        augment: AugmentConfig,
        seed: int = 0,
        guiding: torch.Tensor | None = None,
        guiding_size: int | None = None,
    ) -> None:
        self.images, self.pairs, self.batch_size, self.augment = images, torch.as_tensor(pairs), batch_size, augment
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        _, pair_subject, counts = np.unique(subjects[pairs[:, 0]], return_inverse=True, return_counts=True)
        self.weights = torch.as_tensor(1.0 / counts[pair_subject], dtype=torch.float64)
        self.guiding, self.guiding_size = guiding, guiding_size or batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __next__(self) -> PairBatch:
        chosen = self.pairs[torch.multinomial(self.weights, self.batch_size, True, generator=self.generator)]
        both = torch.cat([self.images[chosen[:, 0]], self.images[chosen[:, 1]]], dim=1)
        both = random_similarity(both, self.augment, self.generator)
        guiding = None
        if self.guiding is not None:
            picked = torch.randint(len(self.guiding), (self.guiding_size,), generator=self.generator)
            guiding = random_similarity(self.guiding[picked], self.augment, self.generator)
        return PairBatch(both[:, :1], both[:, 1:], self.labels[chosen[:, 0]], guiding)


class GeneratorPhase(Protocol):
    """A generator-pretraining recipe (IDFERM's HNG phase, GCNet's generator pretraining)."""

    model: FerModel

    def step(self, batch: PairBatch) -> dict[str, float]:
        """One optimisation step on a batch of pairs; returns the logged loss terms."""

    def generate(self, inputs: torch.Tensor) -> torch.Tensor:
        """Generated neutral faces of any number of [0, 1] inputs (eval mode, batched, no gradient)."""

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """What the generator checkpoint holds."""


def pretrain_generator(
    phase: GeneratorPhase,
    batches: Iterator[PairBatch],
    *,
    steps: int,
    run_dir: Path,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    log_every: int = 50,
    checkpoint_every: int = 500,
    info: dict[str, Any] | None = None,
) -> list[dict]:
    """Train a generator phase for `steps` batches; write ``<run_dir>/generator.{safetensors,json}``.

    Args:
        phase: The method's generator phase.
        batches: Endless pair batches (`PairBatches`).
        steps: Number of optimisation steps.
        run_dir: Folder of the generator checkpoint and ``generator_history.json``.
        val: (inputs, targets) of the held-out pairs in [0, 1]; their mean L1 error is logged at each checkpoint.
        log_every: Steps between log lines (mean loss terms since the last line).
        checkpoint_every: Steps between checkpoints (the last step always writes one).
        info: Extra JSON stored in the checkpoint (config, data).

    Returns:
        The logged history (one row per `log_every` steps, with ``val_l1`` at checkpoints).
    """
    run_dir = Path(run_dir)
    history: list[dict] = []
    sums: dict[str, float] = {}
    counted, started = 0, time.perf_counter()
    for step in range(1, steps + 1):
        for key, value in phase.step(next(batches)).items():
            sums[key] = sums.get(key, 0.0) + value
        counted += 1
        last = step == steps
        if step % log_every and step % checkpoint_every and not last:
            continue
        row = {"step": step, **{key: value / counted for key, value in sums.items()}}
        row["seconds"] = time.perf_counter() - started
        if val is not None and (step % checkpoint_every == 0 or last):
            row["val_l1"] = float((phase.generate(val[0]) - val[1]).abs().mean())
        history.append(row)
        logger.info("generator step %d/%d: %s", step, steps, {k: round(v, 4) for k, v in row.items() if k != "step"})
        sums, counted = {}, 0
        if step % checkpoint_every == 0 or last:
            save_checkpoint(run_dir, "generator", phase.state_tensors(), None, {**(info or {}), "step": step})
            write_json(history, run_dir / "generator_history.json")
    return history


def load_phase_init(phase: GeneratorPhase, path: Path) -> None:
    """Continue a generator phase from a weight file: load the tensors its checkpoint holds (`state_tensors`).

    Raises:
        ValueError: The file lacks some of them.
    """
    tensors = load_file(path)
    names = list(phase.state_tensors())
    missing = [name for name in names if name not in tensors]
    if missing:
        raise ValueError(f"{path} does not hold the generator phase's tensors, e.g. {missing[:3]}")
    phase.model.load_state_dict({name: tensors[name] for name in names}, strict=False)  # casts float16 files
    logger.info("Continuing the generator phase from %s", path)


def resolve(path: str | Path) -> Path:
    """A config path, relative to the repository root unless absolute."""
    path = Path(path)
    return path if path.is_absolute() else REPO_ROOT / path


def load_generator(model: nn.Module, path: Path) -> None:
    """Load a generator checkpoint written by `pretrain_generator` into the matching parts of `model`.

    Raises:
        FileNotFoundError: No checkpoint at `path` (run the method's generator pretraining first).
        ValueError: The file holds tensors `model` does not have, or lacks some of its generator's.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"No pretrained generator at {path}: run `python -m training pretrain <method>` first or set "
            "generator_checkpoint"
        )
    tensors = load_file(path)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    parts = {key.split(".", 1)[0] for key in tensors}
    absent = [key for key in missing if key.split(".", 1)[0] in parts]
    if unexpected or absent:
        raise ValueError(f"{path} does not fit the model: unexpected {unexpected[:3]}, missing {absent[:3]}")
    logger.info("Loaded the pretrained %s from %s", " and ".join(sorted(parts)), path)
