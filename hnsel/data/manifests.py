"""Manifests: CSV, JSONL or Parquet tables with ``id``, ``uri`` and optional ``caption``, ``image_id``, ``pool``, ``split``.

A row with a ``uri`` is an image (id = image id); its ``caption``, when present, is one of its captions
(text id ``{id}#{k}``; repeat the row to give more). A row without ``uri`` is a caption (id = text id):
with ``image_id`` it is a caption of that image, without it an unpaired text. Relative local URIs are
resolved against ``images_dir``, or else the manifest's folder. Rows are numbered from 1 (data rows).

A user's own file maps its columns (``id_column``, ``uri_column``, ``caption_column``: the CLI's ``--id-column``,
``--uri-column``, ``--caption-column``). Without an id column, every row names an image and its id is the image's
path relative to the images folder (``images_dir``, else the manifest's folder), with ``/`` separators: the rule
the folder reader uses, so a folder and a manifest of the same photos give the same ids. A row without a caption
adds no caption; an image no row captions is unpaired.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import InputError
from ..tables import iter_jsonl, open_parquet, read_csv_rows
from .records import Dataset, ImageRecord, TextRecord
from .images import is_remote
from ..schema import POOLS

__all__ = ["read_manifest", "ManifestColumns", "MANIFEST_SUFFIXES", "REQUIRED_COLUMNS", "OPTIONAL_COLUMNS", "COLUMN_FLAGS"]

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".parquet")
REQUIRED_COLUMNS = ("id", "uri")
OPTIONAL_COLUMNS = ("caption", "image_id", "pool", "split")
COLUMN_FLAGS = {"id": "--id-column", "uri": "--uri-column", "caption": "--caption-column"}
# Names a user's file often gives its image paths: only named in the error's suggestion, never guessed silently.
URI_LIKE = ("filename", "file_name", "file", "path", "image", "image_path", "img", "url", "image_url", "photo")


@dataclass(frozen=True)
class ManifestColumns:
    """Which column holds each part of a row; None: the default name (``id``, ``uri``, ``caption``) when present."""

    id: str | None = None
    uri: str | None = None
    caption: str | None = None

    def given(self) -> dict[str, str]:
        """The flags a user gave, flag -> column."""
        return {COLUMN_FLAGS[role]: name for role, name in vars(self).items() if name}


def read_manifest(path: str | os.PathLike, images_dir: str | os.PathLike | None = None, *, id_column: str | None = None,
                  uri_column: str | None = None, caption_column: str | None = None) -> Dataset:
    """Read a whole manifest; any malformed row raises ``InputError`` naming the file and row. ``*_column``: the
    columns of a user's own file (module docstring)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise InputError(f"unknown manifest type {suffix!r}; use .csv, .jsonl or .parquet", path=path)
    if not path.is_file():
        raise InputError("manifest not found", path=path)
    wanted = ManifestColumns(id_column, uri_column, caption_column)
    mapping: dict[str, str | None] = {}

    def check(columns: list[str]) -> None:
        mapping.update(_map_columns(path, columns, wanted))

    rows = {".csv": _csv_rows, ".jsonl": _jsonl_rows, ".parquet": _parquet_rows}[suffix](path, check)
    builder = _Builder(path, Path(images_dir) if images_dir is not None else path.parent, mapping)
    for number, row in enumerate(rows, start=1):
        builder.add(row, number)
    return builder.finish()


def _map_columns(path: Path, columns: list[str], wanted: ManifestColumns) -> dict[str, str | None]:
    """role -> column name (None: absent); a named column the file lacks, or no image column, is one line naming the
    file's columns and the flags to use."""
    for flag, name in wanted.given().items():
        if name not in columns:
            raise InputError(f"{flag} {name!r}: the manifest has no such column (its columns: {', '.join(columns) or 'none'})", path=path)
    mapping = {role: getattr(wanted, role) or (role if role in columns else None) for role in COLUMN_FLAGS}
    mapping.update({role: role if role in columns else None for role in ("image_id", "pool", "split")})
    if mapping["uri"] is None:
        guess = next((c for c in columns if c.lower() in URI_LIKE), None) or next((c for c in columns if c != mapping["id"]), "COLUMN")
        id_hint = "" if mapping["id"] else (", and --id-column for the ids (without one, an image's id is its path relative to "
                                            "--images-dir, as for a folder)")
        raise InputError(f"manifest has no 'uri' column of image paths (its columns: {', '.join(columns) or 'none'}); name it with "
                         f"--uri-column, e.g. --uri-column {guess}{id_hint}; captions come from 'caption' or --caption-column", path=path)
    return mapping


def _csv_rows(path: Path, check: Callable[[list[str]], None]) -> Iterator[dict[str, Any]]:
    for _, row in read_csv_rows(path, check):
        yield row


