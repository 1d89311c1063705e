"""Training on the paired set: projection heads on cached features (arrays in), or the full towers.

The core is ``train_heads(image_feats, text_feats, text_image_index, ...) -> (heads, curve)``: a pure
function on arrays, cheap enough to run every active-learning round. ``apply_heads`` maps features
through trained heads, ``split_validation`` holds out images. ``train_full`` fine-tunes an open_clip
model (optionally with one tower locked, LiT-style) with the same loop.

One epoch is one pass over the captions in a seeded random order, cut into batches of ``batch_size``
captions; a batch's images are the distinct images of its captions (an image with two captions in the
batch appears once, owning both). After every epoch the validation R-sum is measured; training stops
after ``patience`` epochs without a better one, and the best epoch's weights are returned. A validation set of
fewer than ``MIN_VAL_IMAGES`` images cannot choose an epoch (on one image every model scores R-sum 600, so the
untrained epoch 0 would always win; below 10 images R@10 is 100 whatever the weights): then, as without one,
every epoch runs and the last is kept. The kept curve entry carries ``"kept": True``.
"""

from __future__ import annotations

import contextlib
import copy
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from .metrics import evaluate_recall
from .heads import HEAD_KINDS, ProjectionHead
from .losses import LossSpec, caption_labels, parse_loss
from .probabilistic import MatchCalibration, probabilistic_loss, uncertainty

__all__ = ["train_heads", "apply_heads", "head_uncertainty", "split_validation", "train_full", "fit", "check_paired", "holdout_size",
           "can_select", "MIN_VAL_IMAGES"]

EpochFn = Callable[[dict], None]  # called with each curve entry as it is made


INIT_VARIANCE = 0.1  # a probabilistic head's initial summed variance (docs/ascmr.md)
MIN_VAL_IMAGES = 10  # fewer validation images cannot choose an epoch: R@10 is 100 whatever the weights


def holdout_size(n_images: int, fraction: float) -> int:
    """Images ``split_validation`` holds out of ``n_images``: ``round(fraction * n)``, 0 when that is none or all."""
    n_val = int(round(fraction * n_images))
    return n_val if 1 <= n_val < n_images else 0


def can_select(n_val_images: int) -> bool:
    """Whether a validation set of this many images can choose the epoch to keep."""
    return n_val_images >= MIN_VAL_IMAGES


def check_paired(image_feats: np.ndarray, text_feats: np.ndarray, text_image_index: np.ndarray, what: str = "paired set") -> None:
    """One-line InputError for an empty or inconsistent (images, captions, index) triple."""
    n_img, n_txt = len(image_feats), len(text_feats)
    if n_img == 0 or n_txt == 0:
        raise InputError(f"{what} is empty ({n_img} images, {n_txt} captions): add paired images with captions first")
    index = np.asarray(text_image_index)
    if index.shape != (n_txt,) or not np.issubdtype(index.dtype, np.integer):
        raise InputError(f"{what}: text_image_index must hold one integer per caption ({n_txt}), got shape {index.shape}")
    if index.min() < 0 or index.max() >= n_img:
        raise InputError(f"{what}: caption image indices {int(index.min())}..{int(index.max())} fall outside 0..{n_img - 1}")


def split_validation(image_feats, text_feats, text_image_index, fraction: float, rng: np.random.Generator):
    """Hold out ``round(fraction * n_images)`` images with all their captions: (train, val) triples.

    ``val`` is None when that rounds to no image (or would leave no training image).
    """
    index = np.asarray(text_image_index)
    n_img = len(image_feats)
    n_val = holdout_size(n_img, fraction)
    if not n_val:
        return (image_feats, text_feats, index), None
    is_val = np.zeros(n_img, dtype=bool)
    is_val[rng.choice(n_img, size=n_val, replace=False)] = True
    return _subset(image_feats, text_feats, index, ~is_val), _subset(image_feats, text_feats, index, is_val)


def _subset(image_feats, text_feats, index, keep_images: np.ndarray):
    remap = np.cumsum(keep_images) - 1
    keep_texts = keep_images[index]
    return image_feats[keep_images], text_feats[keep_texts], remap[index[keep_texts]]


def _own_captions(index: np.ndarray, n_img: int) -> torch.Tensor:
    """(n_img, C) caption indices of each image, -1 padded (C = most captions of any image)."""
    order = np.argsort(index, kind="stable")
    counts = np.bincount(index, minlength=n_img)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out = np.full((n_img, max(1, counts.max())), -1, dtype=np.int64)
    slot = np.arange(len(index)) - np.repeat(starts, counts)
    out[index[order], slot] = order
    return torch.from_numpy(out)


