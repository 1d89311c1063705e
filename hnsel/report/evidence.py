"""Why each pick was picked, recomputed from the stored vectors with hardneg's own threshold code.

For modality ``image`` the anchors are the paired captions and the negatives' side the paired images (mirrored
for ``text``). The paired state is the one the selection saw: the paired side now, less the picks themselves and,
for a recorded round N, less everything selected in round N or later (annotated since). Per anchor chunk,
``full_threshold_setters`` (hardneg.py) gives each caption's threshold ``xi_j`` and the paired image that sets
it; the picks' similarities to the chunk are one (picks x chunk) product, and each pick keeps only its ``top``
largest surpluses ``s - xi_j``: memory O(picks x top + paired side), never picks x anchors. The paired side is
held in memory when it fits in ``paired_mb`` (as ``hnsel select`` does), else thresholds and nearest paired
samples come from Milvus searches (exact on FLAT).

Full-batch thresholds are used whatever the round used: a mini-batch threshold is never higher, so every
violation shown is also a violation of the mini-batch condition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ..store.problem import MilvusIndex, StoreVectors
from ..store import Store
from ..strategies import AnchorChunk, SelectionProblem
from ..strategies.thresholds import PairedSide, full_threshold_setters

__all__ = ["PairedState", "paired_state", "Evidence", "hardneg_evidence", "nearest_paired", "sample_ids"]

BLOCK_FLOATS = 2**22  # entries per (picks x anchors) or (picks x paired) block: a few float64 temporaries of 32 MB


@dataclass
class PairedState:
    """The paired state a selection saw, as a ``SelectionProblem`` (anchors, index, paired stream) plus its parts."""

    problem: SelectionProblem
    side: str  # the candidates' and negatives' collection: images for modality image
    anchor_kind: str
    paired_filter: str
    excluded: set[str]
    paired: PairedSide | None  # the negatives' side in memory, None when larger than paired_mb


def _later_selected(store: Store, side: str, round_: int | None) -> set[str]:
    if round_ is None or not store.has_field(side, "round"):
        return set()
    expr = store.where(side, pool="paired", min_round=round_)
    return {r["id"] for batch in store.iter_rows(side, expr, ("id",)) for r in batch}


class _PairedAsItWas(StoreVectors):
    """The paired side as the round saw it: the store's vectors less the samples paired since (``excluded``)."""

    def __init__(self, store: Store, side: str, paired_filter: str, excluded: set[str]):
        super().__init__(store, side, {"paired": paired_filter}, np.array([], dtype=object))
        self.excluded = excluded

    def paired_batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for ids, vectors in super().paired_batches(batch_size):
            keep = np.array([i not in self.excluded for i in ids], dtype=bool)
            yield ids[keep], vectors[keep]


def paired_state(store: Store, modality: str, pick_ids: list[str], round_: int | None, paired_mb: float) -> PairedState:
    side, anchor_kind = ("images", "texts") if modality == "image" else ("texts", "images")
    excluded = set(pick_ids) | _later_selected(store, side, round_)
    earlier = round_ is not None and store.has_field(side, "round")
    paired_filter = store.where(side, pool="paired", below_round=round_ if earlier else None)
    index = MilvusIndex(store, side, paired_filter, store.pool_filter(side, "unpaired"))

    captions_of: dict[str, set[str]] = {}
    if modality == "text":
        for batch in store.iter_rows("texts", store.pool_filter("texts", "paired"), ("id", "image_id")):
            for r in batch:
                if r["id"] not in excluded:
                    captions_of.setdefault(r["image_id"], set()).add(r["id"])
    fields = ("id", "vector", "image_id") if modality == "image" else ("id", "vector")

    def anchors(chunk_size: int) -> Iterator[AnchorChunk]:
        for batch in store.iter_rows(anchor_kind, store.pool_filter(anchor_kind, "paired"), fields, chunk_size):
            rows = [r for r in batch if modality == "text" or r["image_id"] not in excluded]
            for start in range(0, len(rows), chunk_size):
                part = rows[start:start + chunk_size]
                positives = tuple(frozenset([r["image_id"]]) if modality == "image" else frozenset(captions_of.get(r["id"], ())) for r in part)
                yield AnchorChunk(np.array([r["id"] for r in part], dtype=object),
                                  np.asarray([r["vector"] for r in part], dtype=np.float32).reshape(len(part), -1), positives)

    n_anchors = store.count(anchor_kind, store.pool_filter(anchor_kind, "paired"))
    problem = SelectionProblem(candidate_ids=np.array(pick_ids, dtype=object), index=index, anchors=anchors, n_anchors=n_anchors,
                               vectors=_PairedAsItWas(store, side, paired_filter, excluded))
    return PairedState(problem, side, anchor_kind, paired_filter, excluded, PairedSide.load(problem, paired_mb))


@dataclass
class Evidence:
    """Per pick: violations and summed surplus now, and its ``top`` most violated anchors (best first)."""

    violations: np.ndarray
    surplus: np.ndarray
    anchors: list[list[dict]]  # {"anchor", "positive", "sim", "xi", "setter"} per violated anchor
    anchors_seen: int


