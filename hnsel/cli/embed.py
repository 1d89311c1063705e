"""``hnsel embed SOURCE``: images and captions through an OpenCLIP model into Milvus (on one process, or on Ray with ``--ray``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .. import api
from ..schema import DEFAULT_CACHE_DIR, DEFAULT_PRETRAINED
from . import app
from ._columns import CaptionColumnOpt, IdColumnOpt, UriColumnOpt, column_options
from ._common import (DEVICE_HELP, ConfigOpt, DeviceOpt, JsonOpt, NamespaceOpt, TokenOpt, UriOpt, console, device_option, either, fail, get_config,
                      handle_errors, progress_bar, renamed, show, show_progress)


def _default_workers() -> int:
    return max(0, min(4, (os.cpu_count() or 1) - 1))


@app.command()
@handle_errors
def embed(
    source: Annotated[str, typer.Argument(help="Image folder, manifest (.csv/.jsonl/.parquet: id, uri[, caption, image_id, pool]), COCO captions or Karpathy JSON; "
                                          "or shards: WebDataset tars by pattern ('shards/{00000..00127}.tar', local or s3://, gs://...) or Parquet files with image bytes.")],
    images_dir: Annotated[Optional[Path], typer.Option("--images-dir", help="Image folder for JSON sources and relative manifest URIs (default: the file's folder).")] = None,
    pool: Annotated[Optional[str], typer.Option("--pool", help="paired or unpaired for every image (default: manifest's pool column, else paired when captioned).")] = None,
    split: Annotated[Optional[str], typer.Option("--split", help="Embed one split of a Karpathy source (train, val, test, restval).")] = None,
    model_name: Annotated[Optional[str], typer.Option("--model-name", help="Built-in model (effnet-lite0-minilm: offline, no download), open_clip model name or JSON config path (default: the checkpoint's model, else the store's model, else ViT-B-32).")] = None,
    pretrained: Annotated[Optional[str], typer.Option("--pretrained", help=f"open_clip tag, local checkpoint path (open_clip or hnsel), or 'none' for random weights (default: the store's model record, else {DEFAULT_PRETRAINED}; a built-in tower model's own weights).")] = None,
    device: Annotated[str, device_option(DEVICE_HELP + " Mixed precision on cuda.")] = "auto",
    batch_size: Annotated[int, typer.Option("--image-batch", help="Images (and captions) per forward pass and per write.")] = 64,
    batch_size_old: Annotated[Optional[int], renamed("--batch-size", "--image-batch")] = None,
    num_workers: Annotated[Optional[int], typer.Option("--num-workers", help="Image-decoding processes (default: cores - 1, at most 4; 0 decodes in this process).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Re-embed ids already in the store (default: skip them, which resumes an interrupted job).")] = False,
    errors: Annotated[Optional[Path], typer.Option("--errors", help="Write unreadable images (id, uri, reason) to this .csv or .jsonl file.")] = None,
    bulk: Annotated[Optional[Path], typer.Option("--bulk", help="Write BulkWriter Parquet files for bulk_import into this folder instead of writing to the store.")] = None,
    id_field: Annotated[Optional[str], typer.Option("--id-field", help="Shards: the sample id from this field of each sample's .json (WebDataset) or this column (Parquet) (default: __key__; Parquet: key, id, else file#row).", rich_help_panel="Shards")] = None,
    caption_field: Annotated[Optional[str], typer.Option("--caption-field", help="Shards: the caption from this .json field (a string or a list) or column (default: the .txt; Parquet: caption, text).", rich_help_panel="Shards")] = None,
    image_column: Annotated[Optional[str], typer.Option("--image-column", help="Shards: the Parquet column holding image bytes (bytes or {bytes, path}; default: image, else jpg), or the WebDataset extension (default: jpg, jpeg, png, webp).", rich_help_panel="Shards")] = None,
    ray: Annotated[bool, typer.Option("--ray", help="Run the encoder on Ray (shards only): Ray Data reads the shards in parallel and an actor pool encodes (one actor per GPU, else CPU actors). Cluster: RAY_ADDRESS, one started on this machine, else a new local one.", rich_help_panel="Ray")] = False,
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="Ray cluster to use (implies --ray): host:6379, ray://host:10001, auto or local.", rich_help_panel="Ray")] = None,
    ray_batch_size: Annotated[int, typer.Option("--ray-image-batch", help="Images per actor call and per write with --ray.", rich_help_panel="Ray")] = 256,
    ray_batch_size_old: Annotated[Optional[int], renamed("--ray-batch-size", "--ray-image-batch")] = None,
    ray_concurrency: Annotated[Optional[int], typer.Option("--ray-concurrency", help="Encoder actors with --ray (default: one per GPU; without GPUs, CPUs - 1).", rich_help_panel="Ray")] = None,
    id_column: IdColumnOpt = None, uri_column: UriColumnOpt = None, caption_column: CaptionColumnOpt = None,
    allow_duplicates: Annotated[bool, typer.Option("--allow-duplicates", help="Store a file whose content is already stored (or listed) under "
                                                   "another id anyway, and list it (default: refuse, naming both ids).")] = False,
    cache_dir: Annotated[Path, typer.Option("--cache-dir", help="Backbone feature cache hnsel train writes: a checkpoint with heads over frozen towers runs only its heads on the images found there.")] = DEFAULT_CACHE_DIR,
    config: ConfigOpt = None, milvus_uri: UriOpt = None, token: TokenOpt = None, namespace: NamespaceOpt = None, json_output: JsonOpt = False,
) -> None:
    """Embed SOURCE's images and captions with an OpenCLIP model and store them (resumable; bad images are skipped and listed)."""
    cfg = get_config(config, milvus_uri, token, namespace)
    batch_size = either(batch_size, batch_size_old, "batch_size", "--batch-size", "--image-batch")
    ray_batch_size = either(ray_batch_size, ray_batch_size_old, "ray_batch_size", "--ray-batch-size", "--ray-image-batch")
    workers = _default_workers() if num_workers is None else num_workers
    common = dict(model_name=model_name, pretrained=pretrained, device=device, batch_size=batch_size, num_workers=workers,
                  images_dir=images_dir, pool=pool, split=split, errors_path=errors, id_field=id_field, caption_field=caption_field,
                  image_column=image_column, **column_options(id_column, uri_column, caption_column), allow_duplicates=allow_duplicates)
    cluster = ray_address if ray_address else ray
    if bulk is not None and cluster:
        fail("--bulk writes files on this machine; it does not combine with --ray (on a Milvus server, --ray upserts in batches from every worker)")
    with progress_bar(show_progress(json_output), rate=True) as on_progress:
        if bulk is not None:
            report = api.write_bulk(cfg, source, bulk, on_progress=on_progress, **common)
        else:
            report = api.embed(cfg, source, overwrite=overwrite, on_progress=on_progress, ray=cluster, ray_batch_size=ray_batch_size,
                               ray_concurrency=ray_concurrency, cache_dir=cache_dir, **common)
    show(report.summary(), json_output, _print_report)


