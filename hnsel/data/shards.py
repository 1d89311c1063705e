"""Shards of a data lake: WebDataset tar shards and Parquet files holding the image bytes, read as streams.

WebDataset (img2dataset's layout): ``{key}.jpg`` (or .jpeg/.png/.webp), ``{key}.txt`` and ``{key}.json`` per sample,
shards named by a brace pattern (``shards/{00000..00127}.tar``) or a glob, local or any fsspec URL (s3://, gs://...).
A sample's id is its ``__key__`` (or the ``id_field`` of its JSON); its caption the ``.txt`` (or the JSON's
``caption_field``: a string or a list of strings).

Parquet (Hugging Face exports, img2dataset's parquet output): the image column (``image_column``; default ``image``,
else img2dataset's ``jpg``) holds the encoded image, as bytes or Hugging Face's ``{"bytes": ..., "path": ...}`` struct.
Id: the ``id_field`` column, else ``key`` or ``id``, else ``{file name}#{row}``; caption: ``caption_field``, else
``caption`` or ``text``.

``open_shards`` checks every shard before anything is read (the pattern matches, each tar has a tar header, each
Parquet file has the image column) and cuts the work into ``ShardUnit``s: one per tar shard, one per Parquet row
group. ``ShardSource.read(unit)`` streams one unit in batches of records that carry their bytes (``ImageRecord.data``),
so memory is one batch, never a whole shard. A sample that cannot be used (no image, a bad JSON, a paired sample
without caption) and a shard cut short are failures, listed beside the records, never raised. Ids depend only on the
shard's content and name, so a rerun yields the same ids (resume skips the stored ones).
"""

from __future__ import annotations

import json
import os
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Iterator, Sequence

from ..errors import InputError
from ..schema import POOLS
from ..tables import check_unique_columns
from .images import is_remote
from .records import ImageRecord

__all__ = ["SHARD_FORMATS", "TAR_SUFFIXES", "ShardUnit", "ShardBatch", "ShardSource", "open_shards", "expand_pattern",
           "looks_like_shards", "detect_shards", "parquet_image_column"]

SHARD_FORMATS = ("webdataset", "parquet-bytes")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # WebDataset members tried in this order when no image_column is given
IMAGE_COLUMNS = ("image", "jpg")  # Parquet: Hugging Face's, then img2dataset's
ID_COLUMNS = ("key", "id")
CAPTION_COLUMNS = ("caption", "text")
LAKE_HINT = "pip install 'hnsel[lake]'"


@dataclass(frozen=True)
class ShardUnit:
    """One piece of work: a tar shard, or one row group of a Parquet file (``row_offset``: its first row's number)."""

    path: str
    row_group: int | None = None
    row_offset: int = 0
    rows: int | None = None


@dataclass
class ShardBatch:
    """Records read from one unit (their bytes in ``data``), and failures: ``{"id", "uri", "reason"}``."""

    records: list[ImageRecord] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records) + len(self.failures)


def looks_like_shards(source: str | os.PathLike) -> bool:
    """A tar file, a brace pattern or glob of tars or Parquet files, or a remote Parquet URL: ``open_shards``'s
    business, not a manifest's (a folder named with braces stays a folder)."""
    text = str(source)
    low = text.lower()
    pattern = ("{" in text and "}" in text) or any(c in text for c in "*?[")
    return low.endswith(TAR_SUFFIXES) or (low.endswith(".parquet") and (pattern or is_remote(text)))


def detect_shards(source: str | os.PathLike, image_column: str | None = None) -> str | None:
    """``webdataset`` or ``parquet-bytes`` when ``source`` names shards, else None (a folder, a manifest, a JSON).

    A local ``.parquet`` file is ``parquet-bytes`` when an image column holds bytes or ``image_column`` is named
    (``open_shards`` then says what is wrong), else a manifest."""
    text = str(source)
    if looks_like_shards(text):
        return "webdataset" if text.lower().endswith(TAR_SUFFIXES) else "parquet-bytes"
    if text.lower().endswith(".parquet") and os.path.isfile(text):
        if image_column:
            return "parquet-bytes"
        import pyarrow.parquet as pq

        try:
            schema = pq.read_schema(text)
        except Exception:  # not Parquet: the manifest reader says so
            return None
        return "parquet-bytes" if parquet_image_column(schema) is not None else None
    return None


def _fs(path: str):
    try:
        import fsspec
    except ImportError:
        raise InputError(f"shards need fsspec: {LAKE_HINT}", path=path) from None
    try:
        return fsspec.core.url_to_fs(path)
    except ImportError as exc:  # the protocol's own package (s3fs, gcsfs) is missing
        raise InputError(f"cannot open this kind of URL ({exc}); install the fsspec extra for it", path=path) from None