def _merge_top(best: tuple[np.ndarray, np.ndarray, np.ndarray], vals: np.ndarray, sims: np.ndarray, offset: int, top: int):
    """Keep each row's ``top`` largest ``vals`` over (kept so far) + (this block); -inf marks no entry."""
    if vals.shape[1] > top:
        part = np.argpartition(-vals, top - 1, axis=1)[:, :top]
    else:
        part = np.broadcast_to(np.arange(vals.shape[1]), vals.shape)
    all_v = np.hstack([best[0], np.take_along_axis(vals, part, 1)])
    all_s = np.hstack([best[1], np.take_along_axis(sims, part, 1)])
    all_i = np.hstack([best[2], part + offset])
    keep = np.argpartition(-all_v, top - 1, axis=1)[:, :top]
    return tuple(np.take_along_axis(a, keep, 1) for a in (all_v, all_s, all_i))


def hardneg_evidence(state: PairedState, pick_vectors: np.ndarray, k: int = 1, top: int = 3, chunk_size: int = 512,
                     on_progress=None) -> Evidence:
    """Violations of every pick against every anchor, the ``top`` largest surpluses kept with who set each threshold.

    ``on_progress(task, done, total)`` after each anchor chunk (``total``: paired anchors, a few may be left out)."""
    n = len(pick_vectors)
    best = (np.full((n, top), -np.inf), np.zeros((n, top)), np.full((n, top), -1, dtype=np.int64))
    violations, surplus = np.zeros(n, dtype=np.int64), np.zeros(n)
    anchor_ids: list = []
    anchor_xi: list = []
    anchor_setters: list = []
    anchor_positive: list = []
    for chunk in state.problem.anchors(chunk_size):
        xi, setters = full_threshold_setters(chunk, state.problem.index, k, state.paired)
        limit = np.where(np.isnan(xi), np.inf, xi)
        rows = max(1, BLOCK_FLOATS // max(1, len(chunk.ids)))
        for start in range(0, n, rows):
            sims = (pick_vectors[start:start + rows] @ chunk.vectors.T).astype(np.float64)
            viol = sims > limit
            over = np.where(viol, sims - limit, -np.inf)
            violations[start:start + rows] += viol.sum(1)
            surplus[start:start + rows] += np.where(viol, over, 0.0).sum(1)
            merged = _merge_top(tuple(b[start:start + rows] for b in best), over, sims, len(anchor_ids), top)
            for b, m in zip(best, merged):
                b[start:start + rows] = m
        anchor_ids.extend(chunk.ids)
        anchor_xi.extend(xi)
        anchor_setters.extend(setters)
        anchor_positive.extend(sorted(p)[0] if p else None for p in chunk.positives)
        if on_progress is not None:
            on_progress("evidence: paired anchors", len(anchor_ids), max(state.problem.n_anchors, len(anchor_ids)))
    out = []
    for r in range(n):
        order = np.argsort(-best[0][r], kind="stable")
        out.append([{"anchor": anchor_ids[j], "positive": anchor_positive[j], "sim": float(best[1][r, o]), "xi": float(anchor_xi[j]),
                     "setter": anchor_setters[j]}
                    for o in order if np.isfinite(best[0][r, o]) for j in [int(best[2][r, o])]])
    return Evidence(violations, surplus, out, len(anchor_ids))


def nearest_paired(state: PairedState, pick_vectors: np.ndarray) -> list[tuple[str | None, float | None]]:
    """(id, cosine distance) of each pick's nearest paired sample on its own side; (None, None) when none is paired."""
    paired = state.paired
    if paired is None:
        hits = state.problem.index.search(pick_vectors, 1, "paired")
        return [(str(ids[0]), 1.0 - float(sims[0])) if len(ids) else (None, None) for ids, sims in hits]
    if len(paired.ids) == 0:
        return [(None, None)] * len(pick_vectors)
    out = []
    rows = max(1, BLOCK_FLOATS // len(paired.ids))
    for start in range(0, len(pick_vectors), rows):
        sims = pick_vectors[start:start + rows] @ paired.vectors.T
        at = sims.argmax(axis=1)
        out.extend((str(paired.ids[a]), 1.0 - float(sims[i, a])) for i, a in enumerate(at))
    return out


def sample_ids(batches: Iterator[list[str]], n: int, rng: np.random.Generator) -> tuple[list[str], int]:
    """A uniform sample of at most ``n`` ids from a stream (random keys, the ``n`` smallest kept), and the total."""
    kept_ids: np.ndarray = np.array([], dtype=object)
    kept_keys = np.array([])
    total = 0
    for ids in batches:
        total += len(ids)
        keys = np.concatenate([kept_keys, rng.random(len(ids))])
        pool = np.concatenate([kept_ids, np.asarray(ids, dtype=object)])
        keep = np.argsort(keys, kind="stable")[:n]
        kept_ids, kept_keys = pool[keep], keys[keep]
    return sorted(kept_ids.tolist()), total