def _print_report(summary: dict) -> None:
    model = summary["model"]
    console.print(f"[bold]{escape(summary['source'])}[/bold] ({summary['format']}) with {escape(str(model['model_name']))} / "
                  f"{escape(str(model['pretrained']))}, dim {model['dim']}", highlight=False)
    table = Table(show_header=True)
    for name in ("", "embedded", "already stored", "failed"):
        table.add_column(name, justify="left" if not name else "right")
    table.add_row("images", str(summary["images_embedded"]), str(summary["images_skipped"]), str(summary["images_failed"]))
    table.add_row("captions", str(summary["texts_embedded"]), str(summary["texts_skipped"]), "")
    console.print(table)
    seconds = summary["seconds"]
    load_share = summary["load_seconds"] / seconds if seconds else 0.0
    if summary.get("ray"):
        r = summary["ray"]
        console.print(f"{summary['images_per_second']:.1f} images/s over {seconds:.1f}s on Ray ({r['workers']} {r['device']} actor(s), "
                      f"cluster {r['cpus']:g} CPUs / {r['gpus']:g} GPUs; writes by the {r['writes']})", highlight=False, markup=False)
    else:
        console.print(f"{summary['images_per_second']:.1f} images/s over {seconds:.1f}s ({load_share:.0%} waiting for image decoding)", highlight=False)
    if summary["images_paired"]:
        console.print(f"{summary['images_paired']} stored unpaired image(s) got their captions and are paired now", highlight=False)
    for d in summary["duplicates"][:20]:
        where = "stored" if d["stored"] else "listed"
        console.print(f"warning: image {d['id']!r} is the same file as image {d['same_as']!r} ({where}); stored twice (--allow-duplicates)",
                      highlight=False, markup=False)
    if summary.get("image_features_cached"):
        console.print(f"{summary['image_features_cached']} images from the feature cache (only the heads ran)", highlight=False)
    if summary["captions_dropped"]:
        console.print(f"{summary['captions_dropped']} captions of unpaired images were not embedded", highlight=False)
    if summary["failures"]:
        failed = Table(title=f"unreadable images ({summary['images_failed']}, first {len(summary['failures'])} shown)")
        for name in ("id", "uri", "reason"):
            failed.add_column(name)
        for f in summary["failures"]:
            failed.add_row(Text(f["id"]), Text(f["uri"]), Text(f["reason"]))  # as text: an id like [/x] is not markup
        console.print(failed)
    if summary["errors_path"]:
        console.print(f"failures written to {summary['errors_path']}", highlight=False, markup=False)
    if summary["bulk_files"]:
        for kind, files in summary["bulk_files"].items():
            console.print(f"{kind}: {len(files)} Parquet file(s) for bulk_import, e.g. {files[0] if files else '-'}", highlight=False, markup=False)


