"""The train and eval workflows (``hnsel train``, ``hnsel eval``): sources, store, cache and checkpoints
around the array functions of ``hnsel.model.train`` and ``hnsel.model.metrics``.

``train`` reads the paired set (a source's train split, or the store's paired pool by uri and text),
trains and writes ``OUT/checkpoint.pt`` (loadable by ``hnsel embed --pretrained`` and ``hnsel eval``),
``OUT/train_config.json`` and ``OUT/curve.json`` / ``curve.csv``. ``evaluate`` measures Recall@K of a
model on a source's test split, or of the paired vectors already in the store.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import HnselConfig
from ..data.records import Dataset
from ..data import load_source
from ..model.encoder import load_encoder
from ..schema import DEFAULT_PRETRAINED
from ..errors import ConfigError, InputError, StoreError
from ..model.metrics import evaluate_recall
from ..model.features import backbone_features, backbone_id
from ..schema import DEFAULT_CACHE_DIR
from ..model.losses import parse_loss
from ..model.train import MIN_VAL_IMAGES, EpochFn, apply_heads, can_select, holdout_size, train_heads
from ..tables import write_text_atomic
from ..schema import ProgressFn

__all__ = ["train", "evaluate", "TrainReport", "EvalReport", "Paired", "paired_from_dataset", "paired_from_store", "MODES"]

MODES = ("auto", "head", "full")


@dataclass
class Paired:
    """A paired set: images (ids, uris) and captions, ``text_image_index[j]`` = row of caption j's image."""

    image_ids: list[str]
    uris: list[str]
    texts: list[str]
    text_image_index: np.ndarray
    where: str = ""

    def __len__(self) -> int:
        return len(self.texts)


def paired_from_dataset(dataset: Dataset, what: str) -> Paired:
    """The paired images of ``dataset`` with their captions; InputError when none or one lacks a uri."""
    images = [r for r in dataset.images if r.pool == "paired" and r.captions]
    if not images:
        raise InputError(f"{what} has no paired images with captions; train and eval need image-caption pairs", path=dataset.source or None)
    no_uri = next((r.id for r in images if not r.uri), None)
    if no_uri is not None:
        raise InputError(f"image {no_uri!r} has no file uri; give the image files (or --images-dir)", path=dataset.source or None)
    texts = [c for r in images for c in r.captions]
    index = np.repeat(np.arange(len(images)), [len(r.captions) for r in images])
    return Paired([r.id for r in images], [r.uri for r in images], texts, index, dataset.source)


def paired_from_store(config: HnselConfig, pool: str = "paired", *, fields: tuple[str, str] = ("uri", "text")) -> tuple[Paired, dict]:
    """The store's ``pool`` images and their captions; ``fields`` ("vector", "vector") also returns vectors."""
    from ..store import open_store

    with open_store(config.store) as store:
        where = f"namespace {config.store.namespace!r} at {config.store.safe_uri}"
        image_rows = [r for batch in store.iter_rows("images", store.pool_filter("images", pool), ("id", fields[0])) for r in batch]
        text_rows = [r for batch in store.iter_rows("texts", store.pool_filter("texts", pool), ("id", "image_id", fields[1])) for r in batch]
    if not image_rows or not text_rows:
        raise StoreError(f"{where}: the {pool} pool is empty ({len(image_rows)} images, {len(text_rows)} captions); embed a paired set first")
    position = {r["id"]: i for i, r in enumerate(image_rows)}
    orphan = next((r for r in text_rows if r["image_id"] not in position), None)
    if orphan is not None:
        raise StoreError(f"{where}: caption {orphan['id']!r} names image {orphan['image_id']!r}, which is not in the {pool} pool; re-embed it")
    index = np.array([position[r["image_id"]] for r in text_rows], dtype=np.int64)
    bare = np.flatnonzero(np.bincount(index, minlength=len(image_rows)) == 0)
    if len(bare):
        raise StoreError(f"{where}: {pool} image {image_rows[bare[0]]['id']!r} has no caption ({len(bare)} such); add captions or move them to unpaired")
    if fields[0] == "uri":
        no_uri = next((r["id"] for r in image_rows if not r.get("uri")), None)
        if no_uri is not None:
            raise StoreError(f"{where}: image {no_uri!r} has no uri (vectors ingested without files); train from the SOURCE instead of --store")
    paired = Paired([r["id"] for r in image_rows], [r.get("uri", "") for r in image_rows], [str(r.get("text", "")) for r in text_rows], index, where)
    extra = {"image_vectors": [r[fields[0]] for r in image_rows], "text_vectors": [r[fields[1]] for r in text_rows]} if fields[0] == "vector" else {}
    return paired, extra


