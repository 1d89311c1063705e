"""``hnsel round list|show|release|repair``: the rounds recorded by ``hnsel select``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from .. import api
from . import app
from ._common import ConfigOpt, JsonOpt, NamespaceOpt, RoundOpt, TokenOpt, UriOpt, console, get_config, handle_errors, print_json, round_number

rounds_app = typer.Typer(help="Active-learning rounds: what each selection picked and how much is annotated.", no_args_is_help=True)
app.add_typer(rounds_app, name="round")
# `round show N` / `round release N`: the positional round of earlier releases, kept one release with a deprecation line
OldRoundArg = Annotated[Optional[int], typer.Argument(help="Deprecated: use --round N.", hidden=True, show_default=False)]


def rounds_table(rounds: list[dict]) -> Table:
    table = Table(title="rounds")
    for name in ("round", "modality", "strategy", "size", "annotated", "pending", "released", "seed"):
        table.add_column(name, justify="left" if name in ("modality", "strategy") else "right")
    for r in rounds:
        state = "" if r.get("state") in ("recorded", "released") else f" ({r.get('state')}{', stopped' if r.get('stopped') else ''})"
        table.add_row(str(r["round"]), str(r["modality"]), str(r["strategy"]) + state, str(r["size"]), str(r["annotated"]), str(r["pending"]),
                      str(r["released"]), str(r["seed"]))
    table.caption = "hnsel round show --round N: parameters, seed and config of a round"
    return table


def print_unfinished(unfinished: list[dict]) -> None:
    """One line per unfinished round or import; a stopped one says to run ``hnsel round repair``."""
    for u in unfinished:
        console.print(f"[yellow]unfinished[/yellow]: {escape(u['message'])}", highlight=False, soft_wrap=True)


@rounds_app.command("list")
@handle_errors
def list_(config: ConfigOpt = None, milvus_uri: UriOpt = None, token: TokenOpt = None, namespace: NamespaceOpt = None,
          json_output: JsonOpt = False) -> None:
    """Every recorded round: size, strategy, how many annotated so far, how many pending or released."""
    info = api.status(get_config(config, milvus_uri, token, namespace), rounds=True)
    rounds = info["rounds"]
    if json_output:
        print_json(rounds)
        return
    if rounds:
        console.print(rounds_table(rounds))
    else:
        console.print("no rounds recorded yet: `hnsel select` records one")
    print_unfinished(info["unfinished"])


@rounds_app.command("show")
@handle_errors
def show(number: OldRoundArg = None, round_: RoundOpt = None, config: ConfigOpt = None, milvus_uri: UriOpt = None,
         token: TokenOpt = None, namespace: NamespaceOpt = None, json_output: JsonOpt = False) -> None:
    """The round's log: strategy, parameters, seed, resolved config, picks hash, counts (all of it with --json)."""
    log = api.show_round(get_config(config, milvus_uri, token, namespace), round_number(round_, number))
    if json_output:
        print_json(log)
        return
    table = Table(title=f"round {log.get('round')}", show_header=False)
    for key, value in log.items():
        table.add_row(escape(str(key)), escape(value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)))
    console.print(table)


@rounds_app.command("release")
@handle_errors
def release(number: OldRoundArg = None, round_: RoundOpt = None,
            decisions: Annotated[Optional[Path], typer.Option("--from", help="Release only the rejected picks of this decisions file (the report's download).")] = None,
            config: ConfigOpt = None, milvus_uri: UriOpt = None,
            token: TokenOpt = None, namespace: NamespaceOpt = None, json_output: JsonOpt = False) -> None:
    """Give the round's not yet annotated samples back to the candidate pool (annotated ones stay paired); with --from, only the rejected."""
    number = round_number(round_, number)
    result = api.release(get_config(config, milvus_uri, token, namespace), number, decisions=decisions)
    if json_output:
        print_json(result)
    else:
        which = f"the rejected picks of {decisions}" if decisions is not None else "samples"
        console.print(f"round {number}: released {result['released']} {which} back to the pool; {result['annotated']} annotated stay", markup=False)


@rounds_app.command("repair")
@handle_errors
def repair(force: Annotated[bool, typer.Option("--force", help="Also repair work whose process still looks alive (only when you know it stopped).")] = False,
           config: ConfigOpt = None, milvus_uri: UriOpt = None, token: TokenOpt = None, namespace: NamespaceOpt = None,
           json_output: JsonOpt = False) -> None:
    """Finish or roll back rounds and imports a stopped (killed) process left unfinished; nothing is lost or doubled."""
    result = api.repair(get_config(config, milvus_uri, token, namespace), force=force)
    if json_output:
        print_json(result)
        return
    for line in result["repaired"]:
        console.print(f"[green]repaired[/green]: {escape(line)}", highlight=False, soft_wrap=True)
    for line in result["running"]:
        console.print(f"[yellow]left as is[/yellow]: {escape(line)}; run repair again once it ends (--force if you know it stopped)",
                      highlight=False, soft_wrap=True)
    for line in result.get("left", []):
        console.print(f"[red]not repaired[/red]: {escape(line)}", highlight=False, soft_wrap=True)
    if not result["repaired"] and not result["running"] and not result.get("left"):
        console.print("nothing to repair: every round and import is finished")
