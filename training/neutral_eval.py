"""Do the generated neutral faces look like the person? Evaluation on the held-out subjects of the pairs data.

For every held-out face that is not neutral (expressions and Yale's variants), the generator's output is compared
with the subject's real neutral face(s):

- **rank-1 identification**: the generated face is the probe, the real neutral faces of all held-out subjects the
  gallery; cosine similarity of identity embeddings, nearest gallery face wins. Reported over the pooled gallery
  (all held-out subjects) and within each source set (the gallery restricted to subjects of the probe's data
  set, so photographic style cannot give the answer away). The same numbers for the raw expressive input as
  probe show how much identity the input carries before generation.
- **pixel error** against every real neutral of the subject: L1, MSE and SSIM
  (`skimage.metrics.structural_similarity`, data range 1) on 64x64 faces in [0, 1], for the generated face and,
  as a reference, for the unchanged input.
- **grid PNG**: rows of (input | generated | real neutral) triplets.

Embeddings come from an identity network trained on CK+ (118 subjects; `train_eval_identity`), data that neither
the generators nor IDFERM's loss network ever saw, and none of the held-out subjects. One such network per model
card (the cards differ in their equalisation) ships in ``training/eval_identity/`` with its SHA-256, so every
report, in any clone, measures with the same network: retrained, it would differ with the machine and thread count
enough to move rank-1 by several points. Where IDFERM's loss network
(trained on the training subjects of the pairs) is given, its numbers are reported too, labelled as such: the
generator was optimised against that network, so they are optimistic.

`python -m training pretrain` reports on the freshly pretrained generator; `python -m training evaluate <method>
--protocol neutral` (`evaluate_trained`) on the generator of a trained model, which for GCNet keeps learning in
the joint phase.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from skimage.metrics import structural_similarity

from fer_demo.models import ModelCard, get_card
from training.checkpoint import write_json
from training.data import load_ckplus
from training.identity import IdentityNet, embed, load_identity, save_identity, train_identity
from training.pairs import NEUTRAL, PAIR_SETS, SUBJECT_STRIDE, PairData, load_pair_data, unit_images

logger = logging.getLogger(__name__)

EVAL_IDENTITY_DIR = Path(__file__).resolve().parent / "eval_identity"
"""The shipped evaluation identity networks, ``<card name>.{safetensors,json}``."""


def rank1(
    probes: np.ndarray,
    probe_subjects: np.ndarray,
    gallery: np.ndarray,
    gallery_subjects: np.ndarray,
    same_group: np.ndarray | None = None,
) -> float:
    """Rank-1 identification rate with cosine similarity.

    Args:
        probes: (P, D) L2-normalised probe embeddings.
        probe_subjects: (P,) their subjects.
        gallery: (G, D) L2-normalised gallery embeddings.
        gallery_subjects: (G,) their subjects.
        same_group: (P, G) bool, which gallery entries each probe may match (None: all).
    """
    similarity = probes @ gallery.T
    if same_group is not None:
        similarity = np.where(same_group, similarity, -np.inf)
    return float(np.mean(gallery_subjects[similarity.argmax(1)] == probe_subjects))


def image_errors(generated: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Mean L1, MSE and SSIM between (N, 1, H, W) faces in [0, 1]."""
    a, b = generated[:, 0].double().numpy(), targets[:, 0].double().numpy()
    ssim = [structural_similarity(x, y, data_range=1.0) for x, y in zip(a, b, strict=True)]
    return {"l1": float(np.abs(a - b).mean()), "mse": float(((a - b) ** 2).mean()), "ssim": float(np.mean(ssim))}


