"""Reading and validating precomputed vector files for ``hnsel ingest`` (Parquet or JSONL).

Files are streamed twice: one pass validates everything (so a bad file writes nothing), a second pass
yields normalised batches to write. Memory is one batch plus the set of ids seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import InputError
from .tables import iter_jsonl

__all__ = ["VectorFile", "FileSummary", "iter_batches", "validate_file", "POOLS", "ID_MAX_LENGTH"]

POOLS = ("paired", "unpaired")
ID_MAX_LENGTH = 512
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
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:
        raise InputError(f"not a readable Parquet file ({exc})", path=path) from None
    for batch in parquet.iter_batches(batch_size=batch_rows):
        yield batch.to_pydict()


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
    reader = _parquet_batches if vf.format == "parquet" else _jsonl_batches
    if not vf.path.is_file():
        raise InputError("file not found", path=vf.path)
    first = 1
    for columns in reader(vf.path, batch_rows):
        n = len(next(iter(columns.values()))) if columns else 0
        yield first, columns
        first += n


def _vectors(vf: VectorFile, first: int, values: list, dim: int | None) -> np.ndarray:
    for offset, v in enumerate(values):
        if not isinstance(v, (list, tuple, np.ndarray)) or len(v) == 0:
            raise InputError("vector must be a non-empty list of numbers", path=vf.path, row=first + offset)
        if dim is not None and len(v) != dim:
            raise InputError(f"vector has {len(v)} dimensions, expected {dim} like the rows before", path=vf.path, row=first + offset)
        dim = len(v)
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        bad = next(i for i, v in enumerate(values) if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v))
        raise InputError("vector holds a value that is not a number", path=vf.path, row=first + bad) from None
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        raise InputError("vector holds NaN or infinite values", path=vf.path, row=first + int(np.argmin(finite)))
    norms = np.linalg.norm(array, axis=1)
    if (norms == 0).any():
        raise InputError("vector is all zeros and cannot be normalised", path=vf.path, row=first + int(np.argmin(norms)))
    return (array / norms[:, None]).astype(np.float32)


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
    if len(id_) > ID_MAX_LENGTH:
        raise InputError(f"id is {len(id_)} characters; at most {ID_MAX_LENGTH}", path=vf.path, row=row)
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


def normalised_batches(vf: VectorFile, batch_rows: int = 8192) -> Iterator[dict[str, Any]]:
    """The validated file as columns ready for ``Store.upsert`` (unit vectors, empty strings for absent fields)."""
    for first, columns in iter_batches(vf, batch_rows):
        n = len(columns["id"])
        data: dict[str, Any] = {"id": columns["id"], "vector": _vectors(vf, first, columns["vector"], None), "pool": columns["pool"]}
        for name in OPTIONAL[vf.kind]:
            data[name] = [v or "" for v in columns.get(name, [None] * n)]
        yield data
