"""``hnsel ingest`` (precomputed vectors into the store) and ``hnsel status`` (what the store holds)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import HnselConfig
from ..errors import HnselError, InputError, ModelMismatchError
from ..schema import KINDS, MODEL_META_KEY, POOLS, REEMBED_META_KEY, ProgressFn, describe_model
from ..store import Store, open_store
from ..store.leases import describe_owner, is_dead, row_lock
from ..data.vector_files import FileSummary, VectorFile, normalised_batches, validate_file
from .journal import begin_ingest, end_ingest, file_stamp
from .repair import lost_marks, unfinished
from ..store.pools import picked_in_meta, pool_mismatch
from .rounds import list_rounds

__all__ = ["ingest", "IngestReport", "status", "finish_ingest", "model_summary"]


@dataclass
class IngestReport:
    images: int = 0
    texts: int = 0
    dim: int | None = None


def _check_paired_texts(store: Store, texts: VectorFile, summary: FileSummary, images: FileSummary | None) -> None:
    """Every paired text names a paired image: in this ingest's images file, or already paired in the store."""
    pending = {i: row for i, row in summary.image_ids.items() if images is None or i not in images.paired_ids}
    if images is not None:
        for image_id, row in pending.items():
            if image_id in images.unpaired_ids:
                raise InputError(f"paired text names image {image_id!r}, which the images file makes unpaired", path=texts.path, row=row)
    ids = sorted(pending)
    found = {r["id"]: r["pool"] for r in store.get("images", ids, ["id", "pool"])}
    for image_id in ids:
        if found.get(image_id) != "paired":
            state = "not in the store" if image_id not in found else "unpaired in the store"
            raise InputError(f"paired text names image {image_id!r}, which is {state}; ingest it as a paired image first (or in the same call)",
                             path=texts.path, row=pending[image_id])


def _check_unpairing(store: Store, images: VectorFile, summary: FileSummary, texts: FileSummary | None) -> None:
    """An image made unpaired must not keep paired captions in the store (unless they are re-ingested too)."""
    ids = sorted(summary.unpaired_ids)
    for start in range(0, len(ids), 500):
        expr = store.where("texts", pool="paired", image_ids=ids[start:start + 500])
        for batch in store.iter_rows("texts", expr, ("id", "image_id")):
            for row in batch:
                if texts is None or row["id"] not in texts.paired_ids | texts.unpaired_ids:
                    raise InputError(f"image {row['image_id']!r} would become unpaired but paired text {row['id']!r} in the store describes it; "
                                     "re-ingest that text too or keep the image paired", path=images.path)


def _check_pending(store: Store, images: VectorFile, summary: FileSummary, texts: FileSummary | None) -> None:
    """An image a round picked and no one annotated yet (pending) made paired must bring its captions: in this call's
    texts file or already paired in the store. Without them it would count as annotated with nothing describing it."""
    if not summary.paired_ids or not store.has("images") or not store.has_field("images", "round"):
        return
    expr = store.where("images", pool="unpaired", min_round=1)
    pending = {r["id"]: int(r["round"]) for batch in store.iter_rows("images", expr, ("id", "round")) for r in batch if r["id"] in summary.paired_ids}
    ids = sorted(set(pending) - set(texts.image_ids if texts is not None else ()))
    described: set[str] = set()
    for start in range(0, len(ids), 500):
        expr = store.where("texts", pool="paired", image_ids=ids[start:start + 500])
        described |= {r["image_id"] for batch in store.iter_rows("texts", expr, ("id", "image_id")) for r in batch}
    for image_id in ids:
        if image_id not in described:
            number = pending[image_id]
            raise InputError(f"image {image_id!r} is pending in round {number} (selected, not annotated): made paired without a caption it "
                             f"would count as annotated; add its captions to --texts, import them with `hnsel annotate import`, or "
                             f"release the round first (hnsel round release --round {number})", path=images.path)


