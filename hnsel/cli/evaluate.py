"""``hnsel eval``: Recall@1/5/10 both ways and R-sum, of a model on a test split or of the store's vectors."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from .. import api
from ..schema import DEFAULT_CACHE_DIR, DEFAULT_PRETRAINED
from . import app
from ._columns import CaptionColumnOpt, IdColumnOpt, UriColumnOpt, column_options
from ._common import (ConfigOpt, DeviceOpt, JsonOpt, NamespaceOpt, TokenOpt, UriOpt, console, either, get_config, handle_errors, print_json, progress_bar,
                      renamed, show_progress)


@app.command(name="eval")
@handle_errors
def eval_(
    source: Annotated[Optional[Path], typer.Argument(help="Dataset with a test split (Karpathy JSON) or any paired source. Omit with --store.")] = None,
    store: Annotated[bool, typer.Option("--store", help="Evaluate the paired image and caption vectors already in the store.")] = False,
    split: Annotated[str, typer.Option("--split", help="Split to evaluate ('all' for every paired image of SOURCE).")] = "test",
    pool: Annotated[str, typer.Option("--pool", help="With --store: the pool whose images and captions are evaluated.")] = "paired",
    model_name: Annotated[Optional[str], typer.Option("--model-name", help="open_clip model name or JSON config path (default: the checkpoint's model).")] = None,
    pretrained: Annotated[str, typer.Option("--pretrained", help="open_clip tag, checkpoint path (hnsel train writes OUT/checkpoint.pt), or 'none'.")] = DEFAULT_PRETRAINED,
    images_dir: Annotated[Optional[Path], typer.Option("--images-dir", help="Image folder for JSON sources and relative manifest URIs.")] = None,
    cache_dir: Annotated[Path, typer.Option("--cache-dir", help="Backbone feature cache (shared with hnsel train).")] = DEFAULT_CACHE_DIR,
    device: DeviceOpt = "auto",
    batch_size: Annotated[int, typer.Option("--image-batch", help="Images (and captions) per forward pass.")] = 64,
    batch_size_old: Annotated[Optional[int], renamed("--batch-size", "--image-batch")] = None,
    num_workers: Annotated[int, typer.Option("--num-workers", help="Image-decoding processes.")] = 0,
    id_column: IdColumnOpt = None, uri_column: UriColumnOpt = None, caption_column: CaptionColumnOpt = None,
    config: ConfigOpt = None, milvus_uri: UriOpt = None, token: TokenOpt = None, namespace: NamespaceOpt = None, json_output: JsonOpt = False,
) -> None:
    """Recall@1, @5, @10 for image-to-text and text-to-image, and R-sum (every caption of an image is a match)."""
    cfg = get_config(config, milvus_uri, token, namespace)
    batch_size = either(batch_size, batch_size_old, "batch_size", "--batch-size", "--image-batch")
    with progress_bar(show_progress(json_output)) as on_progress:
        report = api.evaluate(cfg, source, store=store, split=None if split == "all" else split, pool=pool, model_name=model_name,
                              pretrained=pretrained, images_dir=images_dir, cache_dir=cache_dir, device=device,
                              batch_size=batch_size, num_workers=num_workers, on_progress=on_progress,
                              **column_options(id_column, uri_column, caption_column))
    if json_output:
        print_json(report.metrics)
        return
    m = report.metrics
    table = Table("", "R@1", "R@5", "R@10", title=f"{report.source}" + (f" [{report.split}]" if report.split else ""))
    for direction, label in (("i2t", "image -> text"), ("t2i", "text -> image")):
        table.add_row(label, *(f"{m[direction][k]:.2f}" for k in ("r1", "r5", "r10")))
    console.print(table)
    console.print(f"R-sum {m['rsum']:.2f} over {report.n_images} images and {report.n_texts} captions ({report.seconds:.1f}s)", highlight=False)
