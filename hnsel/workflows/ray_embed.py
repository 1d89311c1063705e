"""``hnsel embed SHARDS --ray``: shards embedded by a Ray Data actor pool.

**Embedding** (``hnsel embed SHARDS --ray``) is Ray Data batch inference: one read task per unit (a tar shard or a
Parquet row group) streams its samples, skips the ids already stored, decodes and preprocesses the images with the
model's own transform (the ``ImageItems`` the DataLoader path uses) and yields blocks of ``batch_size``; a pool of
``_EncodeActor``s (``map_batches``; one per GPU when the cluster has GPUs, else CPU actors) holds the model, made by
the same ``load_encoder`` call as the single process, and encodes the images and their paired captions. Writes are
batched upserts, captions before their image: on a Milvus server each actor writes its own batches; a Milvus Lite file
opens in one process only, so there the actors return the vectors and the driver writes them. Failures (unreadable
images, shards cut short) come back as rows and are listed as the single process lists them.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..config import StoreConfig
from ..errors import InputError
from ..schema import UNKNOWN_UNCERTAINTY, ProgressFn, same_model
from .ray_cluster import Cluster, check_reachable, import_ray, one_line

__all__ = ["check_embed_ray", "embed_shards", "write_rows"]


def check_embed_ray(source: Any, address: bool | str, batch_size: int, concurrency: int | None, image_column: str | None = None) -> None:
    """Before any work: Ray importable, the flags sane, the source shards, an explicit address reachable."""
    from ..data.shards import SHARD_FORMATS
    from ..data.sources import detect_format

    if batch_size < 1:
        raise InputError(f"--ray-image-batch {batch_size}: use 1 or more")
    if concurrency is not None and concurrency < 1:
        raise InputError(f"--ray-concurrency {concurrency}: use 1 or more (default: one actor per GPU, else CPUs - 1)")
    kind = detect_format(source, image_column)
    if kind not in SHARD_FORMATS:
        raise InputError(f"--ray reads WebDataset shards or Parquet files with image bytes; this is a {kind}: run it without --ray", path=source)
    import_ray()
    check_reachable(address)


@dataclass(frozen=True)
class _Stored:
    """Which image ids are stored already, asked by the read tasks: a set the driver listed (Milvus Lite, which only
    the driver may open) or the Milvus server itself."""

    ids: Any = None  # an ObjectRef of a frozenset
    store_config: StoreConfig | None = None

    @contextmanager
    def lookup(self) -> Iterator[Callable[[Sequence[str]], set[str]]]:
        """``held(ids)``: the ones stored already (one server connection while the read task runs)."""
        if self.ids is not None:
            import ray

            held = ray.get(self.ids)
            yield lambda ids: held.intersection(ids)
            return
        from ..store import open_store

        with open_store(self.store_config) as store:
            yield lambda ids: store.existing_ids("images", list(ids))


def _read_units(batch: dict, *, shards, preprocess, stored: _Stored | None, batch_size: int) -> Iterator[dict]:
    """Ray Data read task: each unit in ``batch`` streamed, checked, skipped when stored, decoded; blocks of ``batch_size``."""
    with (stored.lookup() if stored is not None else nullcontext(None)) as held:
        for index in batch["unit"]:
            for part in shards.read(shards.units[int(index)], batch_size):
                yield _decode(part, preprocess, held)


def _decode(part, preprocess, held) -> dict:
    """One read batch as columns: failures and stored ids as rows without pixels; images as float32 pixel bytes."""
    from ..model.images import ImageItems
    from ..data.records import record_problem

    rows = [dict(f, pool="", stored=False, dropped=0, captions="[]", pixels=b"") for f in part.failures]
    records = list(part.records)
    stored_ids = held([r.id for r in records]) if held is not None and records else set()
    items = ImageItems([r.data for r in records], preprocess)
    for i, r in enumerate(records):
        row = {"id": r.id, "uri": r.uri or "", "reason": "", "pool": r.pool or "unpaired", "stored": r.id in stored_ids, "pixels": b"",
               "dropped": len(r.captions) if r.pool == "unpaired" else 0,
               "captions": json.dumps(list(zip(r.caption_ids, r.captions)) if r.pool == "paired" else [])}
        row["reason"] = record_problem(r) or ""
        if not row["stored"] and not row["reason"]:
            _, tensor, reason = items[i]
            if tensor is None:
                row["reason"] = reason
            else:
                row["pixels"] = tensor.numpy().astype(np.float32, copy=False).tobytes()
        rows.append(row)
    return _columns(rows, ("id", "uri", "reason", "pool", "stored", "dropped", "captions", "pixels"))


def _columns(rows: list[dict], names: Sequence[str]) -> dict:
    out = {}
    for name in names:
        values = [r[name] for r in rows]
        out[name] = np.array(values, dtype=bool if name == "stored" else np.int64 if name == "dropped" else object)
    return out


class _EncodeActor:
    """Holds the model (built as the single process builds it) and encodes blocks; writes them itself on a server."""

    def __init__(self, model_name, pretrained, device, model_info: dict, shape: tuple, store_config: StoreConfig | None):
        from ..model.encoder import load_encoder

        self.encoder = load_encoder(model_name, pretrained, device)
        if not same_model(self.encoder.model_info, model_info):
            raise RuntimeError(f"this worker built another model than the driver ({self.encoder.model_info.get('weights')} against "
                               f"{model_info.get('weights')}); give every node the same --model-name and --pretrained files")
        self.shape = tuple(shape)
        self.store = None
        if store_config is not None:
            from ..store import open_store

            self.store = open_store(store_config)

    def __call__(self, batch: dict) -> dict:
        import torch

        t0 = time.perf_counter()
        n, dim = len(batch["id"]), self.encoder.dim
        ok = np.flatnonzero((batch["reason"] == "") & ~batch["stored"].astype(bool))
        vectors, spread = np.zeros((n, dim), np.float32), np.full(n, UNKNOWN_UNCERTAINTY)
        if len(ok):
            pixels = np.stack([np.frombuffer(batch["pixels"][i], dtype=np.float32).reshape(self.shape) for i in ok])
            vectors[ok], part = self.encoder.image_batch(torch.from_numpy(pixels))
            if part is not None:  # a probabilistic model: each sample's summed variance, as the single process stores it
                spread[ok] = part
        captions = [(str(batch["id"][i]), cid, text) for i in ok for cid, text in json.loads(batch["captions"][i])]
        texts = [self.encoder.text_batch([c[2] for c in captions[s:s + max(1, n)]]) for s in range(0, len(captions), max(1, n))]
        text_vectors = np.concatenate([v for v, _ in texts]) if texts else np.zeros((0, dim), np.float32)
        text_spread = np.concatenate([u if u is not None else np.full(len(v), UNKNOWN_UNCERTAINTY) for v, u in texts]) if texts else np.zeros(0)
        out = _output(batch, ok, np.concatenate([text_vectors, vectors]), np.concatenate([text_spread, spread]), captions)
        out["encode_s"][:1] = time.perf_counter() - t0
        if self.store is not None:
            t1 = time.perf_counter()
            write_rows(self.store, out)
            out.pop("vector")
            out["write_s"][:1] = time.perf_counter() - t1
        return out


def _output(batch: dict, ok: np.ndarray, vectors: np.ndarray, spread: np.ndarray, captions: list) -> dict:
    """Rows for the driver: the captions first (kind texts), then one row per input row (kind images); ``vectors`` and
    ``spread`` (the uncertainty, -1 when unknown) in that order."""
    n, m = len(batch["id"]), len(captions)
    obj = lambda values: np.array(values, dtype=object)  # noqa: E731
    return {
        "kind": obj(["texts"] * m + ["images"] * n),
        "id": obj([c[1] for c in captions] + [str(x) for x in batch["id"]]),
        "pool": obj(["paired"] * m + [str(x) for x in batch["pool"]]),
        "uri": obj([""] * m + [str(x) for x in batch["uri"]]),
        "image_id": obj([c[0] for c in captions] + [""] * n),
        "text": obj([c[2] for c in captions] + [""] * n),
        "reason": obj([""] * m + [str(x) for x in batch["reason"]]),
        "stored": np.concatenate([np.zeros(m, bool), batch["stored"].astype(bool)]),
        "dropped": np.concatenate([np.zeros(m, np.int64), batch["dropped"].astype(np.int64)]),
        "vector": np.asarray(vectors, np.float32).reshape(m + n, vectors.shape[1]),
        "uncertainty": np.asarray(spread, np.float64),
        "encode_s": np.zeros(m + n),
        "write_s": np.zeros(m + n),
    }


def write_rows(store, out: dict) -> tuple[int, int]:
    """Upsert one output block's embedded rows, captions before images; (texts, images) written."""
    good = (out["reason"] == "") & ~out["stored"].astype(bool)
    counts = []
    for kind, fields in (("texts", ("pool", "image_id", "text")), ("images", ("pool", "uri"))):
        rows = np.flatnonzero(good & (out["kind"] == kind))
        if len(rows):
            store.upsert(kind, {"id": [str(x) for x in out["id"][rows]], "vector": np.asarray(out["vector"])[rows],
                                "uncertainty": out["uncertainty"][rows], **{f: [str(x) for x in out[f][rows]] for f in fields}})
        counts.append(len(rows))
    return counts[0], counts[1]