def _check_model(store: Store, files: dict[str, VectorFile], model_name: str | None) -> None:
    """Vectors from a file carry no model: refused where the store holds a model's vectors, unless ``model_name`` says
    they are that model's (the mirror of ``Store.check_model``, which refuses a model's vectors beside file vectors)."""
    held = store.get_meta(MODEL_META_KEY)
    where = f"namespace {store.config.namespace!r} at {store.config.safe_uri}"
    path = next(iter(files.values())).path
    if held is None:
        if model_name is not None:
            raise InputError(f"--model-name {model_name!r}: {where} has no model record (its vectors, if any, came from files); drop --model-name", path=path)
        return
    if model_name is None:
        raise ModelMismatchError(f"{path}: {where} holds vectors of {describe_model(held)}, and vectors from a file name no model; mixing embedding "
                                 f"spaces would corrupt every search: ingest into a new --namespace, or, if {held.get('model_name')} computed "
                                 f"these vectors, say so with --model-name {held.get('model_name')}")
    if model_name != held.get("model_name"):
        raise ModelMismatchError(f"{path}: --model-name {model_name!r}, but {where} holds vectors of {describe_model(held)}; use a new --namespace")


def ingest(config: HnselConfig, images: str | Path | None = None, texts: str | Path | None = None,
           on_progress: ProgressFn | None = None, model_name: str | None = None) -> IngestReport:
    """Validate both files completely, then upsert them (images first). A bad file writes nothing.

    ``model_name``: the model that computed the vectors, required (and checked) when the store holds a model's vectors.
    A column the file lacks (``uri``, ``text``, ``image_id``) leaves the stored value of a row as it is. The write holds
    the row lock (no round marks these rows meanwhile) and a journal (``journal.begin_ingest``): a stopped ingest is
    shown by ``hnsel status``, refused by ``hnsel select``, finished by ``hnsel round repair`` or by running it again.
    """
    if images is None and texts is None:
        raise InputError("nothing to ingest: pass --images FILE and/or --texts FILE")
    files = {kind: VectorFile(Path(p), kind) for kind, p in (("images", images), ("texts", texts)) if p is not None}
    with open_store(config.store) as store:
        return _ingest_files(store, files, on_progress, model_name)


def _ingest_files(store: Store, files: dict[str, VectorFile], on_progress: ProgressFn | None, model_name: str | None) -> IngestReport:
    for kind in files:  # a read_only collection is refused before anything is written, not between the two files
        if store.read_only(kind):
            raise InputError(f"collection {store.name(kind)} is configured read_only in hnsel.toml; nothing was ingested "
                             f"(drop --{kind} or the read_only flag)", path=files[kind].path)
    _check_model(store, files, model_name)
    dim = store.dim
    summaries: dict[str, FileSummary] = {}
    for kind, vf in files.items():
        summaries[kind] = validate_file(vf, dim)
        dim = summaries[kind].dim
    with row_lock(store):  # from the checks of stored rows to the last write: no round marks these rows meanwhile
        store.sync()
        if "texts" in files:
            _check_paired_texts(store, files["texts"], summaries["texts"], summaries.get("images"))
        if "images" in files:
            _check_pending(store, files["images"], summaries["images"], summaries.get("texts"))
            if store.has("texts"):
                _check_unpairing(store, files["images"], summaries["images"], summaries.get("texts"))
        store.ensure_collections(dim)
        journal = begin_ingest(store, {k: str(vf.path.resolve()) for k, vf in files.items()}, {k: s.rows for k, s in summaries.items()}, model_name)
        try:
            report = _write(store, files, summaries, dim, on_progress)
        except BaseException:
            journal.stop()  # the record stays: status, select and repair see the partial ingest
            raise
        end_ingest(store, journal)
    return report


