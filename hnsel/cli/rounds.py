"""``hnsel round list|show|release``: the rounds recorded by ``hnsel select``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from .. import api
from . import app
from ._common import ConfigOpt, JsonOpt, NamespaceOpt, TokenOpt, UriOpt, console, get_config, handle_errors, print_json

rounds_app = typer.Typer(help="Active-learning rounds: what each selection picked and how much is annotated.", no_args_is_help=True)
app.add_typer(rounds_app, name="round")


def rounds_table(rounds: list[dict]) -> Table:
    table = Table(title="rounds")
    for name in ("round", "modality", "strategy", "size", "annotated", "pending", "released", "seed"):
        table.add_column(name, justify="left" if name in ("modality", "strategy") else "right")
    for r in rounds:
        state = "" if r.get("state") in ("recorded", "released") else f" ({r.get('state')})"
        table.add_row(str(r["round"]), str(r["modality"]), str(r["strategy"]) + state, str(r["size"]), str(r["annotated"]), str(r["pending"]),
                      str(r["released"]), str(r["seed"]))
    table.caption = "hnsel round show N: parameters, seed and config of a round"
    return table


@rounds_app.command("list")
@handle_errors
def list_(config: ConfigOpt = None, milvus_uri: UriOpt = None, token: TokenOpt = None, namespace: NamespaceOpt = None,
          json_output: JsonOpt = False) -> None:
    """Every recorded round: size, strategy, how many annotated so far, how many pending or released."""
    rounds = api.status(get_config(config, milvus_uri, token, namespace), rounds=True)["rounds"]
    if json_output:
        print_json(rounds)
    elif rounds:
        console.print(rounds_table(rounds))
    else:
        console.print("no rounds recorded yet: `hnsel select` records one")


@rounds_app.command("show")
@handle_errors
def show(number: Annotated[int, typer.Argument(help="Round number.")], config: ConfigOpt = None, milvus_uri: UriOpt = None,
         token: TokenOpt = None, namespace: NamespaceOpt = None) -> None:
    """The round's log as JSON: strategy, parameters, seed, resolved config, picks hash, counts."""
    print_json(api.show_round(get_config(config, milvus_uri, token, namespace), number))


@rounds_app.command("release")
@handle_errors
def release(number: Annotated[int, typer.Argument(help="Round number.")], config: ConfigOpt = None, milvus_uri: UriOpt = None,
            token: TokenOpt = None, namespace: NamespaceOpt = None, json_output: JsonOpt = False) -> None:
    """Give the round's not yet annotated samples back to the candidate pool (annotated ones stay paired)."""
    result = api.release(get_config(config, milvus_uri, token, namespace), number)
    if json_output:
        print_json(result)
    else:
        console.print(f"round {number}: released {result['released']} samples back to the pool; {result['annotated']} annotated stay")
