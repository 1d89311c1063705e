"""Reading and validating precomputed vector files for ``hnsel ingest`` (Parquet or JSONL).

Files are streamed twice: one pass validates everything (so a bad file writes nothing), a second pass
yields normalised batches to write. Memory is one batch plus the set of ids seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import InputError
from ..schema import text_problem
from ..tables import check_input_file, iter_jsonl, open_parquet
from ..schema import POOLS

__all__ = ["VectorFile", "FileSummary", "iter_batches", "validate_file", "unit_rows"]

REQUIRED = {"images": ("id", "vector", "pool"), "texts": ("id", "vector", "pool")}
OPTIONAL = {"images": ("uri",), "texts": ("image_id", "text")}


@dataclass(frozen=True)
class VectorFile:
    path: Path
    kind: str  # "images" or "texts"

    @property
    def format(self) -> str:
        suffix = self.path.suffix.lower()
        if suffix in (".parquet", ".pq"):
            return "parquet"
        if suffix in (".jsonl", ".ndjson", ".json"):
            return "jsonl"
        raise InputError(f"unknown file type {suffix!r}; use .parquet or .jsonl", path=self.path)


@dataclass
class FileSummary:
    rows: int = 0
    dim: int | None = None
    paired_ids: set[str] = field(default_factory=set)
    unpaired_ids: set[str] = field(default_factory=set)
    image_ids: dict[str, int] = field(default_factory=dict)  # texts: paired image_id -> first row naming it


def _parquet_batches(path: Path, batch_rows: int) -> Iterator[dict[str, list]]:
    parquet = open_parquet(path)  # duplicate column names refused: never "the last one wins"
    _check_parquet_vector_type(path, parquet.schema_arrow)
    for batch in parquet.iter_batches(batch_size=batch_rows):
        yield batch.to_pydict()


def _check_parquet_vector_type(path: Path, schema) -> None:
    """The vector column is a list of integers or floats (not strings, booleans or decimals): checked once per file."""
    import pyarrow as pa

    if "vector" not in schema.names:
        return
    kind = schema.field("vector").type
    value = getattr(kind, "value_type", None)
    if value is None or not (pa.types.is_floating(value) or pa.types.is_integer(value)):
        raise InputError(f"column vector is {kind}; it must be a list of floats", path=path)


def _jsonl_batches(path: Path, batch_rows: int) -> Iterator[dict[str, list]]:
    rows: list[dict] = []
    for _, row in iter_jsonl(path):
        rows.append(row)
        if len(rows) == batch_rows:
            yield _columns(rows)
            rows = []
    if rows:
        yield _columns(rows)


def _columns(rows: list[dict]) -> dict[str, list]:
    names = {k for row in rows for k in row}
    return {name: [row.get(name) for row in rows] for name in names}


def iter_batches(vf: VectorFile, batch_rows: int = 8192) -> Iterator[tuple[int, dict[str, list]]]:
    """(first row number, columns) per batch; row numbers count from 1 as a person would."""
    if vf.path.exists():
        check_input_file(vf.path)  # a folder, a FIFO or a device (/dev/zero) says what it is, whatever its name
    reader = _parquet_batches if vf.format == "parquet" else _jsonl_batches
    check_input_file(vf.path)
    first = 1
    for columns in reader(vf.path, batch_rows):
        n = len(next(iter(columns.values()))) if columns else 0
        yield first, columns
        first += n


_NUMBER = (int, float)  # exact types: bool (an int subclass), strings and None are refused


def _vectors(vf: VectorFile, first: int, values: list, dim: int | None) -> np.ndarray:
    typed = vf.format == "parquet"  # Parquet's column type was checked once; JSON values are checked one by one
    for offset, v in enumerate(values):
        if not isinstance(v, (list, tuple, np.ndarray)) or len(v) == 0:
            raise InputError("vector must be a non-empty list of numbers", path=vf.path, row=first + offset)
        if dim is not None and len(v) != dim:
            raise InputError(f"vector has {len(v)} dimensions, expected {dim} like the rows before", path=vf.path, row=first + offset)
        if not typed and not all(type(x) in _NUMBER for x in v):
            bad = next(x for x in v if type(x) not in _NUMBER)
            raise InputError(f"vector holds a value that is not a number ({bad!r})", path=vf.path, row=first + offset)
        dim = len(v)
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise InputError("vector holds a value that is not a number", path=vf.path, row=first) from None
    unit, bad = unit_rows(array)
    if bad is not None:
        raise InputError(bad[1], path=vf.path, row=first + bad[0])
    return unit


def unit_rows(array: np.ndarray) -> tuple[np.ndarray, tuple[int, str] | None]:
    """Rows scaled to unit L2 norm in float64, returned as float32; or (index, why) of the first row that cannot be.

    Each row is divided by its largest magnitude before its norm is taken, so ``[1e200] * 32`` (whose plain norm
    overflows to inf) and ``[1e-300] * 32`` (whose squares underflow to 0) normalise correctly.
    """
    array = np.asarray(array, dtype=np.float64)
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        return array.astype(np.float32), (int(np.argmin(finite)), "vector holds NaN or infinite values")
    scale = np.abs(array).max(axis=1) if array.size else np.zeros(len(array))
    if (scale == 0).any():
        return array.astype(np.float32), (int(np.argmin(scale)), "vector is all zeros and cannot be normalised")
    scaled = array / scale[:, None]
    return (scaled / np.linalg.norm(scaled, axis=1)[:, None]).astype(np.float32), None


def _check_columns(vf: VectorFile, columns: dict[str, list]) -> None:
    missing = [c for c in REQUIRED[vf.kind] if c not in columns]
    if missing:
        raise InputError(f"missing column(s) {missing}; {vf.kind} files need {list(REQUIRED[vf.kind])} and may have {list(OPTIONAL[vf.kind])}", path=vf.path)


def validate_file(vf: VectorFile, dim: int | None = None) -> FileSummary:
    """Check every row; raise ``InputError`` naming the file and row of the first problem.

    ``dim`` is what the store (or an earlier file) already holds: a file of another dimension is refused.
    """
    summary = FileSummary()
    seen: set[str] = set()
    for first, columns in iter_batches(vf):
        _check_columns(vf, columns)
        vectors = _vectors(vf, first, columns["vector"], summary.dim)
        if summary.dim is None and dim is not None and vectors.shape[1] != dim:
            raise InputError(f"vectors have {vectors.shape[1]} dimensions but the store holds {dim}; use the same model or another --namespace", path=vf.path, row=1)
        summary.dim = vectors.shape[1]
        for offset, (id_, pool) in enumerate(zip(columns["id"], columns["pool"])):
            row = first + offset
            _check_row(vf, row, id_, pool, columns, offset, seen, summary)
        summary.rows += len(vectors)
    if summary.rows == 0:
        raise InputError("the file holds no rows", path=vf.path)
    return summary


def _check_row(vf: VectorFile, row: int, id_: Any, pool: Any, columns: dict, offset: int, seen: set, summary: FileSummary) -> None:
    if not isinstance(id_, str) or not id_.strip():
        raise InputError(f"id must be a non-empty string, got {id_!r}", path=vf.path, row=row)
    problem = text_problem("id", id_)
    if problem:
        raise InputError(f"{problem} (id {id_[:60]!r})", path=vf.path, row=row)
    if id_ in seen:
        raise InputError(f"duplicate id {id_!r}; each id may appear once per file", path=vf.path, row=row)
    seen.add(id_)
    if pool not in POOLS:
        raise InputError(f"pool must be 'paired' or 'unpaired', got {pool!r}", path=vf.path, row=row)
    (summary.paired_ids if pool == "paired" else summary.unpaired_ids).add(id_)
    if vf.kind == "texts" and pool == "paired":
        image_id = columns.get("image_id", [None] * (offset + 1))[offset]
        if not isinstance(image_id, str) or not image_id:
            raise InputError(f"paired text {id_!r} needs an image_id naming its paired image", path=vf.path, row=row)
        summary.image_ids.setdefault(image_id, row)
    for name in OPTIONAL[vf.kind]:
        value = columns.get(name, [None] * (offset + 1))[offset]
        if value is not None and not isinstance(value, str):
            raise InputError(f"{name} must be a string, got {type(value).__name__}", path=vf.path, row=row)
        problem = text_problem(name, value) if value else None
        if problem:  # checked here, so Milvus never refuses a row after earlier rows were written
            raise InputError(f"{problem} (id {id_[:60]!r})", path=vf.path, row=row)


def normalised_batches(vf: VectorFile, batch_rows: int = 8192) -> Iterator[dict[str, Any]]:
    """The validated file as columns ready for ``Store.upsert``: unit vectors, and None where a row has no optional
    field (no such column, or null), so ``Store.upsert`` keeps the stored value of that row (``""`` for a new one)."""
    for first, columns in iter_batches(vf, batch_rows):
        n = len(columns["id"])
        data: dict[str, Any] = {"id": columns["id"], "vector": _vectors(vf, first, columns["vector"], None), "pool": columns["pool"]}
        for name in OPTIONAL[vf.kind]:
            data[name] = list(columns.get(name, [None] * n))
        yield data
