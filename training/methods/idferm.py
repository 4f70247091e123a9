"""IDFERM recipe (Liu et al., Pattern Recognition 88, 2019) in two phases.

**Phase 1, hard negative generation** (`pretrain`, `HNGPhase`, Algorithm 1) on the pairs data
(`training.pairs`): per batch, X' = Dec(Enc(X)) and

- Enc <- L_feat + w1 L_id + w2 L_pixel;
- Dec <- L_feat + w1 L_id + w2 L_pixel + w3 L_sym + w4 L_GAN_Dec;
- Dis <- L_GAN_Dis (real faces from the guiding set, fakes X' detached).

The adversarial and symmetry terms are back-propagated into the decoder's parameters only (``backward(...,
inputs=decoder parameters)``), so they never reach the encoder. L_feat compares X' with the target neutral face,
L_id compares X' with the input (the paper rewards "the perceptual similarity between input and generated
images"), L_pixel compares X' with the target. VGG-Face and Light CNN are replaced by one `IdentityNet` trained
on the training subjects of the pairs (`training.identity`); see its docstring for the layers used.

**Phase 2, radial metric learning** (`IDFERMRecipe`, Algorithm 2) on FER2013 with the frozen generator: each
query x_i passes through the RML network with its generated reference x*_i (both in the model's forward);
L = L_softmax(EC branch) + lambda L_RML, lambda = 1, with L_RML = 1/K sum [max(0, 1 + H(f_i, C_yi)) +
max(0, 1 - H(f*_i, C_yi))] (`training.generation_losses.rml_loss`). H is the model's learned quadratic form.
The class centers C_k (the model's ``centers`` buffer, exported with the weights) follow the center-loss moving
average of the query embeddings after each step: C_k <- C_k - alpha * sum_{y_i = k} (C_k - f_i) / (1 + n_k)
(`training.losses.update_centers`), starting from zero. A neutral query's reference is its own class, so its
push term is dropped unless ``loss.push_neutral_references`` is true.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fer_demo.models import create_model, get_card
from fer_demo.models.idferm import IDFERM
from training.augment import AugmentConfig
from training.checkpoint import init_seed
from training.generation_losses import (
    discriminator_loss,
    feature_loss,
    generator_adversarial_loss,
    identity_loss,
    pixel_loss,
    rml_loss,
    symmetry_loss,
)
from training.identity import IdentityNet, freeze, load_identity, save_identity, train_identity
from training.losses import softmax_loss, update_centers
from training.methods.base import Recipe, build_optimizer, resized_linear, resized_rows
from training.neutral_eval import batched_generator, write_report
from training.pairs import (
    NEUTRAL,
    PairBatch,
    PairBatches,
    guiding_faces,
    load_generator,
    load_pair_data,
    load_phase_init,
    pretrain_generator,
    resolve,
    unit_images,
)

logger = logging.getLogger(__name__)

LOSS_IDENTITY = "identity_loss"
"""Stem of the loss identity network's checkpoint in the pretraining folder."""