def _write(store: Store, files: dict[str, VectorFile], summaries: dict[str, FileSummary], dim: int | None,
           on_progress: ProgressFn | None) -> IngestReport:
    report = IngestReport(dim=dim)
    for kind, vf in files.items():
        written = 0
        for data in normalised_batches(vf):
            written += store.upsert(kind, data)
            if on_progress:
                on_progress(f"ingest {kind}", written, summaries[kind].rows)
        setattr(report, kind, written)
    return report


def finish_ingest(store: Store, key: str, record: dict, force: bool = False) -> tuple[bool, str]:
    """(done, one line): an ingest a stopped process left unfinished, run again from its files when they are unchanged
    (size and modification time); else left for the user (``force``: its record dropped, the rows it wrote kept)."""
    files = dict(record.get("files") or {})
    where = f"ingest of {', '.join(files.values())} by {describe_owner(record)}, which stopped,"
    stamps = record.get("stamps") or {}
    changed = [p for k, p in files.items() if not os.path.isfile(p) or file_stamp(p) != list(stamps.get(k) or [])]
    if changed and force:
        store.delete_meta([key])
        return True, f"{where} cannot be finished ({changed[0]} changed or is gone): dropped its record, kept the rows it wrote; ingest again to complete them"
    if changed:
        return False, (f"{where} cannot be finished: {changed[0]} changed since or is gone; run `hnsel ingest` again with its files "
                       "(or `hnsel round repair --force` to drop its record and keep the rows it wrote)")
    try:
        report = _ingest_files(store, {k: VectorFile(Path(p), k) for k, p in files.items()}, None, record.get("model_name"))
    except HnselError as exc:
        return False, f"{where} cannot be finished: {exc}"
    return True, f"{where} finished from its files ({report.images} images and {report.texts} texts written)"


def model_summary(record: dict | None) -> dict | None:
    """What ``hnsel status`` says of the store's model record: name, weights (a checkpoint's path) and the digest that
    identifies them, heads, dimension; None for a store without a record (vectors ingested from files)."""
    if not record:
        return None
    weights = str(record.get("weights") or "")
    return {"model_name": record.get("model_name"), "pretrained": record.get("pretrained"), "dim": record.get("dim"),
            "checkpoint_sha256": weights.partition(":")[2] if weights.startswith("sha256:") else None, "weights": weights or None,
            "base_pretrained": record.get("base_pretrained"), "heads_sha256": record.get("heads_sha256")}


def status(config: HnselConfig, rounds: bool = False) -> dict[str, Any]:
    """Counts per collection and pool, the vector dimension, and how many samples carry a round;
    with ``rounds``, also one summary per logged round (``rounds.list_rounds``)."""
    with open_store(config.store) as store:
        out: dict[str, Any] = {}
        selected = 0
        for kind in KINDS:
            out[kind] = {pool: store.count(kind, store.pool_filter(kind, pool)) for pool in POOLS}
            if store.has(kind) and store.has_field(kind, "round"):
                selected += store.count(kind, store.where(kind, min_round=0))
        out["dim"] = store.dim
        out["selected"] = selected + sum(len(picked_in_meta(store, kind)) for kind in KINDS if store.has(kind) and store.rounds_in_meta(kind))
        warnings = [why for kind in KINDS if (why := pool_mismatch(store, kind))]
        if warnings:  # only when a pool mapping matches nothing
            out["warnings"] = warnings
        out["model"] = model_summary(store.get_meta(MODEL_META_KEY))
        out["collections"] = {kind: store.name(kind) for kind in KINDS}
        pending = store.get_meta(REEMBED_META_KEY)
        out["reembed"] = None if pending is None else {"model": model_summary(pending.get("model")), "collections": pending.get("collections"),
                                                       "stopped": is_dead(pending), "holder": describe_owner(pending)}
        if rounds:
            out["rounds"] = list_rounds(store)
            out["unfinished"] = unfinished(store) + lost_marks(out["rounds"])
        return out
