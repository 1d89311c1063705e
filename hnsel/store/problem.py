"""The strategies' view of the store: ``build_problem`` turns a Milvus store into a ``SelectionProblem``.

Candidates are one modality's unselected unpaired samples; anchors are the other side's paired samples, streamed
with their positives; ``MilvusIndex`` answers the strategies' neighbour searches with filtered Milvus searches.
"""

from __future__ import annotations

import time
from typing import Callable, Iterator, Sequence

import numpy as np

from ..errors import SelectionError
from ..schema import KINDS, MATCH_META_KEY, MODALITIES, ProgressFn
from ..strategies import AnchorChunk, SelectionProblem
from ..strategies.base import positions, sorter_for
from .milvus import MAX_TOPK, Store
from .pools import pool_mismatch

__all__ = ["build_problem", "MilvusIndex", "StoreVectors", "side_kinds", "require_collections"]

ANCHOR_PAGE = 4096  # anchors read per query: each page is one round trip (and ~50 MB of Python floats at dim 512)
LOOKUP_BATCH = 2048  # vectors read by id per batch: ~25 MB of Python floats at dim 512, float32 at once


class MilvusIndex:
    """The strategies' ``NeighborIndex`` on Milvus: ``paired`` and ``candidates`` pools of one collection."""

    def __init__(self, store: Store, kind: str, paired_filter: str, candidate_filter: str, max_limit: int = MAX_TOPK):
        self.store = store
        self.kind = kind
        self.filters = {"paired": paired_filter, "candidates": candidate_filter}
        self.max_limit = max_limit
        self.calls = 0

    def search(self, vectors: np.ndarray, limit: int, pool: str):
        self.calls += 1
        return self.store.search(self.kind, vectors, min(limit, self.max_limit), self.filters[pool])

    def range_search(self, vectors: np.ndarray, radius: Sequence[float], limit: int, pool: str, exclude: Sequence[str] = ()):
        self.calls += 1
        filter = self.store.excluding(self.kind, self.filters[pool], exclude)
        return self.store.search(self.kind, vectors, min(limit, self.max_limit), filter, radius=radius)


class StoreVectors:
    """The ``VectorSource`` of a store: lookups by id, and each side streamed once by a query iterator (memory one batch)."""

    def __init__(self, store: Store, kind: str, filters: dict[str, str], candidate_ids: np.ndarray):
        self.store, self.kind, self.filters, self.candidate_ids = store, kind, filters, candidate_ids
        self._sorter = sorter_for(candidate_ids)

    def paired(self, ids: Sequence[str]) -> np.ndarray:
        """Vectors by id, in that order; read in batches, each turned into float32 at once (not one list of every row)."""
        ids = list(ids)
        out: np.ndarray | None = None
        for start in range(0, len(ids), LOOKUP_BATCH):
            part = ids[start:start + LOOKUP_BATCH]
            rows = {r["id"]: r["vector"] for r in self.store.get(self.kind, part, ["id", "vector"])}
            block = np.asarray([rows[i] for i in part], dtype=np.float32).reshape(len(part), -1)
            if out is None:
                out = np.empty((len(ids), block.shape[1]), dtype=np.float32)
            out[start:start + len(part)] = block
        return out if out is not None else np.zeros((0, 0), dtype=np.float32)

    def candidates(self, indices: Sequence[int]) -> np.ndarray:
        return self.paired([self.candidate_ids[i] for i in indices])

    def candidate_batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Candidates' vectors straight from a query iterator: no lookups by id."""
        for batch in self.store.iter_rows(self.kind, self.filters["candidates"], ("id", "vector"), batch_size):
            ids = np.array([r["id"] for r in batch], dtype=object)
            indices, known = positions(self.candidate_ids, ids, self._sorter)
            yield indices, np.asarray([r["vector"] for r, k in zip(batch, known) if k], dtype=np.float32).reshape(len(indices), -1)

    def paired_batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for batch in self.store.iter_rows(self.kind, self.filters["paired"], ("id", "vector"), batch_size):
            yield np.array([r["id"] for r in batch], dtype=object), np.asarray([r["vector"] for r in batch], dtype=np.float32).reshape(len(batch), -1)


