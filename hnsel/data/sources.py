"""``load_source``: any supported source into a ``Dataset`` with every pool decided.

Sources are detected from what they are: a folder of images (recursive; jpg, jpeg, png, webp), a
manifest (.csv, .jsonl, .parquet), or a JSON file in COCO captions or Karpathy-split form; or shards
(``shards``): WebDataset tars by pattern (``shards/{00000..00127}.tar``, local or any fsspec URL) and Parquet
files whose image column holds the bytes. Shards are streamed, never loaded whole: ``open_source`` returns a
``ShardSource`` for them (``hnsel embed`` reads it unit by unit); ``load_source`` refuses them.

Pools: ``pool`` (the ``--pool`` flag) wins; else a manifest row's ``pool``; else an image with captions
is paired and one without is unpaired. Captions of an unpaired image are not embedded (an unpaired
image has no text); standalone captions are always unpaired texts.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any
from pathlib import Path

from ..errors import InputError
from .records import Dataset, ImageRecord
from .coco_karpathy import json_kind, read_coco, read_json, read_karpathy
from .images import IMAGE_EXTENSIONS
from .manifests import MANIFEST_SUFFIXES, ManifestColumns, read_manifest
from .shards import SHARD_FORMATS, ShardSource, detect_shards, open_shards
from ..schema import POOLS

__all__ = ["load_source", "open_source", "detect_format", "read_folder", "apply_pool", "SOURCE_FORMATS"]

SOURCE_FORMATS = ("folder", "manifest", "coco", "karpathy", *SHARD_FORMATS)
ACCEPTED = ("give an image folder, a .csv/.jsonl/.parquet manifest, a COCO/Karpathy .json, WebDataset shards "
            "(shards/{00000..00009}.tar) or Parquet files with image bytes")


def detect_format(source: str | os.PathLike, image_column: str | None = None) -> str:
    """One of ``SOURCE_FORMATS`` for a path or pattern, or ``InputError`` saying what is accepted."""
    return _detect(source, image_column)[0]


def _detect(source: str | os.PathLike, image_column: str | None = None) -> tuple[str, Any]:
    """(format, the parsed document for JSON sources else None): a JSON file is parsed once, here."""
    shards = detect_shards(source, image_column)
    if shards is not None:
        return shards, None
    path = Path(source)
    if path.is_dir():
        return "folder", None
    if not path.exists():
        raise InputError(f"source not found; {ACCEPTED}", path=source)
    suffix = path.suffix.lower()
    if suffix in MANIFEST_SUFFIXES:
        return "manifest", None
    if suffix == ".json":
        doc = read_json(path)
        kind = json_kind(doc)
        if kind is None:
            raise InputError("JSON is neither COCO captions (images + annotations) nor Karpathy-split (images[].sentences)", path=source)
        return kind, doc
    raise InputError(f"unknown source type {suffix!r}; {ACCEPTED}", path=source)


def read_folder(path: str | os.PathLike) -> Dataset:
    """Every image under ``path`` (sorted); id = the path relative to the folder, with '/' separators."""
    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    images = [ImageRecord(p.relative_to(root).as_posix(), os.path.abspath(p)) for p in files]
    return Dataset(images, [], str(root))


def load_source(source: str | os.PathLike, images_dir: str | os.PathLike | None = None, pool: str | None = None,
                split: str | None = None, *, id_column: str | None = None, uri_column: str | None = None,
                caption_column: str | None = None) -> Dataset:
    """Read ``source`` (format detected), keep one ``split`` if asked, and decide every record's pool. ``*_column``:
    a manifest's own column names (``manifests.read_manifest``); refused for other sources."""
    if pool is not None and pool not in POOLS:
        raise InputError(f"--pool {pool!r} is not 'paired' or 'unpaired'")
    kind, doc = _detect(source)
    columns = ManifestColumns(id_column, uri_column, caption_column)
    if kind in SHARD_FORMATS:
        raise InputError(f"{kind} shards are streamed by `hnsel embed` only; this needs an image folder, a manifest or a COCO/Karpathy .json",
                         path=source)
    if columns.given() and kind != "manifest":
        raise InputError(f"{', '.join(columns.given())} apply to .csv/.jsonl/.parquet manifests, not to a {kind}", path=source)
    if kind == "folder":
        dataset = read_folder(source)
    elif kind == "manifest":
        dataset = read_manifest(source, images_dir, id_column=id_column, uri_column=uri_column, caption_column=caption_column)
    else:
        dataset = (read_coco if kind == "coco" else read_karpathy)(source, images_dir, doc=doc)
    dataset = dataclasses.replace(dataset, format=kind)
    if split is not None:
        splits = sorted({r.split for r in dataset.images if r.split})
        if split not in splits:
            raise InputError(f"no images in split {split!r} (splits here: {splits or 'none'})", path=source)
        dataset = dataset.split(split)
    return apply_pool(dataset, pool)


def open_source(source: str | os.PathLike, images_dir: str | os.PathLike | None = None, pool: str | None = None, split: str | None = None, *,
                id_field: str | None = None, caption_field: str | None = None, image_column: str | None = None, id_column: str | None = None,
                uri_column: str | None = None, caption_column: str | None = None) -> Dataset | ShardSource:
    """``load_source`` for files and folders; for shards (WebDataset, Parquet with image bytes) a checked ``ShardSource``
    to stream. The shard options are refused for other sources, the manifest columns and ``images_dir``/``split`` for shards."""
    kind = detect_format(source, image_column)
    shard_flags = {"--id-field": id_field, "--caption-field": caption_field, "--image-column": image_column}
    columns = ManifestColumns(id_column, uri_column, caption_column)
    if kind not in SHARD_FORMATS:
        given = [flag for flag, value in shard_flags.items() if value]
        if given:
            raise InputError(f"{', '.join(given)} apply to WebDataset shards and Parquet files with image bytes, not to a {kind}", path=source)
        return load_source(source, images_dir=images_dir, pool=pool, split=split, id_column=id_column, uri_column=uri_column,
                           caption_column=caption_column)
    if columns.given():
        raise InputError(f"{', '.join(columns.given())} apply to manifests of image paths; {kind} shards hold their images: use "
                         "--id-field, --caption-field and --image-column", path=source)
    for flag, value in (("--images-dir", images_dir), ("--split", split)):
        if value is not None:
            raise InputError(f"{flag} does not apply to {kind} shards (their images are inside them)", path=source)
    return open_shards(source, id_field=id_field, caption_field=caption_field, image_column=image_column, pool=pool)


def apply_pool(dataset: Dataset, pool: str | None = None) -> Dataset:
    """Set every image's and text's pool; a paired image must have captions."""
    images = []
    for record in dataset.images:
        chosen = pool or record.pool or ("paired" if record.captions else "unpaired")
        images.append(record if chosen == record.pool else dataclasses.replace(record, pool=chosen))
    bare = [r.id for r in images if r.pool == "paired" and not r.captions]
    if bare:
        raise InputError(
            f"{len(bare)} paired image(s) have no caption (first: {bare[0]!r}); give captions or use --pool unpaired",
            path=dataset.source or None,
        )
    texts = [t if t.pool == "unpaired" else dataclasses.replace(t, pool="unpaired") for t in dataset.texts]
    return Dataset(images, texts, dataset.source, dataset.format)
