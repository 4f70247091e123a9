"""Losses of the generative methods, one function each: IDFERM (HNG Eqs. 3-7, RML Eq. 8 / Eqs. 10-16) and GCNet
(Eqs. 5-9).

Images are (N, 1, H, W) in [0, 1]. IDFERM's image and feature losses are means over their elements (the paper
normalises Eqs. 3 and 4 by W x H), so that its trade-off weights w1..w4 in [0, 1] balance terms of similar size.
The feature and identity losses compare activations divided by their per-face RMS: the scale of a network trained
here is arbitrary (and VGG-Face's, for which the paper's weights were set, is another), so without it the
perceptual term would swamp the others by orders of magnitude.
GCNet's losses keep the paper's ``1/2 ||.||_2^2`` per image (summed over pixels, averaged over the batch, as
Caffe's EuclideanLoss the paper used), so its weights lambda_G = 1, lambda_R = 0.25 apply unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F

_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def rms_normalize(activations: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Each sample's activations divided by their root mean square (over all but the batch dimension)."""
    rms = activations.pow(2).flatten(1).mean(1).add(eps).sqrt()
    return activations / rms.view(-1, *([1] * (activations.dim() - 1)))


def feature_loss(generated: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IDFERM perceptual loss (Sect. 3.1): mean squared error between RMS-normalised feature maps of a fixed network.

    Args:
        generated: (N, C, h, w) features of the generated faces.
        target: (N, C, h, w) features of the target neutral faces (no gradient is taken through them).
    """
    return (rms_normalize(generated) - rms_normalize(target.detach())).pow(2).mean()


def laplacian(images: torch.Tensor) -> torch.Tensor:
    """4-neighbour Laplacian of (N, 1, H, W) images, 'valid' borders: (N, 1, H - 2, W - 2)."""
    return F.conv2d(images, _LAPLACIAN.to(images).view(1, 1, 3, 3))


def symmetry_loss(images: torch.Tensor) -> torch.Tensor:
    """IDFERM symmetry loss in Laplacian space (Sect. 3.2): mean over the left half of |L(x) - flip(L(x))|.

    The Laplacian makes the loss insensitive to smooth illumination gradients across the face.
    """
    lap = laplacian(images)
    half = lap.shape[-1] // 2
    return (lap - lap.flip(-1))[..., :half].abs().mean()


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """IDFERM Eq. 4: -log Dis(g) - log(1 - Dis(x')), batch means, Dis = sigmoid of the logits."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """IDFERM Eq. 5: -log Dis(x') (batch mean), the decoder's term for fooling the discriminator."""
    return F.softplus(-fake_logits).mean()


def identity_loss(generated: Sequence[torch.Tensor], reference: Sequence[torch.Tensor]) -> torch.Tensor:
    """IDFERM identity-preserving loss (Eq. 6): 1/2 sum over layers of the mean absolute difference of the
    RMS-normalised activations.

    Args:
        generated: Activations of the identity network's last layers for the generated faces.
        reference: The same layers for the faces whose identity must be kept (no gradient through them).
    """
    pairs = zip(generated, reference, strict=True)
    return 0.5 * sum((rms_normalize(g) - rms_normalize(r.detach())).abs().mean() for g, r in pairs)


def pixel_loss(generated: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IDFERM pixel-wise loss (Eq. 7): mean absolute error in image space."""
    return (generated - target).abs().mean()


def rml_loss(
    query_distance: torch.Tensor, reference_distance: torch.Tensor, reference_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """IDFERM radial metric learning loss, Eq. 16 with the intent of Eq. 8.

    ``1/K sum_i [max(0, 1 + H(f_i, C_yi)) + max(0, 1 - H(f*_i, C_yi))]``: the learned quadratic form H folds the
    Mahalanobis distance and the adaptive radius into one function (negative inside the radius), so each query f_i
    is pulled inside its class center's radius and its generated reference f*_i pushed beyond it; 2K comparisons
    per batch. The class centers are not differentiated here; the recipe moves them by the center-loss moving
    average (`training.losses.update_centers`).

    Args:
        query_distance: (K,) H(f_i, C_yi).
        reference_distance: (K,) H(f*_i, C_yi).
        reference_mask: (K,) bool, which references are pushed out (e.g. not for neutral queries, whose
            generated reference belongs to their own class); None pushes all.
    """
    pull = F.relu(1 + query_distance)
    push = F.relu(1 - reference_distance)
    if reference_mask is not None:
        push = push * reference_mask.to(push.dtype)
    return (pull + push).mean()


def _half_squared_norm(target: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    return 0.5 * (target - output).pow(2).flatten(1).sum(1).mean()


def generation_loss(generated: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """GCNet Eq. 5: 1/2 ||X_r - G(X)||_2^2 per pair (summed over pixels), averaged over the batch."""
    return _half_squared_norm(target, generated)


def contrastive_loss(distance: torch.Tensor, different: torch.Tensor, margin: float) -> torch.Tensor:
    """GCNet Eq. 6, batch mean: 1/2 max(0, m - S)^2 where the labels differ (alpha = 1), else 1/2 S^2.

    Args:
        distance: (N,) S, the L2 distance between the codes of the query and of its generated reference.
        different: (N,) bool, whether the query's label differs from the reference's (neutral).
        margin: m > 0.
    """
    apart = 0.5 * F.relu(margin - distance).pow(2)
    together = 0.5 * distance.pow(2)
    return torch.where(different, apart, together).mean()


def reconstruction_loss(
    input_target: torch.Tensor,
    input_reconstruction: torch.Tensor,
    reference_target: torch.Tensor,
    reference_reconstruction: torch.Tensor,
    lambda_input: float = 0.25,
    lambda_reference: float = 0.25,
) -> torch.Tensor:
    """GCNet Eqs. 7-9: lambda_R,i 1/2 ||X - De_i(En(X))||^2 + lambda_R,r 1/2 ||X_r - De_r(En(G(X)))||^2."""
    return lambda_input * _half_squared_norm(input_target, input_reconstruction) + lambda_reference * (
        _half_squared_norm(reference_target, reference_reconstruction)
    )
