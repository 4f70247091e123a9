"""Every registered model: card, forward shapes and ranges, gradients of the trained parameter groups."""

from __future__ import annotations

import copy
from dataclasses import fields

import pytest
import torch
from torch import nn

from fer_demo.labels import EXPRESSIONS
from fer_demo.models import create_model, get_card, list_models, register_model
from fer_demo.models.base import normalized_heatmap

BATCH = 3


def _input(name: str, batch: int = BATCH) -> torch.Tensor:
    card = get_card(name)
    torch.manual_seed(0)
    return torch.randn(batch, card.channels, *card.input_size)


def test_registry_lists_the_four_methods():
    assert list_models() == ["dacl", "ed2l", "gcnet", "idferm"]


def test_unknown_model_names_the_allowed_set():
    with pytest.raises(ValueError, match=r"Unknown model 'resnet'.*'dacl'"):
        create_model("resnet")


def test_registering_a_name_twice_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_model(get_card("dacl"))(lambda: None)


@pytest.mark.parametrize("name", list_models())
def test_card_matches_model(name):
    model = create_model(name)
    card = get_card(name)
    assert model.card is card
    assert card.classes == EXPRESSIONS
    assert card.weight_file == f"{name}.safetensors"
    assert len(card.mean) == len(card.std) == card.channels
    assert card.notes, "every card documents where it departs from its paper"


@pytest.mark.parametrize("name", list_models())
def test_forward_shapes_and_ranges(name):
    card = get_card(name)
    model = create_model(name).eval()
    with torch.no_grad():
        out = model(_input(name))
    assert out.logits.shape == (BATCH, len(EXPRESSIONS))
    assert out.embedding.shape == (BATCH, card.embedding_dim)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.embedding).all()
    if out.neutral is not None:
        assert out.neutral.shape == (BATCH, 1, *card.input_size)
        assert out.neutral.min() >= 0 and out.neutral.max() <= 1
    for heatmap in out.heatmaps.values():
        assert heatmap.shape == (BATCH, *card.input_size)
        assert heatmap.min() >= 0 and heatmap.max() <= 1
        assert torch.allclose(heatmap.flatten(1).amax(1), torch.ones(BATCH), atol=0.05)
    if out.attention is not None:
        assert out.attention.shape == (BATCH, card.embedding_dim)
        assert (out.attention > 0).all() and (out.attention <= 1).all()


def test_extras_of_each_method():
    with torch.no_grad():
        assert create_model("idferm").eval()(_input("idferm")).neutral is not None
        assert create_model("gcnet").eval()(_input("gcnet")).neutral is not None
        assert set(create_model("ed2l").eval()(_input("ed2l")).heatmaps) == {"distilling", "dispelling"}
        assert create_model("dacl").eval()(_input("dacl")).attention is not None
        assert create_model("dacl", gated=True).eval()(_input("dacl")).attention is not None


def _grad_groups(model: nn.Module, groups: list[str]) -> dict[str, bool]:
    """group prefix -> whether every parameter under it received a non-zero gradient."""
    result = {}
    for group in groups:
        params = [(n, p) for n, p in model.named_parameters() if n.startswith(group)]
        assert params, group
        result[group] = all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in params)
    return result


def _assert_all(flags: dict[str, bool]) -> None:
    assert all(flags.values()), {k: v for k, v in flags.items() if not v}


@pytest.mark.parametrize("gated", [False, True])
def test_dacl_gradients_reach_backbone_attention_and_classifier(gated):
    model = create_model("dacl", gated=gated).train()
    out = model(_input("dacl"))
    target = torch.tensor([0, 3, 6])
    centers = torch.randn(len(EXPRESSIONS), 512)
    sparse_center = (out.attention * (out.embedding - centers[target]).pow(2)).sum(1).mean() / 2
    (nn.functional.cross_entropy(out.logits, target) + 0.01 * sparse_center).backward()
    _assert_all(_grad_groups(model, ["features", "fc", "context_encoder", "heads"]))


def test_ed2l_gradients_reach_base_both_branches_classifier_and_dispeller():
    model = create_model("ed2l").train()
    out = model(_input("ed2l"))
    target = torch.tensor([1, 2, 5])
    uniform = -out.dispel_logits.log_softmax(-1).mean()
    loss = nn.functional.cross_entropy(out.logits, target) + nn.functional.cross_entropy(out.dispel_logits, target)
    (loss + uniform).backward()
    _assert_all(_grad_groups(model, ["base", "distill", "dispel", "classifier", "dispeller"]))


def test_gcnet_gradients_reach_generator_encoder_classifier_and_decoders():
    model = create_model("gcnet").train()
    x = _input("gcnet")
    out = model(x, reconstruct=True)
    target = torch.tensor([0, 4, 6])
    loss = (
        nn.functional.cross_entropy(out.logits, target)
        + (out.neutral - 0.5).pow(2).mean()
        + (out.query_code - out.reference_code).pow(2).sum(1).mean()
        + out.recon_input.mean()
        + out.recon_reference.mean()
    )
    loss.backward()
    _assert_all(_grad_groups(model, ["generator", "encoder", "fc", "classifier", "recon_input", "recon_reference"]))


