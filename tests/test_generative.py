"""The generative methods: every loss on a hand-computed example, one step per phase, the stop-gradient rule of
IDFERM's HNG, the generator checkpoint, the neutral-face evaluation and the export round trip."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fer_demo.hub import WeightsError
from fer_demo.models import create_model, get_card
from tests.conftest import requires_pairs_data
from training.augment import AugmentConfig
from training.checkpoint import save_checkpoint, save_tensors
from training.data import DEFAULT_DATA_DIR
from training.generation_losses import (
    contrastive_loss,
    discriminator_loss,
    feature_loss,
    generation_loss,
    generator_adversarial_loss,
    identity_loss,
    laplacian,
    pixel_loss,
    reconstruction_loss,
    rml_loss,
    symmetry_loss,
)
from training.identity import IdentityNet, embed, freeze, load_identity, save_identity, train_identity
from training.methods.gcnet import GCNetRecipe, GeneratorPhase, parse_variant
from training.methods.idferm import HNGPhase, IDFERMRecipe
from training.neutral_eval import evaluate_neutrals, image_errors, rank1, save_grid
from training.pairs import (
    PairBatch,
    PairBatches,
    PairData,
    PairFaces,
    load_generator,
    load_phase_init,
    pretrain_generator,
    unit_images,
)
from training.trainer import load_config

CKPLUS_ROWS = (0, 1, 2, 3, 4, 5, None)


# --- losses -----------------------------------------------------------------------------------------------------


def test_feature_and_pixel_losses():
    generated = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    target = torch.zeros_like(generated)
    # RMS of the generated map: sqrt(30 / 4); the normalised map has mean square 1, the zero map stays 0.
    assert feature_loss(generated, target).item() == pytest.approx(1.0)
    assert feature_loss(3 * generated, generated).item() == pytest.approx(0.0, abs=1e-6)  # scale-free
    flipped = torch.tensor([[[[4.0, 3.0], [2.0, 1.0]]]])
    # (1-4, 2-3, 3-2, 4-1)^2 / 7.5, mean over 4: (9 + 1 + 1 + 9) / 7.5 / 4
    assert feature_loss(generated, flipped).item() == pytest.approx(20 / 7.5 / 4)
    assert pixel_loss(generated, target).item() == pytest.approx((1 + 2 + 3 + 4) / 4)


def test_laplacian_and_symmetry_loss():
    image = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]).view(
        1, 1, 4, 4
    )
    # 'valid' 4-neighbour Laplacian: centre (1,1) -> -4, its right neighbour (1,2) -> 1, (2,1) -> 1, (2,2) -> 0.
    assert laplacian(image)[0, 0].tolist() == [[-4.0, 1.0], [1.0, 0.0]]
    # Left half = first column of the 2x2 Laplacian: |-4 - 1| and |1 - 0| -> mean 3.
    assert symmetry_loss(image).item() == pytest.approx(3.0)
    symmetric = image + image.flip(-1)
    assert symmetry_loss(symmetric).item() == pytest.approx(0.0)
    # A smooth left-right illumination ramp has a zero Laplacian: no penalty.
    ramp = torch.linspace(0, 1, 8).repeat(8, 1).view(1, 1, 8, 8)
    assert symmetry_loss(ramp).item() == pytest.approx(0.0, abs=1e-6)


def test_adversarial_losses():
    zero = torch.zeros(3)
    assert discriminator_loss(zero, zero).item() == pytest.approx(2 * math.log(2))
    assert generator_adversarial_loss(zero).item() == pytest.approx(math.log(2))
    sure = torch.full((3,), 20.0)
    assert discriminator_loss(sure, -sure).item() == pytest.approx(0.0, abs=1e-6)
    # Eq. 5 with Dis(x') = sigmoid(1): -log sigmoid(1).
    assert generator_adversarial_loss(torch.ones(2)).item() == pytest.approx(-math.log(1 / (1 + math.exp(-1))))


def test_identity_loss_is_half_the_sum_of_layer_means():
    generated = (torch.tensor([[1.0, 3.0]]), torch.tensor([[2.0]]))
    reference = (torch.tensor([[0.0, 0.0]]), torch.tensor([[-2.0]]))
    # layer 1: (1, 3) / sqrt(5) vs 0 -> mean |.| = 4 / sqrt(5) / 2; layer 2: 2 / 2 vs -2 / 2 -> 2
    assert identity_loss(generated, reference).item() == pytest.approx(0.5 * (2 / math.sqrt(5) + 2))


def test_rml_loss_pulls_queries_in_and_pushes_references_out():
    query = torch.tensor([-2.0, 0.0])  # inside the radius (H < -1), on the boundary region
    reference = torch.tensor([3.0, 0.5])  # beyond it (H > 1), not far enough
    # pull: max(0, 1 - 2) = 0, max(0, 1 + 0) = 1; push: max(0, 1 - 3) = 0, max(0, 1 - 0.5) = 0.5
    assert rml_loss(query, reference).item() == pytest.approx((0 + 0 + 1 + 0.5) / 2)
    assert rml_loss(query, reference, torch.tensor([True, False])).item() == pytest.approx((0 + 0 + 1 + 0) / 2)


def test_rml_loss_gradient_moves_h_the_right_way():
    query = torch.tensor([0.0], requires_grad=True)
    reference = torch.tensor([0.0], requires_grad=True)
    rml_loss(query, reference).backward()
    assert query.grad.item() > 0 and reference.grad.item() < 0  # descent lowers H(f, C), raises H(f*, C)


def test_generation_loss_sums_pixels_and_averages_the_batch():
    target = torch.zeros(2, 1, 2, 2)
    generated = torch.stack([torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 2.0)])
    # per image 1/2 * sum of squares: 1/2 * 4 * 1 = 2 and 1/2 * 4 * 4 = 8 -> mean 5
    assert generation_loss(generated, target).item() == pytest.approx(5.0)


def test_contrastive_loss_eq6():
    distance = torch.tensor([0.3, 2.0, 0.5])
    different = torch.tensor([True, True, False])
    # alpha = 1: 1/2 max(0, 1 - 0.3)^2 = 0.245, 1/2 max(0, 1 - 2)^2 = 0; alpha = 0: 1/2 0.5^2 = 0.125
    assert contrastive_loss(distance, different, margin=1.0).item() == pytest.approx((0.245 + 0 + 0.125) / 3)


def test_reconstruction_loss_eq7_to_9():
    zeros = torch.zeros(1, 1, 2, 2)
    ones = torch.ones(1, 1, 2, 2)
    # input term 1/2 * 4 = 2, reference term 1/2 * 4 * 9 = 18
    assert reconstruction_loss(zeros, ones, zeros, 3 * ones, 0.25, 0.5).item() == pytest.approx(0.25 * 2 + 0.5 * 18)


# --- fixtures ---------------------------------------------------------------------------------------------------


def pair_batch(n: int = 4, guiding: bool = True, seed: int = 0) -> PairBatch:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(3 * n, 1, 64, 64, generator=generator)
    return PairBatch(images[:n], images[n : 2 * n], torch.arange(n) % 7, images[2 * n :] if guiding else None)


def synthetic_batches(n: int = 4) -> PairBatches:
    """Pairs over 6 random faces of 2 subjects (labels 3 and 6)."""
    images = torch.rand(6, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    labels = np.array([3, 3, 6, 4, 0, 6])
    subjects = np.array([1, 1, 1, 2, 2, 2])
    pairs = np.array([[0, 2], [1, 2], [2, 2], [3, 5], [4, 5], [5, 5]])
    return PairBatches(images, labels, subjects, pairs, n, AugmentConfig(), seed=0)


@pytest.fixture(scope="module")
def idferm_config() -> dict:
    config = load_config("idferm", "cpu")
    config.update(batch_size=8, threads=1)
    return config


@pytest.fixture(scope="module")
def gcnet_config() -> dict:
    config = load_config("gcnet", "cpu")
    config.update(batch_size=8, threads=1, pairs_per_batch=4)
    return config


def hng_phase(config: dict) -> HNGPhase:
    torch.manual_seed(0)
    return HNGPhase(create_model("idferm"), IdentityNet(5), config["pretrain"])


def fer_batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.randn(n, 1, 64, 64), torch.arange(n) % 7


# --- IDFERM phase 1 ---------------------------------------------------------------------------------------------


def test_hng_step_updates_generator_and_discriminator(idferm_config):
    phase = hng_phase(idferm_config)
    before = {key: value.clone() for key, value in phase.state_tensors().items()}
    identity_before = {key: value.clone() for key, value in phase.identity.state_dict().items()}
    terms = phase.step(pair_batch())
    assert {"feature", "identity", "pixel", "symmetry", "adversarial", "discriminator", "loss"} <= terms.keys()
    assert all(np.isfinite(value) for value in terms.values())
    after = phase.state_tensors()
    for part in ("generator.encoder", "generator.decoder", "generator.project", "discriminator"):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(part)), part
    assert all(torch.equal(value, phase.identity.state_dict()[key]) for key, value in identity_before.items())
    assert all(not key.startswith("rml") for key in after)


def _encoder_grads(phase: HNGPhase) -> list[torch.Tensor | None]:
    return [p.grad for p in phase.model.generator.encoder.parameters()]


def test_adversarial_and_symmetry_terms_do_not_reach_the_encoder(idferm_config):
    phase = hng_phase(idferm_config)
    terms, _ = phase.losses(pair_batch())
    phase.backward(None, phase.w3 * terms["symmetry"] + phase.w4 * terms["adversarial"])
    assert all(grad is None for grad in _encoder_grads(phase))
    decoder = [p.grad for p in phase.decoder_parameters]
    assert all(grad is not None for grad in decoder) and any(grad.abs().sum() > 0 for grad in decoder)
    assert all(p.grad is None for p in phase.model.discriminator.parameters())


def test_encoder_gradient_is_that_of_the_shared_terms_alone(idferm_config):
    grads = []
    for with_decoder_terms in (False, True):
        phase = hng_phase(idferm_config)
        terms, _ = phase.losses(pair_batch())
        shared = terms["feature"] + phase.w1 * terms["identity"] + phase.w2 * terms["pixel"]
        decoder_only = phase.w3 * terms["symmetry"] + phase.w4 * terms["adversarial"]
        phase.backward(shared, decoder_only if with_decoder_terms else 0 * decoder_only)
        grads.append([grad.clone() for grad in _encoder_grads(phase)])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads, strict=True))


# --- generator checkpoint -----------------------------------------------------------------------------------------


def test_pretrain_generator_writes_a_checkpoint_that_loads(tmp_path, gcnet_config):
    torch.manual_seed(0)
    phase = GeneratorPhase(create_model("gcnet"), gcnet_config["pretrain"])
    history = pretrain_generator(
        phase, synthetic_batches(), steps=3, run_dir=tmp_path, val=(pair_batch().inputs, pair_batch().targets),
        log_every=1, checkpoint_every=2,
    )  # fmt: skip
    assert [row["step"] for row in history] == [1, 2, 3] and "val_l1" in history[-1]
    saved = load_file(tmp_path / "generator.safetensors")
    assert saved and all(key.startswith("generator.") for key in saved)
    fresh = create_model("gcnet")
    load_generator(fresh, tmp_path / "generator.safetensors")
    assert all(torch.equal(fresh.state_dict()[key], value) for key, value in saved.items())
    with pytest.raises(ValueError, match="does not fit"):
        load_generator(create_model("idferm"), tmp_path / "generator.safetensors")
    with pytest.raises(FileNotFoundError, match="pretrain"):
        load_generator(fresh, tmp_path / "missing.safetensors")


def test_a_generator_phase_continues_from_an_exported_weight_file(tmp_path, idferm_config):
    trained = hng_phase(idferm_config)
    trained.step(pair_batch())
    exported = {
        key: value.half() if value.is_floating_point() else value for key, value in trained.model.state_dict().items()
    }
    save_tensors(exported, tmp_path / "idferm.safetensors")  # a whole model in float16, as `export` writes it
    torch.manual_seed(5)
    fresh = HNGPhase(create_model("idferm"), IdentityNet(5), idferm_config["pretrain"])
    load_phase_init(fresh, tmp_path / "idferm.safetensors")
    loaded = fresh.state_tensors()
    assert loaded.keys() == trained.state_tensors().keys()
    assert all(torch.equal(loaded[key], exported[key].to(loaded[key].dtype)) for key in loaded)
    assert not torch.equal(fresh.model.rml.classifier.weight, trained.model.rml.classifier.weight.half().float())
    save_tensors({"centers": exported["centers"]}, tmp_path / "head.safetensors")
    with pytest.raises(ValueError, match="does not hold"):
        load_phase_init(fresh, tmp_path / "head.safetensors")


# --- IDFERM phase 2 ---------------------------------------------------------------------------------------------


@pytest.fixture
def idferm_recipe(tmp_path, idferm_config) -> IDFERMRecipe:
    torch.manual_seed(1)
    pretrained = hng_phase(idferm_config).state_tensors()
    save_tensors(pretrained, tmp_path / "generator.safetensors")
    return IDFERMRecipe({**idferm_config, "generator_checkpoint": str(tmp_path / "generator.safetensors")})


def test_idferm_step_trains_rml_with_the_frozen_pretrained_generator(idferm_recipe, tmp_path):
    recipe = idferm_recipe
    recipe.model.train()
    before = {key: value.clone() for key, value in recipe.state_tensors().items()}
    terms = recipe.training_step(*fer_batch())
    assert {"softmax", "rml", "accuracy", "loss"} <= terms.keys() and all(np.isfinite(v) for v in terms.values())
    after = recipe.state_tensors()
    pretrained = load_file(tmp_path / "generator.safetensors")
    assert all(torch.equal(after[key], value) for key, value in pretrained.items())  # loaded, then untouched
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert "centers" in changed and any(key.startswith("rml.") for key in changed)
    assert any(key.startswith("distance.") for key in changed)
    assert all(p.requires_grad is False for p in recipe.model.generator.parameters())


def test_idferm_replace_head_for_ckplus(idferm_recipe):
    recipe = idferm_recipe
    old = recipe.model.rml.classifier.weight.detach().clone()
    recipe.replace_head(CKPLUS_ROWS)
    assert recipe.num_classes == 7 and recipe.neutral_index is None
    assert torch.equal(recipe.model.rml.classifier.weight[:6], old[:6])
    assert recipe.model.centers.shape == (7, recipe.model.centers.shape[1])
    recipe.model.train()
    assert np.isfinite(recipe.training_step(*fer_batch())["loss"])


# --- GCNet ------------------------------------------------------------------------------------------------------


def test_parse_variant():
    assert parse_variant("S0R0") == (False, False) and parse_variant("S1R0") == (True, False)
    assert parse_variant("S0R1") == (False, True) and parse_variant("S1R1") == (True, True)
    with pytest.raises(ValueError):
        parse_variant("S2R1")


def test_gcnet_generator_phase_step_lowers_nothing_but_the_generator(gcnet_config):
    torch.manual_seed(0)
    phase = GeneratorPhase(create_model("gcnet"), gcnet_config["pretrain"])
    before = {key: value.clone() for key, value in phase.model.state_dict().items()}
    assert np.isfinite(phase.step(pair_batch(guiding=False))["loss"])
    changed = {key for key, value in phase.model.state_dict().items() if not torch.equal(before[key], value)}
    assert changed and all(key.startswith("generator.") for key in changed)


@pytest.mark.parametrize("variant", ["S0R0", "S1R0", "S0R1", "S1R1"])
def test_gcnet_step_per_variant(tmp_path, gcnet_config, variant):
    torch.manual_seed(0)
    save_tensors(GeneratorPhase(create_model("gcnet"), gcnet_config["pretrain"]).state_tensors(), tmp_path / "g.st")
    recipe = GCNetRecipe({**gcnet_config, "variant": variant, "generator_checkpoint": str(tmp_path / "g.st")})
    recipe.pairs = synthetic_batches()
    recipe.model.train()
    before = {key: value.clone() for key, value in recipe.state_tensors().items()}
    terms = recipe.training_step(*fer_batch())
    expected = {"softmax", "generation"} | ({"contrastive"} if variant[1] == "1" else set())
    expected |= {"reconstruction"} if variant[3] == "1" else set()
    assert expected <= terms.keys() and not ({"contrastive", "reconstruction"} - expected) & terms.keys()
    changed = {
        key.split(".")[0] for key, value in recipe.state_tensors().items() if not torch.equal(before[key], value)
    }
    assert {"generator", "encoder", "fc", "classifier"} <= changed
    assert ("recon_input" in changed) == (variant[3] == "1")


def test_gcnet_replace_head_and_no_pairs(tmp_path, gcnet_config):
    recipe = GCNetRecipe({**gcnet_config, "pairs_per_batch": 0, "generator_checkpoint": "unused"})
    recipe.load_state_tensors(recipe.state_tensors())  # a full checkpoint: no generator file is read
    recipe.replace_head(CKPLUS_ROWS)
    assert recipe.num_classes == 7 and recipe.neutral_index is None
    recipe.model.train()
    terms = recipe.training_step(*fer_batch())
    assert "generation" not in terms and np.isfinite(terms["contrastive"])


# --- identity networks and the neutral-face evaluation ----------------------------------------------------------


def test_identity_net_layers_and_round_trip(tmp_path):
    images = torch.rand(12, 1, 64, 64)
    network = train_identity(images, np.repeat([5, 9, 11], 4), epochs=1, batch_size=6)
    features = network(images[:2])
    assert features.perceptual.shape == (2, 128, 16, 16)
    assert [tuple(layer.shape) for layer in features.identity] == [(2, 128, 4, 4), (2, 128)]
    assert features.logits.shape == (2, 3) and not network.training
    save_identity(network, tmp_path, "net", {"data": "random"})
    loaded = load_identity(tmp_path, "net")
    assert np.allclose(embed(loaded, images), embed(network, images), atol=1e-6)
    assert np.allclose(np.linalg.norm(embed(loaded, images), axis=1), 1.0, atol=1e-5)
    tensors = load_file(tmp_path / "net.safetensors")
    save_tensors({**tensors, "classifier.bias": tensors["classifier.bias"] + 1}, tmp_path / "net.safetensors")
    with pytest.raises(WeightsError, match="SHA-256"):
        load_identity(tmp_path, "net")


@pytest.mark.skipif(not (DEFAULT_DATA_DIR / "ckplus.npz").is_file(), reason=f"no ckplus.npz in {DEFAULT_DATA_DIR}")
@pytest.mark.parametrize("name", ["idferm", "gcnet"])
def test_shipped_evaluation_identity_networks_tell_ckplus_subjects_apart(name):
    """The shipped judges of the neutral-face report load (SHA-256 checked, not retrained) and know the CK+
    subjects they were trained on: a sequence's nearest other sequence is mostly of the same subject."""
    from training.data import load_ckplus
    from training.neutral_eval import EVAL_IDENTITY_DIR, eval_identity
    from training.pairs import unit_images

    assert (EVAL_IDENTITY_DIR / f"{name}.json").is_file()
    network = eval_identity(get_card(name))
    faces = load_ckplus()
    first_frames = np.arange(0, len(faces.subjects), 3)  # three peak frames per sequence
    subjects = faces.subjects[first_frames]
    embeddings = embed(network, unit_images(faces.images[first_frames], get_card(name)))
    similarity = embeddings @ embeddings.T
    np.fill_diagonal(similarity, -2)
    several = np.unique(subjects, return_counts=True)
    has_other_sequence = np.isin(subjects, several[0][several[1] > 1])
    nearest_same = subjects[similarity.argmax(1)] == subjects
    assert nearest_same[has_other_sequence].mean() > 0.8


