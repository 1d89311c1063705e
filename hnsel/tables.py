"""Writing and reading small tables (selections, exports) as CSV, JSONL or Parquet, chosen by extension.

Writes are atomic: a temporary file beside the target is renamed over it, so an interrupted run never
leaves half a file where a user expects a whole one; a failed write (a full disk) is one line naming the target.

CSV files are for people, who open them in spreadsheets: a text cell that a spreadsheet would run as a formula
(starting with ``= + - @``, a tab or a carriage return) is written with a ``'`` in front (OWASP's rule), and so is a
cell that itself starts with ``'``, so ``unescape_cell`` gives back the exact text (``read_csv_rows(unescape=True)``).
"""

from __future__ import annotations

import csv
import errno
import json
import math
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from .errors import HnselError, InputError

__all__ = ["write_table", "write_text_atomic", "table_format", "check_table_path", "iter_jsonl", "read_csv_rows", "FORMATS",
           "escape_cell", "unescape_cell", "check_unique_columns", "open_parquet", "check_input_file", "write_failed", "FULL_DISK"]

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


def table_format(path: Path) -> str:
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise InputError(f"unknown output type {Path(path).suffix!r}; use .csv, .jsonl or .parquet", path=path)
    return fmt


def check_table_path(path: str | os.PathLike) -> str:
    """The table format of ``path`` (by extension), refusing a bad extension, a missing folder or a target that is
    not a file (a folder named ``x.csv``) before any work."""
    path = Path(path)
    fmt = table_format(path)
    _check_target(path)
    return fmt


def _check_target(path: Path) -> None:
    if not path.parent.exists():
        raise InputError(f"folder {path.parent} does not exist; create it first", path=path)
    if path.is_dir():
        raise InputError("is a folder; name a file to write (or another path)", path=path)


FULL_DISK = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # what a write into a full disk (or quota) raises


def write_failed(path: str | os.PathLike, exc: OSError) -> HnselError:
    """The one-line error for a write to ``path`` that failed (the disk full, no permission): it names the target, never
    a temporary file, and says that the target was left as it was."""
    reasons = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded", errno.EFBIG: "the file is too large"}
    why = reasons.get(exc.errno or 0, exc.strerror or str(exc))
    return HnselError(f"{path}: cannot write it ({why}); nothing was written there (an older file is kept as it was); "
                      "free space or choose another place and run again")


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file renamed over it."""
    path = Path(path)
    _check_target(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise write_failed(path, exc) from None
    finally:
        if tmp is not None and os.path.lexists(tmp):
            os.unlink(tmp)
    return path


def write_table(path: str | os.PathLike, columns: Mapping[str, Sequence[Any]]) -> Path:
    """Write ``columns`` (equal-length sequences) to ``path``; returns the path. CSV text cells are escaped (``escape_cell``)."""
    path = Path(path)
    fmt = check_table_path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        _write_rows(tmp, fmt, columns)
        os.replace(tmp, path)
    except OSError as exc:  # pyarrow's IO errors are OSErrors too
        raise write_failed(path, exc) from None
    finally:
        if tmp is not None and os.path.lexists(tmp):
            os.unlink(tmp)
    return path


def _write_rows(tmp: str, fmt: str, columns: Mapping[str, Sequence[Any]]) -> None:
    names = list(columns)
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({k: list(v) for k, v in columns.items()}), tmp)
        return
    with open(tmp, "w", encoding="utf-8", newline="") as handle:
        if fmt == "csv":
            writer = csv.writer(handle)
            writer.writerow([escape_cell(k) for k in names])
            writer.writerows([escape_cell(v) for v in row] for row in zip(*(columns[k] for k in names)))
        else:
            for i in range(len(columns[names[0]]) if names else 0):
                handle.write(json.dumps({k: _plain(columns[k][i]) for k in names}) + "\n")


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # OWASP's list: a spreadsheet may run a cell starting so as a formula
_ESCAPED_START = _FORMULA_START + ("'",)  # and the escape character itself, so escaping can be undone exactly


def escape_cell(value: Any) -> Any:
    """A text cell a spreadsheet would read as a formula, or one starting with ``'``, with ``'`` in front; other values as they are."""
    return "'" + value if isinstance(value, str) and value.startswith(_ESCAPED_START) else value


def unescape_cell(value: str) -> str:
    """The inverse of ``escape_cell``: ``'`` is removed only before what ``escape_cell`` escapes (``'=x`` -> ``=x``,
    ``''x`` -> ``'x``); any other text (``'x``, typed by hand) is kept as it is."""
    return value[1:] if value.startswith("'") and value[1:].startswith(_ESCAPED_START) else value


def check_unique_columns(names: Sequence[str], path: str | os.PathLike) -> None:
    """Refuse a table with two columns of one name: a reader would silently use one of them."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InputError(f"two columns are named {name!r}; rename or drop one, so it is clear which holds the values", path=path)
        seen.add(name)


