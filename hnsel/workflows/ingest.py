"""``hnsel ingest`` (precomputed vectors into the store) and ``hnsel status`` (what the store holds)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import HnselConfig
from ..errors import InputError
from ..schema import KINDS, MODEL_META_KEY, POOLS, REEMBED_META_KEY, ProgressFn
from ..store import Store, open_store
from ..store.leases import describe_owner, is_dead
from ..data.vector_files import FileSummary, VectorFile, normalised_batches, validate_file
from .repair import unfinished
from .rounds import list_rounds

__all__ = ["ingest", "IngestReport", "status", "model_summary"]


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


def ingest(config: HnselConfig, images: str | Path | None = None, texts: str | Path | None = None,
           on_progress: ProgressFn | None = None) -> IngestReport:
    """Validate both files completely, then upsert them (images first). A bad file writes nothing."""
    if images is None and texts is None:
        raise InputError("nothing to ingest: pass --images FILE and/or --texts FILE")
    files = {kind: VectorFile(Path(p), kind) for kind, p in (("images", images), ("texts", texts)) if p is not None}
    with open_store(config.store) as store:
        for kind in files:  # a read_only collection is refused before anything is written, not between the two files
            if store.read_only(kind):
                raise InputError(f"collection {store.name(kind)} is configured read_only in hnsel.toml; nothing was ingested "
                                 f"(drop --{kind} or the read_only flag)", path=files[kind].path)
        dim = store.dim
        summaries: dict[str, FileSummary] = {}
        for kind, vf in files.items():
            summaries[kind] = validate_file(vf, dim)
            dim = summaries[kind].dim
        if "texts" in files:
            _check_paired_texts(store, files["texts"], summaries["texts"], summaries.get("images"))
        if "images" in files and store.has("texts"):
            _check_unpairing(store, files["images"], summaries["images"], summaries.get("texts"))
        store.ensure_collections(dim)
        report = IngestReport(dim=dim)
        for kind, vf in files.items():
            written = 0
            for data in normalised_batches(vf):
                written += store.upsert(kind, data)
                if on_progress:
                    on_progress(f"ingest {kind}", written, summaries[kind].rows)
            setattr(report, kind, written)
        return report


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
        out["selected"] = selected
        out["model"] = model_summary(store.get_meta(MODEL_META_KEY))
        out["collections"] = {kind: store.name(kind) for kind in KINDS}
        pending = store.get_meta(REEMBED_META_KEY)
        out["reembed"] = None if pending is None else {"model": model_summary(pending.get("model")), "collections": pending.get("collections"),
                                                       "stopped": is_dead(pending), "holder": describe_owner(pending)}
        if rounds:
            out["rounds"] = list_rounds(store)
            out["unfinished"] = unfinished(store)
        return out