def test_rank1_and_image_errors():
    gallery = np.eye(3)
    probes = np.array([[1.0, 0, 0], [0, 0.6, 0.8], [0, 0.8, 0.6]])
    assert rank1(probes, np.array([0, 1, 1]), gallery, np.array([0, 1, 2])) == pytest.approx(2 / 3)
    allowed = np.array([[True, True, True], [True, True, True], [True, True, False]])
    assert rank1(probes, np.array([0, 1, 1]), gallery, np.array([0, 1, 2]), allowed) == pytest.approx(2 / 3)
    faces = torch.rand(2, 1, 16, 16)
    same = image_errors(faces, faces)
    assert same["l1"] == 0 and same["mse"] == 0 and same["ssim"] == pytest.approx(1.0)
    off = image_errors(faces, faces + 0.5)
    assert off["l1"] == pytest.approx(0.5) and off["mse"] == pytest.approx(0.25) and off["ssim"] < 1


def test_save_grid(tmp_path):
    from PIL import Image

    faces = torch.rand(5, 1, 8, 8)
    save_grid(faces, faces, faces, tmp_path / "grid.png", columns=2, scale=1)
    image = Image.open(tmp_path / "grid.png")
    assert image.size == (2 * (3 * 8 + 8) + 4, 3 * (8 + 4) + 4)