def _source_sets(source, images_dir, split: str | None, val_split: str | None, columns: dict | None = None) -> tuple[Paired, Paired | None]:
    dataset = load_source(source, images_dir=images_dir, **(columns or {}))
    splits = {r.split for r in dataset.images if r.split}
    if split is None or not splits:
        return paired_from_dataset(dataset, str(source)), None
    if split not in splits:
        raise InputError(f"no images in split {split!r} (splits here: {sorted(splits)}); pass --split", path=source)
    train_part = paired_from_dataset(dataset.split(split), f"split {split!r}")
    val = paired_from_dataset(dataset.split(val_split), f"split {val_split!r}") if val_split in splits else None
    return train_part, val


@dataclass
class TrainReport:
    out: str
    checkpoint: str
    mode: str
    loss: str
    model: dict
    n_images: int
    n_texts: int
    n_val_images: int | None
    curve: list[dict] = field(default_factory=list)
    best_epoch: int = 0  # the epoch whose weights the checkpoint holds (the best, or the last: ``kept_because``)
    best_val_rsum: float | None = None
    kept_because: str = ""  # one line: which epoch was kept and why
    warning: str | None = None  # one line when validation was too small to choose an epoch
    features: dict = field(default_factory=dict)
    feature_seconds: float = 0.0
    train_seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_args(source, store: bool, mode: str, epochs: int, batch_size: int) -> None:
    if (source is None) == (not store):
        raise ConfigError("give either a SOURCE or --store (the store's paired set), not both or neither")
    if mode not in MODES:
        raise ConfigError(f"--mode {mode!r} is not one of {', '.join(MODES)}")
    if epochs < 1 or batch_size < 2:
        raise ConfigError(f"--epochs {epochs} / --train-batch {batch_size}: use at least 1 epoch and 2 pairs per batch")


