"""The ``hnsel`` command line: one typer sub-app or command module per file, joined here."""

from __future__ import annotations

import typer

from ._common import OneLineErrors

app = typer.Typer(
    name="hnsel",
    help="Pick the unpaired images (or captions) worth paying annotators for: hard-negative active learning for image-text retrieval, backed by Milvus.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=OneLineErrors,  # usage errors are one line and exit code 1, as README promises
)


def _print_version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"hnsel {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", help="Print hnsel's version and exit.", is_eager=True, callback=_print_version)) -> None:
    """Pick the unpaired images (or captions) worth paying annotators for."""


# Command modules register themselves on `app` (or add a sub-app) when imported.
from . import store_cmds as _store_cmds  # noqa: E402,F401
from . import select as _select  # noqa: E402,F401
from . import embed as _embed  # noqa: E402,F401
from . import datasets as _datasets  # noqa: E402,F401
from . import train as _train  # noqa: E402,F401
from . import evaluate as _evaluate  # noqa: E402,F401
from . import rounds as _rounds  # noqa: E402,F401
from . import annotate as _annotate  # noqa: E402,F401
from . import simulate as _simulate  # noqa: E402,F401
from . import report as _report  # noqa: E402,F401

__all__ = ["app"]
