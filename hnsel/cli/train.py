"""``hnsel train SOURCE``: fine-tune the retrieval model on the paired set (heads on cached features, or full)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer
from rich.table import Table

from .. import api
from ..schema import DEFAULT_CACHE_DIR, DEFAULT_PRETRAINED
from ..errors import ConfigError
from . import app
from ._columns import CaptionColumnOpt, IdColumnOpt, UriColumnOpt, column_options
from ._common import (
    ConfigOpt,
    DeviceOpt,
    JsonOpt,
    NamespaceOpt,
    TokenOpt,
    UriOpt,
    console,
    either,
    err_console,
    get_config,
    handle_errors,
    progress_session,
    renamed,
    show,
    show_progress,
)


def parse_params(pairs: list[str] | None) -> dict[str, float]:
    """``["margin=0.3", "temperature=0.07"]`` -> {"margin": 0.3, ...}."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        try:
            out[key.strip().replace("-", "_")] = float(value)
        except ValueError:
            sep = ""
        if not sep or not key.strip():
            raise ConfigError(f"--loss-param {pair!r}: use NAME=NUMBER, e.g. margin=0.2")
    return out


@contextlib.contextmanager
def epoch_progress(enabled: bool) -> Iterator[tuple]:
    """(on_progress for feature extraction, on_epoch for training) backed by one rich Progress."""
    with progress_session(enabled) as session:
        if session is None:
            yield None, None
            return
        progress, on_progress, tasks = session

        def on_epoch(entry: dict) -> None:
            loss = "-" if entry["loss"] is None else f"{entry['loss']:.4f}"
            rsum = "-" if entry["val_rsum"] is None else f"{entry['val_rsum']:.1f}"
            text = f"epochs  loss {loss}  val R-sum {rsum}"
            if "epochs" not in tasks:
                tasks["epochs"] = progress.add_task(text, total=entry["epochs"])
            progress.update(tasks["epochs"], completed=entry["epoch"], description=text)

        yield on_progress, on_epoch