@app.command()
@handle_errors
def reembed(
    pretrained: Annotated[str, typer.Option("--pretrained", help="The new weights: a checkpoint of hnsel train (OUT/checkpoint.pt), an open_clip tag, or 'none'.")],
    model_name: Annotated[Optional[str], typer.Option("--model-name", help="Model of --pretrained (default: the checkpoint's own model).")] = None,
    device: DeviceOpt = "auto",
    batch_size: Annotated[int, typer.Option("--image-batch", help="Images (and captions) per forward pass.")] = 64,
    batch_size_old: Annotated[Optional[int], renamed("--batch-size", "--image-batch")] = None,
    num_workers: Annotated[Optional[int], typer.Option("--num-workers", help="Image-decoding processes (default: cores - 1, at most 4).")] = None,
    cache_dir: Annotated[Path, typer.Option("--cache-dir", help="Backbone feature cache (hnsel train's): features found there skip the towers; new ones are added.")] = DEFAULT_CACHE_DIR,
    config: ConfigOpt = None, milvus_uri: UriOpt = None, token: TokenOpt = None, namespace: NamespaceOpt = None, json_output: JsonOpt = False,
) -> None:
    """Re-embed every stored image and caption with a new model and switch both collections at once, keeping every round,
    annotation and release (a kill leaves the old space in use; run it again to resume)."""
    cfg = get_config(config, milvus_uri, token, namespace)
    batch_size = either(batch_size, batch_size_old, "batch_size", "--batch-size", "--image-batch")
    workers = _default_workers() if num_workers is None else num_workers
    with progress_bar(show_progress(json_output), rate=True) as on_progress:
        report = api.reembed(cfg, pretrained=pretrained, model_name=model_name, device=device, batch_size=batch_size, num_workers=workers,
                             cache_dir=cache_dir, on_progress=on_progress)
    show(report.summary(), json_output, _print_reembed)


def _print_reembed(summary: dict) -> None:
    model = summary["model"]
    name = f"{model['model_name']} / {model['pretrained']}"
    if not summary["switched"]:
        console.print(Text(f"the store already holds {name}: nothing to re-embed"))
        return
    console.print(Text(f"re-embedded {summary['images_embedded']} images and {summary['texts_embedded']} captions with {name} "
                       f"in {summary['seconds']:.1f}s ({summary['image_features_cached']} images and {summary['text_features_cached']} "
                       f"captions from the feature cache; {summary['images_resumed']} images and {summary['texts_resumed']} captions "
                       "kept from an interrupted run)"))
    console.print(Text(f"now in use: {', '.join(summary['collections'].values())}; rounds, annotations and picks kept"))
