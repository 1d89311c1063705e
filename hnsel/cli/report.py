"""``hnsel report``: a self-contained HTML page of a selection's picks, their evidence and the run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import api
from . import app
from ._common import ConfigOpt, JsonOpt, NamespaceOpt, TokenOpt, UriOpt, console, get_config, handle_errors, print_json, progress_bar, show_progress


@app.command()
@handle_errors
def report(
    round_: Annotated[Optional[int], typer.Option("--round", help="Recorded round to show (default: the latest).")] = None,
    selection: Annotated[Optional[Path], typer.Option("--selection", help="A file `hnsel select --out` wrote (.csv, .jsonl, .parquet) instead of a round.")] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder to write: index.html, static/ and thumbs/ (replaced if it holds an older report).")] = Path("report"),
    simulation: Annotated[Optional[Path], typer.Option("--simulation", help="Add the R-sum curves of a `hnsel simulate` --out folder (its results.json).")] = None,
    evidence: Annotated[int, typer.Option("--evidence", help="Violated paired captions (or images) shown per hard negative.")] = 3,
    map_points: Annotated[int, typer.Option("--map-points", help="At most this many paired samples, pool samples and picks each on the 2-D map (seeded sample).")] = 2000,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of the map's samples (default: config seed, 0).")] = None,
    layout: Annotated[str, typer.Option("--layout", help="The map's 2-D layout: auto (UMAP where umap-learn is installed, else PCA), umap or pca.")] = "auto",
    config: ConfigOpt = None, milvus_uri: UriOpt = None, token: TokenOpt = None, namespace: NamespaceOpt = None, json_output: JsonOpt = False,
) -> None:
    """Write a static HTML report of a round's picks (or a selection file's): thumbnails, scores, reasons, and for each hard negative the paired captions it violates and the image that set each threshold."""
    cfg = get_config(config, milvus_uri, token, namespace)
    with progress_bar(show_progress(json_output)) as on_progress:
        result = api.report(cfg, round=round_, selection=selection, out=out, simulation=simulation, top=evidence, map_points=map_points,
                            seed=seed, on_progress=on_progress, layout=layout)
    if json_output:
        print_json(result.summary())
        return
    for note in result.notes:
        console.print(f"[yellow]note[/yellow]: {note}", highlight=False)
    bad = f", {result.unreadable} unreadable (placeholders)" if result.unreadable else ""
    console.print(f"report of {result.source}: {result.picks:,} picks, {result.thumbnails:,} thumbnails{bad}, in {result.seconds:.1f}s", highlight=False)
    console.print(f"open it: python -m webbrowser {result.index.resolve()}", highlight=False, soft_wrap=True)