def test_idferm_gradients_reach_generator_discriminator_rml_and_distance():
    model = create_model("idferm").train()
    model.centers.normal_()  # class centers come from training; zeros would hide the cross term's gradient
    out = model(_input("idferm"))
    target = torch.tensor([2, 3, 4])
    inside = nn.functional.relu(1 + out.center_distance[torch.arange(BATCH), target]).mean()
    outside = nn.functional.relu(1 - out.reference_center_distance[torch.arange(BATCH), target]).mean()
    fake = model.discriminator(out.neutral)
    # 2 * inside: with both hinges active, equal weights would cancel the gradient of H's bias exactly
    loss = nn.functional.cross_entropy(out.logits, target) + 2 * inside + outside + fake.mean()
    loss.backward()
    _assert_all(_grad_groups(model, ["generator", "discriminator", "rml", "distance"]))


@pytest.mark.parametrize("name", list_models())
def test_infer_averages_the_logits_over_the_mirror_image_where_the_card_asks(name):
    model = create_model(name).eval()
    x = _input(name, batch=2)
    with torch.no_grad():
        inferred, plain, mirrored = model.infer(x), model(x), model(x.flip(-1))
    expected = (plain.logits + mirrored.logits) / 2 if model.card.flip_average else plain.logits
    torch.testing.assert_close(inferred.logits, expected, rtol=1e-4, atol=1e-5)
    assert type(inferred) is type(plain)
    for field in fields(plain):  # every other output is the face as given, one row per face
        if field.name == "logits":
            continue
        ours, theirs = getattr(inferred, field.name), getattr(plain, field.name)
        if isinstance(theirs, dict):
            assert ours.keys() == theirs.keys()
            for key in theirs:
                torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=1e-5)
        elif theirs is None:
            assert ours is None
        else:
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_idferm_inference_embeds_query_and_reference_in_one_pass_with_two_pass_outputs():
    model = create_model("idferm").train()
    with torch.no_grad():  # a few training-mode passes give BatchNorm running statistics that are not the defaults
        for _ in range(3):
            model(_input("idferm"))
    model.eval()
    x = _input("idferm")
    mean, std = model.card.mean[0], model.card.std[0]
    with torch.no_grad():
        out = model(x)
        reference = model.generator(x * std + mean)
        logits, f = model.rml(x)
        _, f_ref = model.rml((reference - mean) / std)
    torch.testing.assert_close(out.logits, logits)
    torch.testing.assert_close(out.embedding, f)
    torch.testing.assert_close(out.reference_embedding, f_ref)


def test_idferm_batchnorm_running_statistics_are_the_queries():
    """In training the generated references are normalised by their own batch but leave the running statistics,
    which normalise the classified faces at test time, to the queries."""
    torch.manual_seed(0)
    model = create_model("idferm").train()
    queries_only = copy.deepcopy(model)
    x = _input("idferm")
    with torch.no_grad():
        model(x)
        queries_only.rml(x)
    norms = [name for name, layer in model.rml.named_modules() if isinstance(layer, nn.BatchNorm2d)]
    ours, theirs = dict(model.rml.named_buffers()), dict(queries_only.rml.named_buffers())
    for name in norms:
        torch.testing.assert_close(ours[f"{name}.running_mean"], theirs[f"{name}.running_mean"])
        torch.testing.assert_close(ours[f"{name}.running_var"], theirs[f"{name}.running_var"])
    assert not torch.equal(ours[f"{norms[0]}.running_mean"], torch.zeros_like(ours[f"{norms[0]}.running_mean"]))
    assert all(layer.momentum == 0.1 for layer in model.rml.modules() if isinstance(layer, nn.BatchNorm2d))


def test_quadratic_distance_starts_as_a_mahalanobis_distance():
    distance = create_model("idferm").distance
    f1, f2 = torch.randn(4, 128), torch.randn(4, 128)
    expected = 0.5 * distance.l_a(f1 - f2).pow(2).sum(-1) + distance.linear.bias
    assert torch.allclose(distance(f1, f2), expected, atol=1e-4)
    assert torch.allclose(distance(f1, f1), distance.linear.bias.expand(4), atol=1e-4)


def test_normalized_heatmap_is_channel_sum_scaled_to_unit_range():
    features = torch.zeros(1, 2, 2, 2)
    features[0, 0, 0, 0] = 3.0
    features[0, 1, 0, 0] = 1.0
    features[0, 1, 1, 1] = 2.0
    heatmap = normalized_heatmap(features, (2, 2))
    assert torch.allclose(heatmap[0], torch.tensor([[1.0, 0.0], [0.0, 0.5]]))