def _jsonl_rows(path: Path, check: Callable[[list[str]], None]) -> Iterator[dict[str, Any]]:
    first = True
    for _, row in iter_jsonl(path):
        if first:
            check(list(row))
            first = False
        yield row


def _parquet_rows(path: Path, check: Callable[[list[str]], None]) -> Iterator[dict[str, Any]]:
    file = open_parquet(path)  # duplicate column names refused
    check(list(file.schema_arrow.names))
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

    def __init__(self, path: Path, base: Path, columns: dict[str, str | None]):
        self.path, self.base, self.columns = path, base, columns
        self.images: dict[str, dict[str, Any]] = {}
        self.attached: list[tuple[str, str, str, int]] = []  # (text id, image id, caption, row)
        self.texts: list[TextRecord] = []
        self.text_ids: set[str] = set()

    def _cell(self, row: dict[str, Any], role: str) -> str:
        name = self.columns.get(role)
        if not name:
            return ""
        return _id(row.get(name)) if role in ("id", "image_id") else _text(row.get(name))

    def add(self, row: dict[str, Any], number: int) -> None:
        caption_column = self.columns.get("caption")
        if caption_column and not isinstance(row.get(caption_column), (str, int, float, type(None))):
            return self._add_each(row, caption_column, number)  # a JSON or Parquet list: each a caption
        rid, uri, caption = self._cell(row, "id"), self._cell(row, "uri"), self._cell(row, "caption")
        image_id, pool, split = self._cell(row, "image_id"), self._cell(row, "pool").lower(), self._cell(row, "split")
        if self.columns["id"] is None:
            if not uri:
                raise InputError(f"no image path in column {self.columns['uri']!r}; without an id column (--id-column) every row names an image",
                                 path=self.path, row=number)
            rid = self._path_id(uri)
        if not rid:
            raise InputError("empty id; every row needs an id", path=self.path, row=number)
        if pool and pool not in POOLS:
            raise InputError(f"pool {pool!r} is not 'paired' or 'unpaired'", path=self.path, row=number)
        if uri:
            self._add_image(rid, self._resolve(uri), caption, pool or None, number, split or None)
        elif caption:
            self._claim_text_id(rid, number)
            if image_id:
                self.attached.append((rid, image_id, caption, number))
            else:
                self.texts.append(TextRecord(rid, caption, None, pool or None))
        else:
            raise InputError(f"id {rid!r} has neither uri nor caption", path=self.path, row=number)

    def _add_each(self, row: dict[str, Any], caption_column: str, number: int) -> None:
        """An image row whose caption is a list: one caption per item, as if the row were repeated; anything else is refused."""
        captions = row[caption_column]
        if not isinstance(captions, (list, tuple)) or not all(isinstance(c, str) for c in captions):
            raise InputError(f"caption is {type(captions).__name__}; give a text, or a list of texts for several captions",
                             path=self.path, row=number)
        if not self._cell(row, "uri"):
            raise InputError("a caption row (no uri) holds one caption, its id being that caption's id: give one row per caption",
                             path=self.path, row=number)
        for caption in captions or [None]:
            self.add(dict(row, **{caption_column: caption}), number)

    def _path_id(self, uri: str) -> str:
        """An image's id without an id column: its path relative to the images folder ('/' separators), as the folder
        reader's; a URL, or a file outside the folder, keeps the uri as written."""
        if is_remote(uri):
            return uri
        local = Path(os.path.abspath(self.base / uri.removeprefix("file://")))
        try:
            return local.relative_to(os.path.abspath(self.base)).as_posix()
        except ValueError:
            return uri

    def _resolve(self, uri: str) -> str:
        if is_remote(uri) or uri.startswith("file://") or os.path.isabs(uri):
            return uri
        return os.path.abspath(self.base / uri)

    def _claim_text_id(self, text_id: str, number: int) -> None:
        if text_id in self.text_ids:
            raise InputError(f"caption id {text_id!r} appears twice", path=self.path, row=number)
        self.text_ids.add(text_id)

    def _add_image(self, rid: str, uri: str, caption: str, pool: str | None, number: int, split: str | None = None) -> None:
        entry = self.images.setdefault(rid, {"uri": uri, "captions": [], "ids": [], "pool": pool, "split": split})
        if split and entry["split"] and split != entry["split"]:
            raise InputError(f"id {rid!r} is given splits {entry['split']!r} and {split!r}", path=self.path, row=number)
        entry["split"] = entry["split"] or split
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
            ImageRecord(rid, e["uri"], tuple(e["captions"]), tuple(e["ids"]), e["split"], e["pool"])
            for rid, e in self.images.items()
        ]
        return Dataset(images, self.texts, str(self.path))