@app.command()
@handle_errors
def train(
    source: Annotated[Optional[Path], typer.Argument(help="Paired images and captions: manifest, COCO or Karpathy JSON (as for hnsel embed). Omit with --store.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for checkpoint.pt, train_config.json, curve.json and curve.csv.")] = Path("hnsel-model"),
    store: Annotated[bool, typer.Option("--store", help="Train on the store's paired set (images by uri, captions by text) instead of SOURCE.")] = False,
    model_name: Annotated[Optional[str], typer.Option("--model-name", help="Built-in model (effnet-lite0-minilm), open_clip model name or JSON config path (default: the checkpoint's model, else the store's model).")] = None,
    pretrained: Annotated[Optional[str], typer.Option("--pretrained", help=f"open_clip tag, checkpoint path, or 'none' (random weights) (default: the store's model record, else {DEFAULT_PRETRAINED}).")] = None,
    mode: Annotated[str, typer.Option("--mode", help="head: light heads on cached backbone features; full: fine-tune the towers; auto: head on CPU, full on GPU.")] = "auto",
    loss: Annotated[str, typer.Option("--loss", help="infonce, vsepp, triplet-sn, kendall, or a weighted sum like 'vsepp+0.5*kendall'.")] = "infonce",
    loss_param: Annotated[Optional[list[str]], typer.Option("--loss-param", help="Loss parameter NAME=NUMBER (margin, temperature, sn_temperature, sn_top_k, kendall_window, kendall_hardest, kendall_temperature); repeatable.")] = None,
    head: Annotated[str, typer.Option("--head", help="Head mode: linear or mlp (residual, identity at start).")] = "linear",
    hidden: Annotated[int, typer.Option("--hidden", help="Hidden width of the mlp head.")] = 1024,
    epochs: Annotated[int, typer.Option("--epochs", help="Most epochs (passes over the captions).")] = 20,
    batch_size: Annotated[int, typer.Option("--train-batch", help="Training batch: captions per optimiser step.")] = 256,
    batch_size_old: Annotated[Optional[int], renamed("--batch-size", "--train-batch")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="AdamW learning rate (default 1e-3 head, 1e-5 full).")] = None,
    weight_decay: Annotated[Optional[float], typer.Option("--weight-decay", help="AdamW weight decay (default 0 head, 0.1 full).")] = None,
    patience: Annotated[int, typer.Option("--patience", help="Stop after this many epochs without a better validation R-sum.")] = 3,
    split: Annotated[str, typer.Option("--split", help="Training split of a Karpathy source ('all' for every paired image).")] = "train",
    val_split: Annotated[str, typer.Option("--val-split", help="Validation split; without one, --val-fraction of the images is held out.")] = "val",
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="Images held out for validation when there is no validation split.")] = 0.1,
    lock: Annotated[Optional[str], typer.Option("--lock", help="Full mode: freeze the image or text tower (LiT-style).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed for every random choice (default: config seed, 0).")] = None,
    images_dir: Annotated[Optional[Path], typer.Option("--images-dir", help="Image folder for JSON sources and relative manifest URIs.")] = None,
    cache_dir: Annotated[Path, typer.Option("--cache-dir", help="Backbone feature cache.")] = DEFAULT_CACHE_DIR,
    device: DeviceOpt = "auto",
    num_workers: Annotated[int, typer.Option("--num-workers", help="Image-decoding processes for feature extraction.")] = 0,
    probabilistic: Annotated[float, typer.Option("--probabilistic", help="Head mode: Gaussian heads (a mean and a variance per sample) trained with this "
                                                 "weight on a match loss beside --loss; embed then stores each sample's variance (docs/ascmr.md).")] = 0.0,
    id_column: IdColumnOpt = None, uri_column: UriColumnOpt = None, caption_column: CaptionColumnOpt = None,
    config: ConfigOpt = None, milvus_uri: UriOpt = None, token: TokenOpt = None, namespace: NamespaceOpt = None, json_output: JsonOpt = False,
) -> None:
    """Train on the paired set with early stopping on validation R-sum; write a checkpoint hnsel embed and eval load."""
    cfg = get_config(config, milvus_uri, token, namespace)
    batch_size = either(batch_size, batch_size_old, "batch_size", "--batch-size", "--train-batch")
    with epoch_progress(show_progress(json_output)) as (on_progress, on_epoch):
        report = api.train(
            cfg, source, out=out, store=store, model_name=model_name, pretrained=pretrained, mode=mode,
            loss=loss, loss_params=parse_params(loss_param), head=head, hidden=hidden, epochs=epochs, batch_size=batch_size,
            lr=lr, weight_decay=weight_decay, seed=seed, patience=patience, split=None if split == "all" else split,
            val_split=val_split, val_fraction=val_fraction, lock=lock, images_dir=images_dir, cache_dir=cache_dir,
            device=device, num_workers=num_workers, on_progress=on_progress, on_epoch=on_epoch, probabilistic=probabilistic,
            **column_options(id_column, uri_column, caption_column),
        )
    if report.warning:  # on stderr, with --json too
        err_console.print(f"warning: {report.warning}", highlight=False, markup=False, soft_wrap=True)
    show(report.summary(), json_output, _print_report)


def _print_report(summary: dict) -> None:
    model = summary["model"]
    console.print(f"trained {summary['mode']} mode, loss {summary['loss']}, on {summary['n_images']} images / {summary['n_texts']} captions "
                  f"with {model['model_name']} / {model['pretrained']}", highlight=False, markup=False)
    table = Table("epoch", "loss", "val R-sum", "seconds")
    for c in summary["curve"]:
        mark = " *" if c["epoch"] == summary["best_epoch"] else ""
        table.add_row(str(c["epoch"]), "-" if c["loss"] is None else f"{c['loss']:.4f}",
                      ("-" if c["val_rsum"] is None else f"{c['val_rsum']:.1f}") + mark, f"{c['seconds']:.2f}")
    console.print(table)
    f = summary["features"]
    if f:
        console.print(f"backbone features: {f.get('computed_images', 0)} images and {f.get('computed_texts', 0)} captions computed "
                      f"({summary['feature_seconds']:.1f}s), the rest from the cache", highlight=False)
    console.print(summary["kept_because"], highlight=False, markup=False)
    console.print(f"checkpoint (epoch {summary['best_epoch']}): {summary['checkpoint']}", highlight=False, markup=False)
