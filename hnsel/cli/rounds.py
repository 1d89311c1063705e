"""``hnsel round list|show|release|repair``: the rounds recorded by ``hnsel select``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from .. import api
from ..errors import InputError
from . import app
from ._common import ConfigOpt, JsonOpt, NamespaceOpt, TokenOpt, UriOpt, console, get_config, handle_errors, print_json

rounds_app = typer.Typer(help="Active-learning rounds: what each selection picked and how much is annotated.", no_args_is_help=True)
app.add_typer(rounds_app, name="round")


def rounds_table(rounds: list[dict]) -> Table:
    table = Table(title="rounds")
    for name in ("round", "modality", "strategy", "size", "annotated", "pending", "released", "seed"):
        table.add_column(name, justify="left" if name in ("modality", "strategy") else "right")
    for r in rounds:
        state = "" if r.get("state") in ("recorded", "released") else f" ({r.get('state')}{', stopped' if r.get('stopped') else ''})"
        table.add_row(str(r["round"]), str(r["modality"]), str(r["strategy"]) + state, str(r["size"]), str(r["annotated"]), str(r["pending"]),
                      str(r["released"]), str(r["seed"]))
    table.caption = "hnsel round show N: parameters, seed and config of a round"
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
def show(number: Annotated[int, typer.Argument(help="Round number.")], config: ConfigOpt = None, milvus_uri: UriOpt = None,
         token: TokenOpt = None, namespace: NamespaceOpt = None) -> None:
    """The round's log as JSON: strategy, parameters, seed, resolved config, picks hash, counts."""
    print_json(api.show_round(get_config(config, milvus_uri, token, namespace), number))


@rounds_app.command("release")
@handle_errors
def release(number: Annotated[Optional[int], typer.Argument(help="Round number (or --round N).")] = None,
            round_: Annotated[Optional[int], typer.Option("--round", help="Round number.")] = None,
            decisions: Annotated[Optional[Path], typer.Option("--from", help="Release only the rejected picks of this decisions file (the report's download).")] = None,
            config: ConfigOpt = None, milvus_uri: UriOpt = None,
            token: TokenOpt = None, namespace: NamespaceOpt = None, json_output: JsonOpt = False) -> None:
    """Give the round's not yet annotated samples back to the candidate pool (annotated ones stay paired); with --from, only the rejected."""
    if number is not None and round_ is not None and number != round_:
        raise InputError(f"round {number} and --round {round_} disagree; pass one")
    number = number if number is not None else round_
    if number is None:
        raise InputError("which round? hnsel round release --round N (hnsel round list shows them)")
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
