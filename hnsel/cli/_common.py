"""What every command shares: store options, error handling, JSON output and progress bars.

Commands stay thin: read the config, apply flags, call one ``hnsel.api`` function, print.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import math
import re
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
_click_core = importlib.import_module(typer.BadParameter.__module__.rpartition(".")[0] + ".core")  # ParameterSource
_click_globals = importlib.import_module(typer.BadParameter.__module__.rpartition(".")[0] + ".globals")  # get_current_context


class OneLineErrors(typer.core.TyperGroup):
    """The root command group: a usage error (unknown option, a value of the wrong type, a missing argument) is
    one line on stderr and exit code 2 (click's convention; runtime errors exit 1), instead of click's boxed message."""

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
            code = 2
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


# ---------------------------------------------------------------------------------------------
# the convention every command follows (docs/cli.md)

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")  # --device's one set of values, for every command
_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?|mps")
DEVICE_HELP = "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps."


class DeviceParser:
    """``--device``'s value type: one of ``DEVICE_CHOICES``, refused at parse time (a usage error, exit code 2) when
    malformed or when the command cannot run there (``unsupported``: choice -> why)."""

    def __init__(self, unsupported: dict[str, str] | None = None) -> None:
        self.unsupported = dict(unsupported or {})
        self.choices = tuple(c for c in DEVICE_CHOICES if c not in self.unsupported)

    def __call__(self, value: str) -> str:
        if not isinstance(value, str) or not _DEVICE.fullmatch(value):
            raise typer.BadParameter(f"{value!r} is not a device; use {', '.join(self.choices)}")
        why = self.unsupported.get("cuda:N" if value.startswith("cuda:") else value)
        if why:
            raise typer.BadParameter(f"{value!r}: {why}; use {', '.join(self.choices)}")
        return value


def device_option(help: str = DEVICE_HELP, **unsupported: str) -> Any:
    """The ``--device`` option of every command; ``unsupported``: a choice this command cannot run on, and why."""
    parser = DeviceParser(unsupported)
    return typer.Option("--device", help=help, parser=parser, metavar="[" + "|".join(parser.choices) + "]")


DeviceOpt = Annotated[str, device_option()]  # the encoder's commands: every choice
RoundOpt = Annotated[Optional[int], typer.Option("--round", help="Round number (hnsel round list).", min=1)]


def deprecated(old: str, new: str) -> None:
    """One line on stderr: an old spelling still works for one release."""
    err_console.print(f"warning: {old} is deprecated and goes in the next release; use {new}", markup=False, highlight=False, soft_wrap=True)


def renamed(old: str, new: str) -> Any:
    """A hidden option under an old spelling of ``new``; ``either`` reads it (one release, one deprecation line)."""
    return typer.Option(old, hidden=True, help=f"Deprecated spelling of {new}.")


def either(new_value: Any, old_value: Any, new_param: str, old: str, new: str) -> Any:
    """The value given under the new spelling or under the old one (``renamed``: one deprecation line on stderr);
    both at once is a usage error."""
    if old_value is None:
        return new_value
    ctx = _click_globals.get_current_context()
    if ctx.get_parameter_source(new_param) is _click_core.ParameterSource.COMMANDLINE:
        raise _click.UsageError(f"{old} is the old spelling of {new}: give {new} only", ctx)
    deprecated(old, new)
    return old_value


def round_number(option: int | None, positional: int | None) -> int:
    """``--round N``, or the deprecated positional ``N`` (one release, one deprecation line); exactly one of them."""
    ctx = _click_globals.get_current_context()
    if positional is not None and option is not None and positional != option:
        raise _click.UsageError(f"round {positional} and --round {option} disagree: give the round once, as --round N", ctx)
    if positional is not None:
        deprecated(f"`{ctx.command_path} {positional}`", f"`{ctx.command_path} --round {positional}`")
        return positional
    if option is None:
        raise _click.UsageError("Missing option '--round'", ctx)
    return option


__all__ = [
    "DEVICE_CHOICES", "DEVICE_HELP", "DeviceParser", "device_option", "DeviceOpt", "RoundOpt", "deprecated", "renamed", "either", "round_number",
    "console", "err_console", "ConfigOpt", "UriOpt", "TokenOpt", "NamespaceOpt", "JsonOpt", "ProgressFn",
    "get_config", "handle_errors", "fail", "print_json", "OneLineErrors", "show_progress", "progress_bar", "progress_session", "RateColumn", "StoreError",
]
