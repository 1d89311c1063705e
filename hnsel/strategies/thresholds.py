"""Thresholds ``xi_j`` of the hard-negative condition (ALGORITHM.md), shared by both engines (``hardneg.py``'s searches
and ``exact.py``'s products) and by ``hnsel report``: full batch (the paired side in memory when it fits, else a
top-(k + positives) search among paired samples), mini batch (the anchors' seeded training batches), and each
anchor's similarity to its own positives (the ``semi`` window's upper bound).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Iterable, Sequence

import numpy as np

from ..errors import SelectionError
from .base import AnchorChunk, NeighborIndex, SelectionProblem

__all__ = ["kth_threshold", "PairedSide", "full_thresholds", "full_threshold_setters", "minibatch_thresholds", "positive_similarities",
           "anchor_chunks_with_thresholds", "chance_stats"]


def kth_threshold(sims: np.ndarray, k: int) -> float:
    """The k-th largest of ``sims``; the smallest when there are fewer than k; NaN when empty."""
    if len(sims) == 0:
        return float("nan")
    if len(sims) < k:
        return float(np.min(sims))
    return float(np.partition(-np.asarray(sims, dtype=np.float64), k - 1)[k - 1] * -1)


@dataclass(frozen=True)
class PairedSide:
    """The negatives' side held in memory (ids and unit vectors) for exact full-batch thresholds."""

    ids: np.ndarray
    vectors: np.ndarray

    @classmethod
    def load(cls, problem: SelectionProblem, max_mb: float) -> "PairedSide | None":
        """Stream the paired side from ``problem``; None when it has no source or holds more than ``max_mb`` MB."""
        batches = problem.paired_batches() if max_mb > 0 else None
        if batches is None:
            return None
        ids, vecs, size = [], [], 0
        for b_ids, b_vecs in batches:
            size += np.asarray(b_vecs).size * 4
            if size > max_mb * 2**20:
                return None
            ids.append(np.asarray(b_ids, dtype=object))
            vecs.append(np.asarray(b_vecs, dtype=np.float32))
        if not ids:
            return cls(np.array([], dtype=object), np.zeros((0, 0), np.float32))
        return cls(np.concatenate(ids), np.concatenate(vecs))

    @cached_property
    def column(self) -> dict[str, int]:
        """Paired id -> row of ``vectors``, built once and kept for every chunk."""
        return {x: i for i, x in enumerate(self.ids)}

    def thresholds(self, chunk: AnchorChunk, k: int, block_floats: int = 2**24) -> np.ndarray:
        """Exact full-batch ``xi_j`` by chunked matrix products: memory ``block_floats`` floats, not anchors x paired."""
        return self.threshold_setters(chunk, k, block_floats)[0]

    def threshold_setters(self, chunk: AnchorChunk, k: int, block_floats: int = 2**24) -> tuple[np.ndarray, np.ndarray]:
        """(``xi_j``, the id of the negative whose similarity is ``xi_j``; None where there is no negative).

        The setter is the anchor's k-th most similar negative (``hnsel report`` shows it: "confused with this one").
        """
        n = len(self.ids)
        xi = np.full(len(chunk.ids), np.nan, dtype=np.float64)
        setters = np.full(len(chunk.ids), None, dtype=object)
        if n == 0:
            return xi, setters
        column = self.column
        rows = max(1, block_floats // n)
        for start in range(0, len(chunk.ids), rows):
            sims = np.asarray(chunk.vectors[start:start + rows], dtype=np.float32) @ self.vectors.T
            cells = [(r, column[p]) for r, pos in enumerate(chunk.positives[start:start + rows]) for p in pos if p in column]
            n_neg = np.full(len(sims), n)
            if cells:  # positives are never negatives: masked below every similarity, counted out
                r_idx, c_idx = np.array(cells, dtype=np.int64).T
                sims[r_idx, c_idx] = -np.inf
                np.subtract.at(n_neg, r_idx, 1)
            at = self._kth_columns(sims, n_neg, k)
            found = np.flatnonzero(at >= 0)
            xi[start + found] = sims[found, at[found]]
            setters[start + found] = self.ids[at[found]]
        return xi, setters

    @staticmethod
    def _kth_columns(sims: np.ndarray, n_neg: np.ndarray, k: int) -> np.ndarray:
        """Per row, the column of its k-th largest finite similarity (the smallest when it has fewer than k; -1 for none).
        Positives are -inf, so they sort last; no row is copied or negated when every row has k negatives."""
        n = sims.shape[1]
        at = np.full(len(sims), -1, dtype=np.int64)
        full = n_neg >= k
        if full.all():
            at[:] = np.argmax(sims, axis=1) if k == 1 else np.argpartition(sims, n - k, axis=1)[:, n - k]
        elif full.any():
            at[full] = np.argmax(sims[full], axis=1) if k == 1 else np.argpartition(sims[full], n - k, axis=1)[:, n - k]
        for r in np.flatnonzero(~full & (n_neg > 0)):  # fewer than k negatives: the smallest of them
            at[r] = int(np.argmin(np.where(np.isfinite(sims[r]), sims[r], np.inf)))
        return at


def full_thresholds(chunk: AnchorChunk, index: NeighborIndex, k: int, paired: PairedSide | None = None) -> np.ndarray:
    """Full-batch ``xi_j``: exact in memory when ``paired`` is given, else a top-(k + positives) search among
    paired samples through ``index``, each anchor's positives dropped."""
    return full_threshold_setters(chunk, index, k, paired)[0]


def full_threshold_setters(chunk: AnchorChunk, index: NeighborIndex, k: int, paired: PairedSide | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``full_thresholds`` and, per anchor, the id of the negative that sets ``xi_j`` (None without negatives)."""
    if paired is not None:
        return paired.threshold_setters(chunk, k)
    extra = max((len(p) for p in chunk.positives), default=0)
    hits = index.search(chunk.vectors, k + extra, "paired")
    xi = np.empty(len(chunk.ids), dtype=np.float64)
    setters = np.full(len(chunk.ids), None, dtype=object)
    for i, (ids, sims) in enumerate(hits):
        negative = np.array([x not in chunk.positives[i] for x in ids], dtype=bool)
        kept = np.asarray(sims, dtype=np.float64)[negative][:k]
        xi[i] = kth_threshold(kept, k)
        if len(kept):  # the k-th kept hit, or the last (smallest) when fewer than k
            setters[i] = np.asarray(ids, dtype=object)[negative][:k][min(k, len(kept)) - 1]
    return xi, setters


def minibatch_thresholds(anchor_vectors: np.ndarray, positives: Sequence[frozenset[str]], order: np.ndarray,
                         batch_size: int, k: int, paired_vectors) -> np.ndarray:
    """Mini-batch ``xi_j``: anchors cut into batches in ``order``; negatives of anchor j are the positives of
    the batch's other anchors, less j's own positives. ``paired_vectors(ids)`` gives their vectors."""
    xi = np.full(len(order), np.nan, dtype=np.float64)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        side_ids = sorted(set().union(*(positives[j] for j in batch)))
        side = paired_vectors(side_ids) if side_ids else np.zeros((0, anchor_vectors.shape[1]), np.float32)
        sims = anchor_vectors[batch] @ side.T
        for row, j in enumerate(batch):
            # side_ids is the union of the batch's positives: whatever is not j's own came from another anchor.
            others = np.array([sid not in positives[j] for sid in side_ids], dtype=bool)
            xi[j] = kth_threshold(sims[row, others] if len(side_ids) else sims[row, :0], k)
    return xi


def positive_similarities(problem: SelectionProblem, chunk: AnchorChunk) -> np.ndarray:
    """Per anchor, its similarity to its most similar own positive (NaN when none is on the paired side)."""
    if problem.vectors is None:
        raise SelectionError("window=semi needs the paired vectors; this store cannot provide them")
    wanted = sorted(set().union(*chunk.positives)) if chunk.positives else []
    vectors = np.asarray(problem.paired_vectors(wanted), dtype=np.float32) if wanted else np.zeros((0, chunk.vectors.shape[1]), np.float32)
    row = {x: i for i, x in enumerate(wanted)}
    sims = np.asarray(chunk.vectors, np.float32) @ vectors.T if len(wanted) else np.zeros((len(chunk.ids), 0))
    return np.array([max((float(sims[a, row[p]]) for p in pos), default=np.nan) for a, pos in enumerate(chunk.positives)])


def anchor_chunks_with_thresholds(problem: SelectionProblem, k: int, batch: str, batch_size: int, chunk_size: int,
                                   rng: np.random.Generator, paired_mb: float, stats: dict,
                                   negatives: dict[frozenset, list[int]]) -> Iterable[tuple[AnchorChunk, np.ndarray]]:
    """(chunk, thresholds) pairs; with the paired side in memory, ``negatives`` tallies per positive set
    [negatives of its anchors, anchors] (the input of ``chance_stats``)."""
    if batch == "full":
        with problem.timed("paired_side"):
            paired = PairedSide.load(problem, paired_mb)
        stats["thresholds"] = "exact in memory" if paired is not None else "index search"
        for chunk in problem.timed_iter("anchor_stream", problem.anchors(chunk_size)):
            with problem.timed("thresholds"):
                if paired is not None:
                    for pos in chunk.positives:
                        entry = negatives.setdefault(pos, [len(paired.ids) - sum(p in paired.column for p in pos), 0])
                        entry[1] += 1
                xi = full_thresholds(chunk, problem.index, k, paired)
            yield chunk, xi
        return
    stats["thresholds"] = "mini-batch in memory"
    if problem.vectors is None:
        raise SelectionError("mini-batch thresholds need the paired vectors; this store cannot provide them")
    with problem.timed("anchor_stream"):
        chunks = list(problem.anchors(chunk_size))  # mini-batch shuffles over all anchors: O(paired) memory
    if not chunks:
        return
    with problem.timed("thresholds"):
        vectors = np.concatenate([c.vectors for c in chunks])
        positives = [p for c in chunks for p in c.positives]
        order = rng.permutation(len(positives))
        xi = minibatch_thresholds(vectors, positives, order, batch_size, k, problem.paired_vectors)
    start = 0
    for c in chunks:
        yield c, xi[start:start + len(c.ids)]
        start += len(c.ids)


def chance_stats(counts: np.ndarray, negatives: dict[frozenset, list[int]] | None, k: int) -> dict:
    """The violations against what a pool exchangeable with the paired negatives would give.

    ``negatives`` maps each anchor's positive set to [its number of negatives n, its anchors]; None: unknown (then only
    ``violations`` is reported). A candidate beats the k-th largest of n exchangeable negatives with chance
    ``min(k, n) / (n + 1)``: ``expected_violations`` sums that over anchors times M candidates; ``violator_spread``
    divides the distinct violators by ``M (1 - prod (1 - p))`` over positive sets (one image's captions count once,
    as if each image's violators were an independent draw).
    """
    out = {"violations": int(counts.sum()), "expected_violations": None, "violation_excess": None, "violator_spread": None}
    if negatives is None:
        return out
    m = len(counts)
    chance = {pos: (min(k, n) / (n + 1), anchors) for pos, (n, anchors) in negatives.items() if n > 0}
    expected = sum(p * anchors * m for p, anchors in chance.values())
    log_none = float(np.sum(np.log1p(-np.fromiter((p for p, _ in chance.values()), dtype=np.float64, count=len(chance)))))
    violators = m * -np.expm1(log_none)
    out["expected_violations"] = round(expected, 1)
    out["violation_excess"] = round(out["violations"] / expected, 4) if expected else None
    out["violator_spread"] = round(int((counts > 0).sum()) / violators, 4) if violators else None
    return out