def synthetic_pair_data() -> PairData:
    """3 held-out subjects from two sets (1 neutral + 2 other faces each) and 1 training subject."""
    rng = np.random.default_rng(0)
    subjects = np.repeat([1, 2, 1003, 1004], 3)
    faces = PairFaces(
        images=rng.integers(0, 256, (12, 48, 48), dtype=np.uint8),
        labels=np.tile([6, 3, -1], 4),
        subjects=subjects,
        sources=subjects // 1000,
        filenames=np.array([f"f{i}" for i in range(12)]),
    )
    val = np.array([1, 2, 1003])
    val_pairs = np.array([[row, row - row % 3] for row in range(9)])
    return PairData(faces, np.array([1004]), val, np.array([[10, 9], [11, 9]]), val_pairs)


def test_evaluate_neutrals_on_an_identity_generator(tmp_path):
    data = synthetic_pair_data()
    network = freeze(IdentityNet(3))
    result = evaluate_neutrals(lambda x: x, data, get_card("gcnet"), network, grid_path=tmp_path / "grid.png")
    assert result["subjects"] == 3 and result["probes"] == 6 and result["gallery"] == 3
    assert result["chance_rank1"] == pytest.approx(1 / 3)
    assert result["chance_rank1_within_set"] == pytest.approx((4 * 0.5 + 2 * 1.0) / 6)
    ids = result["eval_identity"]
    assert ids["generated_rank1"] == ids["input_rank1"]
    assert ids["generated_rank1_within_set"] == ids["input_rank1_within_set"]
    assert result["generated_vs_neutral"] == result["input_vs_neutral"]
    assert (tmp_path / "grid.png").is_file()