def open_parquet(path: str | os.PathLike):
    """A ``pyarrow.parquet.ParquetFile``, refusing a damaged file or duplicate column names in one line."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise InputError(f"not a readable Parquet file ({' '.join(str(exc).split())[:200]})", path=path) from None
    check_unique_columns(parquet.schema_arrow.names, path)
    return parquet


def check_input_file(path: str | os.PathLike, what: str = "file") -> Path:
    """``path`` if it is a regular file (or a link to one); else a one-line error saying what it is instead."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InputError(f"{what} not found", path=path) from None
    except OSError as exc:
        raise InputError(f"cannot read this {what} ({exc.strerror})", path=path) from None
    if stat.S_ISREG(mode):
        return path
    kind = ("a folder" if stat.S_ISDIR(mode) else "a named pipe (FIFO)" if stat.S_ISFIFO(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "something else")
    raise InputError(f"is {kind}, not a regular file; pass the {what} itself", path=path)


def _plain(value: Any) -> Any:
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and not math.isfinite(value) else value  # JSON has no NaN or Infinity


def decode_line(raw: bytes, path: str | os.PathLike, number: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"line {number} is not UTF-8 text (byte {exc.start + 1}: {raw[exc.start:exc.start + 1]!r}); "
                         "save the file as UTF-8", path=path) from None


def read_csv_rows(path: str | os.PathLike, check_header: Callable[[list[str]], None] | None = None,
                  unescape: bool = False) -> Iterator[tuple[int, dict]]:
    """(row number, row) per data row of a UTF-8 CSV file (a byte-order mark dropped, names stripped), streamed.
    ``check_header`` sees the column names first. Text that is not UTF-8, a row with more values than the
    header, or two columns of one name, is a one-line error naming the row. ``unescape``: the file is one hnsel wrote
    for people (``write_table``): its cells are read back through ``unescape_cell``."""
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        number = 0
        undo = unescape_cell if unescape else (lambda v: v)
        try:
            header = [undo(c.strip()) for c in reader.fieldnames or []]
            check_unique_columns(header, path)
            if check_header is not None:
                check_header(header)
            for number, row in enumerate(reader, start=1):
                if None in row:
                    raise InputError("more values than header columns", path=path, row=number)
                yield number, {name: undo(v) if isinstance(v, str) else v for name, v in zip(header, row.values())}
        except UnicodeDecodeError as exc:
            raise InputError(f"not UTF-8 text (byte {exc.object[exc.start:exc.start + 1]!r} near data row {number + 1}); save the file as UTF-8",
                             path=path) from None


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSON-lines file; a bad line is a one-line error.
    UTF-8, with or without a byte-order mark; other encodings are refused naming the line."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            line = decode_line(raw[3:] if number == 1 and raw.startswith(b"\xef\xbb\xbf") else raw, path, number)
            if not line.strip():
                continue
            try:
                row = json.loads(line, object_pairs_hook=_unique_keys)
            except json.JSONDecodeError as exc:
                raise InputError(f"not valid JSON ({exc.msg})", path=path, row=number) from None
            except ValueError as exc:  # a key given twice, or an integer of more digits than Python converts (4,300)
                raise InputError(f"not usable JSON ({' '.join(str(exc).split())[:200]})", path=path, row=number) from None
            if not isinstance(row, dict):
                raise InputError("each line must be a JSON object", path=path, row=number)
            yield number, row


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    out = dict(pairs)
    if len(out) < len(pairs):
        twice = next(k for i, (k, _) in enumerate(pairs) if any(k == j for j, _ in pairs[:i]))
        raise ValueError(f"key {twice!r} is given twice in one object; keep one")
    return out