def embed_shards(cluster: Cluster, store, shards, encoder, report, *, model_name: str | None, pretrained: str | None, device: str = "auto",
                 batch_size: int = 256, concurrency: int | None = None, overwrite: bool = False,
                 on_progress: ProgressFn | None = None) -> None:
    """Embed ``shards`` on ``cluster`` into ``store`` (already checked and created by ``embed``); fills ``report``."""
    from PIL import Image

    ray = cluster.ray
    gpu = cluster.gpus >= 1
    workers = concurrency or (int(cluster.gpus) if gpu else max(1, int(cluster.cpus) - 1))
    on_server = not store.config.is_lite
    stored = None
    if not overwrite:
        stored = _Stored(store_config=store.config) if on_server else _Stored(ids=ray.put(frozenset(
            row["id"] for rows in store.iter_rows("images", "", ("id",)) for row in rows)))
    shape = tuple(encoder.preprocess(Image.new("RGB", (8, 8))).shape)
    actor_device = device if device != "auto" else ("cuda" if gpu else "cpu")
    actor_device = "cuda" if actor_device.startswith("cuda:") else actor_device  # Ray gives each actor its own GPU, seen as cuda
    report.ray = {**cluster.describe(), "workers": workers, "device": actor_device, "batch_size": batch_size,
                  "writes": "workers (Milvus server)" if on_server else "driver (Milvus Lite)"}
    # Without GPUs the actors share the cores with the read tasks: their CPUs are cut so a read task always fits
    # (an actor pool holding every CPU would leave the reads unscheduled and the job waiting forever).
    read_cpus = 1.0 if gpu else 0.5
    actor_cpus = 1.0 if gpu else max(0.1, min(1.0, (cluster.cpus - read_cpus) / workers))
    ds = ray.data.from_items([{"unit": i} for i in range(len(shards.units))], override_num_blocks=max(1, len(shards.units)))
    ds = ds.map_batches(_read_units, batch_size=1, num_cpus=read_cpus,
                        fn_kwargs={"shards": shards, "preprocess": encoder.preprocess, "stored": stored, "batch_size": batch_size})
    ds = ds.map_batches(_EncodeActor, batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=actor_cpus,
                        num_gpus=1 if gpu and actor_device.startswith("cuda") else 0,
                        fn_constructor_kwargs={"model_name": _absolute(model_name), "pretrained": _absolute(pretrained), "device": actor_device,
                                               "model_info": encoder.model_info, "shape": shape,
                                               "store_config": store.config if on_server else None})
    done, total = 0, shards.total
    try:
        for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
            done += _tally(out, report, None if on_server else store)
            if on_progress is not None:
                on_progress("embedding images", done, total)
    except Exception as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"the Ray job stopped: {one_line(exc)}; what was written is kept: run the command again to resume") from None


def _tally(out: dict, report, store) -> int:
    """Count one output block into ``report`` (writing it first when ``store`` is given); images seen."""
    if store is not None:
        t0 = time.perf_counter()
        write_rows(store, out)
        report.write_seconds += time.perf_counter() - t0
    images = out["kind"] == "images"
    texts = ~images
    stored = out["stored"].astype(bool)
    failed = images & (out["reason"] != "")
    report.images_embedded += int((images & ~stored & ~failed).sum())
    report.images_skipped += int((images & stored).sum())
    report.texts_embedded += int(texts.sum())
    report.captions_dropped += int(out["dropped"].sum())
    report.encode_seconds += float(out["encode_s"].sum())
    report.write_seconds += float(out["write_s"].sum())
    report.failures.extend({"id": str(out["id"][i]), "uri": str(out["uri"][i]), "reason": str(out["reason"][i])} for i in np.flatnonzero(failed))
    return int(images.sum())


def _absolute(value: str | None) -> str | None:
    """A local file named relative to this process's folder, made absolute: Ray workers start elsewhere."""
    import os

    if value and os.path.exists(value):
        return os.path.abspath(value)
    return value
