"""Retrieval losses on one batch's similarity matrix, selected by name (``hnsel train --loss``).

Every loss takes ``sim`` (m images x n captions, cosine similarities of unit embeddings) and ``pos``
(same shape, bool, exactly one True per column: caption j describes image p(j)). An image may own
several captions of the batch; its other captions are never used as its negatives. Negatives of
caption j are the images k != p(j); negatives of image i are the captions l with p(l) != i.
Each loss is averaged over the batch's positive pairs (one per caption), so the learning rate does not
depend on the batch size. The exact formulas are in each docstring and in docs/losses.md.

A loss spec joins weighted terms with ``+``: ``"vsepp"``, ``"infonce+0.5*kendall"``. ``kendall`` also
needs ``labels`` (m x n), the continuous label of image i and caption j (see ``caption_labels``).
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import ConfigError

__all__ = [
    "infonce_loss",
    "vsepp_loss",
    "triplet_sn_loss",
    "kendall_loss",
    "caption_labels",
    "LossSpec",
    "parse_loss",
    "list_losses",
]

_FILL = -1.0e4  # stands for "not a negative": far below any similarity, finite so gradients stay finite


def _check(sim: torch.Tensor, pos: torch.Tensor) -> None:
    if sim.shape != pos.shape or sim.dim() != 2:
        raise ValueError(f"sim {tuple(sim.shape)} and pos {tuple(pos.shape)} must be the same (m, n) shape")


def _positive_sim(sim: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(s_{p(j) j} for each caption j, p(j) as a row index)."""
    owner = pos.to(torch.int64).argmax(dim=0)
    return sim.gather(0, owner[None, :])[0], owner


def infonce_loss(sim: torch.Tensor, pos: torch.Tensor, *, temperature: float = 0.05) -> torch.Tensor:
    """CLIP's symmetric contrastive loss with a fixed temperature ``t`` (logits ``l = s / t``).

    ``L = 1/2n * sum_j [ softplus(LSE_{k != p(j)} l_kj - l_{p(j)j})
                        + softplus(LSE_{l: p(l) != p(j)} l_{p(j)l} - l_{p(j)j}) ]``

    where ``LSE`` is log-sum-exp. ``softplus(LSE_neg - l_pos) = -log(e^l_pos / (e^l_pos + sum_neg e^l))``,
    so with one caption per image this is exactly CLIP's (cross-entropy over rows + over columns) / 2;
    an image's other positives are left out of its denominator instead of counted as negatives.
    """
    _check(sim, pos)
    logits = sim / temperature
    pos_logit, owner = _positive_sim(logits, pos)
    neg_images = logits.masked_fill(pos, _FILL).logsumexp(dim=0)  # per caption
    neg_captions = logits.masked_fill(pos, _FILL).logsumexp(dim=1)[owner]  # per caption's image
    t2i = F.softplus(neg_images - pos_logit)
    i2t = F.softplus(neg_captions - pos_logit)
    return (t2i.mean() + i2t.mean()) / 2


def vsepp_loss(sim: torch.Tensor, pos: torch.Tensor, *, margin: float = 0.2) -> torch.Tensor:
    """VSE++ max-of-hinges triplet loss with margin ``a``.

    ``L = 1/n * sum_j ( [a - s_{p(j)j} + max_{k != p(j)} s_kj]_+ + [a - s_{p(j)j} + max_{l: p(l) != p(j)} s_{p(j)l}]_+ )``

    The first hinge is the hardest negative image for caption j, the second the hardest negative caption
    for its image; ``[x]_+ = max(x, 0)``. A batch with no negative on one side adds 0 for that side.
    """
    _check(sim, pos)
    pos_sim, owner = _positive_sim(sim, pos)
    masked = sim.masked_fill(pos, _FILL)
    hardest_image = masked.max(dim=0).values
    hardest_caption = masked.max(dim=1).values[owner]
    return (F.relu(margin - pos_sim + hardest_image) + F.relu(margin - pos_sim + hardest_caption)).mean()