class HNGPhase:
    """Algorithm 1: one update of Enc, Dec and Dis per batch of pairs.

    Args:
        model: The IDFERM model whose generator and discriminator are trained.
        identity: The frozen identity network of L_feat and L_id.
        settings: The config's ``pretrain`` entry (``weights`` w1..w4, ``optimizer``, ``discriminator_optimizer``).
    """

    def __init__(self, model: IDFERM, identity: IdentityNet, settings: dict[str, Any]) -> None:
        self.model, self.identity = model, freeze(identity)
        weights = settings["weights"]
        self.w1, self.w2, self.w3, self.w4 = (float(weights[key]) for key in ("w1", "w2", "w3", "w4"))
        generator = model.generator
        self.decoder_parameters = [*generator.project.parameters(), *generator.decoder.parameters()]
        self.optimizer = build_optimizer(generator.parameters(), settings["optimizer"])
        self.discriminator_optimizer = build_optimizer(
            model.discriminator.parameters(), settings["discriminator_optimizer"]
        )

    def losses(self, batch: PairBatch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The five generator terms of a batch and the generated faces X'."""
        generator = self.model.generator
        generated = generator.decode(generator.encode(batch.inputs))
        features = self.identity(generated)
        with torch.no_grad():
            target, source = self.identity(batch.targets), self.identity(batch.inputs)
        terms = {
            "feature": feature_loss(features.perceptual, target.perceptual),
            "identity": identity_loss(features.identity, source.identity),
            "pixel": pixel_loss(generated, batch.targets),
            "symmetry": symmetry_loss(generated),
            "adversarial": generator_adversarial_loss(self.model.discriminator(generated)),
        }
        return terms, generated

    def backward(self, shared: torch.Tensor | None, decoder_only: torch.Tensor) -> None:
        """Accumulate gradients: `decoder_only` into the decoder's parameters only, `shared` into Enc and Dec."""
        decoder_only.backward(inputs=self.decoder_parameters, retain_graph=shared is not None)
        if shared is not None:
            shared.backward()

    def step(self, batch: PairBatch) -> dict[str, float]:
        self.model.generator.train()
        self.model.discriminator.train()
        terms, generated = self.losses(batch)
        shared = terms["feature"] + self.w1 * terms["identity"] + self.w2 * terms["pixel"]
        decoder_only = self.w3 * terms["symmetry"] + self.w4 * terms["adversarial"]
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(shared, decoder_only)
        self.optimizer.step()

        discriminator = self.model.discriminator
        real = batch.guiding if batch.guiding is not None else batch.targets
        dis = discriminator_loss(discriminator(real), discriminator(generated.detach()))
        self.discriminator_optimizer.zero_grad(set_to_none=True)
        dis.backward()
        self.discriminator_optimizer.step()
        return {
            "loss": (shared + decoder_only).item(),
            **{key: value.item() for key, value in terms.items()},
            "discriminator": dis.item(),
        }

    def generate(self, inputs: torch.Tensor) -> torch.Tensor:
        return batched_generator(self.model.generator)(inputs)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        state = self.model.state_dict()
        return {key: value for key, value in state.items() if key.startswith(("generator.", "discriminator."))}


def loss_identity(folder: Path, images: torch.Tensor, subjects, settings: dict[str, Any]) -> IdentityNet:
    """Load ``<folder>/identity_loss.*`` or train it on the given faces (the pairs' training subjects)."""
    if (Path(folder) / f"{LOSS_IDENTITY}.json").is_file():
        return load_identity(folder, LOSS_IDENTITY)
    logger.info("Training the loss identity network on %d faces of %d subjects", len(images), len(set(subjects)))
    network = train_identity(images, subjects, **settings)
    save_identity(network, folder, LOSS_IDENTITY, {"data": "pairs training subjects", **settings})
    return network


def pretrain(config: dict[str, Any], run_dir: Path, *, data_dir: Path | None = None) -> dict[str, Any]:
    """Phase 1: train the HNG on the pairs; write the generator checkpoint, neutral-face report and grid.

    Writes ``<run_dir>/generator.{safetensors,json}`` (generator and discriminator tensors; phase 2 reads it
    through ``generator_checkpoint``), ``identity_loss.*``, ``identity_eval.*``, ``neutral.json`` and
    ``neutral_grid.png``.

    Returns:
        The neutral-face evaluation of the held-out subjects (`training.neutral_eval.evaluate_neutrals`).
    """
    settings, run_dir = config["pretrain"], Path(run_dir)
    torch.manual_seed(settings["seed"])
    card = get_card(config["model"])
    data = load_pair_data(data_dir, **config["pairs"])
    images = unit_images(data.faces.images, card)
    rows = data.rows(data.train_subjects)
    identity = loss_identity(run_dir, images[rows], data.faces.subjects[rows], settings["identity"])
    guiding = unit_images(guiding_faces(data, settings["guiding_fer2013"], data_dir), card)
    model = create_model(config["model"], **config.get("model_kwargs", {}))
    phase = HNGPhase(model, identity, settings)
    if config.get("init"):
        load_phase_init(phase, resolve(config["init"]))
    seed = init_seed(settings["seed"], config.get("init"))
    augment = AugmentConfig.from_dict(settings["augment"])
    batches = PairBatches(
        images, data.faces.labels, data.faces.subjects, data.train_pairs, settings["batch_size"], augment, seed,
        guiding,
    )  # fmt: skip
    info = {
        "config": config, "train_pairs": len(data.train_pairs), "guiding_faces": len(guiding), "batch_seed": seed
    }  # fmt: skip
    pretrain_generator(
        phase,
        batches,
        steps=settings["steps"],
        run_dir=run_dir,
        val=(images[data.val_pairs[:, 0]], images[data.val_pairs[:, 1]]),
        checkpoint_every=settings["checkpoint_every"],
        info=info,
    )
    return write_report(
        phase.generate, data, card, run_dir, config["eval_identity"], data_dir=data_dir, loss_identity=identity
    )


class IDFERMRecipe(Recipe):
    """Phase 2: RML network + learned distance H, softmax + lambda * RML, frozen pretrained generator."""

    def __init__(self, config: dict[str, Any], device: torch.device | str = "cpu") -> None:
        super().__init__(config, device)
        loss = config["loss"]
        self.lam = float(loss["lambda"])
        self.alpha = float(loss["alpha"])
        self.push_neutral = bool(loss["push_neutral_references"])
        self.neutral_index: int | None = NEUTRAL
        freeze(self.model.generator)
        freeze(self.model.discriminator)
        self.reset_optimizer()
        self.generator_loaded = False

    @property
    def num_classes(self) -> int:
        return self.model.rml.classifier.out_features

    def reset_optimizer(self, settings: dict[str, Any] | None = None) -> None:
        trainable = [parameter for parameter in self.model.parameters() if parameter.requires_grad]
        self.optimizer = build_optimizer(trainable, settings or self.config["optimizer"])

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        super().load_state_tensors(tensors)
        self.generator_loaded = True

    def training_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        if not self.generator_loaded:
            load_generator(self.model, resolve(self.config["generator_checkpoint"]))
            self.generator_loaded = True
        self.model.generator.eval()
        self.model.discriminator.eval()
        out = self.network(x)
        rows = torch.arange(len(y), device=y.device)
        softmax = softmax_loss(out.logits, y)
        mask = None if self.push_neutral or self.neutral_index is None else y != self.neutral_index
        rml = rml_loss(out.center_distance[rows, y], out.reference_center_distance[rows, y], mask)
        total = softmax + self.lam * rml
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        update_centers(self.model.centers, out.embedding.detach(), y, self.alpha)
        self.optimizer.step()
        accuracy = (out.logits.argmax(1) == y).float().mean()
        return {"loss": total.item(), "softmax": softmax.item(), "rml": rml.item(), "accuracy": accuracy.item()}

    def replace_head(self, rows: Sequence[int | None]) -> None:
        self.model.rml.classifier = resized_linear(self.model.rml.classifier, rows)
        fresh = torch.zeros(len(rows), self.model.centers.shape[1], device=self.device)
        self.model.centers = resized_rows(self.model.centers, rows, fresh)
        self.neutral_index = list(rows).index(NEUTRAL) if NEUTRAL in rows else None
        self.reset_optimizer()