def test_evaluate_neutrals_on_a_perfect_generator():
    data, card = synthetic_pair_data(), get_card("gcnet")
    images = unit_images(data.faces.images, card)

    def perfect(inputs: torch.Tensor) -> torch.Tensor:
        rows = [int((images == face).flatten(1).all(1).nonzero()[0, 0]) for face in inputs]
        return images[[row - row % 3 for row in rows]]

    result = evaluate_neutrals(perfect, data, card, freeze(IdentityNet(3)))
    assert result["eval_identity"]["generated_rank1"] == 1.0
    assert result["eval_identity"]["generated_rank1_within_set"] == 1.0
    errors = result["generated_vs_neutral"]
    assert errors["l1"] == 0 and errors["ssim"] == pytest.approx(1.0)


# --- export round trip ------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("method", ["idferm", "gcnet"])
def test_export_then_pretrained_load_round_trip(tmp_path, monkeypatch, use_store, method):
    from fer_demo.hub import sha256_file
    from training import export as export_module
    from training.data import FaceSet

    run, store = tmp_path / "run", use_store(tmp_path / "weights")
    config = load_config(method, "cpu")
    config["generator_checkpoint"] = str(tmp_path / "pretrain" / "generator.safetensors")
    neutral = {"eval_identity": {"generated_rank1": 0.5}, "grid": "neutral_grid.png", "subjects": 17}
    (tmp_path / "pretrain").mkdir()
    (tmp_path / "pretrain" / "neutral.json").write_text(json.dumps(neutral))
    torch.manual_seed(0)
    model = create_model(method)
    info = {"config": config, "train_data": "synthetic", "val_data": "synthetic", "train_size": 16, "epoch": 1}
    save_checkpoint(run, "best", dict(model.state_dict()), None, info)
    rng = np.random.default_rng(0)
    small = {
        split: FaceSet(split, rng.integers(0, 256, (120, 48, 48), dtype=np.uint8), np.arange(120) % 7)
        for split in ("PublicTest", "PrivateTest")
    }
    monkeypatch.setattr(export_module, "load_fer2013", lambda split, data_dir=None: small[split])
    entry = export_module.export(run, weights_dir=store)
    path = store / f"{method}.safetensors"
    assert entry["sha256"] == sha256_file(path)
    assert entry["metrics"]["neutral_reference"] == {"eval_identity": {"generated_rank1": 0.5}, "subjects": 17}
    assert "jaffe.npz" in entry["data"]["source"]
    loaded = create_model(method, pretrained=True)
    exported = load_file(path)
    assert all(torch.equal(value, exported[key].to(value.dtype)) for key, value in loaded.state_dict().items())
    out = loaded(torch.zeros(2, 1, 64, 64))
    assert out.neutral.shape == (2, 1, 64, 64) and 0 <= out.neutral.min() and out.neutral.max() <= 1