def _soft_hinges(pos_sim: torch.Tensor, neg: torch.Tensor, margin: float, temperature: float, top_k: int) -> torch.Tensor:
    """sum over the top-k negatives (rows of ``neg``) of softmax(s/t)-weighted hinges, per column."""
    k = max(1, min(int(top_k), neg.shape[0]))
    hard = neg.topk(k, dim=0).values  # (k, n)
    weights = torch.softmax(hard.detach() / temperature, dim=0)
    weights = weights * (hard.detach() > _FILL / 2)  # a filled slot (fewer negatives than k) weighs 0
    return (weights * F.relu(margin - pos_sim[None, :] + hard)).sum(dim=0)


def triplet_sn_loss(
    sim: torch.Tensor, pos: torch.Tensor, *, margin: float = 0.2, sn_temperature: float = 0.05, sn_top_k: int = 10
) -> torch.Tensor:
    """Triplet loss over the hardest negatives with soft, similarity-weighted mining (margin ``a``).

    For caption j, ``H_j`` = its ``K`` most similar negative images and
    ``w_kj = softmax_{k in H_j}(s_kj / t)``, held constant (no gradient flows through the weights);
    ``H'_j`` and ``w'`` likewise over the negative captions of image p(j). Then

    ``L = 1/n * sum_j ( sum_{k in H_j} w_kj [a - s_{p(j)j} + s_kj]_+ + sum_{l in H'_j} w'_lj [a - s_{p(j)j} + s_{p(j)l}]_+ )``

    ``t -> 0`` gives VSE++ (all weight on the hardest); a large ``t`` and ``K`` give the mean of all hinges.
    """
    _check(sim, pos)
    pos_sim, owner = _positive_sim(sim, pos)
    masked = sim.masked_fill(pos, _FILL)
    t2i = _soft_hinges(pos_sim, masked, margin, sn_temperature, sn_top_k)
    i2t = _soft_hinges(pos_sim, masked[owner].T, margin, sn_temperature, sn_top_k)  # rows: captions of the batch
    return (t2i + i2t).mean()