def _open(path: str):
    """A binary file object for a local path or any fsspec URL (streamed, seekable where the protocol allows)."""
    if not is_remote(path):
        return open(path.removeprefix("file://"), "rb")
    fs, inner = _fs(path)
    return fs.open(inner, "rb")


def expand_pattern(pattern: str) -> list[str]:
    """Every shard a pattern names: braces expanded (``{000..127}``, ``{a,b}``), then globs (``*``, ``?``) listed.
    Local paths come back absolute (as the folder reader's uris), so Ray workers started elsewhere find them."""
    try:
        from braceexpand import braceexpand
    except ImportError:
        raise InputError(f"shard patterns need braceexpand (installed with webdataset): {LAKE_HINT}", path=pattern) from None
    paths: list[str] = []
    for item in braceexpand(str(pattern)):
        if not any(c in item for c in "*?["):
            paths.append(item if is_remote(item) else os.path.abspath(item.removeprefix("file://")))
            continue
        fs, inner = _fs(item)
        found = sorted(fs.glob(inner))
        paths.extend(fs.unstrip_protocol(p) if is_remote(item) else os.path.abspath(p) for p in found)
    return list(dict.fromkeys(paths))


def _exists(path: str) -> bool:
    if not is_remote(path):
        return os.path.isfile(path.removeprefix("file://"))
    fs, inner = _fs(path)
    try:
        return bool(fs.isfile(inner))
    except Exception:  # an unreachable bucket reads as missing; the error says which shard
        return False


def _shard_format(paths: Sequence[str], source: str) -> str:
    low = [p.lower() for p in paths]
    if all(p.endswith(TAR_SUFFIXES) for p in low):
        return "webdataset"
    if all(p.endswith(".parquet") for p in low):
        return "parquet-bytes"
    odd = next(p for p, q in zip(paths, low) if not q.endswith((*TAR_SUFFIXES, ".parquet")))
    raise InputError(f"shards must all be WebDataset tars ({', '.join(TAR_SUFFIXES)}) or all Parquet files; {odd!r} is neither", path=source)


def _tar_problem(path: str) -> str | None:
    """Why ``path`` is not a tar shard (None when its first header reads as one)."""
    try:
        with _open(path) as fh:
            head = fh.read(512)
    except Exception as exc:  # missing, permission, network
        return f"cannot read ({type(exc).__name__}: {str(exc)[:200]})"
    if path.lower().endswith((".tar.gz", ".tgz")):
        return None if head[:2] == b"\x1f\x8b" else "not a gzip-compressed tar"
    if len(head) < 512:
        return f"not a tar file ({len(head)} bytes, shorter than one tar header)"
    try:
        tarfile.TarInfo.frombuf(head, "utf-8", "surrogateescape")
    except tarfile.EmptyHeaderError:
        return None  # an empty archive starts with a zero block
    except tarfile.HeaderError:
        return "not a tar file (its first 512 bytes are no tar header)"
    return None


def parquet_image_column(schema: Any, wanted: str | None = None) -> str | None:
    """The column of ``schema`` (a pyarrow schema) that holds image bytes: ``wanted`` if it does, else the first of
    ``image``, ``jpg`` that does; None when none does."""
    for name in ([wanted] if wanted else IMAGE_COLUMNS):
        if name in schema.names and _bytes_kind(schema.field(name).type) is not None:
            return name
    return None


def _bytes_kind(type_: Any) -> str | None:
    import pyarrow as pa

    if pa.types.is_binary(type_) or pa.types.is_large_binary(type_):
        return "binary"
    if pa.types.is_struct(type_) and type_.get_field_index("bytes") >= 0:
        inner = type_.field("bytes").type
        return "struct" if pa.types.is_binary(inner) or pa.types.is_large_binary(inner) else None
    return None


@dataclass(frozen=True)
class _ParquetColumns:
    image: str
    id: str | None
    caption: str | None


def _parquet_columns(path: str, schema: Any, image_column: str | None, id_field: str | None, caption_field: str | None) -> _ParquetColumns:
    names = list(schema.names)
    check_unique_columns(names, path)
    image = parquet_image_column(schema, image_column)
    if image is None:
        if image_column and image_column in names:
            raise InputError(f"column {image_column!r} holds {schema.field(image_column).type}, not image bytes (binary, or a struct with "
                             "'bytes'); for image paths or URLs use a manifest with id and uri columns", path=path)
        wanted = repr(image_column) if image_column else "'image' or 'jpg'"
        raise InputError(f"no image column {wanted} holding bytes (columns: {names[:20]}); name it with --image-column", path=path)
    for flag, name in (("--id-field", id_field), ("--caption-field", caption_field)):
        if name and name not in names:
            raise InputError(f"no column {name!r} for {flag} (columns: {names[:20]})", path=path)
    return _ParquetColumns(image, id_field or next((c for c in ID_COLUMNS if c in names), None),
                           caption_field or next((c for c in CAPTION_COLUMNS if c in names), None))


