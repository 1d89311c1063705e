"""Light projection heads trained on top of frozen open_clip features (``hnsel train --mode head``).

A head maps a backbone embedding to the retrieval space. Both kinds start as the identity, so an
untrained head leaves the base model's similarities unchanged:

- ``linear``: ``y = W x`` with ``W`` initialised to the identity (``dim_in == dim_out``) or a
  random orthogonal map otherwise.
- ``mlp``: ``y = P x + W2 gelu(W1 x)``, a residual two-layer MLP whose last layer starts at zero.

With ``variance`` (a number), the head is probabilistic (a diagonal Gaussian per sample, docs/ascmr.md): ``y`` is its
mean and ``log_variance(x) = V x + c`` its per-dimension log-variance, ``V`` starting at zero and ``c`` at
``log(variance / dim_out)``, so an untrained head gives every sample the summed variance ``variance``.

A head is fully described by its ``spec`` dict, which hnsel checkpoints store beside the weights.
"""

from __future__ import annotations

from typing import Any, Mapping

import math

import torch
from torch import nn

__all__ = ["ProjectionHead", "build_head", "HEAD_KINDS"]

HEAD_KINDS = ("linear", "mlp")


class ProjectionHead(nn.Module):
    def __init__(self, kind: str = "linear", dim_in: int = 512, dim_out: int | None = None, hidden: int = 1024,
                 variance: float | None = None):
        super().__init__()
        if kind not in HEAD_KINDS:
            raise ValueError(f"head kind {kind!r} is not one of {HEAD_KINDS}")
        if variance is not None and not variance > 0:
            raise ValueError(f"a probabilistic head's initial variance must be > 0, got {variance}")
        dim_out = dim_in if dim_out is None else dim_out
        self.spec = {"kind": kind, "dim_in": int(dim_in), "dim_out": int(dim_out), "hidden": int(hidden)}
        if variance is not None:
            self.spec["variance"] = float(variance)
        self.proj = nn.Linear(dim_in, dim_out, bias=False)
        with torch.no_grad():
            if dim_in == dim_out:
                self.proj.weight.copy_(torch.eye(dim_in))
            else:
                nn.init.orthogonal_(self.proj.weight)
        self.mlp: nn.Module | None = None
        if kind == "mlp":
            last = nn.Linear(hidden, dim_out)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.mlp = nn.Sequential(nn.Linear(dim_in, hidden), nn.GELU(), last)
        self.logvar: nn.Linear | None = None
        if variance is not None:
            with torch.random.fork_rng(devices=[]):  # drawn aside, so the mean's weights are those of a plain head of the same seed
                self.logvar = nn.Linear(dim_in, dim_out)
            with torch.no_grad():
                nn.init.zeros_(self.logvar.weight)
                self.logvar.bias.fill_(math.log(variance / dim_out))

    @property
    def probabilistic(self) -> bool:
        return self.logvar is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(x)
        if self.mlp is not None:
            y = y + self.mlp(x)
        return y

    def log_variance(self, x: torch.Tensor) -> torch.Tensor:
        """Per-dimension log-variance of each sample's Gaussian (a probabilistic head only)."""
        if self.logvar is None:
            raise ValueError("this head is not probabilistic (it was built without a variance)")
        return self.logvar(x)


def build_head(spec: Mapping[str, Any], state_dict: Mapping[str, Any] | None = None) -> ProjectionHead:
    """Rebuild a head from its ``spec`` (and weights, when given)."""
    head = ProjectionHead(spec["kind"], spec["dim_in"], spec.get("dim_out"), spec.get("hidden", 1024), spec.get("variance"))
    head.spec.update({k: v for k, v in spec.items() if k == "match"})  # a probabilistic pair's calibrated match parameters
    if state_dict is not None:
        head.load_state_dict(state_dict)
    return head