def _discordance(dp: torch.Tensor, dy: torch.Tensor, temperature: float, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of soft discordances, number of pairs) over pairs with |dy| > eps (masked, not indexed)."""
    keep = (dy.abs() > eps).to(dp.dtype)
    return ((1 - torch.sign(dy) * torch.tanh(dp / temperature)) / 2 * keep).sum(), keep.sum()


def _rank_pairs(pred: torch.Tensor, label: torch.Tensor, window: int, hardest: int, temperature: float, eps: float):
    """(sum, count) of soft discordances over the sampled candidate pairs of every anchor row."""
    total, count = pred.new_zeros(()), pred.new_zeros(())
    if int(window) > 0 and pred.shape[1] > 1:
        order = label.argsort(dim=1, descending=True)
        ps, ys = pred.gather(1, order), label.gather(1, order)
        for d in range(1, min(int(window), pred.shape[1] - 1) + 1):
            s, c = _discordance(ps[:, :-d] - ps[:, d:], ys[:, :-d] - ys[:, d:], temperature, eps)
            total, count = total + s, count + c
    h = min(int(hardest), pred.shape[1])
    if h > 1:
        top = pred.detach().topk(h, dim=1).indices
        ph, yh = pred.gather(1, top), label.gather(1, top)
        a, b = torch.triu_indices(h, h, offset=1)
        s, c = _discordance(ph[:, a] - ph[:, b], yh[:, a] - yh[:, b], temperature, eps)
        total, count = total + s, count + c
    return total, count


def kendall_loss(
    sim: torch.Tensor,
    pos: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    kendall_window: int = 4,
    kendall_hardest: int = 8,
    kendall_temperature: float = 0.05,
    kendall_eps: float = 1e-3,
) -> torch.Tensor:
    """Soft Kendall rank loss on continuous labels ``y_ij`` (after BCLS, Li et al. 2022).

    For an anchor (an image row, ranking the batch's captions; or a caption column, ranking the images)
    pairs of candidates ``(a, b)`` are sampled: (1) a sliding window over candidates sorted by label,
    each paired with the next ``W`` ones; (2) every pair among the ``H`` candidates the model currently
    scores highest (the hardest). Pairs with ``|y_a - y_b| <= eps`` are dropped. Over the P kept pairs

    ``L = 1/P * sum_(a,b) (1 - sign(y_a - y_b) * tanh((s_a - s_b) / t)) / 2``

    i.e. a smooth count of discordant pairs (0 when the predicted order agrees with the label order by a
    clear margin, 1 when it is clearly reversed). Both directions' pairs share one mean. Per anchor this
    costs O(n W + H^2) pairs, the order of a triplet loss's O(n).
    """
    _check(sim, pos)
    if labels is None or labels.shape != sim.shape:
        raise ValueError("kendall loss needs labels of the same (m, n) shape as sim")
    s1, c1 = _rank_pairs(sim, labels, kendall_window, kendall_hardest, kendall_temperature, kendall_eps)
    s2, c2 = _rank_pairs(sim.T, labels.T, kendall_window, kendall_hardest, kendall_temperature, kendall_eps)
    return (s1 + s2) / (c1 + c2).clamp(min=1)


def caption_labels(image_captions: torch.Tensor, caption_mask: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
    """Continuous labels ``y_ij = max_{c in captions(i)} cos(t_c, t_j)`` under the (frozen) text encoder.

    ``image_captions`` (m, C, d) unit text features of each image's own captions, padded to C;
    ``caption_mask`` (m, C) marks the real ones; ``text_feats`` (n, d) unit features of the captions.
    A caption's label for its own image is 1 (it is one of that image's captions).
    """
    sims = torch.einsum("mcd,nd->mcn", image_captions, text_feats)
    sims = sims.masked_fill(~caption_mask[:, :, None], -2.0)
    return sims.max(dim=1).values


_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "infonce": infonce_loss,
    "vsepp": vsepp_loss,
    "triplet-sn": triplet_sn_loss,
    "kendall": kendall_loss,
}


def list_losses() -> list[str]:
    return list(_LOSSES)


def _params_of(fn: Callable) -> set[str]:
    return {p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY}


@dataclass(frozen=True)
class LossSpec:
    """A weighted sum of named losses with their parameters; call it on (sim, pos, labels)."""

    terms: tuple[tuple[float, str], ...]
    params: tuple[tuple[str, float], ...] = ()

    @property
    def needs_labels(self) -> bool:
        return any(name == "kendall" for _, name in self.terms)

    def __str__(self) -> str:
        return "+".join(name if w == 1 else f"{w:g}*{name}" for w, name in self.terms)

    def __call__(self, sim: torch.Tensor, pos: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        params = dict(self.params)
        total = sim.new_zeros(())
        for weight, name in self.terms:
            fn = _LOSSES[name]
            kwargs = {k: v for k, v in params.items() if k in _params_of(fn)}
            args = (sim, pos, labels) if name == "kendall" else (sim, pos)
            total = total + weight * fn(*args, **kwargs)
        return total


_TERM = re.compile(r"^\s*(?:(\d+(?:\.\d*)?|\.\d+)\s*\*\s*)?([a-z\-]+)\s*$")


def parse_loss(spec: str, **params: float) -> LossSpec:
    """``"vsepp+0.5*kendall"`` -> LossSpec; ``params`` go to the losses that take them (``margin=0.3``)."""
    terms = []
    for part in str(spec).split("+"):
        m = _TERM.match(part)
        if not m or m.group(2) not in _LOSSES:
            raise ConfigError(f"loss {spec!r}: term {part.strip()!r} is not 'NAME' or 'WEIGHT*NAME' with NAME in {list_losses()}")
        weight = float(m.group(1)) if m.group(1) else 1.0
        terms.append((weight, m.group(2)))
    known = set().union(*(_params_of(_LOSSES[name]) for _, name in terms))
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(f"loss {spec!r}: unknown parameter(s) {unknown}; its losses take {sorted(known)}")
    return LossSpec(tuple(terms), tuple(sorted((k, float(v)) for k, v in params.items())))