def _parquet_units(path: str, image_column: str | None, id_field: str | None, caption_field: str | None) -> tuple[list[ShardUnit], _ParquetColumns]:
    import pyarrow.parquet as pq

    try:
        with _open(path) as fh:
            meta = pq.ParquetFile(fh).metadata
            schema = meta.schema.to_arrow_schema()
    except InputError:
        raise
    except Exception as exc:  # not Parquet, truncated, unreadable
        raise InputError(f"not a readable Parquet file ({type(exc).__name__}: {str(exc)[:200]})", path=path) from None
    columns = _parquet_columns(path, schema, image_column, id_field, caption_field)
    units, offset = [], 0
    for g in range(meta.num_row_groups):
        rows = meta.row_group(g).num_rows
        units.append(ShardUnit(path, g, offset, rows))
        offset += rows
    return units, columns


@dataclass(frozen=True)
class ShardSource:
    """Checked shards, cut into units; ``read(unit)`` streams one. Picklable: Ray tasks read units themselves."""

    format: str
    source: str
    paths: tuple[str, ...]
    units: tuple[ShardUnit, ...]
    id_field: str | None = None
    caption_field: str | None = None
    image_column: str | None = None
    pool: str | None = None
    columns: dict[str, _ParquetColumns] = field(default_factory=dict)  # Parquet: per file, the columns read

    @property
    def total(self) -> int | None:
        """How many samples there are, when the shards say (Parquet); None for tar shards."""
        return sum(u.rows or 0 for u in self.units) if self.format == "parquet-bytes" else None

    def read(self, unit: ShardUnit, batch_size: int = 256) -> Iterator[ShardBatch]:
        """Stream ``unit`` in batches of at most ``batch_size`` samples (records and failures together)."""
        rows = self._wds_rows(unit) if self.format == "webdataset" else self._parquet_rows(unit)
        batch = ShardBatch()
        for item in rows:
            (batch.records if isinstance(item, ImageRecord) else batch.failures).append(item)
            if len(batch) >= batch_size:
                yield batch
                batch = ShardBatch()
        if len(batch):
            yield batch

    # --- WebDataset ---------------------------------------------------------------------------
    def _wds_rows(self, unit: ShardUnit) -> Iterator[ImageRecord | dict]:
        from webdataset.tariterators import group_by_keys, tar_file_iterator

        done = 0
        try:
            with _open(unit.path) as fh:
                files = ({**f, "__url__": unit.path} for f in tar_file_iterator(fh))
                for sample in group_by_keys(files):
                    yield self._wds_record(sample, unit.path)
                    done += 1
        except Exception as exc:  # a shard cut short or damaged: what was read stands, the rest is one failure
            yield {"id": "", "uri": unit.path, "reason": f"shard unreadable after {done} samples ({type(exc).__name__}: {str(exc)[:200]})"}

    def _wds_record(self, sample: dict, path: str) -> ImageRecord | dict:
        key = str(sample["__key__"])
        ext = self.image_column or next((e for e in IMAGE_EXTENSIONS if e in sample), None)
        uri = f"{path}#{key}.{ext or 'jpg'}"
        meta: dict = {}
        if "json" in sample and (self.id_field or self.caption_field):
            try:
                meta = json.loads(sample["json"])
            except ValueError as exc:
                return _failure(key, uri, f"{key}.json is not JSON ({str(exc)[:100]})")
            if not isinstance(meta, dict):
                return _failure(key, uri, f"{key}.json is not a JSON object")
        id_ = key
        if self.id_field:
            if meta.get(self.id_field) in (None, ""):
                return _failure(key, uri, f"no {self.id_field!r} in {key}.json (--id-field)")
            id_ = str(meta[self.id_field])
        if ext is None or ext not in sample:
            return _failure(id_, uri, f"no image in the sample (looked for .{ext or ', .'.join(IMAGE_EXTENSIONS)})")
        if self.caption_field:
            captions = _captions(meta.get(self.caption_field))
        else:
            captions = _captions(sample["txt"].decode("utf-8", errors="replace") if "txt" in sample else None)
        return self._record(id_, uri, captions, sample[ext])

    # --- Parquet ------------------------------------------------------------------------------
    def _parquet_rows(self, unit: ShardUnit) -> Iterator[ImageRecord | dict]:
        import pyarrow.parquet as pq

        cols = self.columns[unit.path]
        wanted = list(dict.fromkeys(c for c in (cols.image, cols.id, cols.caption) if c))
        name = PurePosixPath(unit.path).name
        row = unit.row_offset
        try:
            with _open(unit.path) as fh:
                for table in pq.ParquetFile(fh).iter_batches(batch_size=256, row_groups=[unit.row_group], columns=wanted):
                    data = {c: table.column(c).to_pylist() for c in wanted}
                    for i in range(table.num_rows):
                        yield self._parquet_record(cols, data, i, row, name, unit.path)
                        row += 1
        except Exception as exc:
            yield {"id": "", "uri": f"{unit.path}#row_group={unit.row_group}",
                   "reason": f"row group unreadable after row {row} ({type(exc).__name__}: {str(exc)[:200]})"}

    def _parquet_record(self, cols: _ParquetColumns, data: dict, i: int, row: int, name: str, path: str) -> ImageRecord | dict:
        uri = f"{path}#row={row}"
        id_ = f"{name}#{row}" if cols.id is None else data[cols.id][i]
        if id_ in (None, ""):
            return _failure("", uri, f"no id in column {cols.id!r}")
        image = data[cols.image][i]
        if isinstance(image, dict):
            image = image.get("bytes")
        return self._record(str(id_), uri, _captions(data[cols.caption][i] if cols.caption else None), image)

    def _record(self, id_: str, uri: str, captions: tuple[str, ...], data: bytes | None) -> ImageRecord | dict:
        if not data:
            return _failure(id_, uri, "no image bytes")
        pool = self.pool or ("paired" if captions else "unpaired")
        if pool == "paired" and not captions:
            return _failure(id_, uri, "a paired image needs a caption; this sample has none (--pool unpaired embeds it without)")
        return ImageRecord(id_, uri, captions, tuple(f"{id_}#{k}" for k in range(len(captions))), pool=pool, data=bytes(data))


