"""hnsel on a Ray cluster: shards embedded by a Ray Data actor pool, hard-negative scores summed over anchor shards.

**Embedding** (``hnsel embed SHARDS --ray``) is Ray Data batch inference: one read task per unit (a tar shard or a
Parquet row group) streams its samples, skips the ids already stored, decodes and preprocesses the images with the
model's own transform (the ``ImageItems`` the DataLoader path uses) and yields blocks of ``batch_size``; a pool of
``_EncodeActor``s (``map_batches``; one per GPU when the cluster has GPUs, else CPU actors) holds the model, made by
the same ``load_encoder`` call as the single process, and encodes the images and their paired captions. Writes are
batched upserts, captions before their image: on a Milvus server each actor writes its own batches; a Milvus Lite file
opens in one process only, so there the actors return the vectors and the driver writes them. Failures (unreadable
images, shards cut short) come back as rows and are listed as the single process lists them.

**Selection** (``hnsel select --ray``, strategy ``hardneg`` with full-batch thresholds): the driver streams the paired
anchors once and cuts them into one shard per worker; each Ray task opens the Milvus server, builds the same
``SelectionProblem`` restricted to its anchors and runs ``hardneg_scores``; the driver adds the partial scores and
counts (a candidate's score is a sum over anchors) and ranks as usual, so the picks are the single process's.
Strategies whose score is not a sum over anchors (auto, coreset, density, random, ascmr) and mini-batch thresholds
(one shuffle over all anchors) are refused with ``--ray``: they run on one process, without it.

Ray is imported only here, and only when ``--ray`` is given.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import socket
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..config import StoreConfig
from ..errors import InputError, SelectionError
from ..schema import UNKNOWN_UNCERTAINTY, ProgressFn, same_model

__all__ = ["Cluster", "connect", "check_embed_ray", "embed_shards", "check_select_ray", "select_hardneg", "LAKE_HINT"]

LAKE_HINT = "pip install 'hnsel[lake]'"
CONNECT_TIMEOUT_S = 5.0
LOCAL_ADDRESSES = ("", "local", "auto")  # handed to ray.init as they are; no reachability check first


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise InputError(f"--ray needs Ray Data: {LAKE_HINT}") from None
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of ``ray://host:port`` or ``host:port``; None for an address without a port."""
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rstrip("/").rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def _check_reachable(address: bool | str) -> None:
    """An explicit address must answer on its port within a few seconds: a typo fails at once, in one line."""
    if not isinstance(address, str) or address in LOCAL_ADDRESSES:
        return
    where = _host_port(address)
    if where is None:
        raise InputError(f"--ray-address {address!r}: give host:port (the head's GCS port, 6379) or ray://host:port (Ray Client, 10001)")
    try:
        socket.create_connection(where, timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise InputError(f"cannot reach Ray at {address} ({exc.strerror or type(exc).__name__}); check the address and that the cluster is up") from None


@dataclass
class Cluster:
    """A Ray connection: ``close()`` shuts down only what ``connect`` started."""

    ray: Any
    address: str
    started: bool
    cpus: float
    gpus: float

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()

    def describe(self) -> dict:
        return {"address": self.address, "cpus": self.cpus, "gpus": self.gpus}


def connect(address: bool | str = True) -> Cluster:
    """Connect to Ray: ``True`` or ``""`` lets Ray find its cluster (``RAY_ADDRESS``, one started on this machine, else a
    new local one); ``"local"`` starts a local one; else an address (``host:6379``, ``ray://host:10001``, ``auto``).
    A process already connected (``ray.init`` by the caller) is used as it is."""
    ray = _import_ray()
    _check_reachable(address)
    started = False
    if not ray.is_initialized():
        target = None if address is True or address == "" else str(address)
        try:
            ray.init(address=target, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        except Exception as exc:  # ConnectionError, RuntimeError, ValueError: Ray's own words, on one line
            raise InputError(f"cannot connect to Ray at {target or 'the default address'}: {' '.join(str(exc).split())[:300]}") from None
        started = True
    _quiet(ray)
    resources = ray.cluster_resources()
    name = address if isinstance(address, str) and address else "default"
    return Cluster(ray, name, started, float(resources.get("CPU", 0)), float(resources.get("GPU", 0)))


def _quiet(ray: Any) -> None:
    """No Ray Data progress bars or execution logs: hnsel's own progress (stderr) and ``--json`` (stdout) stay clean."""
    ctx = ray.data.DataContext.get_current()
    for name, value in (("enable_progress_bars", False), ("print_on_execution_start", False), ("enable_auto_log_stats", False),
                        ("verbose_stats_logs", False), ("enable_operator_progress_bars", False)):
        if hasattr(ctx, name):
            setattr(ctx, name, value)
    for logger in ("ray", "ray.data"):
        logging.getLogger(logger).setLevel(logging.ERROR)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:400] + ("..." if len(text) > 400 else "")


# --- embedding -------------------------------------------------------------------------------

def check_embed_ray(source: Any, address: bool | str, batch_size: int, concurrency: int | None, image_column: str | None = None) -> None:
    """Before any work: Ray importable, the flags sane, the source shards, an explicit address reachable."""
    from ..data.shards import SHARD_FORMATS
    from ..data.sources import detect_format

    if batch_size < 1:
        raise InputError(f"--ray-batch-size {batch_size}: use 1 or more")
    if concurrency is not None and concurrency < 1:
        raise InputError(f"--ray-concurrency {concurrency}: use 1 or more (default: one actor per GPU, else CPUs - 1)")
    kind = detect_format(source, image_column)
    if kind not in SHARD_FORMATS:
        raise InputError(f"--ray reads WebDataset shards or Parquet files with image bytes; this is a {kind}: run it without --ray", path=source)
    _import_ray()
    _check_reachable(address)


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
    from .embed import record_problem

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
        raise InputError(f"the Ray job stopped: {_one_line(exc)}; what was written is kept: run the command again to resume") from None


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


# --- selection -------------------------------------------------------------------------------

def check_select_ray(chosen: Any, store_config: StoreConfig, address: bool | str, workers: int | None = None) -> None:
    """Before any work: a strategy whose score adds over anchors, full-batch thresholds, a Milvus server, Ray reachable."""
    from ..strategies.hardneg import HardNegative

    if not isinstance(chosen, HardNegative):
        raise SelectionError(f"--ray distributes --strategy hardneg, whose score is a sum over paired anchors; {getattr(chosen, 'name', chosen)!r} "
                             "is not (it ranks the pool as a whole): run it without --ray, on one process")
    if chosen.batch != "full":
        raise SelectionError("--ray needs --batch full: mini-batch thresholds shuffle all anchors together; run --batch mini without --ray")
    if store_config.is_lite:
        raise SelectionError("--ray needs a Milvus server (--milvus-uri http://host:19530): every Ray task searches the store, and a Milvus "
                             "Lite file opens in one process only")
    if workers is not None and workers < 1:
        raise SelectionError(f"--ray-workers {workers}: use 1 or more (default: the cluster's CPUs)")
    _import_ray()
    _check_reachable(address)


def _score_shard(store_config: StoreConfig, modality: str, chosen: Any, chunks: list, engine: str, device: str | None,
                 max_limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """One Ray task: ``hardneg_scores`` over the store's problem restricted to ``chunks`` of anchors; the candidates it
    scored (ids, scores, violation counts) and its stats."""
    from ..store import build_problem, open_store

    with open_store(store_config) as store:
        problem = build_problem(store, modality, None, max_limit)
        problem = dataclasses.replace(problem, anchors=lambda chunk_size: iter(chunks), n_anchors=sum(len(c.ids) for c in chunks))
        problem.engine, problem.device = engine, device
        scores, counts, stats = chosen.scores(problem, np.random.default_rng(0))  # full batch: no draw is made
    hit = np.flatnonzero(counts)
    return problem.candidate_ids[hit], scores[hit], counts[hit], stats


def _anchor_shards(problem, chunk_size: int, per_task: int) -> Iterator[list]:
    """The anchor stream cut into lists of chunks of about ``per_task`` anchors, read once."""
    group, size = [], 0
    for chunk in problem.anchors(chunk_size):
        group.append(chunk)
        size += len(chunk.ids)
        if size >= per_task:
            yield group
            group, size = [], 0
    if group:
        yield group


def select_hardneg(store, problem, chosen, budget: int, rng: np.random.Generator, modality: str, *, address: bool | str = True,
                   workers: int | None = None):
    """``chosen.select(problem, budget, rng)`` for ``hardneg``, its scores computed by Ray tasks over anchor shards."""
    from ..strategies.base import check_budget, positions, sorter_for
    from ..strategies.hardneg import chance_stats, rank_with_fill

    check_budget(budget, len(problem.candidate_ids))
    if problem.n_anchors == 0:
        raise SelectionError("no paired data: hardneg needs paired captions and images; ingest or embed a paired set first")
    cluster = connect(address)
    try:
        ray = cluster.ray
        tasks = max(1, min(workers or max(1, int(cluster.cpus)), math.ceil(problem.n_anchors / chosen.chunk_size)))
        per_task = math.ceil(problem.n_anchors / tasks)
        remote = ray.remote(num_cpus=1, max_retries=1)(_score_shard)
        pending, sizes, positives = [], {}, {}
        for group in _anchor_shards(problem, chosen.chunk_size, per_task):
            for chunk in group:
                for pos in chunk.positives:
                    positives[pos] = positives.get(pos, 0) + 1
            ref = remote.remote(store.config, modality, chosen, group, problem.engine, problem.device, problem.index.max_limit)
            pending.append(ref)
            sizes[ref] = sum(len(c.ids) for c in group)
        ids = problem.candidate_ids
        sorter = sorter_for(ids)
        scores, counts = np.zeros(len(ids)), np.zeros(len(ids), np.int64)
        stats, done, parts = {}, 0, 0
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            try:
                hit_ids, hit_scores, hit_counts, part = ray.get(ready[0])
            except Exception as exc:
                raise SelectionError(f"a Ray task stopped: {_one_line(exc)}") from None
            at, known = positions(ids, np.asarray(hit_ids, dtype=object), sorter)
            np.add.at(scores, at, np.asarray(hit_scores)[known])
            np.add.at(counts, at, np.asarray(hit_counts)[known])
            part["unknown_hits"] = part.get("unknown_hits", 0) + int((~known).sum())  # candidates the driver does not list
            _merge(stats, part)
            done += sizes[ready[0]]
            parts += 1
            problem.progress("scoring anchors", done, problem.n_anchors)
    finally:
        cluster.close()
    stats.update(chance_stats(counts, _negatives(store, modality, positives) if stats.get("thresholds") == "exact in memory" else None, chosen.k))
    stats["ray"] = {**cluster.describe(), "tasks": parts}
    return rank_with_fill(ids, scores, counts, budget, rng, "hardneg", chosen.__dict__.copy(), stats)


CHANCE_KEYS = ("violations", "expected_violations", "violation_excess", "violator_spread")


def _merge(stats: dict, part: dict) -> None:
    """Counters add up; anything else (engine, thresholds) is the first task's; chance statistics are recomputed."""
    for key, value in part.items():
        if key in CHANCE_KEYS:
            continue
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and key in stats:
            stats[key] += int(value)
        else:
            stats.setdefault(key, value)


def _negatives(store, modality: str, positives: dict[frozenset, int]) -> dict[frozenset, list[int]]:
    """``chance_stats``'s tally, as one process makes it: per positive set, [its negatives among the paired side, anchors]."""
    from ..store.problem import side_kinds

    side, _ = side_kinds(modality)
    paired = {row["id"] for rows in store.iter_rows(side, store.pool_filter(side, "paired"), ("id",)) for row in rows}
    return {pos: [len(paired) - sum(p in paired for p in pos), n] for pos, n in positives.items()}
