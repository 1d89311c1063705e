"""Writing and reading small tables (selections, exports) as CSV, JSONL or Parquet, chosen by extension.

Writes are atomic: a temporary file beside the target is renamed over it, so an interrupted run never
leaves half a file where a user expects a whole one.
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from .errors import InputError

__all__ = ["write_table", "write_text_atomic", "table_format", "check_table_path", "iter_jsonl", "read_csv_rows", "FORMATS"]

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


def table_format(path: Path) -> str:
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise InputError(f"unknown output type {Path(path).suffix!r}; use .csv, .jsonl or .parquet", path=path)
    return fmt


def check_table_path(path: str | os.PathLike) -> str:
    """The table format of ``path`` (by extension), refusing a bad extension or a missing folder before any work."""
    path = Path(path)
    fmt = table_format(path)
    if not path.parent.exists():
        raise InputError(f"folder {path.parent} does not exist; create it first", path=path)
    return fmt


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file renamed over it."""
    path = Path(path)
    if not path.parent.exists():
        raise InputError(f"folder {path.parent} does not exist; create it first", path=path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_table(path: str | os.PathLike, columns: Mapping[str, Sequence[Any]]) -> Path:
    """Write ``columns`` (equal-length sequences) to ``path``; returns the path."""
    path = Path(path)
    fmt = check_table_path(path)
    names = list(columns)
    n = len(columns[names[0]]) if names else 0
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        if fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table({k: list(v) for k, v in columns.items()}), tmp)
        else:
            with open(tmp, "w", encoding="utf-8", newline="") as handle:
                if fmt == "csv":
                    writer = csv.writer(handle)
                    writer.writerow(names)
                    writer.writerows(zip(*(columns[k] for k in names)))
                else:
                    for i in range(n):
                        handle.write(json.dumps({k: _plain(columns[k][i]) for k in names}) + "\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _plain(value: Any) -> Any:
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and not math.isfinite(value) else value  # JSON has no NaN or Infinity


def decode_line(raw: bytes, path: str | os.PathLike, number: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"line {number} is not UTF-8 text (byte {exc.start + 1}: {raw[exc.start:exc.start + 1]!r}); "
                         "save the file as UTF-8", path=path) from None


def read_csv_rows(path: str | os.PathLike, check_header: Callable[[list[str]], None] | None = None) -> Iterator[tuple[int, dict]]:
    """(row number, row) per data row of a UTF-8 CSV file (a byte-order mark dropped, names stripped), streamed.
    ``check_header`` sees the column names first. Text that is not UTF-8, or a row with more values than the
    header, is a one-line error naming the row."""
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        number = 0
        try:
            header = [c.strip() for c in reader.fieldnames or []]
            if check_header is not None:
                check_header(header)
            for number, row in enumerate(reader, start=1):
                if None in row:
                    raise InputError("more values than header columns", path=path, row=number)
                yield number, {(k or "").strip(): v for k, v in row.items()}
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
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"not valid JSON ({exc.msg})", path=path, row=number) from None
            if not isinstance(row, dict):
                raise InputError("each line must be a JSON object", path=path, row=number)
            yield number, row