def _failure(id_: str, uri: str, reason: str) -> dict:
    return {"id": id_, "uri": uri, "reason": reason}


def _captions(value: Any) -> tuple[str, ...]:
    """A caption (string) or several (a list); blank ones dropped."""
    if value is None:
        return ()
    items = value if isinstance(value, (list, tuple)) else [value]
    return tuple(s for s in (str(v).strip() for v in items if v is not None) if s)


def open_shards(source: str | os.PathLike, *, id_field: str | None = None, caption_field: str | None = None,
                image_column: str | None = None, pool: str | None = None, check_workers: int = 16) -> ShardSource:
    """Expand and check ``source``'s shards; ``InputError`` (naming the shard) when one is missing or not what it claims."""
    source = str(source)
    if pool is not None and pool not in POOLS:
        raise InputError(f"--pool {pool!r} is not 'paired' or 'unpaired'")
    paths = expand_pattern(source)
    if not paths:
        raise InputError("the pattern matches no shard", path=source)
    fmt = _shard_format(paths, source)
    with ThreadPoolExecutor(max_workers=max(1, min(check_workers, len(paths)))) as pool_:
        missing = [p for p, ok in zip(paths, pool_.map(_exists, paths)) if not ok]
        if len(missing) == len(paths):
            raise InputError(f"the pattern matches no shard ({len(paths)} named, none found; first: {paths[0]})", path=source)
        if missing:
            raise InputError(f"{len(missing)} of {len(paths)} shards not found (first: {missing[0]}); fix the pattern", path=source)
        if fmt == "webdataset":
            for path, problem in zip(paths, pool_.map(_tar_problem, paths)):
                if problem:
                    raise InputError(f"{problem}; every shard must be a WebDataset tar", path=path)
            try:
                import webdataset  # noqa: F401  (read in workers; refused here, before any work)
            except ImportError:
                raise InputError(f"WebDataset shards need the webdataset package: {LAKE_HINT}", path=source) from None
            units = tuple(ShardUnit(p) for p in paths)
            columns: dict[str, _ParquetColumns] = {}
        else:
            found = list(pool_.map(lambda p: _parquet_units(p, image_column, id_field, caption_field), paths))
            units = tuple(u for us, _ in found for u in us)
            columns = {p: c for p, (_, c) in zip(paths, found)}
    return ShardSource(fmt, source, tuple(paths), units, id_field, caption_field, image_column, pool, columns)
