"""Hard-negative selection (Jo et al., arXiv 2405.16301), exactly as ../shared/ALGORITHM.md defines it.

For each anchor (a paired caption for modality ``image``, a paired image for modality ``text``) a
threshold ``xi_j`` is the k-th largest similarity to its negatives (full batch: every paired sample it does
not describe; mini batch: those of its seeded training batch). A candidate violates anchor ``j`` when its
similarity exceeds ``xi_j``; its score sums ``1`` (counting) or ``s - xi_j`` (surplus) over violated anchors.

Cost: full-batch thresholds come from the paired side's vectors held in memory when they fit in ``paired_mb``
(O(paired x dim) memory, chunked products of anchors x paired; exact whatever the index), else from one
top-(k + positives) search per anchor chunk among paired samples (exact on FLAT; a filtered search on HNSW/IVF
can miss the nearest negatives of a large collection). Candidates: one top-``depth`` search per chunk, deepened
(doubling to the index's ``max_limit``, then paged range searches) only for anchors whose ``depth``-th hit
still violates. Memory is O(pool + paired + chunk x depth): one float score and one count per candidate; no
anchors x pool matrix is ever built. With ``problem.engine == "exact"`` the same thresholds are used and the
violators come from every similarity instead, by blockwise products (``exact.py``, torch on CUDA or the CPU).
``dense_hardneg_scores`` is the independent numpy reference both are tested against.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cached_property
from typing import Iterable, Sequence

import numpy as np

from ..errors import SelectionError
from .base import AnchorChunk, NeighborIndex, Selection, SelectionProblem, check_budget, fill_random, param, register, top_by_score

__all__ = ["HardNegative", "hardneg_scores", "chance_stats", "full_thresholds", "full_threshold_setters", "minibatch_thresholds", "kth_threshold", "dense_hardneg_scores", "dense_thresholds", "PairedSide"]

WEIGHTS = ("surplus", "count")
MAX_EXCLUDED = 1_000_000  # ids a range page may exclude before the anchor is reported truncated
BATCHES = ("full", "mini")
WINDOWS = ("hard", "semi")


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
            n_neg = np.full(len(sims), n)
            for r, pos in enumerate(chunk.positives[start:start + rows]):
                cols = [column[p] for p in pos if p in column]
                sims[r, cols] = -np.inf
                n_neg[r] -= len(cols)
            at = np.full(len(sims), -1, dtype=np.int64)
            full = n_neg >= k
            if full.any():
                at[full] = np.argpartition(-sims[full], k - 1, axis=1)[:, k - 1]
            for r in np.flatnonzero(~full & (n_neg > 0)):  # fewer than k negatives: the smallest of them
                at[r] = int(np.argmin(np.where(np.isfinite(sims[r]), sims[r], np.inf)))
            found = np.flatnonzero(at >= 0)
            xi[start + found] = sims[found, at[found]]
            setters[start + found] = self.ids[at[found]]
        return xi, setters


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


def _violators(index: NeighborIndex, vectors: np.ndarray, xi: np.ndarray, depth: int, stats: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each anchor, every candidate with similarity > xi: top-``depth`` first, deepened where saturated."""
    out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(xi)
    pending = np.arange(len(xi))
    limit = first = min(depth, index.max_limit)
    while len(pending):
        hits = index.search(vectors[pending], limit, "candidates")
        again = []
        for j, (ids, sims) in zip(pending, hits):
            saturated = len(sims) >= limit and sims[-1] > xi[j]
            stats["deepened"] += int(saturated and limit == first)
            if saturated and limit < index.max_limit:
                again.append(j)
            elif saturated:
                out[j] = _page_range(index, vectors[j], xi[j], ids, sims, stats)
            else:
                keep = sims > xi[j]
                out[j] = (ids[keep], sims[keep])
        pending = np.asarray(again, dtype=np.int64)
        limit = min(limit * 2, index.max_limit)
    return out  # type: ignore[return-value]