def train(
    config: HnselConfig,
    source: str | os.PathLike | None = None,
    *,
    out: str | os.PathLike,
    store: bool = False,
    model_name: str | None = None,
    pretrained: str | None = DEFAULT_PRETRAINED,
    mode: str = "auto",
    loss: str = "infonce",
    loss_params: dict[str, float] | None = None,
    head: str = "linear",
    hidden: int = 1024,
    epochs: int = 20,
    batch_size: int = 256,
    lr: float | None = None,
    weight_decay: float | None = None,
    seed: int | None = None,
    patience: int = 3,
    split: str | None = "train",
    val_split: str | None = "val",
    val_fraction: float = 0.1,
    lock: str | None = None,
    images_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = DEFAULT_CACHE_DIR,
    device: str = "auto",
    num_workers: int = 0,
    on_progress: ProgressFn | None = None,
    on_epoch: EpochFn | None = None,
    probabilistic: float = 0.0,
    id_column: str | None = None,
    uri_column: str | None = None,
    caption_column: str | None = None,
) -> TrainReport:
    """Train on the paired set and write the checkpoint, its config and its curve into ``out``.

    ``probabilistic`` > 0 (head mode): Gaussian heads, a mean and a variance per sample (docs/ascmr.md), trained with
    that weight on the match loss beside ``loss`` on the means; ``hnsel embed`` then stores each sample's variance."""
    _check_args(source, store, mode, epochs, batch_size)
    spec = parse_loss(loss, **(loss_params or {}))
    seed = config.seed if seed is None else seed
    if store:
        train_part, val = paired_from_store(config)[0], None
    else:
        columns = {"id_column": id_column, "uri_column": uri_column, "caption_column": caption_column}
        train_part, val = _source_sets(source, images_dir, split, val_split, columns)
    from .store_model import model_flags

    encoder = load_encoder(*model_flags(config, model_name, pretrained), device)  # no model flag: the store's own model
    base = dataclasses.replace(encoder, image_head=None, text_head=None)
    towers_locked = base.model_info.get("head_dim") is not None  # local towers (LiT): only the heads learn
    mode = ("head" if base.device.type == "cpu" or towers_locked else "full") if mode == "auto" else mode
    if mode == "full" and towers_locked:
        raise ConfigError(f"{base.model_info['model_name']} keeps its towers locked and learns projection heads: use --mode head")
    if probabilistic and mode != "head":
        raise ConfigError("--probabilistic trains Gaussian heads: use --mode head")
    settings = dict(mode=mode, loss=str(spec), loss_params=dict(spec.params), head=head, hidden=hidden, epochs=epochs,
                    batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed, patience=patience, lock=lock,
                    source=str(source) if source is not None else f"store:{config.store.safe_uri}#{config.store.namespace}",
                    split=split, val_split=val_split if val is not None else None, val_fraction=val_fraction,
                    **({"probabilistic": float(probabilistic)} if probabilistic else {}))
    report = TrainReport(str(out), str(Path(out) / "checkpoint.pt"), mode, str(spec), dict(base.model_info), len(train_part.image_ids),
                         len(train_part), len(val.image_ids) if val is not None else None)
    run = _run_heads if mode == "head" else _run_full
    run(base, train_part, val, spec, settings, report, cache_dir=cache_dir, num_workers=num_workers,
        on_progress=on_progress, on_epoch=on_epoch)
    _write_outputs(Path(out), settings, report)
    return report


