"""GCNet recipe (Kim et al., arXiv:1703.07140): generator pretraining on the pairs, then joint training (Eq. 4).

**Phase 1** (`pretrain`, `GeneratorPhase`): the encoder-decoder G is trained on the pairs data
(`training.pairs`) with L_gen = 1/2 ||X_r - G(X)||^2 (Eq. 5) alone. It stands in for the paper's reconstruction
pretraining on CASIA-WebFace, which is not available; the contrastive encoder starts from scratch.

**Phase 2** (`GCNetRecipe`) on FER2013:
L = L_cls + lambda_G L_gen + lambda_S L_contr + lambda_R,i L_recon,i + lambda_R,r L_recon,r, with the variant
(``S0R0``, ``S1R0``, ``S0R1``, ``S1R1``) switching the contrastive (S) and reconstruction (R) terms.
FER2013 has no neutral face of the same person, so L_gen needs the pairs: every FER2013 batch is extended with
``pairs_per_batch`` training pairs (augmented, input and target warped together), and one forward pass runs over
both. Then

- L_cls: cross-entropy on the FER2013 rows only;
- L_gen: on the pairs rows only (generated vs real neutral), keeping G a neutral-face generator while L_cls
  and L_contr also train it;
- L_contr (Eq. 6): on every row with an expression label, S = ||En(X)/|En(X)| - En(G(X))/|En(G(X))|||_2 on the
  L2-normalised codes (the ones Eq. 2's delta compares, so the margin m has a fixed scale), alpha = 1 unless the
  query is neutral (the reference's label);
- L_recon (Eqs. 8-9): the input rebuilt from En(X) on every row; the reference rebuilt from En(G(X)), against
  the real neutral on the pairs rows and against the generated reference itself (detached) on the FER2013 rows.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn import functional as F

from fer_demo.models import create_model, get_card
from fer_demo.models.gcnet import GCNet
from training.augment import AugmentConfig
from training.checkpoint import init_seed
from training.generation_losses import contrastive_loss, generation_loss, reconstruction_loss
from training.losses import softmax_loss
from training.methods.base import Recipe, build_optimizer, resized_linear
from training.neutral_eval import batched_generator, write_report
from training.pairs import (
    NEUTRAL,
    PairBatch,
    PairBatches,
    load_generator,
    load_pair_data,
    load_phase_init,
    pretrain_generator,
    resolve,
    unit_images,
)

logger = logging.getLogger(__name__)

VARIANT = re.compile(r"S([01])R([01])")


def parse_variant(name: str) -> tuple[bool, bool]:
    """``"S1R0"`` -> (contrastive, reconstruction) = (True, False)."""
    match = VARIANT.fullmatch(name)
    if match is None:
        raise ValueError(f"Unknown GCNet variant {name!r}; expected S0R0, S1R0, S0R1 or S1R1")
    return match.group(1) == "1", match.group(2) == "1"


class GeneratorPhase:
    """Phase 1: G trained on pairs with L_gen alone."""

    def __init__(self, model: GCNet, settings: dict[str, Any]) -> None:
        self.model = model
        self.optimizer = build_optimizer(model.generator.parameters(), settings["optimizer"])

    def step(self, batch: PairBatch) -> dict[str, float]:
        self.model.generator.train()
        loss = generation_loss(self.model.generator(batch.inputs), batch.targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item()}

    def generate(self, inputs: torch.Tensor) -> torch.Tensor:
        return batched_generator(self.model.generator)(inputs)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {key: value for key, value in self.model.state_dict().items() if key.startswith("generator.")}


def pretrain(config: dict[str, Any], run_dir: Path, *, data_dir: Path | None = None) -> dict[str, Any]:
    """Phase 1: train G on the pairs; write ``generator.*``, ``identity_eval.*``, ``neutral.json`` and the grid.

    Returns:
        The neutral-face evaluation of the held-out subjects.
    """
    settings, run_dir = config["pretrain"], Path(run_dir)
    torch.manual_seed(settings["seed"])
    card = get_card(config["model"])
    data = load_pair_data(data_dir, **config["pairs"])
    images = unit_images(data.faces.images, card)
    phase = GeneratorPhase(create_model(config["model"], **config.get("model_kwargs", {})), settings)
    if config.get("init"):
        load_phase_init(phase, resolve(config["init"]))
    seed = init_seed(settings["seed"], config.get("init"))
    augment = AugmentConfig.from_dict(settings["augment"])
    batches = PairBatches(
        images, data.faces.labels, data.faces.subjects, data.train_pairs, settings["batch_size"], augment, seed
    )  # fmt: skip
    pretrain_generator(
        phase,
        batches,
        steps=settings["steps"],
        run_dir=run_dir,
        val=(images[data.val_pairs[:, 0]], images[data.val_pairs[:, 1]]),
        checkpoint_every=settings["checkpoint_every"],
        info={"config": config, "train_pairs": len(data.train_pairs), "batch_seed": seed},
    )
    return write_report(phase.generate, data, card, run_dir, config["eval_identity"], data_dir=data_dir)


class GCNetRecipe(Recipe):
    """Phase 2: L_cls + lambda_G L_gen + lambda_S L_contr + L_recon on FER2013 batches extended with pairs."""

    def __init__(self, config: dict[str, Any], device: torch.device | str = "cpu") -> None:
        super().__init__(config, device)
        self.contrastive, self.reconstruct = parse_variant(config["variant"])
        loss = config["loss"]
        self.lambda_g = float(loss["lambda_g"])
        self.lambda_s = float(loss["lambda_s"])
        self.lambda_ri = float(loss["lambda_r_input"])
        self.lambda_rr = float(loss["lambda_r_reference"])
        self.margin = float(loss["margin"])
        self.pairs_per_batch = int(config["pairs_per_batch"])
        self.neutral_index: int | None = NEUTRAL
        self.generator_loaded = False
        self.pairs: PairBatches | None = None

    @property
    def num_classes(self) -> int:
        return self.model.classifier.out_features

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        super().load_state_tensors(tensors)
        self.generator_loaded = True

    def pair_batches(self) -> PairBatches:
        """The endless stream of training pairs (loaded on first use), in the model card's domain."""
        if self.pairs is None:
            data = load_pair_data(self.config.get("data_dir"), **self.config["pairs"])
            rank = dist.get_rank() if dist.is_initialized() else 0
            self.pairs = PairBatches(
                unit_images(data.faces.images, self.model.card),
                data.faces.labels,
                data.faces.subjects,
                data.train_pairs,
                self.pairs_per_batch,
                AugmentConfig.from_dict(self.config.get("augment")),
                seed=self.config["seed"] * 1000 + rank,
            )
        return self.pairs

    def training_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        if not self.generator_loaded:
            load_generator(self.model, resolve(self.config["generator_checkpoint"]))
            self.generator_loaded = True
        mean, std = self.model.card.mean[0], self.model.card.std[0]
        n = len(y)
        labels = y
        if self.pairs_per_batch:
            pairs = next(self.pair_batches())
            x = torch.cat([x, ((pairs.inputs - mean) / std).to(x.device)])
            labels = torch.cat([y, pairs.labels.to(y.device)])
        out = self.network(x, reconstruct=self.reconstruct)
        terms = {"softmax": softmax_loss(out.logits[:n], y)}
        total = terms["softmax"]
        if self.pairs_per_batch:
            terms["generation"] = generation_loss(out.neutral[n:], pairs.targets.to(x.device))
            total = total + self.lambda_g * terms["generation"]
        if self.contrastive:
            distance = (F.normalize(out.query_code, dim=1) - F.normalize(out.reference_code, dim=1)).norm(dim=1)
            labelled = labels >= 0
            different = labels != self.neutral_index if self.neutral_index is not None else torch.ones_like(labelled)
            terms["contrastive"] = contrastive_loss(distance[labelled], different[labelled], self.margin)
            total = total + self.lambda_s * terms["contrastive"]
        if self.reconstruct:
            reference = out.neutral.detach()
            if self.pairs_per_batch:
                reference = torch.cat([reference[:n], pairs.targets.to(x.device)])
            terms["reconstruction"] = reconstruction_loss(
                x * std + mean, out.recon_input, reference, out.recon_reference, self.lambda_ri, self.lambda_rr
            )
            total = total + terms["reconstruction"]
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        accuracy = (out.logits[:n].argmax(1) == y).float().mean()
        return {
            "loss": total.item(),
            **{key: value.item() for key, value in terms.items()},
            "accuracy": accuracy.item(),
        }

    def replace_head(self, rows: Sequence[int | None]) -> None:
        self.model.classifier = resized_linear(self.model.classifier, rows)
        self.neutral_index = list(rows).index(NEUTRAL) if NEUTRAL in rows else None
        self.reset_optimizer()