def _page_range(index: NeighborIndex, vector: np.ndarray, xi: float, ids: np.ndarray, sims: np.ndarray, stats: dict):
    """All candidates above ``xi`` when more than ``max_limit`` are: range searches that exclude the ids found so far.

    Excluding found ids (rather than paging by similarity) stays exact whatever the range search's own
    window is: a page shorter than ``max_limit`` proves nothing above ``xi`` is left.
    """
    stats["range_searched"] += 1
    all_ids, all_sims = [ids], [sims]
    found = set(ids)
    while True:
        if len(found) > MAX_EXCLUDED:
            stats["truncated"] += 1
            break
        r_ids, r_sims = index.range_search(vector[None, :], [xi], index.max_limit, "candidates", sorted(found))[0]
        all_ids.append(r_ids)
        all_sims.append(r_sims)
        found.update(r_ids)
        if len(r_ids) < index.max_limit:
            break
    return np.concatenate(all_ids), np.concatenate(all_sims)


def positive_similarities(problem: SelectionProblem, chunk: AnchorChunk) -> np.ndarray:
    """Per anchor, its similarity to its most similar own positive (NaN when none is on the paired side)."""
    if problem.vectors is None:
        raise SelectionError("window=semi needs the paired vectors; this store cannot provide them")
    wanted = sorted(set().union(*chunk.positives)) if chunk.positives else []
    vectors = np.asarray(problem.paired_vectors(wanted), dtype=np.float32) if wanted else np.zeros((0, chunk.vectors.shape[1]), np.float32)
    row = {x: i for i, x in enumerate(wanted)}
    sims = np.asarray(chunk.vectors, np.float32) @ vectors.T if len(wanted) else np.zeros((len(chunk.ids), 0))
    return np.array([max((float(sims[a, row[p]]) for p in pos), default=np.nan) for a, pos in enumerate(chunk.positives)])


def _accumulate(hits, xi, weight, id_to_index, scores, counts, stats, upper=None) -> None:
    for a, ((ids, sims), threshold) in enumerate(zip(hits, xi)):
        if len(ids) == 0:
            continue
        if upper is not None and not np.isnan(upper[a]):  # semi-hard: above the positive is a likely false negative
            below = np.asarray(sims) < upper[a]
            stats["above_positive"] += int((~below).sum())
            ids, sims = np.asarray(ids)[below], np.asarray(sims)[below]
        idx = np.fromiter((id_to_index.get(x, -1) for x in ids), dtype=np.int64, count=len(ids))
        known = idx >= 0
        stats["unknown_hits"] += int((~known).sum())
        w = np.ones(int(known.sum())) if weight == "count" else np.asarray(sims, np.float64)[known] - threshold
        np.add.at(scores, idx[known], w)
        np.add.at(counts, idx[known], 1)


def _anchor_chunks_with_thresholds(problem: SelectionProblem, k: int, batch: str, batch_size: int, chunk_size: int,
                                   rng: np.random.Generator, paired_mb: float, stats: dict,
                                   negatives: dict[frozenset, list[int]]) -> Iterable[tuple[AnchorChunk, np.ndarray]]:
    """(chunk, thresholds) pairs; with the paired side in memory, ``negatives`` tallies per positive set
    [negatives of its anchors, anchors] (the input of ``chance_stats``)."""
    if batch == "full":
        paired = PairedSide.load(problem, paired_mb)
        stats["thresholds"] = "exact in memory" if paired is not None else "index search"
        for chunk in problem.anchors(chunk_size):
            if paired is not None:
                for pos in chunk.positives:
                    entry = negatives.setdefault(pos, [len(paired.ids) - sum(p in paired.column for p in pos), 0])
                    entry[1] += 1
            yield chunk, full_thresholds(chunk, problem.index, k, paired)
        return
    stats["thresholds"] = "mini-batch in memory"
    if problem.vectors is None:
        raise SelectionError("mini-batch thresholds need the paired vectors; this store cannot provide them")
    chunks = list(problem.anchors(chunk_size))  # mini-batch shuffles over all anchors: O(paired) memory
    if not chunks:
        return
    vectors = np.concatenate([c.vectors for c in chunks])
    positives = [p for c in chunks for p in c.positives]
    order = rng.permutation(len(positives))
    xi = minibatch_thresholds(vectors, positives, order, batch_size, k, problem.paired_vectors)
    start = 0
    for c in chunks:
        yield c, xi[start:start + len(c.ids)]
        start += len(c.ids)