def _features(base, paired: Paired, report: TrainReport, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    started = time.perf_counter()
    images, texts, stats = backbone_features(base, paired.uris, paired.texts, **kwargs)
    report.feature_seconds += time.perf_counter() - started
    for key, value in stats.items():
        report.features[key] = report.features.get(key, 0) + value
    return images, texts


def _finish(report: TrainReport, curve: list[dict], n_val: int, settings: dict) -> None:
    """The kept epoch (``fit`` marks it), and one line saying why; a warning when validation could not choose."""
    report.curve = curve
    kept = next((c for c in curve if c.get("kept")), curve[-1])
    report.best_epoch, report.best_val_rsum = kept["epoch"], kept["val_rsum"]
    report.train_seconds = sum(c["seconds"] for c in curve)
    last = curve[-1]["epoch"]
    if can_select(n_val):
        stopped = f"; stopped after {settings['patience']} epoch(s) without a better one" if last < settings["epochs"] else ""
        report.kept_because = f"kept epoch {kept['epoch']}: the best validation R-sum ({kept['val_rsum']:.1f} on {n_val} images){stopped}"
        return
    report.kept_because = (f"kept epoch {kept['epoch']}, the last: validation ({n_val} image(s)) is too small to choose an epoch, "
                           "so every epoch ran")
    if n_val == 0:
        report.kept_because = (f"kept epoch {kept['epoch']}, the last: there is no validation set (no --val-split, and --val-fraction "
                               f"{settings['val_fraction']:g} of the images rounds to none), so every epoch ran")
    else:
        report.warning = (f"validation has only {n_val} image(s), too few to choose an epoch (at least {MIN_VAL_IMAGES}: below that R@10 "
                          f"is 100 whatever the weights, and on 1 image even the untrained model scores 600); trained every epoch and kept "
                          f"the last (epoch {kept['epoch']}); give a --val-split or a larger --val-fraction to stop early")


def _run_heads(base, train_part: Paired, val: Paired | None, spec, settings: dict, report: TrainReport, *, cache_dir,
               num_workers: int, on_progress, on_epoch) -> None:
    """Head mode: cached backbone features, then ``train_heads``; the checkpoint keeps the backbone as it was."""
    from ..model.encoder import save_checkpoint

    feature_args = dict(cache_dir=cache_dir, num_workers=num_workers, on_progress=on_progress)
    images, texts = _features(base, train_part, report, **feature_args)
    val_arrays = None
    if val is not None:
        val_arrays = (*_features(base, val, report, **feature_args), val.text_image_index)
    s = settings
    heads, curve = train_heads(images, texts, train_part.text_image_index, loss=spec, head=s["head"], hidden=s["hidden"],
                               dim_out=base.model_info.get("head_dim"),
                               epochs=s["epochs"], batch_size=s["batch_size"], lr=s["lr"] or 1e-3, weight_decay=s["weight_decay"] or 0.0,
                               seed=s["seed"], val=val_arrays, val_fraction=s["val_fraction"], patience=s["patience"], on_epoch=on_epoch,
                               probabilistic=s.get("probabilistic", 0.0))
    n_val = len(val.image_ids) if val is not None else holdout_size(len(train_part.image_ids), s["val_fraction"])
    _finish(report, curve, n_val, s)
    save_checkpoint(report.checkpoint, base.model, base.model_info["model_name"], pretrained=base.model_info["base_pretrained"],
                    heads=heads, extra={"backbone": backbone_id(base), "train": settings, "curve": curve})


def _holdout(paired: Paired, fraction: float, seed: int) -> tuple[Paired, Paired | None]:
    rng = np.random.default_rng([seed, 1])
    n_val = holdout_size(len(paired.image_ids), fraction)
    if not n_val:
        return paired, None
    is_val = np.zeros(len(paired.image_ids), bool)
    is_val[rng.choice(len(is_val), n_val, replace=False)] = True
    return _subset(paired, ~is_val), _subset(paired, is_val)


def _subset(paired: Paired, keep: np.ndarray) -> Paired:
    rows, remap = np.flatnonzero(keep), np.cumsum(keep) - 1
    captions = keep[paired.text_image_index]
    return Paired([paired.image_ids[i] for i in rows], [paired.uris[i] for i in rows],
                  [t for t, k in zip(paired.texts, captions) if k], remap[paired.text_image_index[captions]], paired.where)


def _encode_paired(base, paired: Paired, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    from ..data.images import open_image

    images = [base.encode_images([open_image(u) for u in paired.uris[i:i + batch_size]]) for i in range(0, len(paired.uris), batch_size)]
    texts = [base.encode_texts(paired.texts[i:i + batch_size]) for i in range(0, len(paired.texts), batch_size)]
    return np.concatenate(images), np.concatenate(texts)


def _run_full(base, train_part: Paired, val: Paired | None, spec, settings: dict, report: TrainReport, *, cache_dir,
              num_workers: int, on_progress, on_epoch) -> None:
    """Full mode: fine-tune the open_clip towers (``lock`` freezes one); the checkpoint has no heads."""
    import torch

    from ..data.images import open_image
    from ..model.encoder import save_checkpoint
    from ..model.train import train_full

    s = settings
    if val is None:
        train_part, val = _holdout(train_part, s["val_fraction"], s["seed"])
    label_feats = None
    if spec.needs_labels:  # labels come from the starting text encoder, fixed for the whole run
        label_feats = _features(base, dataclasses.replace(train_part, uris=[]), report, cache_dir=cache_dir, on_progress=on_progress)[1]

    def load_images(rows: np.ndarray) -> torch.Tensor:
        return torch.stack([base.preprocess(open_image(train_part.uris[i])) for i in rows])

    def validate() -> float:
        images, texts = _encode_paired(base, val)
        return evaluate_recall(images, texts, val.text_image_index)["rsum"]

    curve = train_full(base, load_images, train_part.texts, train_part.text_image_index, loss=spec, label_feats=label_feats,
                       lock=s["lock"], epochs=s["epochs"], batch_size=s["batch_size"], lr=s["lr"] or 1e-5,
                       weight_decay=0.1 if s["weight_decay"] is None else s["weight_decay"], seed=s["seed"],
                       validate=validate if val is not None else None, patience=s["patience"], on_epoch=on_epoch,
                       select=val is not None and can_select(len(val.image_ids)))
    _finish(report, curve, len(val.image_ids) if val is not None else 0, s)
    report.n_images, report.n_texts = len(train_part.image_ids), len(train_part)
    report.n_val_images = len(val.image_ids) if val is not None else None
    save_checkpoint(report.checkpoint, base.model.eval(), base.model_info["model_name"], pretrained=base.model_info["base_pretrained"],
                    extra={"train": settings, "curve": curve})


def _write_outputs(out: Path, settings: dict, report: TrainReport) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "train_config.json", json.dumps(dict(settings, model=report.model), indent=2, default=str))
    write_text_atomic(out / "curve.json", json.dumps(report.curve, indent=2))
    rows = ["epoch,loss,val_rsum,seconds"] + [
        f"{c['epoch']},{'' if c['loss'] is None else c['loss']},{'' if c['val_rsum'] is None else c['val_rsum']},{c['seconds']}"
        for c in report.curve]
    write_text_atomic(out / "curve.csv", "\n".join(rows) + "\n")



@dataclass
class EvalReport:
    metrics: dict
    n_images: int
    n_texts: int
    source: str
    split: str | None
    model: dict | None = None
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def evaluate(
    config: HnselConfig,
    source: str | os.PathLike | None = None,
    *,
    store: bool = False,
    split: str | None = "test",
    pool: str = "paired",
    model_name: str | None = None,
    pretrained: str | None = DEFAULT_PRETRAINED,
    images_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = DEFAULT_CACHE_DIR,
    device: str = "auto",
    batch_size: int = 64,
    num_workers: int = 0,
    on_progress: ProgressFn | None = None,
    id_column: str | None = None,
    uri_column: str | None = None,
    caption_column: str | None = None,
) -> EvalReport:
    """Recall@1/5/10 both ways and R-sum of a model on a source split, or of the store's ``pool`` vectors."""
    if (source is None) == (not store):
        raise ConfigError("give either a SOURCE (with --model-name/--pretrained) or --store, not both or neither")
    start = time.perf_counter()
    if store:
        paired, vectors = paired_from_store(config, pool, fields=("vector", "vector"))
        metrics = evaluate_recall(np.asarray(vectors["image_vectors"], np.float32), np.asarray(vectors["text_vectors"], np.float32),
                                  paired.text_image_index)
        return EvalReport(metrics, len(paired.image_ids), len(paired), paired.where, None, None, time.perf_counter() - start)
    dataset = load_source(source, images_dir=images_dir, split=split, id_column=id_column, uri_column=uri_column,
                          caption_column=caption_column)
    paired = paired_from_dataset(dataset, f"split {split!r} of {source}" if split else str(source))
    encoder = load_encoder(model_name, pretrained, device)
    images, texts, _ = backbone_features(encoder, paired.uris, paired.texts, cache_dir=cache_dir, batch_size=batch_size,
                                         num_workers=num_workers, on_progress=on_progress)
    metrics = evaluate_recall(apply_heads(encoder.image_head, images), apply_heads(encoder.text_head, texts), paired.text_image_index)
    return EvalReport(metrics, len(paired.image_ids), len(paired), str(source), split, dict(encoder.model_info), time.perf_counter() - start)