def save_grid(
    inputs: torch.Tensor, generated: torch.Tensor, targets: torch.Tensor, path: Path, columns: int = 4, scale: int = 2
) -> None:
    """PNG of (input | generated | real neutral) triplets, `columns` triplets per row, faces upscaled `scale` x."""
    triplets = torch.stack([inputs, generated, targets], 1)[:, :, 0].clamp(0, 1).mul(255).round().byte().numpy()
    n, _, height, width = triplets.shape
    gap, rows = 4, -(-n // columns)
    canvas = np.full((rows * (height + gap) + gap, columns * (3 * width + 2 * gap) + gap), 255, np.uint8)
    for index, triplet in enumerate(triplets):
        top = gap + (index // columns) * (height + gap)
        left = gap + (index % columns) * (3 * width + 2 * gap)
        canvas[top : top + height, left : left + 3 * width] = np.concatenate(list(triplet), axis=1)
    image = Image.fromarray(canvas)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.resize((image.width * scale, image.height * scale), Image.NEAREST).save(path)


def train_eval_identity(card: ModelCard, data_dir: Path | None = None, **settings: Any) -> IdentityNet:
    """The evaluation identity network: `IdentityNet` trained on the 118 CK+ subjects (all 981 frames)."""
    faces = load_ckplus(data_dir)
    logger.info("Training the evaluation identity network on CK+ (%d faces, %d subjects)", len(faces), 118)
    return train_identity(unit_images(faces.images, card), faces.subjects, **settings)


def eval_identity(card: ModelCard, data_dir: Path | None = None, **settings: Any) -> IdentityNet:
    """The evaluation identity network of `card`'s faces: ``EVAL_IDENTITY_DIR/<card name>.*`` (SHA-256 checked),
    or trained on CK+ with `settings` and saved there when missing (delete both files to train it anew)."""
    if (EVAL_IDENTITY_DIR / f"{card.name}.json").is_file():
        return load_identity(EVAL_IDENTITY_DIR, card.name)
    network = train_eval_identity(card, data_dir, **settings)
    save_identity(network, EVAL_IDENTITY_DIR, card.name, {"data": "ckplus (all frames)", "card": card.name, **settings})
    return network


def _identification(
    network: IdentityNet,
    images: torch.Tensor,
    probes: dict[str, torch.Tensor],
    probe_rows: np.ndarray,
    gallery_rows: np.ndarray,
    data: PairData,
) -> dict[str, float]:
    subjects, sources = data.faces.subjects, data.faces.sources
    gallery = embed(network, images[gallery_rows])
    same_source = sources[probe_rows][:, None] == sources[gallery_rows][None, :]
    result = {}
    for name, faces in probes.items():
        vectors = embed(network, faces)
        result[f"{name}_rank1"] = rank1(vectors, subjects[probe_rows], gallery, subjects[gallery_rows])
        result[f"{name}_rank1_within_set"] = rank1(
            vectors, subjects[probe_rows], gallery, subjects[gallery_rows], same_source
        )
    return result


@torch.no_grad()
def evaluate_neutrals(
    generate: Callable[[torch.Tensor], torch.Tensor],
    data: PairData,
    card: ModelCard,
    identity: IdentityNet,
    *,
    loss_identity: IdentityNet | None = None,
    grid_path: Path | None = None,
    grid_per_subject: int = 2,
) -> dict[str, Any]:
    """Rank-1 identification, pixel errors and the grid on the held-out subjects (see the module docstring).

    Args:
        generate: [0, 1] faces (N, 1, 64, 64) -> generated neutral faces, same shape (eval mode, batched).
        data: Pairs data; its held-out subjects are evaluated.
        card: Model card (the faces take its evaluation transform).
        identity: The evaluation identity network (CK+-trained).
        loss_identity: IDFERM's loss identity network, reported separately when given.
        grid_path: Where to write the grid PNG (None: no grid).
        grid_per_subject: Triplets per held-out subject in the grid.
    """
    faces = data.faces
    images = unit_images(faces.images, card)
    rows = data.rows(data.val_subjects)
    probe_rows = rows[faces.labels[rows] != NEUTRAL]
    gallery_rows = rows[faces.labels[rows] == NEUTRAL]
    generated = generate(images[probe_rows])
    probes = {"generated": generated, "input": images[probe_rows]}
    subjects, sources = faces.subjects, faces.sources
    per_set = [len(np.unique(subjects[gallery_rows][sources[gallery_rows] == s])) for s in sources[probe_rows]]
    result: dict[str, Any] = {
        "subjects": int(len(data.val_subjects)),
        "subjects_per_set": {
            name: int(np.sum(data.val_subjects // SUBJECT_STRIDE == i)) for i, name in enumerate(PAIR_SETS)
        },
        "probes": int(len(probe_rows)),
        "gallery": int(len(gallery_rows)),
        "chance_rank1": 1.0 / len(data.val_subjects),
        "chance_rank1_within_set": float(np.mean(1.0 / np.asarray(per_set))),
        "eval_identity": _identification(identity, images, probes, probe_rows, gallery_rows, data),
    }
    if loss_identity is not None:
        result["loss_identity"] = _identification(loss_identity, images, probes, probe_rows, gallery_rows, data)
    position = {row: i for i, row in enumerate(probe_rows)}
    pairs = np.asarray([(position[a], b) for a, b in data.val_pairs if a in position])
    targets = images[pairs[:, 1]]
    result["generated_vs_neutral"] = image_errors(generated[pairs[:, 0]], targets)
    result["input_vs_neutral"] = image_errors(images[probe_rows][pairs[:, 0]], targets)
    if grid_path is not None:
        picked = np.concatenate(
            [np.flatnonzero(subjects[probe_rows] == s)[:grid_per_subject] for s in data.val_subjects]
        )
        first_neutral: dict[int, int] = {}
        for row in gallery_rows:
            first_neutral.setdefault(int(subjects[row]), int(row))
        neutral = images[[first_neutral[int(s)] for s in subjects[probe_rows][picked]]]
        save_grid(images[probe_rows][picked], generated[picked], neutral, Path(grid_path))
        result["grid"] = str(grid_path)
    logger.info(
        "Neutral faces of %d held-out subjects: rank-1 generated %.3f vs input %.3f (chance %.3f); "
        "within set %.3f vs %.3f (chance %.3f); L1 %.4f, SSIM %.3f (input: L1 %.4f, SSIM %.3f)",
        result["subjects"],
        result["eval_identity"]["generated_rank1"],
        result["eval_identity"]["input_rank1"],
        result["chance_rank1"],
        result["eval_identity"]["generated_rank1_within_set"],
        result["eval_identity"]["input_rank1_within_set"],
        result["chance_rank1_within_set"],
        result["generated_vs_neutral"]["l1"],
        result["generated_vs_neutral"]["ssim"],
        result["input_vs_neutral"]["l1"],
        result["input_vs_neutral"]["ssim"],
    )
    return result


def write_report(
    generate: Callable[[torch.Tensor], torch.Tensor],
    data: PairData,
    card: ModelCard,
    folder: Path,
    eval_settings: dict[str, Any],
    *,
    data_dir: Path | None = None,
    loss_identity: IdentityNet | None = None,
) -> dict[str, Any]:
    """`evaluate_neutrals` with the card's evaluation network; writes ``neutral.json`` and the grid to `folder`."""
    folder = Path(folder)
    identity = eval_identity(card, data_dir, **eval_settings)
    result = evaluate_neutrals(
        generate, data, card, identity, loss_identity=loss_identity, grid_path=folder / "neutral_grid.png"
    )
    write_json(result, folder / "neutral.json")
    return result


def evaluate_trained(
    model: torch.nn.Module, config: dict[str, Any], folder: Path, data_dir: Path | None = None
) -> dict[str, Any]:
    """The neutral-face report of a trained model's generator, with the card's evaluation network (as the
    pretraining report); the grid is written to `folder`."""
    card = get_card(config["model"])
    identity = eval_identity(card, data_dir, **config["eval_identity"])
    data = load_pair_data(data_dir, **config["pairs"])
    Path(folder).mkdir(parents=True, exist_ok=True)
    return evaluate_neutrals(
        batched_generator(model.generator), data, card, identity, grid_path=Path(folder) / "neutral_grid.png"
    )


def batched_generator(generator: torch.nn.Module, batch_size: int = 128) -> Callable[[torch.Tensor], torch.Tensor]:
    """A model's generator module as an eval-mode, batched `generate` function."""

    @torch.no_grad()
    def generate(inputs: torch.Tensor) -> torch.Tensor:
        generator.eval()
        return torch.cat([generator(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)])

    return generate
