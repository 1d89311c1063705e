"""``hnsel simulate``: the active-learning protocol with an oracle on a fully captioned source."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from .. import api
from ..schema import DEFAULT_CACHE_DIR
from . import app
from ._columns import CaptionColumnOpt, IdColumnOpt, UriColumnOpt, column_options
from ._common import ConfigOpt, DeviceOpt, JsonOpt, console, either, get_config, handle_errors, print_json, progress_bar, renamed, show_progress


def _list(text: str, what: str) -> list[str]:
    """Split a --strategies / --seeds value on ';' or spaces; ',' belongs to a strategy's parameters."""
    items = [s for s in text.replace(";", " ").split() if s]
    if not items:
        raise typer.BadParameter(f"give at least one {what}")
    return items


@app.command()
@handle_errors
def simulate(
    source: Annotated[Path, typer.Argument(help="A fully captioned source with a pool split and a test split (e.g. hnsel datasets scenes output).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for results.json, results.md, rsum.png and the Milvus Lite store; rerun to resume.")],
    strategies: Annotated[str, typer.Option("--strategies", help="Strategies separated by spaces or ';', each name[:key=value,...], "
                                            "e.g. 'hardneg hardneg:k=5,weight=count hardneg:batch=mini random coreset density'.")] = "hardneg random",
    seeds: Annotated[str, typer.Option("--seeds", help="Seeds separated by spaces or ';': every random choice of a run comes from its seed.")] = "0",
    init: Annotated[float, typer.Option("--init", help="Fraction of the pool paired at the start (drawn from the seed, the same for every strategy).")] = 0.1,
    rounds: Annotated[int, typer.Option("--rounds", help="Selection rounds (each followed by training and evaluation).")] = 3,
    budget: Annotated[Optional[int], typer.Option("--budget", "-n", help="Images revealed per round (default 5 % of the pool).")] = None,
    split: Annotated[str, typer.Option("--split", help="The pool split: its captions are hidden until selected.")] = "train",
    test_split: Annotated[str, typer.Option("--test-split", help="The fixed evaluation split.")] = "test",
    model_name: Annotated[Optional[str], typer.Option("--model-name", help="open_clip model name or JSON config file.")] = None,
    pretrained: Annotated[str, typer.Option("--pretrained", help="open_clip tag, checkpoint file, or 'none' (random backbone).")] = "none",
    loss: Annotated[str, typer.Option("--loss", help="Head training loss: infonce, vsepp, ...")] = "infonce",
    head: Annotated[str, typer.Option("--head", help="Head kind: linear or mlp.")] = "linear",
    epochs: Annotated[int, typer.Option("--epochs", help="Head training epochs per round (all of them: no early stopping, the last epoch is kept).")] = 30,
    batch_size: Annotated[int, typer.Option("--train-batch", help="Head training batch: captions per optimiser step.")] = 128,
    batch_size_old: Annotated[Optional[int], renamed("--batch-size", "--train-batch")] = None,
    lr: Annotated[float, typer.Option("--lr", help="Head training learning rate.")] = 1e-3,
    probabilistic: Annotated[float, typer.Option("--probabilistic", help="Weight of the Gaussian heads' match loss (0: plain heads). With it, each "
                                                 "sample's variance is stored beside its vector and ascmr reads it (docs/ascmr.md).")] = 0.0,
    milvus_uri: Annotated[Optional[str], typer.Option("--milvus-uri", help="Store for the runs (default OUT/store.db, one namespace per strategy and seed).")] = None,
    images_dir: Annotated[Optional[Path], typer.Option("--images-dir", help="Folder the source's image paths are relative to.")] = None,
    cache_dir: Annotated[Path, typer.Option("--cache-dir", help="Backbone feature cache.")] = DEFAULT_CACHE_DIR,
    device: DeviceOpt = "auto",
    id_column: IdColumnOpt = None, uri_column: UriColumnOpt = None, caption_column: CaptionColumnOpt = None,
    config: ConfigOpt = None, json_output: JsonOpt = False,
) -> None:
    """Simulate active learning with an oracle: train, select, reveal captions, evaluate; per strategy and seed."""
    cfg = get_config(config)
    batch_size = either(batch_size, batch_size_old, "batch_size", "--batch-size", "--train-batch")
    with progress_bar(show_progress(json_output)) as on_progress:
        report = api.simulate(cfg, source, out=out, strategies=_list(strategies, "strategy"), seeds=[int(s) for s in _list(seeds, "seed")],
                              init=init, rounds=rounds, budget=budget, split=split, test_split=test_split, model_name=model_name,
                              pretrained=pretrained, loss=loss, head=head, epochs=epochs, batch_size=batch_size, lr=lr,
                              milvus_uri=milvus_uri, images_dir=images_dir, cache_dir=cache_dir, device=device, on_progress=on_progress,
                              probabilistic=probabilistic, **column_options(id_column, uri_column, caption_column))
    summary = report.summary()
    if json_output:
        print_json(summary)
        return
    table = Table(title="final round (R-sum on the test split)")
    for name in ("strategy", "seed", "paired", "rsum"):
        table.add_column(name, justify="left" if name == "strategy" else "right")
    for row in summary["final"]:
        table.add_row(row["strategy"], str(row["seed"]), str(row["paired"]), f"{row['rsum']:.1f}")
    console.print(table)
    resumed = f" (resumed {report.resumed_rounds} finished rounds)" if report.resumed_rounds else ""
    console.print(f"done in {report.seconds:.0f}s{resumed}; wrote {report.results}, {report.table}" + (f", {report.plot}" if report.plot else ""),
                  highlight=False, markup=False)
