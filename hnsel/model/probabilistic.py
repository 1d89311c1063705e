"""Gaussian embedding heads for ASCMR (``hnsel select --strategy ascmr``), after PCME / PCME++ (Chun et al.).

Each sample is embedded as a diagonal Gaussian ``N(mu, diag(sigma^2))`` over a frozen tower feature ``x`` by a
probabilistic ``ProjectionHead`` (``heads.py``, built with a ``variance``): ``mu`` is the head's output, normalised (the
vector stored in Milvus and searched by cosine), and ``log sigma^2 = V x + c`` per dimension.

Two Gaussians match with the closed-form probability (PCME++)

    d(1, 2) = E||z1 - z2||^2 = ||mu1 - mu2||^2 + sum(sigma1^2) + sum(sigma2^2)
    p(match) = sigmoid(-a * d + b),  a = exp(log_a) > 0, b learnable.

``probabilistic_loss`` is the binary cross-entropy of that probability over every (image, caption) pair of a
batch, positives and negatives weighted equally (each side's mean, averaged), plus ``kl_weight`` times the mean
KL divergence of each sample's variances to the unit prior, ``0.5 * sum(sigma^2 - 1 - log sigma^2)`` (VIB; the
mean's part of the KL is constant for a unit-norm mean and left out). It is meant to be added to the InfoNCE
loss on the means (``mu_img @ mu_txt.T``). ``uncertainty(logvar)`` is the one float per sample that is stored
beside the vector: the summed variance ``sum(sigma^2)``, exactly the term it adds to ``d``.
Formulas and choices: docs/ascmr.md.
"""

from __future__ import annotations

import math
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MatchCalibration", "expected_distance", "match_logits", "match_probability", "kl_to_unit_prior", "probabilistic_loss",
           "uncertainty"]


def uncertainty(logvar: torch.Tensor) -> torch.Tensor:
    """One scalar per sample: the summed variance ``sum(exp(logvar))`` over the last dimension."""
    return logvar.exp().sum(dim=-1)


def expected_distance(mu1: torch.Tensor, logvar1: torch.Tensor, mu2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """``E||z1_i - z2_j||^2 = ||mu1_i - mu2_j||^2 + sum(sigma1_i^2) + sum(sigma2_j^2)`` for every pair: (n1, n2)."""
    sq = (mu1 * mu1).sum(-1)[:, None] + (mu2 * mu2).sum(-1)[None, :] - 2.0 * mu1 @ mu2.T
    return sq.clamp(min=0.0) + uncertainty(logvar1)[:, None] + uncertainty(logvar2)[None, :]


def match_logits(mu1, logvar1, mu2, logvar2, scale, shift) -> torch.Tensor:
    """``-a * d + b`` for every pair (the logit of the match probability)."""
    return -scale * expected_distance(mu1, logvar1, mu2, logvar2) + shift


def match_probability(mu1, logvar1, mu2, logvar2, scale, shift) -> torch.Tensor:
    """``sigmoid(-a * d + b)`` for every pair: (n1, n2)."""
    return torch.sigmoid(match_logits(mu1, logvar1, mu2, logvar2, scale, shift))


def kl_to_unit_prior(logvar: torch.Tensor) -> torch.Tensor:
    """Per sample, the variances' part of ``KL(N(mu, sigma^2) || N(0, I))``: ``0.5 * sum(sigma^2 - 1 - log sigma^2)``."""
    return 0.5 * (logvar.exp() - 1.0 - logvar).sum(dim=-1)


def probabilistic_loss(mu_img: torch.Tensor, logvar_img: torch.Tensor, mu_txt: torch.Tensor, logvar_txt: torch.Tensor,
                       scale: torch.Tensor | float, shift: torch.Tensor | float, kl_weight: float, *,
                       pos: torch.Tensor | None = None) -> torch.Tensor:
    """Balanced binary cross-entropy of the match probability over all pairs, plus ``kl_weight`` x the mean KL to the prior.

    ``pos`` (m images x n captions, bool) marks matched pairs; by default the diagonal (row i matches row i).
    ``L = 1/2 (mean_{pos} -log p + mean_{neg} -log(1 - p)) + kl_weight * mean_{samples} KL``; a batch without
    negatives uses the positive mean alone.
    """
    logits = match_logits(mu_img, logvar_img, mu_txt, logvar_txt, scale, shift)
    if pos is None:
        if logits.shape[0] != logits.shape[1]:
            raise ValueError(f"pos is needed when the batch is not square: {tuple(logits.shape)}")
        pos = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
    if pos.shape != logits.shape:
        raise ValueError(f"pos {tuple(pos.shape)} must be (images, captions) = {tuple(logits.shape)}")
    bce = F.binary_cross_entropy_with_logits(logits, pos.to(logits.dtype), reduction="none")
    pos_term = bce[pos].mean()
    neg = ~pos
    loss = (pos_term + bce[neg].mean()) / 2 if bool(neg.any()) else pos_term
    kl = torch.cat([kl_to_unit_prior(logvar_img), kl_to_unit_prior(logvar_txt)]).mean()
    return loss + kl_weight * kl


class MatchCalibration(nn.Module):
    """The match parameters ``a = exp(log_scale) > 0`` and ``b = shift``, learnt with the probabilistic heads."""

    def __init__(self, init_scale: float = 10.0, init_shift: float = 10.0):
        super().__init__()
        if not init_scale > 0:
            raise ValueError(f"init_scale must be > 0, got {init_scale}")
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
        self.shift = nn.Parameter(torch.tensor(float(init_shift)))

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp()

    def match_parameters(self) -> dict[str, float]:
        """``{"scale": a, "shift": b}``: what ``ascmr`` uses to turn distances into match probabilities."""
        return {"scale": float(self.scale.detach()), "shift": float(self.shift.detach())}
