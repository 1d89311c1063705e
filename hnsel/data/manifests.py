"""Manifests: CSV, JSONL or Parquet tables with ``id``, ``uri`` and optional ``caption``, ``image_id``, ``pool``.

A row with a ``uri`` is an image (id = image id); its ``caption``, when present, is one of its captions
(text id ``{id}#{k}``; repeat the row to give more). A row without ``uri`` is a caption (id = text id):
with ``image_id`` it is a caption of that image, without it an unpaired text. Relative local URIs are
resolved against ``images_dir``, or else the manifest's folder. Rows are numbered from 1 (data rows).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

from ..errors import InputError
from ..tables import iter_jsonl, read_csv_rows
from .records import Dataset, ImageRecord, TextRecord
from .images import is_remote
from ..schema import POOLS

__all__ = ["read_manifest", "MANIFEST_SUFFIXES", "REQUIRED_COLUMNS", "OPTIONAL_COLUMNS"]

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".parquet")
REQUIRED_COLUMNS = ("id", "uri")
OPTIONAL_COLUMNS = ("caption", "image_id", "pool")


def read_manifest(path: str | os.PathLike, images_dir: str | os.PathLike | None = None) -> Dataset:
    """Read a whole manifest; any malformed row raises ``InputError`` naming the file and row."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise InputError(f"unknown manifest type {suffix!r}; use .csv, .jsonl or .parquet", path=path)
    if not path.is_file():
        raise InputError("manifest not found", path=path)
    rows = {".csv": _csv_rows, ".jsonl": _jsonl_rows, ".parquet": _parquet_rows}[suffix](path)
    builder = _Builder(path, Path(images_dir) if images_dir is not None else path.parent)
    for number, row in enumerate(rows, start=1):
        builder.add(row, number)
    return builder.finish()


def _check_columns(path: Path, columns: list[str]) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise InputError(
            f"manifest lacks column(s) {missing} (found {columns}); it needs {list(REQUIRED_COLUMNS)} and may have {list(OPTIONAL_COLUMNS)}",
            path=path,
        )


def _csv_rows(path: Path) -> Iterator[dict[str, Any]]:
    for _, row in read_csv_rows(path, lambda header: _check_columns(path, header)):
        yield row


def _jsonl_rows(path: Path) -> Iterator[dict[str, Any]]:
    first = True
    for _, row in iter_jsonl(path):
        if first:
            _check_columns(path, list(row))
            first = False
        yield row


def _parquet_rows(path: Path) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except Exception as exc:
        raise InputError(f"not a readable Parquet file ({exc})", path=path) from None
    _check_columns(path, list(file.schema_arrow.names))
    for batch in file.iter_batches(batch_size=65536):
        yield from batch.to_pylist()


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):  # None or NaN
        return ""
    return str(value).strip()


def _id(value: Any) -> str:
    """An id as written (never stripped: ``cat`` and ``cat `` are two ids); None or NaN is no id."""
    return "" if value is None or (isinstance(value, float) and value != value) else str(value)


class _Builder:
    """Collects rows into records, checking ids, pools and references as it goes."""

    def __init__(self, path: Path, base: Path):
        self.path, self.base = path, base
        self.images: dict[str, dict[str, Any]] = {}
        self.attached: list[tuple[str, str, str, int]] = []  # (text id, image id, caption, row)
        self.texts: list[TextRecord] = []
        self.text_ids: set[str] = set()

    def add(self, row: dict[str, Any], number: int) -> None:
        rid, uri, caption = _id(row.get("id")), _text(row.get("uri")), _text(row.get("caption"))
        image_id, pool = _id(row.get("image_id")), _text(row.get("pool")).lower()
        if not rid:
            raise InputError("empty id; every row needs an id", path=self.path, row=number)
        if pool and pool not in POOLS:
            raise InputError(f"pool {pool!r} is not 'paired' or 'unpaired'", path=self.path, row=number)
        if uri:
            self._add_image(rid, self._resolve(uri), caption, pool or None, number)
        elif caption:
            self._claim_text_id(rid, number)
            if image_id:
                self.attached.append((rid, image_id, caption, number))
            else:
                self.texts.append(TextRecord(rid, caption, None, pool or None))
        else:
            raise InputError(f"id {rid!r} has neither uri nor caption", path=self.path, row=number)

    def _resolve(self, uri: str) -> str:
        if is_remote(uri) or uri.startswith("file://") or os.path.isabs(uri):
            return uri
        return os.path.abspath(self.base / uri)

    def _claim_text_id(self, text_id: str, number: int) -> None:
        if text_id in self.text_ids:
            raise InputError(f"caption id {text_id!r} appears twice", path=self.path, row=number)
        self.text_ids.add(text_id)

    def _add_image(self, rid: str, uri: str, caption: str, pool: str | None, number: int) -> None:
        entry = self.images.setdefault(rid, {"uri": uri, "captions": [], "ids": [], "pool": pool})
        if entry["uri"] != uri:
            raise InputError(f"id {rid!r} appears twice with different uris ({entry['uri']} and {uri})", path=self.path, row=number)
        if pool and entry["pool"] and pool != entry["pool"]:
            raise InputError(f"id {rid!r} is given pools {entry['pool']!r} and {pool!r}", path=self.path, row=number)
        entry["pool"] = entry["pool"] or pool
        if caption:
            text_id = f"{rid}#{len(entry['captions'])}"
            self._claim_text_id(text_id, number)
            entry["captions"].append(caption)
            entry["ids"].append(text_id)

    def finish(self) -> Dataset:
        for text_id, image_id, caption, number in self.attached:
            if image_id not in self.images:
                raise InputError(f"caption {text_id!r} names image_id {image_id!r}, which no row with a uri defines", path=self.path, row=number)
            self.images[image_id]["captions"].append(caption)
            self.images[image_id]["ids"].append(text_id)
        images = [
            ImageRecord(rid, e["uri"], tuple(e["captions"]), tuple(e["ids"]), None, e["pool"])
            for rid, e in self.images.items()
        ]
        return Dataset(images, self.texts, str(self.path))
