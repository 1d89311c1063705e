"""The embed workflow: a data source through an OpenCLIP encoder into the store (or BulkWriter files).

``embed`` validates the source and the model before writing anything, refuses a store that holds
another model's vectors, skips ids already stored (so an interrupted job resumes where it stopped),
decodes images in DataLoader workers, writes each batch as it goes (memory is a few batches), and
reports every image it could not read instead of stopping. Paired captions are written before their
image, so an image present in the store implies its captions are too.

Shards (WebDataset tars, Parquet files with image bytes: ``data.shards``) are streamed unit by unit, a few
thousand samples at a time, so memory stays bounded whatever the shard sizes; a sample that cannot be used is
listed with the unreadable images. ``ray=`` runs the same encoder on a Ray cluster instead (``ray_embed.py``).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..config import HnselConfig
from ..data.records import Dataset, ImageRecord, record_problem
from ..data.shards import ShardSource
from ..data.sources import open_source
from ..model.encoder import Encoder, load_encoder
from ..schema import DEFAULT_CACHE_DIR, DEFAULT_PRETRAINED
from ..errors import InputError
from ..store.bulk import BulkSink
from .embed_own import check_duplicates, pair_stored, record_stored_digests
from ..tables import check_table_path, write_table
from ..schema import MATCH_META_KEY, MODEL_META_KEY, ProgressFn

__all__ = ["embed", "write_bulk", "EmbedReport"]



@dataclass
class EmbedReport:
    source: str
    format: str
    model: dict
    images_embedded: int = 0
    images_skipped: int = 0  # already in the store
    image_features_cached: int = 0  # backbone features read from the feature cache: only the heads ran
    texts_embedded: int = 0
    texts_skipped: int = 0
    captions_dropped: int = 0  # captions of images put in the unpaired pool
    images_paired: int = 0  # images stored unpaired that this source captioned (embed_own.pair_stored)
    duplicates: list[dict] = field(default_factory=list)  # same file as another id, stored with --allow-duplicates
    failures: list[dict] = field(default_factory=list)  # {"id", "uri", "reason"}
    errors_path: str | None = None
    bulk_files: dict[str, list[str]] | None = None
    ray: dict | None = None  # with --ray: the cluster's address, workers, device and batch size
    seconds: float = 0.0
    load_seconds: float = 0.0  # waiting for decoded images
    encode_seconds: float = 0.0
    write_seconds: float = 0.0
    image_runtime: str | None = None  # what ran the image tower: onnx, torch-channels-last, torch (model.runtime)

    @property
    def images_per_second(self) -> float:
        return self.images_embedded / self.seconds if self.seconds > 0 else 0.0

    def summary(self, max_failures: int = 20) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "failures"}
        out["images_failed"] = len(self.failures)
        out["failures"] = self.failures[:max_failures]
        out["images_per_second"] = round(self.images_per_second, 2)
        return out


def _validate(dataset: Dataset) -> None:
    """Every id, uri and caption fits its Milvus field (UTF-8 bytes), checked before anything is written."""
    from ..schema import text_problem

    def fields(record) -> Iterator[tuple[str, str, str]]:
        if isinstance(record, ImageRecord):
            yield "id", record.id, record.id
            yield "uri", record.uri or "", record.id
            for cid, text in zip(record.caption_ids, record.captions):
                yield "id", cid, cid
                yield "text", text, cid
        else:
            yield "id", record.id, record.id
            yield "text", record.text or "", record.id
            yield "image_id", record.image_id or "", record.id

    for record in [*dataset.images, *dataset.texts]:
        for name, value, owner in fields(record):
            problem = text_problem(name, value)
            if problem:
                raise InputError(f"{problem} (id {owner[:60]!r})", path=dataset.source)
    if not dataset.images and not dataset.texts:
        raise InputError("no images or captions found; check the path and --images-dir", path=dataset.source)


def _check_errors_path(errors_path: str | os.PathLike | None) -> None:
    if errors_path is not None:
        check_table_path(errors_path)  # .csv, .jsonl or .parquet in an existing folder, refused before any work


def _prepare(source, model_name, pretrained, device, batch_size, num_workers, images_dir, pool, split, errors_path,
             encoder: Encoder | None, shard_options: dict | None = None) -> tuple[Dataset | ShardSource, Encoder, EmbedReport]:
    """Everything checked before any vector is written: flags, the source (every shard's header), then the model."""
    _check_errors_path(errors_path)
    _check_batching(batch_size, num_workers)
    dataset = open_source(source, images_dir=images_dir, pool=pool, split=split, **(shard_options or {}))
    if isinstance(dataset, Dataset):
        _validate(dataset)
    encoder = encoder or load_encoder(model_name, pretrained, device)
    return dataset, encoder, EmbedReport(str(source), dataset.format, dict(encoder.model_info))


def embed(config: HnselConfig, source: str | os.PathLike, *, model_name: str | None = None, pretrained: str | None = DEFAULT_PRETRAINED,
          device: str = "auto", batch_size: int = 64, num_workers: int = 0, images_dir: str | os.PathLike | None = None,
          pool: str | None = None, split: str | None = None, overwrite: bool = False, errors_path: str | os.PathLike | None = None,
          encoder: Encoder | None = None, on_progress: ProgressFn | None = None, id_field: str | None = None,
          caption_field: str | None = None, image_column: str | None = None, ray: bool | str = False, ray_batch_size: int = 256,
          ray_concurrency: int | None = None, id_column: str | None = None, uri_column: str | None = None,
          caption_column: str | None = None, allow_duplicates: bool = False,
          cache_dir: str | os.PathLike | None = DEFAULT_CACHE_DIR) -> EmbedReport:
    """Embed ``source`` into the store named by ``config``; see the module docstring for the guarantees.

    Manifests: ``id_column``, ``uri_column`` and ``caption_column`` name a user's own columns (``data.manifests``). A file
    stored under another id is refused unless ``allow_duplicates``; images stored unpaired that the source captions are
    paired (``embed_own``).
    Shards: ``id_field`` (a JSON field of WebDataset samples, a Parquet column), ``caption_field`` and ``image_column``
    (Parquet column or WebDataset extension) say where a sample's parts are (``data.shards``). ``ray``: ``True`` (Ray's
    own discovery: ``RAY_ADDRESS``, a cluster started on this machine, else a local one) or an address runs the encoder
    as a Ray Data actor pool of ``ray_concurrency`` actors (one per GPU by default), ``ray_batch_size`` images a call;
    the actors build the model from ``model_name`` and ``pretrained`` (an ``encoder`` object is not shipped to them).

    Neither ``model_name`` nor ``pretrained`` (both None): the store's own model record (``store_model``). A model with
    heads over frozen towers reads the backbone features ``hnsel train`` cached under ``cache_dir`` (None: no cache).
    """
    from ..store import open_store
    from .store_model import model_flags

    if encoder is None:
        model_name, pretrained = model_flags(config, model_name, pretrained)

    shard_options = {"id_field": id_field, "caption_field": caption_field, "image_column": image_column, "id_column": id_column,
                     "uri_column": uri_column, "caption_column": caption_column}
    if ray is not False and ray is not None:
        from .ray_embed import check_embed_ray

        check_embed_ray(source, ray, ray_batch_size, ray_concurrency, image_column)
    dataset, encoder, report = _prepare(source, model_name, pretrained, device, batch_size, num_workers, images_dir, pool, split,
                                        errors_path, encoder, shard_options)
    start = time.perf_counter()
    with open_store(config.store) as store:
        store.check_model(encoder.model_info)
        for kind in ("images", "texts"):  # refused before the model record or any vector is written
            if store.read_only(kind):
                raise InputError(f"collection {store.name(kind)} is configured read_only in hnsel.toml; hnsel embed writes to it: "
                                 "embed into another --namespace", path=source)
        digests = {}
        if isinstance(dataset, Dataset):  # before anything is written
            digests, report.duplicates = check_duplicates(store, dataset, allow_duplicates)
        cluster = None
        if ray is not False and ray is not None:
            from .ray_cluster import connect

            cluster = connect(ray)  # an unreachable cluster is refused before the store is touched
        try:
            store.ensure_collections(encoder.dim, uncertainty=encoder.probabilistic)
            if store.get_meta(MODEL_META_KEY) is None:
                store.set_meta(MODEL_META_KEY, encoder.model_info)  # before any vector, so a resumed job is checked too
            if encoder.probabilistic and "match" in encoder.text_head.spec:
                store.set_meta(MATCH_META_KEY, encoder.text_head.spec["match"])  # the heads' calibrated a, b (docs/ascmr.md)
            if cluster is not None:
                from .ray_embed import embed_shards

                embed_shards(cluster, store, dataset, encoder, report, model_name=model_name, pretrained=pretrained, device=device,
                             batch_size=ray_batch_size, concurrency=ray_concurrency, overwrite=overwrite, on_progress=on_progress)
            else:
                _run(dataset, encoder, _StoreSink(store), report, batch_size, num_workers, on_progress,
                     skip=None if overwrite else store.existing_ids, cache=_feature_cache(encoder, cache_dir))
                if isinstance(dataset, Dataset):
                    if not overwrite:
                        report.images_paired, captions = pair_stored(store, dataset, encoder, batch_size)
                        report.texts_embedded += captions
                    record_stored_digests(store, digests)
        finally:
            report.seconds = time.perf_counter() - start
            _write_errors(report, errors_path)
            if cluster is not None:
                cluster.close()
    return report


def _check_batching(batch_size: int, num_workers: int) -> None:
    if batch_size < 1:
        raise InputError(f"--image-batch {batch_size}: use 1 or more")
    if num_workers < 0:
        raise InputError(f"--num-workers {num_workers}: use 0 (decode in this process) or more")
    from ..model.runtime import check_runtime

    check_runtime()  # an unknown HNSEL_IMAGE_RUNTIME is refused before the store is touched


def _feature_cache(encoder: Encoder, cache_dir: str | os.PathLike | None):
    """The backbone feature cache of a model with heads (its towers frozen: the heads' input is what train cached)."""
    if cache_dir is None or encoder.image_head is None:
        return None
    from ..model.features import FeatureCache, backbone_id

    return FeatureCache(cache_dir, backbone_id(encoder))


def _embed_cached(images: list[ImageRecord], encoder: Encoder, cache, sink, report: EmbedReport, batch_size: int) -> list[ImageRecord]:
    """Write the images whose backbone features the cache holds (only the heads run); return the others."""
    from ..model.features import cached_vectors

    local = [i for i, r in enumerate(images) if r.data is None and r.uri]
    rows, vectors, spread = _timed(report, "encode_seconds", cached_vectors, encoder, cache, "image", [images[i].uri for i in local])
    done = [local[i] for i in rows]
    for start in range(0, len(done), batch_size):
        part = slice(start, start + batch_size)
        _write_image_batch([images[i] for i in done[part]], vectors[part], encoder, sink, report, batch_size,
                           None if spread is None else spread[part])
    report.image_features_cached += len(done)
    taken = set(done)
    return [r for i, r in enumerate(images) if i not in taken]


def _run(dataset: Dataset | ShardSource, encoder: Encoder, sink, report: EmbedReport, batch_size: int, num_workers: int,
         on_progress: ProgressFn | None, skip: Callable[[str, Sequence[str]], set[str]] | None, cache=None) -> None:
    if isinstance(dataset, ShardSource):
        _run_shards(dataset, encoder, sink, report, batch_size, num_workers, on_progress, skip)
        return
    images = dataset.images
    report.captions_dropped = sum(len(r.captions) for r in images if r.pool == "unpaired")
    if skip is not None:
        images = _not_stored(images, "images", skip)
        report.images_skipped = len(dataset.images) - len(images)
    if images and cache is not None:
        images = _embed_cached(images, encoder, cache, sink, report, batch_size)
    if images:
        _embed_images(images, encoder, sink, report, batch_size, num_workers, on_progress)
    texts = dataset.texts
    if skip is not None and texts:
        texts = _not_stored(texts, "texts", skip)
        report.texts_skipped = len(dataset.texts) - len(texts)
    texts = _by_length(texts, lambda t: t.text or "")
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        vectors, spread = _timed(report, "encode_seconds", encoder.text_batch, [t.text for t in chunk])
        data = {"id": [t.id for t in chunk], "vector": vectors, "pool": [t.pool or "unpaired" for t in chunk],
                "image_id": [t.image_id or "" for t in chunk], "text": [t.text for t in chunk], **_uncertainty(spread)}
        _timed(report, "write_seconds", sink.write, "texts", data)
        report.texts_embedded += len(chunk)
        if on_progress is not None:
            on_progress("embedding captions", report.texts_embedded, len(texts))


def _run_shards(shards: ShardSource, encoder: Encoder, sink, report: EmbedReport, batch_size: int, num_workers: int,
                on_progress: ProgressFn | None, skip: Callable[[str, Sequence[str]], set[str]] | None) -> None:
    """Shards unit by unit, ``chunk`` samples at a time through the same DataLoader path: memory is one chunk's bytes."""
    chunk, done, total = max(1024, 16 * batch_size), 0, shards.total
    for unit in shards.units:
        for part in shards.read(unit, chunk):
            report.failures.extend(part.failures)
            records = []
            for record in part.records:
                problem = record_problem(record)
                if problem:
                    report.failures.append({"id": record.id, "uri": record.uri or "", "reason": problem})
                else:
                    records.append(record)
            report.captions_dropped += sum(len(r.captions) for r in records if r.pool == "unpaired")
            if skip is not None and records:
                kept = _not_stored(records, "images", skip)
                report.images_skipped += len(records) - len(kept)
                records = kept
            if records:
                step = None if on_progress is None else (lambda task, n, _total, base=done + len(part) - len(records): on_progress(task, base + n, total))
                _embed_images(records, encoder, sink, report, batch_size, num_workers, step)
            done += len(part)
            if on_progress is not None:
                on_progress("embedding images", done, total)


def _not_stored(records: list, kind: str, skip: Callable[[str, Sequence[str]], set[str]], chunk: int = 4096) -> list:
    out = []
    for start in range(0, len(records), chunk):
        part = records[start:start + chunk]
        held = skip(kind, [r.id for r in part])
        out.extend(r for r in part if r.id not in held)
    return out


def _timed(report: EmbedReport, slot: str, fn: Callable, *args: Any) -> Any:
    t0 = time.perf_counter()
    try:
        return fn(*args)
    finally:
        setattr(report, slot, getattr(report, slot) + time.perf_counter() - t0)


def _batches(records: Sequence[ImageRecord], encoder: Encoder, batch_size: int, num_workers: int) -> Iterator:
    from ..model.images import image_batches

    sources = [r.data if r.data is not None else r.uri for r in records]  # shards' records carry their bytes
    return image_batches(sources, encoder.preprocess, batch_size, num_workers, pin_memory=encoder.device.type == "cuda")


def _embed_images(records: list[ImageRecord], encoder: Encoder, sink, report: EmbedReport, batch_size: int, num_workers: int,
                  on_progress: ProgressFn | None) -> None:
    """The images through the fastest exact image tower, torch's threads beside the decoders budgeted (model.runtime)."""
    from ..model.runtime import image_budget

    with image_budget(encoder, num_workers) as runtime:
        report.image_runtime = runtime
        _embed_image_batches(records, encoder, sink, report, batch_size, num_workers, on_progress)


def _embed_image_batches(records: list[ImageRecord], encoder: Encoder, sink, report: EmbedReport, batch_size: int, num_workers: int,
                         on_progress: ProgressFn | None) -> None:
    batches, done = _batches(records, encoder, batch_size, num_workers), 0
    while True:
        item = _timed(report, "load_seconds", next, batches, None)
        if item is None:
            break
        indices, batch, failed = item
        report.failures.extend({"id": records[i].id, "uri": records[i].uri or "", "reason": reason} for i, reason in failed)
        if batch is not None:
            vectors, spread = _timed(report, "encode_seconds", encoder.image_batch, batch)
            _write_image_batch([records[i] for i in indices], vectors, encoder, sink, report, batch_size, spread)
        done += len(indices) + len(failed)
        if on_progress is not None:
            on_progress("embedding images", done, len(records))


def _by_length(items: list, text: Callable[[Any], str]) -> list:
    """Captions of about one length batched together: a batch's tokens are trimmed to its longest caption
    (``Encoder.tokens``), so sorted batches carry little padding. Writes are upserts by id: the order is free."""
    return sorted(items, key=lambda item: len(text(item)))


def _uncertainty(spread: np.ndarray | None) -> dict:
    """The ``uncertainty`` column of a probabilistic model's rows (docs/ascmr.md); nothing for a plain model."""
    return {} if spread is None else {"uncertainty": spread}


def _write_image_batch(records: list[ImageRecord], vectors: np.ndarray, encoder: Encoder, sink, report: EmbedReport, batch_size: int,
                       spread: np.ndarray | None = None) -> None:
    """Paired captions first, then the images: a stored image implies its captions are stored."""
    captions = [(r.id, cid, text) for r in records if r.pool == "paired" for cid, text in zip(r.caption_ids, r.captions)]
    captions = _by_length(captions, lambda c: c[2])
    for start in range(0, len(captions), batch_size):
        part = captions[start:start + batch_size]
        text_vectors, text_spread = _timed(report, "encode_seconds", encoder.text_batch, [c[2] for c in part])
        data = {"id": [c[1] for c in part], "vector": text_vectors, "pool": ["paired"] * len(part),
                "image_id": [c[0] for c in part], "text": [c[2] for c in part], **_uncertainty(text_spread)}
        _timed(report, "write_seconds", sink.write, "texts", data)
        report.texts_embedded += len(part)
    data = {"id": [r.id for r in records], "vector": vectors, "pool": [r.pool or "unpaired" for r in records],
            "uri": [r.uri or "" for r in records], **_uncertainty(spread)}
    _timed(report, "write_seconds", sink.write, "images", data)
    report.images_embedded += len(records)


def _write_errors(report: EmbedReport, errors_path: str | os.PathLike | None) -> None:
    """The failures as CSV (id, uri, reason), or JSON lines for a .jsonl path; written atomically."""
    if errors_path is None:
        return
    path = Path(errors_path)
    write_table(path, {name: [f[name] for f in report.failures] for name in ("id", "uri", "reason")})
    report.errors_path = str(path)


class _StoreSink:
    def __init__(self, store):
        self.store = store

    def write(self, kind: str, data: dict) -> None:
        self.store.upsert(kind, data)


def write_bulk(config: HnselConfig, source: str | os.PathLike, out_dir: str | os.PathLike, *, model_name: str | None = None,
               pretrained: str | None = DEFAULT_PRETRAINED, device: str = "auto", batch_size: int = 64, num_workers: int = 0,
               images_dir: str | os.PathLike | None = None, pool: str | None = None, split: str | None = None,
               errors_path: str | os.PathLike | None = None, encoder: Encoder | None = None,
               on_progress: ProgressFn | None = None, id_field: str | None = None, caption_field: str | None = None,
               image_column: str | None = None, id_column: str | None = None, uri_column: str | None = None,
               caption_column: str | None = None, allow_duplicates: bool = False) -> EmbedReport:
    """Embed ``source`` into Parquet files for ``bulk_import`` (no store is opened); ``hnsel_bulk.json`` lists them."""
    from .store_model import model_flags

    shard_options = {"id_field": id_field, "caption_field": caption_field, "image_column": image_column, "id_column": id_column,
                     "uri_column": uri_column, "caption_column": caption_column}
    if encoder is None:
        model_name, pretrained = model_flags(config, model_name, pretrained)
    dataset, encoder, report = _prepare(source, model_name, pretrained, device, batch_size, num_workers, images_dir, pool, split,
                                        errors_path, encoder, shard_options)
    if isinstance(dataset, Dataset):
        report.duplicates = check_duplicates(None, dataset, allow_duplicates)[1]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    sink = BulkSink(config.store, out, encoder.dim)
    try:
        _run(dataset, encoder, sink, report, batch_size, num_workers, on_progress, skip=None)
        report.bulk_files = sink.close()
    finally:
        report.seconds = time.perf_counter() - start
        _write_errors(report, errors_path)
    names = {kind: config.store.collection_name(kind) for kind in ("images", "texts")}
    manifest = {"model": report.model, "collections": {k: {"collection_name": names[k], "files": report.bulk_files[k]} for k in names}}
    (out / "hnsel_bulk.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return report