def _batches(n_txt: int, batch_size: int, index: np.ndarray, rng: np.random.Generator):
    """Yield (image indices, caption indices, pos mask) for one epoch."""
    perm = rng.permutation(n_txt)
    for start in range(0, n_txt, batch_size):
        captions = perm[start:start + batch_size]
        images, owner = np.unique(index[captions], return_inverse=True)
        pos = torch.from_numpy(owner[None, :] == np.arange(len(images))[:, None])
        yield images, captions, pos


def fit(
    embed: Callable[[np.ndarray, np.ndarray], tuple[torch.Tensor, torch.Tensor]],
    params: Sequence[torch.nn.Parameter],
    modules: Sequence[torch.nn.Module],
    text_image_index: np.ndarray,
    *,
    loss: LossSpec,
    labels: Callable[[np.ndarray, np.ndarray], torch.Tensor] | None,
    validate: Callable[[], float] | None,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    patience: int,
    rng: np.random.Generator,
    on_epoch: EpochFn | None = None,
    extra: Callable[[np.ndarray, np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    select: bool = True,
) -> list[dict]:
    """The shared loop; leaves the best epoch's weights in ``modules``, returns the curve, the kept entry marked
    ``"kept": True``. ``extra(images, captions, pos, img, txt)``: a term added to each batch's loss (the probabilistic
    heads' match loss). ``select`` False: ``validate`` is measured for the curve but chooses nothing: every epoch runs
    and the last is kept."""
    index = np.asarray(text_image_index)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=True)
    curve = [_entry(0, None, validate, time.perf_counter())]
    best, best_state, stale, kept = curve[0]["val_rsum"], _state(modules), 0, 0
    _report(on_epoch, curve[0], epochs)
    for epoch in range(1, epochs + 1):
        started, total, seen = time.perf_counter(), 0.0, 0
        for m in modules:
            m.train()
        for images, captions, pos in _batches(len(index), batch_size, index, rng):
            img, txt = embed(images, captions)
            value = loss(img @ txt.T, pos, labels(images, captions) if labels else None)
            if extra is not None:
                value = value + extra(images, captions, pos, img, txt)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            total, seen = total + float(value.detach()) * len(captions), seen + len(captions)
        for m in modules:
            m.eval()
        curve.append(_entry(epoch, total / max(seen, 1), validate, started))
        _report(on_epoch, curve[-1], epochs)
        rsum = curve[-1]["val_rsum"] if select else None
        if rsum is None or best is None or rsum > best:
            best, best_state, stale, kept = rsum, _state(modules), 0, epoch
        else:
            stale += 1
            if stale >= patience:
                break
    for m, s in zip(modules, best_state):
        m.load_state_dict(s)
    curve[kept]["kept"] = True
    return curve


def _entry(epoch: int, loss: float | None, validate: Callable[[], float] | None, started: float) -> dict:
    with torch.no_grad():
        rsum = validate() if validate else None
    return {"epoch": epoch, "loss": loss, "val_rsum": rsum, "seconds": time.perf_counter() - started}


def _report(on_epoch: EpochFn | None, entry: dict, epochs: int) -> None:
    if on_epoch is not None:
        on_epoch(dict(entry, epochs=epochs))


def _state(modules: Sequence[torch.nn.Module]) -> list[dict]:
    return [copy.deepcopy({k: v.detach().cpu() for k, v in m.state_dict().items()}) for m in modules]


def build_heads(kind: str, dim_in: int | tuple[int, int], dim_out: int | None, hidden: int, seed: int,
                variance: float | None = None) -> dict[str, ProjectionHead]:
    """An image and a text head, drawn from ``seed`` (both start as the identity map when dims agree).

    ``dim_in`` is one width or (image width, text width); towers of different widths need ``dim_out``.
    ``variance``: probabilistic heads (Gaussian embeddings) with this initial summed variance."""
    if kind not in HEAD_KINDS:
        raise InputError(f"head kind {kind!r} is not one of {', '.join(HEAD_KINDS)}")
    widths = (dim_in, dim_in) if isinstance(dim_in, int) else tuple(dim_in)
    if dim_out is None and widths[0] != widths[1]:
        raise InputError(f"image features are {widths[0]}-d and text features {widths[1]}-d: give the heads' output width (dim_out)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return {side: ProjectionHead(kind, width, dim_out, hidden, variance) for side, width in zip(("image", "text"), widths)}


def apply_heads(head: ProjectionHead | None, feats: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """Features -> float32 unit rows through ``head`` (None: just normalise)."""
    x = torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))
    out = []
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            y = x[start:start + batch_size]
            out.append(F.normalize(head(y) if head is not None else y, dim=-1))
    dim = head.spec["dim_out"] if head is not None else x.shape[1]
    return torch.cat(out).numpy() if out else np.zeros((0, dim), np.float32)


def head_uncertainty(head: ProjectionHead | None, feats: np.ndarray, batch_size: int = 8192) -> np.ndarray | None:
    """Per row, the summed variance of a probabilistic head's Gaussian (float64); None for a plain head."""
    if head is None or not head.probabilistic:
        return None
    x = torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))
    with torch.inference_mode():
        out = [uncertainty(head.log_variance(x[s:s + batch_size])) for s in range(0, len(x), batch_size)]
    return torch.cat(out).double().numpy() if out else np.zeros(0)


