"""The training losses of DACL (dissertation ch. 3-4) and ED²L, one function each.

Notation: m is the batch size, x_i the deep feature of sample i, y_i its label, c_k the center of class k.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed import ReduceOp, all_reduce, is_initialized
from torch.nn import functional as F


def softmax_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy, Eq. 3.2 / 4.2: -(1/m) sum_i log p(y_i | x_i)."""
    return F.cross_entropy(logits, targets)


def am_softmax_loss(
    cosine: torch.Tensor, targets: torch.Tensor, margin: float = 0.35, scale: float = 30.0
) -> torch.Tensor:
    """Additive-margin softmax (ED²L Eqs. 2-3): cross-entropy of s*(cos(theta_j) - m*[j = y]).

    Args:
        cosine: (m, C) cosines between the features and the class weights (`CosineClassifier.cosine`).
        targets: (m,) class indices.
        margin: Additive margin m.
        scale: Scale s.
    """
    margins = F.one_hot(targets, cosine.shape[1]).to(cosine.dtype) * margin
    return F.cross_entropy(scale * (cosine - margins), targets)


def dispeller_loss(dispeller: nn.Linear, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """ED²L l_e^a: the expression dispeller's cross-entropy on f_p; its gradient stops at the dispeller.

    Args:
        dispeller: The linear expression dispeller (W_p, b_p).
        features: (m, D) dispelling-branch features f_p (detached here).
        targets: (m,) expression labels.
    """
    return F.cross_entropy(dispeller(features.detach()), targets)


def dispelling_loss(dispeller: nn.Linear, features: torch.Tensor) -> torch.Tensor:
    """ED²L l_e^p, Eq. 5: -(1/m) sum_i (1/N) sum_j log y_p^j, pushing the dispeller's output to uniform.

    The dispeller is frozen in this term, so the gradient reaches only f_p, i.e. the dispelling branch and the
    base net.

    Args:
        dispeller: The linear expression dispeller (its parameters are detached here).
        features: (m, D) dispelling-branch features f_p.
    """
    bias = None if dispeller.bias is None else dispeller.bias.detach()
    logits = F.linear(features, dispeller.weight.detach(), bias)
    return -F.log_softmax(logits, dim=1).mean(dim=1).mean()


def center_loss(features: torch.Tensor, targets: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Center loss, Eq. 3.3: (1/(2m)) sum_i ||x_i - c_{y_i}||^2 (centers are not differentiated)."""
    return (features - centers.detach()[targets]).pow(2).sum() / (2 * features.shape[0])


def dda_loss(features: torch.Tensor, targets: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Discriminant distribution-agnostic loss, Eq. 3.5: -(1/(2m)) sum_i log softmax_k(-||x_i - c_k||^2)[y_i].

    Gradients flow to both the features and the centers (Eqs. 3.8-3.10).
    """
    distances = torch.cdist(features, centers).pow(2)
    return F.cross_entropy(-distances, targets, reduction="sum") / (2 * features.shape[0])


def sparse_center_loss(
    features: torch.Tensor, targets: torch.Tensor, centers: torch.Tensor, attention: torch.Tensor
) -> torch.Tensor:
    """DACL sparse center loss, Eq. 4.4: (1/(2m)) sum_i sum_j a_ij (x_ij - c_{y_i j})^2.

    Gradients reach the features (Eq. 4.12) and the attention weights (Eq. 4.13); the centers are updated by
    `update_centers`, not by gradient.

    Args:
        features: (m, d) deep features x.
        targets: (m,) class indices.
        centers: (K, d) class centers.
        attention: (m, d) attention weights a in (0, 1].
    """
    return (attention * (features - centers.detach()[targets]).pow(2)).sum() / (2 * features.shape[0])


@torch.no_grad()
def update_centers(
    centers: torch.Tensor,
    features: torch.Tensor,
    targets: torch.Tensor,
    alpha: float,
    weights: torch.Tensor | None = None,
    eps: float = 1.0,
) -> None:
    """Moving-average center update in place, Eq. 4.14: c_k <- c_k - alpha * Delta c_k with

    Delta c_k = sum_{i: y_i = k} a_i (c_k - x_i) / (eps + |{i: y_i = k}|).

    Without `weights` this is the center-loss update of Wen et al. (a_i = 1). eps = 1 follows Wen et al. and
    Eq. 3.10. Under torch.distributed the sums run over every process's batch, so all replicas keep equal centers.

    Args:
        centers: (K, d) centers, updated in place.
        features: (m, d) deep features (detached).
        targets: (m,) class indices.
        alpha: Center learning rate.
        weights: (m, d) attention weights a_i, or None.
        eps: Added to the per-class count.
    """
    difference = centers[targets] - features
    if weights is not None:
        difference = difference * weights
    sums = torch.zeros_like(centers).index_add_(0, targets, difference)
    counts = torch.zeros(centers.shape[0], dtype=centers.dtype, device=centers.device)
    counts.index_add_(0, targets, torch.ones_like(targets, dtype=centers.dtype))
    if is_initialized():
        all_reduce(sums, op=ReduceOp.SUM)
        all_reduce(counts, op=ReduceOp.SUM)
    centers -= alpha * sums / (eps + counts)[:, None]