def hardneg_scores(problem: SelectionProblem, *, k: int = 1, weight: str = "surplus", batch: str = "full",
                   batch_size: int = 128, chunk_size: int = 512, depth: int = 64,
                   rng: np.random.Generator | None = None, paired_mb: float = 1024, window: str = "hard",
                   device: str | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Score every candidate: (scores, violation counts, stats) aligned with ``problem.candidate_ids``.

    ``problem.engine`` decides how violators are found: ``milvus`` (neighbour searches through ``problem.index``,
    deepened where saturated) or ``exact`` (every similarity, by blockwise products on ``device``, else
    ``problem.device``, else the best available: ``exact.py``);
    both use the same thresholds and give the same stats keys, with ``stats["engine"]``.

    ``paired_mb``: full-batch thresholds are computed exactly in memory when the paired side's vectors fit in
    this many MB (0: always through ``problem.index``, whose filtered search is approximate on HNSW/IVF).
    ``window``: ``hard`` counts every candidate above ``xi_j`` (ALGORITHM.md); ``semi`` only those below the
    anchor's similarity to its own positive (``xi_j < s < s(p(j), t_j)``): harder than every negative the model
    trains on, yet not closer than the true match, which would make the candidate a likely false negative.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    engine = getattr(problem, "engine", "milvus")
    if engine == "exact":
        from .exact import exact_hardneg_scores  # torch is imported only for this engine

        return exact_hardneg_scores(problem, k=k, weight=weight, batch=batch, batch_size=batch_size, chunk_size=chunk_size, rng=rng,
                                    paired_mb=paired_mb, window=window, device=device if device is not None else getattr(problem, "device", None))
    if engine != "milvus":
        raise SelectionError(f"engine {engine!r}: use milvus or exact")
    ids = problem.candidate_ids
    id_to_index = {x: i for i, x in enumerate(ids)}
    scores = np.zeros(len(ids), dtype=np.float64)
    counts = np.zeros(len(ids), dtype=np.int64)
    stats = {"engine": "milvus", "anchors": 0, "anchors_without_negatives": 0, "deepened": 0, "range_searched": 0, "truncated": 0, "unknown_hits": 0,
             "above_positive": 0}
    negatives: dict[frozenset, list[int]] = {}
    for chunk, xi in _anchor_chunks_with_thresholds(problem, k, batch, batch_size, chunk_size, rng, paired_mb, stats, negatives):
        valid = np.flatnonzero(~np.isnan(xi))
        stats["anchors"] += len(xi)
        stats["anchors_without_negatives"] += len(xi) - len(valid)
        if len(valid):
            hits = _violators(problem.index, chunk.vectors[valid], xi[valid], depth, stats)
            upper = positive_similarities(problem, chunk)[valid] if window == "semi" else None
            _accumulate(hits, xi[valid], weight, id_to_index, scores, counts, stats, upper)
        problem.progress("scoring anchors", stats["anchors"], problem.n_anchors)
    stats.update(chance_stats(counts, negatives if stats["thresholds"] == "exact in memory" else None, k))
    return scores, counts, stats


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


@register("hardneg")
@dataclass(frozen=True)
class HardNegative:
    """Unpaired samples that violate the Top-k hard-negative condition of paired anchors (ALGORITHM.md)."""

    k: int = param(1, "Top-k condition: a candidate violates an anchor when more similar than its k-th most similar negative.")
    weight: str = param("surplus", "Score per violated anchor: surplus (s - xi, how far past the threshold) or count (1).")
    batch: str = param("full", "Thresholds over every paired negative (full) or over seeded training batches (mini).")
    batch_size: int = param(128, "Training batch size of the mini-batch thresholds.")
    chunk_size: int = param(512, "Anchors per search request (and per threshold chunk).")
    depth: int = param(64, "First search depth per anchor (milvus engine); deepened where every hit still violates.")
    paired_mb: float = param(1024, "Full-batch thresholds exact in memory when the paired side fits in this many MB "
                                   "(0: searched through the index, approximate on HNSW/IVF).")
    window: str = param("hard", "hard: every candidate above the threshold; semi: only those below the anchor's own positive.")

    def __post_init__(self) -> None:
        if self.window not in WINDOWS:
            raise SelectionError(f"--window {self.window!r}: use one of {', '.join(WINDOWS)}")
        if self.k < 1:
            raise SelectionError(f"--k must be at least 1, got {self.k}")
        if self.weight not in WEIGHTS:
            raise SelectionError(f"--weight {self.weight!r}: use one of {', '.join(WEIGHTS)}")
        if self.batch not in BATCHES:
            raise SelectionError(f"--batch {self.batch!r}: use one of {', '.join(BATCHES)}")
        if self.batch_size < 2 or self.chunk_size < 1 or self.depth < 1:
            raise SelectionError("--batch-size must be at least 2, chunk size and depth at least 1")
        if not self.paired_mb >= 0:
            raise SelectionError(f"--paired-mb must be 0 or more, got {self.paired_mb}")

    def scores(self, problem: SelectionProblem, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
        """``hardneg_scores`` with these parameters: (scores, violation counts, stats)."""
        return hardneg_scores(problem, k=self.k, weight=self.weight, batch=self.batch, batch_size=self.batch_size,
                              chunk_size=self.chunk_size, depth=self.depth, rng=rng, paired_mb=self.paired_mb, window=self.window)

    def select(self, problem: SelectionProblem, budget: int, rng: np.random.Generator) -> Selection:
        check_budget(budget, len(problem.candidate_ids))
        if problem.n_anchors == 0:
            raise SelectionError("no paired data: hardneg needs paired captions and images; ingest or embed a paired set first")
        scores, counts, stats = self.scores(problem, rng)
        return rank_with_fill(problem.candidate_ids, scores, counts, budget, rng, "hardneg", self.__dict__.copy(), stats)


def rank_with_fill(ids: np.ndarray, scores: np.ndarray, counts: np.ndarray, budget: int, rng: np.random.Generator,
                   strategy: str, params: dict, stats: dict) -> Selection:
    """The best ``budget`` by score (> 0 only), then seeded random fill marked ``reason=fill``."""
    merit = top_by_score(ids, scores, budget)
    fill = fill_random(len(ids), merit, budget - len(merit), rng)
    picked = np.concatenate([merit, fill]).astype(np.int64)
    reasons = np.array(["score"] * len(merit) + ["fill"] * len(fill), dtype=object)
    stats = dict(stats, picked_on_merit=int(len(merit)), filled=int(len(fill)), candidates=int(len(ids)),
                 candidates_with_score=int((scores > 0).sum()))
    return Selection(ids[picked], scores[picked], counts[picked], reasons, strategy, params, stats)


def dense_hardneg_scores(anchor_vectors: np.ndarray, positives: Sequence[frozenset[str]], negative_ids: Sequence[str],
                         negative_vectors: np.ndarray, candidate_vectors: np.ndarray, *, k: int = 1, weight: str = "surplus",
                         chunk_size: int = 1024, thresholds: np.ndarray | None = None, upper: np.ndarray | None = None,
                         block_floats: int = 2**22) -> tuple[np.ndarray, np.ndarray]:
    """The exact reference by dense algebra (numpy, float32 products): (scores, counts) over ``candidate_vectors``.

    ``thresholds`` overrides the full-batch ones (pass mini-batch thresholds to check those); ``upper`` (per anchor,
    NaN: none) keeps only similarities below it (``window=semi``: pass each anchor's similarity to its own positive).
    Blockwise: ``chunk_size`` anchors x as many candidates as fit in ``block_floats`` per product, so memory is one
    tile, never anchors x pool; thresholds, violations and surplus are vectorised over the tile.
    """
    a = np.asarray(anchor_vectors, dtype=np.float32)
    xi = (dense_thresholds(a, positives, negative_ids, negative_vectors, k, block_floats) if thresholds is None
          else np.asarray(thresholds, dtype=np.float64))
    cand = np.asarray(candidate_vectors, dtype=np.float32)
    scores = np.zeros(len(cand), dtype=np.float64)
    counts = np.zeros(len(cand), dtype=np.int64)
    valid = np.flatnonzero(~np.isnan(xi))  # an anchor without negatives has no threshold and no violators
    a, xi = a[valid], xi[valid]
    xi32 = _float32_floor(xi)  # s > xi32 iff s > xi for a float32 s: compare without casting the tile
    up32 = None if upper is None else np.nan_to_num(-_float32_floor(-np.asarray(upper, dtype=np.float64)[valid]), nan=np.inf)
    for start in range(0, len(a), chunk_size):
        rows = slice(start, start + chunk_size)
        width = max(1, block_floats // len(a[rows]))
        for c0 in range(0, len(cand), width):
            sims = a[rows] @ cand[c0:c0 + width].T
            mask = sims > xi32[rows, None]
            if up32 is not None:
                mask &= sims < up32[rows, None]
            r, c = np.nonzero(mask)
            n = sims.shape[1]
            counts[c0:c0 + n] += np.bincount(c, minlength=n)
            w = None if weight == "count" else sims[r, c].astype(np.float64) - xi[rows][r]
            scores[c0:c0 + n] += np.bincount(c, weights=w, minlength=n)
    return scores, counts


def _float32_floor(x: np.ndarray) -> np.ndarray:
    """The largest float32 <= x, element-wise (NaN stays NaN)."""
    f = np.asarray(x, dtype=np.float64).astype(np.float32)
    return np.where(f > x, np.nextafter(f, np.float32(-np.inf)), f).astype(np.float32)


def dense_thresholds(anchor_vectors: np.ndarray, positives: Sequence[frozenset[str]], negative_ids: Sequence[str],
                     negative_vectors: np.ndarray, k: int, block_floats: int = 2**22) -> np.ndarray:
    """Full-batch ``xi_j`` of the dense reference, vectorised: anchors in blocks of ``block_floats`` similarities,
    each anchor's positives masked out by (row, column) arrays, the k-th largest by ``np.partition``."""
    neg = np.asarray(negative_vectors, dtype=np.float32)
    a = np.asarray(anchor_vectors, dtype=np.float32)
    xi = np.full(len(a), np.nan, dtype=np.float64)
    if len(neg) == 0 or len(a) == 0:
        return xi
    pos_rows, pos_cols = _positive_cells(positives, negative_ids)
    n_neg = len(neg) - np.bincount(pos_rows, minlength=len(a))
    rows = max(1, block_floats // len(neg))
    for start in range(0, len(a), rows):
        stop = min(start + rows, len(a))
        sims = a[start:stop] @ neg.T
        lo, hi = np.searchsorted(pos_rows, [start, stop])
        sims[pos_rows[lo:hi] - start, pos_cols[lo:hi]] = -np.inf
        count = n_neg[start:stop]
        full = np.flatnonzero(count >= k)
        if len(full):
            xi[start + full] = -np.partition(-sims[full], k - 1, axis=1)[:, k - 1]
        few = np.flatnonzero((count > 0) & (count < k))  # fewer than k negatives: the smallest of them
        xi[start + few] = np.where(np.isinf(sims[few]), np.inf, sims[few]).min(axis=1)
    return xi


def _positive_cells(positives: Sequence[frozenset[str]], negative_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(anchor row, column in ``negative_ids``) of every positive found there, rows ascending; by sorted search, not dicts."""
    ids = np.asarray(negative_ids, dtype=str)
    order = np.argsort(ids, kind="stable")
    lengths = np.fromiter(map(len, positives), dtype=np.int64, count=len(positives))
    flat = np.array(list(itertools.chain.from_iterable(positives)), dtype=str)
    rows = np.repeat(np.arange(len(positives)), lengths)
    at = np.minimum(np.searchsorted(ids[order], flat), len(ids) - 1)
    found = ids[order][at] == flat if len(flat) else np.zeros(0, dtype=bool)
    return rows[found], order[at[found]]