def side_kinds(modality: str) -> tuple[str, str]:
    """(candidate and negative side kind, anchor kind) for a modality."""
    if modality not in MODALITIES:
        raise SelectionError(f"--modality {modality!r}: use image or text")
    return ("images", "texts") if modality == "image" else ("texts", "images")


def _candidates(store: Store, kind: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(candidate ids sorted, their stored uncertainties in that order; None when the collection has no such field or
    a candidate's value is unknown)."""
    fields = ("id", "uncertainty") if store.has_field(kind, "uncertainty") else ("id",)
    rows = [row for batch in store.iter_rows(kind, store.pool_filter(kind, "unpaired", unselected=True), fields, 16384) for row in batch]
    rows.sort(key=lambda r: r["id"])
    ids = np.array([r["id"] for r in rows], dtype=object)
    if len(fields) == 1:
        return ids, None
    values = np.array([r["uncertainty"] for r in rows], dtype=np.float64)
    return ids, values if (values >= 0).all() else None


def _anchor_stream(store: Store, modality: str) -> Callable[[int], Iterator[AnchorChunk]]:
    _, anchor_kind = side_kinds(modality)
    captions_of: dict[str, set[str]] = {}
    if modality == "text":
        for batch in store.iter_rows("texts", store.pool_filter("texts", "paired"), ("id", "image_id")):
            for row in batch:
                captions_of.setdefault(row["image_id"], set()).add(row["id"])

    def positives(row: dict) -> frozenset[str]:
        return frozenset([row["image_id"]]) if modality == "image" else frozenset(captions_of.get(row["id"], ()))

    fields = ("id", "vector", "image_id") if modality == "image" else ("id", "vector")
    with_uncertainty = store.has_field(anchor_kind, "uncertainty")
    fields += ("uncertainty",) if with_uncertainty else ()

    def uncertainty(rows: list[dict]) -> np.ndarray | None:
        values = np.array([r["uncertainty"] for r in rows], dtype=np.float64) if with_uncertainty else None
        return values if values is not None and (values >= 0).all() else None

    def anchors(chunk_size: int) -> Iterator[AnchorChunk]:
        page = max(chunk_size, ANCHOR_PAGE)  # fewer, larger queries; the chunks are cut from each page
        for batch in store.iter_rows(anchor_kind, store.pool_filter(anchor_kind, "paired"), fields, page):
            for start in range(0, len(batch), chunk_size):
                rows = batch[start:start + chunk_size]
                yield AnchorChunk(np.array([r["id"] for r in rows], dtype=object), np.asarray([r["vector"] for r in rows], dtype=np.float32),
                                  tuple(positives(r) for r in rows), uncertainty(rows))

    return anchors


def require_collections(store: Store) -> None:
    for kind in KINDS:
        if not store.has(kind):
            raise SelectionError(f"collection {store.name(kind)} does not exist: the store is empty; run `hnsel ingest` or `hnsel embed` first")


def build_problem(store: Store, modality: str, on_progress: ProgressFn | None = None, max_limit: int | None = None) -> SelectionProblem:
    """The strategies' view of the store for one modality: candidates, anchors, and a Milvus-backed index."""
    side, anchor_kind = side_kinds(modality)
    require_collections(store)
    index = MilvusIndex(store, side, store.pool_filter(side, "paired"), store.pool_filter(side, "unpaired", unselected=True))
    if max_limit is not None:
        index.max_limit = max_limit

    started = time.perf_counter()
    candidate_ids, candidate_uncertainty = _candidates(store, side)
    if not len(candidate_ids):  # a pool mapping that matches nothing says so, instead of "the unpaired pool is empty"
        why = pool_mismatch(store, side)
        if why:
            raise SelectionError(why)
    n_anchors = store.count(anchor_kind, store.pool_filter(anchor_kind, "paired"))
    listed = time.perf_counter() - started
    return SelectionProblem(candidate_ids=candidate_ids, index=index, anchors=_anchor_stream(store, modality), n_anchors=n_anchors,
                            vectors=StoreVectors(store, side, index.filters, candidate_ids), on_progress=on_progress,
                            candidate_uncertainty=candidate_uncertainty, match=store.get_meta(MATCH_META_KEY),
                            timings={"list_candidates": listed})