def test_a_newer_generator_replaces_idferms_without_moving_its_logits(tmp_path, monkeypatch, use_store):
    from fer_demo.hub import load_manifest, save_state_dict, sha256_file, write_manifest_ensemble, write_manifest_entry
    from training import export as export_module
    from training.data import FaceSet

    store = use_store(tmp_path / "weights")
    rng = np.random.default_rng(0)
    small = {
        split: FaceSet(split, rng.integers(0, 256, (24, 48, 48), dtype=np.uint8), np.arange(24) % 7)
        for split in ("PublicTest", "PrivateTest")
    }
    monkeypatch.setattr(export_module, "load_fer2013", lambda split, data_dir=None: small[split])
    hashes = {}
    for method in ("idferm", "gcnet"):  # exported weights with generator-dependent and other metrics
        torch.manual_seed(0)
        path = store / f"{method}.safetensors"
        save_state_dict(export_module.half_round_trip(create_model(method).state_dict()), path)
        metrics = {"ckplus7_10fold": {"accuracy": 0.9}, "ferplus_test": {"accuracy": 0.7}}
        hashes[method] = write_manifest_entry(path.name, path, weights_dir=store, model=method, dtype="float16",
                                              metrics=metrics)["sha256"]  # fmt: skip
    write_manifest_ensemble({"idferm": 0.5, "gcnet": 0.5}, hashes, weights_dir=store)
    before = load_file(store / "idferm.safetensors")

    config = load_config("idferm", "cpu")
    newer = hng_phase(config)
    newer.step(pair_batch())
    generator_info = {"config": {**config, "init": "weights/idferm.safetensors"}, "step": 7}
    save_checkpoint(tmp_path / "pretrain", "generator", newer.state_tensors(), None, generator_info)
    entry = export_module.replace_generator(
        "idferm", tmp_path / "pretrain" / "generator.safetensors", weights_dir=store
    )

    after = load_file(store / "idferm.safetensors")
    replaced = newer.state_tensors()
    assert all(torch.equal(after[key], before[key]) for key in after.keys() - replaced.keys())
    assert all(torch.equal(after[key], value.to(after[key].dtype)) for key, value in replaced.items())
    assert entry["sha256"] == sha256_file(store / "idferm.safetensors") != hashes["idferm"]
    assert entry["generator"]["steps"] == 7 and entry["generator"]["overrides"] == {
        "init": "weights/idferm.safetensors"
    }
    assert "ckplus7_10fold" not in entry["metrics"] and entry["metrics"]["ferplus_test"] == {"accuracy": 0.7}
    assert load_manifest(store)["ensemble"]["sha256"]["idferm"] == entry["sha256"]  # the logits did not move

    torch.manual_seed(3)
    gcnet_generator = GeneratorPhase(create_model("gcnet"), load_config("gcnet", "cpu")["pretrain"])
    save_checkpoint(tmp_path / "gcnet-pretrain", "generator", gcnet_generator.state_tensors(), None, generator_info)
    with pytest.raises(ValueError, match="depend on its generator"):
        export_module.replace_generator(
            "gcnet", tmp_path / "gcnet-pretrain" / "generator.safetensors", weights_dir=store
        )


# --- evaluation of a trained generator --------------------------------------------------------------------------


@requires_pairs_data
def test_neutral_protocol_reports_the_trained_generator(tmp_path):
    from training.evaluate import run_evaluation

    config = load_config("gcnet", "cpu")
    config["generator_checkpoint"] = str(tmp_path / "pretrain" / "generator.safetensors")
    info = {"config": config, "train_data": "synthetic", "val_data": "synthetic", "train_size": 16, "epoch": 1}
    save_checkpoint(tmp_path / "run", "best", dict(create_model("gcnet").state_dict()), None, info)

    result = run_evaluation(tmp_path / "run", ("neutral",))["neutral"]
    assert result["subjects"] == 17 and 0 <= result["eval_identity"]["generated_rank1"] <= 1
    assert (tmp_path / "run" / "eval" / "neutral.json").is_file()
    assert (tmp_path / "run" / "eval" / "neutral_grid.png").stat().st_size > 1000

    save_checkpoint(tmp_path / "dacl", "best", dict(create_model("dacl").state_dict()), None,
                    {**info, "config": load_config("dacl", "cpu")})  # fmt: skip
    with pytest.raises(ValueError, match="no neutral-face generator"):
        run_evaluation(tmp_path / "dacl", ("neutral",))