def _val_rsum(heads: dict[str, ProjectionHead], val) -> float:
    images, texts, index = val
    return evaluate_recall(apply_heads(heads["image"], images), apply_heads(heads["text"], texts), index)["rsum"]


def train_heads(
    image_feats: np.ndarray,
    text_feats: np.ndarray,
    text_image_index: np.ndarray,
    *,
    loss: str | LossSpec = "infonce",
    loss_params: dict[str, float] | None = None,
    head: str = "linear",
    hidden: int = 1024,
    dim_out: int | None = None,
    epochs: int = 20,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    val: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    val_fraction: float = 0.1,
    patience: int = 3,
    on_epoch: EpochFn | None = None,
    num_threads: int | None = 1,
    probabilistic: float = 0.0,
    kl_weight: float = 1e-4,
) -> tuple[dict[str, ProjectionHead], list[dict]]:
    """Train an image and a text head on frozen features; returns the best heads and the curve.

    ``image_feats`` (n_img, d), ``text_feats`` (n_txt, d) raw backbone features (what an Encoder feeds its
    heads; the heads' outputs are normalised, so untrained identity heads give the base model's cosines);
    ``text_image_index[j]`` is the row of caption j's image. ``val`` is a held-out triple of the same
    form; without it ``val_fraction`` of the images is held out (seeded). With no validation set at
    all, every epoch runs and the last is kept. Curve entries: epoch (0 = untrained), loss, val_rsum, seconds.
    ``num_threads`` caps torch's threads while training (one is fastest for these small matrices,
    and does not fight other processes for cores); None leaves torch's setting.
    ``probabilistic`` > 0: Gaussian heads (a mean and a variance per sample, docs/ascmr.md), trained with that weight
    on ``probabilistic_loss`` (``kl_weight`` on its prior term) beside the loss on the means; the calibrated match
    parameters go into each head's ``spec["match"]``.
    """
    if not probabilistic >= 0 or not kl_weight >= 0:
        raise InputError(f"probabilistic weight {probabilistic} and kl_weight {kl_weight}: use 0 or more")
    with _threads(num_threads):
        return _train_heads(image_feats, text_feats, text_image_index, loss=loss, loss_params=loss_params, head=head,
                            hidden=hidden, dim_out=dim_out, epochs=epochs, batch_size=batch_size, lr=lr,
                            weight_decay=weight_decay, seed=seed, val=val, val_fraction=val_fraction,
                            patience=patience, on_epoch=on_epoch, probabilistic=probabilistic, kl_weight=kl_weight)


@contextlib.contextmanager
def _threads(n: int | None):
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train_heads(image_feats, text_feats, text_image_index, *, loss, loss_params, head, hidden, dim_out, epochs,
                 batch_size, lr, weight_decay, seed, val, val_fraction, patience, on_epoch, probabilistic=0.0, kl_weight=1e-4):
    check_paired(image_feats, text_feats, text_image_index)
    spec = loss if isinstance(loss, LossSpec) else parse_loss(loss, **(loss_params or {}))
    rng = np.random.default_rng(seed)
    image_feats, text_feats = _float32(image_feats), _float32(text_feats)
    if val is None:
        (image_feats, text_feats, text_image_index), val = split_validation(image_feats, text_feats, text_image_index, val_fraction, rng)
    else:
        check_paired(*val, what="validation set")
        val = (_float32(val[0]), _float32(val[1]), np.asarray(val[2]))
    heads = build_heads(head, (image_feats.shape[1], text_feats.shape[1]), dim_out, hidden, seed,
                        variance=INIT_VARIANCE if probabilistic > 0 else None)
    X, T = torch.from_numpy(image_feats), torch.from_numpy(text_feats)
    index = np.asarray(text_image_index)

    def embed(images: np.ndarray, captions: np.ndarray):
        return F.normalize(heads["image"](X[images]), dim=-1), F.normalize(heads["text"](T[captions]), dim=-1)

    labels = _label_fn(torch.from_numpy(_unit(text_feats)), index, len(X)) if spec.needs_labels else None
    params = [p for h in heads.values() for p in h.parameters()]
    modules: list[torch.nn.Module] = list(heads.values())
    extra = None
    if probabilistic > 0:
        match = MatchCalibration()
        params += list(match.parameters())
        modules.append(match)

        def match_term(images, captions, pos, img, txt):
            return probabilistic * probabilistic_loss(img, heads["image"].log_variance(X[images]), txt, heads["text"].log_variance(T[captions]),
                                                      match.scale, match.shift, kl_weight, pos=pos)

        extra = match_term

    curve = fit(embed, params, modules, index, loss=spec, labels=labels,
                validate=(lambda: _val_rsum(heads, val)) if val is not None else None,
                epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                patience=patience, rng=rng, on_epoch=on_epoch, extra=extra, select=val is not None and can_select(len(val[0])))
    if probabilistic > 0:
        for h in heads.values():
            h.spec["match"] = match.match_parameters()
    return heads, curve


