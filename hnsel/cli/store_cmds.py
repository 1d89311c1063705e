"""``hnsel ingest`` and ``hnsel status``: vectors in, counts out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table
from rich.text import Text

from .. import api
from . import app
from ._common import ConfigOpt, JsonOpt, NamespaceOpt, TokenOpt, UriOpt, console, err_console, get_config, handle_errors, print_json, progress_bar, show_progress


@app.command()
@handle_errors
def ingest(
    images: Annotated[Optional[Path], typer.Option("--images", help="Parquet or JSONL: id, vector, pool (paired|unpaired), optional uri.")] = None,
    texts: Annotated[Optional[Path], typer.Option("--texts", help="Parquet or JSONL: id, vector, pool, image_id (for paired texts), optional text.")] = None,
    model_name: Annotated[Optional[str], typer.Option("--model-name", help="The model that computed the vectors: required when the store "
                                                      "holds vectors of a model (hnsel embed), and it must be that model.")] = None,
    config: ConfigOpt = None, milvus_uri: UriOpt = None, token: TokenOpt = None, namespace: NamespaceOpt = None, json_output: JsonOpt = False,
) -> None:
    """Load precomputed image and caption vectors into Milvus (validated first; nothing is written if any row is bad).
    A column a file lacks (uri, text, image_id) leaves the stored values as they are."""
    cfg = get_config(config, milvus_uri, token, namespace)
    with progress_bar(show_progress(json_output)) as on_progress:
        report = api.ingest(cfg, images=images, texts=texts, on_progress=on_progress, model_name=model_name)
    if json_output:
        print_json({"images": report.images, "texts": report.texts, "dim": report.dim})
    else:
        console.print(f"ingested {report.images} images and {report.texts} texts ({report.dim}-d) into {cfg.store.safe_uri}", markup=False)


@app.command()
@handle_errors
def status(config: ConfigOpt = None, milvus_uri: UriOpt = None, token: TokenOpt = None, namespace: NamespaceOpt = None, json_output: JsonOpt = False) -> None:
    """Counts per collection and pool, the vector dimension, and the rounds: size, strategy, annotated so far."""
    cfg = get_config(config, milvus_uri, token, namespace)
    info = api.status(cfg, rounds=True)
    if json_output:
        print_json(info)
        return
    table = Table(title=Text(f"hnsel store {cfg.store.safe_uri} (namespace {cfg.store.namespace})"))
    table.add_column("collection")
    table.add_column("paired", justify="right")
    table.add_column("unpaired", justify="right")
    for kind in ("images", "texts"):
        table.add_row(kind, str(info[kind]["paired"]), str(info[kind]["unpaired"]))
    console.print(table)
    console.print(f"dimension: {info['dim']}   selected (carry a round): {info['selected']}")
    for warning in info.get("warnings", []):
        err_console.print(f"warning: {warning}", highlight=False, markup=False, soft_wrap=True)
    console.print(Text(f"model: {describe_model_summary(info['model'])}"))
    if info.get("reembed"):
        pending = info["reembed"]
        state = "stopped" if pending["stopped"] else f"running ({pending['holder']})"
        console.print(Text(f"re-embed to {describe_model_summary(pending['model'])}: unfinished, {state}; the old space is in use "
                           f"(run hnsel reembed --pretrained {(pending['model'] or {}).get('pretrained')} to finish)"))
    from .rounds import print_unfinished, rounds_table

    if info["rounds"]:
        console.print(rounds_table(info["rounds"]))
    print_unfinished(info["unfinished"])


def describe_model_summary(model: dict | None) -> str:
    """``effnet-lite0-minilm / /path/checkpoint.pt (checkpoint sha256 1a2b3c4d5e6f, dim 256)``."""
    if not model:
        return "none recorded (vectors ingested from files)"
    digest = f"checkpoint sha256 {model['checkpoint_sha256'][:12]}, " if model.get("checkpoint_sha256") else ""
    heads = " + untrained heads" if model.get("heads_sha256") and not model.get("checkpoint_sha256") else ""
    return f"{model['model_name']} / {model['pretrained']}{heads} ({digest}dim {model['dim']})"
