"""``hnsel select``: pick the unpaired samples worth annotating."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .. import api
from ..errors import ConfigError
from ..strategies import list_strategies
from ..strategies.base import params_of
from . import app
from ._common import (ConfigOpt, JsonOpt, NamespaceOpt, TokenOpt, UriOpt, console, deprecated, device_option, get_config, handle_errors, print_json, progress_bar,
                      renamed, show_progress)


def select(
    budget: Annotated[int, typer.Option("--budget", "-n", help="How many samples to pick.")] = 1000,
    strategy: Annotated[str, typer.Option("--strategy", help="Registered strategy: auto (default: coverage + hard negatives, split by measured coverage), "
                                          + ", ".join(n for n in list_strategies() if n != "auto") + ".")] = "auto",
    record: Annotated[bool, typer.Option("--record/--no-record", help="Record the picks as the next round, so later selections skip them.")] = True,
    modality: Annotated[str, typer.Option("--modality", help="image: pick unpaired images; text: pick unpaired captions.")] = "image",
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed for every random choice (default: config seed, 0).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="File to write the picks to (.csv, .jsonl or .parquet): rank, id, score, violations, reason, uri.")] = None,
    dedup_radius: Annotated[float, typer.Option("--dedup-radius", help="No pick within this cosine distance of a paired sample or of another "
                                                "pick, whatever the strategy (0: off); dropped picks are refilled by the strategy's next ones.")] = 0.0,
    top: Annotated[int, typer.Option("--top", help="Rows of the table printed without --out.")] = 20,
    engine: Annotated[str, typer.Option("--engine", help="Hard-negative scores by Milvus neighbour searches (milvus), by every similarity in blockwise "
                                        "products, the candidates streamed once from Milvus (exact: the exact answer at any index type), or auto: "
                                        "exact with a CUDA device or when it is estimated faster, else milvus.")] = "auto",
    device: Annotated[str, device_option("Where --engine exact runs: auto (CUDA when present, else CPU), cpu, cuda or cuda:N.",
                                         mps="the exact engine runs on cpu or cuda")] = "auto",
    ray: Annotated[bool, typer.Option("--ray", help="hardneg only, on a Milvus server: Ray tasks score shards of the paired anchors, the scores are added here (same picks). Cluster: RAY_ADDRESS, one started on this machine, else a new local one.", rich_help_panel="Ray")] = False,
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="Ray cluster to use (implies --ray): host:6379, ray://host:10001, auto or local.", rich_help_panel="Ray")] = None,
    ray_workers: Annotated[Optional[int], typer.Option("--ray-workers", help="Ray tasks (anchor shards) with --ray (default: the cluster's CPUs).", rich_help_panel="Ray")] = None,
    config: ConfigOpt = None, milvus_uri: UriOpt = None, token: TokenOpt = None, namespace: NamespaceOpt = None, json_output: JsonOpt = False,
    batch_size_old: Annotated[Optional[int], renamed("--batch-size", "--train-batch (hardneg) or --candidate-batch (coreset, herding, design)")] = None,
    **strategy_params: Any,
) -> None:
    """Select BUDGET unpaired samples: by default `auto`, part covering regions the paired set has not reached, part hard negatives of the paired captions (Top-1, Surplus, full batch)."""
    cfg = get_config(config, milvus_uri, token, namespace)
    params = _strategy_params(strategy, strategy_params, batch_size_old)
    with progress_bar(show_progress(json_output)) as on_progress:
        result = api.select(cfg, budget=budget, strategy=strategy, params=params, modality=modality, seed=seed, out=out, on_progress=on_progress,
                            record=record, engine=engine, device=device, ray=ray_address or ray, ray_workers=ray_workers,
                            dedup_radius=dedup_radius)
    summary = result.summary()
    if json_output:
        if out is not None:
            summary.pop("picks")
        print_json(summary)
        return
    _print_selection(summary, top if out is None else min(top, 10))


_FLAGS: dict[str, str] = {}  # select()'s parameter name of each strategy option -> its flag (filled by _strategy_options)


def _strategy_params(strategy: str, given: dict[str, Any], batch_size_old: int | None) -> dict[str, Any]:
    """The chosen strategy's parameters by name, from the options given (one per flag: the same name can have another
    flag in another strategy, as hardneg's --train-batch and coreset's --candidate-batch are both ``batch_size``)."""
    given = {key: value for key, value in given.items() if value is not None}
    if strategy not in list_strategies():
        return given  # api.select names the unknown strategy
    names = {p.flag: p.name for p in params_of(strategy)}
    wrong = [_FLAGS[key] for key in given if _FLAGS[key] not in names]
    if wrong:
        raise ConfigError(f"strategy {strategy!r} takes no parameter(s) {', '.join(wrong)}; it takes {', '.join(sorted(names)) or 'none'}")
    params = {names[_FLAGS[key]]: value for key, value in given.items()}
    if batch_size_old is not None:
        if "batch_size" in params:
            raise typer.BadParameter("--batch-size is the old spelling of --train-batch / --candidate-batch: give one of them only")
        deprecated("--batch-size", "--train-batch (hardneg) or --candidate-batch (coreset, herding, design)")
        params["batch_size"] = batch_size_old
    return params


def _strategy_options() -> list[inspect.Parameter]:
    """One ``hnsel select`` option per parameter flag any registered strategy declares (``strategies.base.param``): a new
    strategy needs no edit here. A flag several strategies declare is one option, passed to whichever is chosen."""
    specs: dict[str, list] = {}
    takers: dict[str, list[str]] = {}
    for name in list_strategies():
        for p in params_of(name):
            specs.setdefault(p.flag, []).append(p)
            takers.setdefault(p.help, []).append(name)
    options = []
    shared = {name for name in {p.name for same in specs.values() for p in same} if sum(same[0].name == name for same in specs.values()) > 1}
    for flag, same in specs.items():
        if len({(p.type, p.name) for p in same}) > 1:
            raise TypeError(f"strategy flag {flag} is declared with different types or names: {same}")
        helps = dict.fromkeys(p.help for p in same)
        text = " ".join(f"{', '.join(dict.fromkeys(takers[h]))}: {h}" for h in helps)
        option = typer.Option(same[0].flag, help=text, rich_help_panel="Strategy parameters")
        key = flag.lstrip("-").replace("-", "_") if same[0].name in shared else same[0].name  # `lam` of --lambda stays a Python name
        _FLAGS[key] = flag
        options.append(inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[Optional[same[0].type], option]))
    return options


_signature = inspect.signature(select, eval_str=True)
_fixed = [p for p in _signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
select.__signature__ = _signature.replace(parameters=_fixed + _strategy_options())  # type: ignore[attr-defined]
select = app.command()(handle_errors(select))


def _print_selection(summary: dict, top: int) -> None:
    stats = summary["stats"]
    table = Table(title=f"{summary['strategy']} picks ({summary['modality']} modality, seed {summary['seed']})")
    for name in ("rank", "id", "score", "violations", "reason", "uri"):
        table.add_column(name, justify="right" if name in ("rank", "score", "violations") else "left")
    for p in summary["picks"][:top]:
        table.add_row(str(p["rank"]), Text(p["id"]), f"{p['score']:.4f}", str(p["violations"]), p["reason"], Text(p["uri"]))  # ids as text, never markup
    console.print(table)
    shown = "" if len(summary["picks"]) <= top else f" (top {top} shown)"
    console.print(f"picked {summary['budget']}{shown} in {summary['seconds']:.2f}s" + (f"; written to {summary['out']}" if summary["out"] else ""),
                  markup=False, highlight=False)
    details = {k: v for k, v in stats.items() if k in ("candidates", "candidates_with_score", "picked_on_merit", "filled", "anchors", "deepened", "range_searched", "truncated", "reranked", "thresholds")}
    console.print("  ".join(f"{k}={v}" for k, v in details.items()), highlight=False)
    phases = {k: v for k, v in (summary.get("timings_s") or {}).items() if v >= 0.05}
    if phases:
        console.print("time: " + ", ".join(f"{k.replace('_', ' ')} {v:.1f}s" for k, v in phases.items()), highlight=False, markup=False)
    if "engine_choice" in stats:
        e = stats["engine_choice"]
        console.print(f"engine: {e['engine']} ({e['reason']})", highlight=False, markup=False)
    if "auto_decision" in stats:
        d = stats["auto_decision"]
        console.print(f"auto: coverage {d['coverage_picks']}, hard negatives {d['hardneg_picks']}, random {d['random_picks']}, fill {d['fill_picks']} "
                      f"(uncovered {d['uncovered']:.0%} of {d['sampled']} sampled; hard-negative Gini {d['score_gini']}). {d['reason']}", highlight=False)
    for line in summary.get("repaired") or []:
        console.print(f"[yellow]repaired[/yellow]: {escape(line)}", highlight=False)
    if summary.get("round") is not None:
        console.print(f"recorded as round {summary['round']}: export it with `hnsel annotate export --round {summary['round']}`")
    elif summary.get("note"):
        console.print(f"[yellow]note[/yellow]: {escape(summary['note'])}", highlight=False)
