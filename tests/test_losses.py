"""Every training loss against a small example computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from training.losses import (
    am_softmax_loss,
    center_loss,
    dda_loss,
    dispeller_loss,
    dispelling_loss,
    softmax_loss,
    sparse_center_loss,
    update_centers,
)


def test_softmax_loss_two_classes():
    # logits (0, ln 3): p(class 1) = 3/4, so the loss is -ln(3/4).
    logits = torch.tensor([[0.0, math.log(3.0)]])
    assert softmax_loss(logits, torch.tensor([1])).item() == pytest.approx(-math.log(0.75))


def test_am_softmax_subtracts_margin_from_target_cosine_then_scales():
    # cos = (0.5, 0.1), target 0, m = 0.35, s = 30: logits 30*(0.15, 0.1) = (4.5, 3.0).
    cosine = torch.tensor([[0.5, 0.1]])
    expected = -math.log(math.exp(4.5) / (math.exp(4.5) + math.exp(3.0)))
    assert am_softmax_loss(cosine, torch.tensor([0]), 0.35, 30.0).item() == pytest.approx(expected, rel=1e-6)


def test_am_softmax_with_zero_margin_is_scaled_softmax():
    cosine = torch.tensor([[0.2, -0.3, 0.4]])
    expected = softmax_loss(10 * cosine, torch.tensor([2])).item()
    assert am_softmax_loss(cosine, torch.tensor([2]), 0.0, 10.0).item() == pytest.approx(expected)


def _dispeller() -> nn.Linear:
    dispeller = nn.Linear(2, 2)
    with torch.no_grad():
        dispeller.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        dispeller.bias.zero_()
    return dispeller


def test_dispeller_loss_value_and_gradient_stops_at_dispeller():
    dispeller = _dispeller()
    features = torch.tensor([[math.log(3.0), 0.0]], requires_grad=True)
    loss = dispeller_loss(dispeller, features, torch.tensor([0]))
    # logits (ln 3, 0): p(class 0) = 3/4.
    assert loss.item() == pytest.approx(-math.log(0.75))
    loss.backward()
    assert features.grad is None
    # d loss / d logits = p - onehot = (-1/4, 1/4); d logits / dW = features.
    assert torch.allclose(
        dispeller.weight.grad, torch.tensor([[-0.25 * math.log(3.0), 0.0], [0.25 * math.log(3.0), 0.0]])
    )


def test_dispelling_loss_uniform_target_and_frozen_dispeller():
    dispeller = _dispeller()
    features = torch.tensor([[math.log(3.0), 0.0]], requires_grad=True)
    loss = dispelling_loss(dispeller, features)
    # p = (3/4, 1/4): -(1/2)(ln 3/4 + ln 1/4).
    assert loss.item() == pytest.approx(-0.5 * (math.log(0.75) + math.log(0.25)))
    loss.backward()
    assert dispeller.weight.grad is None and dispeller.bias.grad is None
    # d loss / d logits = p - 1/N = (1/4, -1/4); W is the identity.
    assert torch.allclose(features.grad, torch.tensor([[0.25, -0.25]]))


def test_dispelling_loss_minimum_is_log_n_at_uniform_output():
    dispeller = nn.Linear(4, 7)
    features = torch.zeros(3, 4)
    with torch.no_grad():
        dispeller.bias.zero_()
    assert dispelling_loss(dispeller, features).item() == pytest.approx(math.log(7))


def test_center_loss():
    features = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    centers = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    # sample 0 -> center 0: |(1,2)|^2 = 5; sample 1 -> center 1: |(-1,-1)|^2 = 2; (5 + 2) / (2*2).
    assert center_loss(features, torch.tensor([0, 1]), centers).item() == pytest.approx(7 / 4)


def test_dda_loss():
    features = torch.tensor([[0.0, 0.0]])
    centers = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    # d = -(1, 4): p(class 0) = e^-1 / (e^-1 + e^-4); loss = -log p / (2*1).
    p = math.exp(-1) / (math.exp(-1) + math.exp(-4))
    assert dda_loss(features, torch.tensor([0]), centers).item() == pytest.approx(-math.log(p) / 2, rel=1e-5)


def test_sparse_center_loss_weights_elements_and_gradients():
    features = torch.tensor([[1.0, 3.0]], requires_grad=True)
    attention = torch.tensor([[0.5, 0.25]], requires_grad=True)
    centers = torch.tensor([[0.0, 1.0]])
    loss = sparse_center_loss(features, torch.tensor([0]), centers, attention)
    # (0.5 * 1^2 + 0.25 * 2^2) / 2 = 0.75.
    assert loss.item() == pytest.approx(0.75)
    loss.backward()
    # Eq. 4.12: a * (x - c) / m = (0.5, 0.5); Eq. 4.13 (d/da): (x - c)^2 / (2m) = (0.5, 2).
    assert torch.allclose(features.grad, torch.tensor([[0.5, 0.5]]))
    assert torch.allclose(attention.grad, torch.tensor([[0.5, 2.0]]))


def test_sparse_center_loss_with_unit_attention_is_center_loss():
    features, centers = torch.randn(4, 3), torch.randn(2, 3)
    targets = torch.tensor([0, 1, 1, 0])
    sparse = sparse_center_loss(features, targets, centers, torch.ones(4, 3))
    assert sparse.item() == pytest.approx(center_loss(features, targets, centers).item())


def test_update_centers_attention_weighted_moving_average():
    centers = torch.tensor([[0.0, 0.0], [5.0, 5.0]])
    features = torch.tensor([[2.0, 4.0], [4.0, 0.0]])
    weights = torch.tensor([[1.0, 0.5], [1.0, 1.0]])
    update_centers(centers, features, torch.tensor([0, 0]), alpha=0.5, weights=weights, eps=1.0)
    # class 0: sum a*(c - x) = (-2, -2) + (-4, 0) = (-6, -2); / (1 + 2) = (-2, -2/3); c - 0.5 * delta = (1, 1/3).
    assert torch.allclose(centers[0], torch.tensor([1.0, 1.0 / 3.0]))
    assert torch.equal(centers[1], torch.tensor([5.0, 5.0]))
