"""What every command shares: store options, error handling, JSON output and progress bars.

Commands stay thin: read the config, apply flags, call one ``hnsel.api`` function, print.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from ..config import HnselConfig, load_config
from ..errors import HnselError, StoreError
from ..schema import ProgressFn

console = Console()
err_console = Console(stderr=True)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="hnsel.toml to read (default: ./hnsel.toml when present).")]
UriOpt = Annotated[Optional[str], typer.Option("--milvus-uri", help="Milvus Lite file (default ./hnsel.db) or server URI http://host:19530. Env: HNSEL_MILVUS_URI.")]
TokenOpt = Annotated[Optional[str], typer.Option("--token", help="Milvus token (user:password or API key). Env: HNSEL_MILVUS_TOKEN.")]
NamespaceOpt = Annotated[Optional[str], typer.Option("--namespace", help="Collection prefix: {namespace}_images, {namespace}_texts. Env: HNSEL_NAMESPACE.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one machine-readable JSON document and no progress bars.")]

# A callback libraries call on long work: on_progress(task, completed, total).


def get_config(config: Path | None, milvus_uri: str | None = None, token: str | None = None, namespace: str | None = None) -> HnselConfig:
    return load_config(config).with_overrides(uri=milvus_uri, token=token, namespace=namespace)


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """A user's mistake becomes one line on stderr and exit code 1; no traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except HnselError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            err_console.print("[red]interrupted[/red]: work written so far is kept; run the command again to resume")
            raise typer.Exit(130) from None
        except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            fail(f"{exc.filename}: {exc.strerror}")

    return wrapper


def fail(message: str, code: int = 1) -> None:
    """``error: message`` as one line on stderr (ids and paths printed as they are, never read as markup), then exit."""
    err_console.print(f"[bold red]error[/bold red]: {escape(' '.join(str(message).split()))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def print_json(data: Any) -> None:
    """One JSON document on stdout; NaN and infinities become null (JSON has neither)."""
    sys.stdout.write(json.dumps(_finite(data), indent=2, allow_nan=False) + "\n")


def show(summary: dict, json_output: bool, printer: Callable[[dict], None]) -> None:
    """A command's result: one JSON document with ``--json``, else ``printer``'s tables."""
    if json_output:
        print_json(summary)
    else:
        printer(summary)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if hasattr(value, "tolist"):
        return _finite(value.tolist())
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (str, int, bool)):
        return value
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# click's exceptions, wherever this typer takes click from (recent typers vendor it as typer._click)
_click = sys.modules[typer.BadParameter.__module__]


class OneLineErrors(typer.core.TyperGroup):
    """The root command group: a usage error (unknown option, a value of the wrong type, a missing argument) is
    one line on stderr and exit code 1, like every other error, instead of click's boxed message and exit code 2."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _click.NoArgsIsHelpError:  # building it printed the help already (rich help prints as it formats)
            code = 0
        except _click.UsageError as exc:
            path = exc.ctx.command_path if exc.ctx is not None else "hnsel"
            err_console.print(f"[bold red]error[/bold red]: {escape(path)}: {escape(' '.join(exc.format_message().split()))} "
                              f"(`{escape(path)} --help` lists the options)", highlight=False, soft_wrap=True)
            code = 1
        except _click.ClickException as exc:
            err_console.print(f"[bold red]error[/bold red]: {escape(' '.join(exc.format_message().split()))}", highlight=False, soft_wrap=True)
            code = 1
        except typer.Abort:
            err_console.print("[red]aborted[/red]")
            code = 1
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


def show_progress(json_output: bool) -> bool:
    return not json_output and console.is_terminal


class RateColumn(ProgressColumn):
    """Items per second of a task (rich's own speed column counts bytes)."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f}/s" if speed else "-/s", style="progress.data.speed")


@contextlib.contextmanager
def progress_session(enabled: bool, rate: bool = False) -> Iterator[tuple[Any, ProgressFn, dict] | None]:
    """(rich Progress, ``on_progress`` callback, task ids by name), or ``None`` when disabled."""
    if not enabled:
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), *((RateColumn(),) if rate else (TaskProgressColumn(),)),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:
        tasks: dict[str, Any] = {}

        def on_progress(task: str, completed: int, total: int | None) -> None:
            if task not in tasks:
                tasks[task] = progress.add_task(task, total=total)
            progress.update(tasks[task], completed=completed, total=total)

        yield progress, on_progress, tasks


@contextlib.contextmanager
def progress_bar(enabled: bool, rate: bool = False) -> Iterator[ProgressFn | None]:
    """Yield an ``on_progress`` callback backed by a rich Progress, or ``None`` when disabled."""
    with progress_session(enabled, rate) as session:
        yield None if session is None else session[1]


__all__ = [
    "console", "err_console", "ConfigOpt", "UriOpt", "TokenOpt", "NamespaceOpt", "JsonOpt", "ProgressFn",
    "get_config", "handle_errors", "fail", "print_json", "OneLineErrors", "show_progress", "progress_bar", "progress_session", "RateColumn", "StoreError",
]