def _float32(feats: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(feats, dtype=np.float32)


def _unit(feats: np.ndarray) -> np.ndarray:
    x = np.asarray(feats, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _label_fn(label_feats: torch.Tensor, index: np.ndarray, n_img: int):
    """labels(images, captions) -> (m, n) continuous labels from fixed (backbone) text features."""
    own = _own_captions(index, n_img)

    def labels(images: np.ndarray, captions: np.ndarray) -> torch.Tensor:
        idx = own[images]
        return caption_labels(label_feats[idx.clamp(min=0)], idx >= 0, label_feats[captions])

    return labels


def train_full(
    encoder: Any,
    load_images: Callable[[np.ndarray], torch.Tensor],
    captions: Sequence[str],
    text_image_index: np.ndarray,
    *,
    loss: str | LossSpec = "infonce",
    loss_params: dict[str, float] | None = None,
    label_feats: np.ndarray | None = None,
    lock: str | None = None,
    epochs: int = 5,
    batch_size: int = 128,
    lr: float = 1e-5,
    weight_decay: float = 0.1,
    seed: int = 0,
    validate: Callable[[], float] | None = None,
    patience: int = 3,
    on_epoch: EpochFn | None = None,
    select: bool = True,
) -> list[dict]:
    """Fine-tune ``encoder.model`` in place on (images, captions) pairs; returns the curve.

    ``load_images(image_indices)`` returns the preprocessed image tensors (m, 3, H, W);
    ``lock`` = ``"image"`` or ``"text"`` freezes that tower (LiT-style); ``label_feats`` are the fixed
    text features the ``kendall`` loss needs; ``validate()`` returns an R-sum with the current weights; ``select``
    False (a validation set too small to choose, ``can_select``): every epoch runs and the last is kept.
    """
    spec = loss if isinstance(loss, LossSpec) else parse_loss(loss, **(loss_params or {}))
    if spec.needs_labels and label_feats is None:
        raise InputError("the kendall loss needs backbone text features of the captions (label_feats)")
    model, device, index = encoder.model, encoder.device, np.asarray(text_image_index)
    torch.manual_seed(seed)  # open_clip's dropout and the like draw from torch's default generator
    tower_params = _tower_params(model, lock)
    tokens = encoder.tokenizer(list(captions))

    def embed(images: np.ndarray, caps: np.ndarray):
        img = model.encode_image(load_images(images).to(device))
        txt = model.encode_text(tokens[caps].to(device))
        return F.normalize(img.float(), dim=-1).cpu(), F.normalize(txt.float(), dim=-1).cpu()

    labels = _label_fn(torch.from_numpy(_unit(label_feats)), index, int(index.max()) + 1) if spec.needs_labels else None
    return fit(embed, tower_params, [model], index, loss=spec, labels=labels, validate=validate, epochs=epochs,
               batch_size=batch_size, lr=lr, weight_decay=weight_decay, patience=patience,
               rng=np.random.default_rng(seed), on_epoch=on_epoch, select=select)


def _tower_params(model: torch.nn.Module, lock: str | None) -> list[torch.nn.Parameter]:
    """Trainable parameters, with the locked tower frozen (``visual`` is open_clip's image tower)."""
    if lock not in (None, "image", "text"):
        raise InputError(f"--lock {lock!r}: use 'image' or 'text'")
    trainable = []
    for name, p in model.named_parameters():
        is_image = name.startswith("visual.")
        frozen = (lock == "image" and is_image) or (lock == "text" and not is_image and name != "logit_scale")
        p.requires_grad_(not frozen and name not in ("logit_scale", "logit_bias"))
        if p.requires_grad:
            trainable.append(p)
    return trainable
