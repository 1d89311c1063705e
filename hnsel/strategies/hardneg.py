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
anchors x pool matrix is ever built. Exact re-rank (milvus engine, ``rerank`` > 0): an approximate index (HNSW, IVF)
misses some violators, so search scores are lower bounds; the ``rerank`` best-scoring candidates are then rescored
exactly against every anchor (their vectors fetched by id, blockwise float32 products of the kept anchors), at a cost
of rerank x anchors x dim and O(anchors x dim) memory for the kept anchors. With ``problem.engine == "exact"`` the same thresholds are used and the
violators come from every similarity instead, by blockwise products (``exact.py``, torch on CUDA or the CPU).
Thresholds live in ``thresholds.py``; ``dense.py`` is the independent numpy reference both engines are tested against.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..errors import SelectionError
from .base import NeighborIndex, Selection, SelectionProblem, check_budget, fill_random, param, register, top_by_score
from .dense import dense_hardneg_scores
from .thresholds import anchor_chunks_with_thresholds, chance_stats, positive_similarities

__all__ = ["HardNegative", "hardneg_scores", "rank_with_fill", "rerank_exact"]

WEIGHTS = ("surplus", "count")
MAX_EXCLUDED = 1_000_000  # ids a range page may exclude before the anchor is reported truncated
BATCHES = ("full", "mini")
WINDOWS = ("hard", "semi")


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


def _violators_job(index: NeighborIndex, vectors: np.ndarray, xi: np.ndarray, depth: int) -> tuple[list, dict, float]:
    """``_violators`` on a search thread, with its own counters (merged by the caller, in chunk order) and its wall time."""
    started = time.perf_counter()
    searched = {"deepened": 0, "range_searched": 0, "truncated": 0}
    return _violators(index, vectors, xi, depth, searched), searched, time.perf_counter() - started


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


def rerank_exact(problem: SelectionProblem, scores: np.ndarray, counts: np.ndarray, kept: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
                 n: int, weight: str, stats: dict) -> None:
    """Rescore exactly, in place, the ``n`` candidates with the highest search scores (ties: id ascending; score > 0 only).

    ``kept``: per anchor chunk, (vectors, thresholds, positive similarity or None) of the anchors that have a threshold.
    A search score only misses violators, so it is a lower bound: rescoring the best of them with every anchor (the
    dense reference's blockwise products on the shortlist only) corrects their scores and order, and brings in any
    candidate the searches had under-scored within the shortlist. Stats: ``reranked`` (shortlist size),
    ``rerank_raised`` (shortlisted candidates whose score rose) and ``rerank_found`` (share of the shortlist's exact
    score mass the searches had found).
    """
    short = top_by_score(problem.candidate_ids, scores, n)
    stats.update(reranked=int(len(short)), rerank_raised=0, rerank_found=1.0)
    if len(short) == 0 or not kept:
        return
    candidates = problem.vectors_of(short)
    exact, exact_counts = np.zeros(len(short)), np.zeros(len(short), dtype=np.int64)
    for vectors, xi, upper in kept:  # chunk by chunk: no second copy of the kept anchors
        part, part_counts = dense_hardneg_scores(vectors, (), (), np.zeros((0, vectors.shape[1]), np.float32), candidates,
                                                 weight=weight, thresholds=xi, upper=upper)
        exact += part
        exact_counts += part_counts
    before = scores[short]
    stats["rerank_raised"] = int((exact > before + 1e-9 * np.maximum(1.0, np.abs(before))).sum())
    stats["rerank_found"] = float(before.sum() / exact.sum()) if exact.sum() > 0 else 1.0
    scores[short], counts[short] = exact, exact_counts


def hardneg_scores(problem: SelectionProblem, *, k: int = 1, weight: str = "surplus", batch: str = "full",
                   batch_size: int = 128, chunk_size: int = 512, depth: int = 64,
                   rng: np.random.Generator | None = None, paired_mb: float = 1024, window: str = "hard",
                   device: str | None = None, rerank: int = 0, searchers: int = 2,
                   keep: list | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
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
    ``rerank`` (milvus engine): rescore the ``rerank`` best candidates exactly (``rerank_exact``); 0: search scores only.
    ``searchers`` (milvus engine): anchor chunks whose searches are in flight at once, on as many threads; the server
    searches one while this process reads the next anchors and the last results (scores are summed in chunk order,
    so the result does not depend on it). ``keep`` (milvus engine): a list that receives, per chunk, the anchors the
    re-rank needs, (vectors, thresholds, positive similarity or None), for a caller that re-ranks the sum of several
    calls itself (``--ray``).
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    engine = problem.engine
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
             "above_positive": 0, "reranked": 0, "rerank_raised": 0, "rerank_found": 1.0}
    negatives: dict[frozenset, list[int]] = {}
    kept: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = keep if keep is not None else []  # what the re-rank needs
    in_flight: deque = deque()  # (future of the chunk's violators, its thresholds, its window bound, anchors it ends at)

    def finish() -> None:  # in chunk order, on this thread: the same sums whatever the threads did
        future, xi_valid, upper, done = in_flight.popleft()
        with problem.timed("search_wait"):
            hits, searched, seconds = future.result()
        problem.add_time("searches_in_threads", seconds)
        for key, value in searched.items():
            stats[key] += value
        with problem.timed("aggregation"):
            _accumulate(hits, xi_valid, weight, id_to_index, scores, counts, stats, upper)
        problem.progress("scoring anchors", done, problem.n_anchors)

    with ThreadPoolExecutor(max_workers=max(1, searchers), thread_name_prefix="hnsel-search") as pool:
        for chunk, xi in anchor_chunks_with_thresholds(problem, k, batch, batch_size, chunk_size, rng, paired_mb, stats, negatives):
            valid = np.flatnonzero(~np.isnan(xi))
            stats["anchors"] += len(xi)
            stats["anchors_without_negatives"] += len(xi) - len(valid)
            if len(valid):
                vectors = np.asarray(chunk.vectors, dtype=np.float32)[valid]
                upper = positive_similarities(problem, chunk)[valid] if window == "semi" else None
                in_flight.append((pool.submit(_violators_job, problem.index, vectors, xi[valid], depth), xi[valid], upper, stats["anchors"]))
                if rerank > 0 or keep is not None:
                    kept.append((vectors, xi[valid], upper))
            while len(in_flight) > max(1, searchers):
                finish()
        while in_flight:
            finish()
    if rerank > 0:
        problem.progress("exact re-rank", 0, 1)
        with problem.timed("rerank"):
            rerank_exact(problem, scores, counts, kept, rerank, weight, stats)
        problem.progress("exact re-rank", 1, 1)
    stats.update(chance_stats(counts, negatives if stats["thresholds"] == "exact in memory" else None, k))
    return scores, counts, stats


@register("hardneg")
@dataclass(frozen=True)
class HardNegative:
    """Unpaired samples that violate the Top-k hard-negative condition of paired anchors (ALGORITHM.md)."""

    k: int = param(1, "Top-k condition: a candidate violates an anchor when more similar than its k-th most similar negative.")
    weight: str = param("surplus", "Score per violated anchor: surplus (s - xi, how far past the threshold) or count (1).")
    batch: str = param("full", "Thresholds over every paired negative (full) or over seeded training batches (mini).")
    batch_size: int = param(128, "Training batch size of the mini-batch thresholds.", flag="--train-batch")
    chunk_size: int = param(512, "Anchors per search request (and per threshold chunk).")
    depth: int = param(64, "First search depth per anchor (milvus engine); deepened where every hit still violates.")
    paired_mb: float = param(1024, "Full-batch thresholds exact in memory when the paired side fits in this many MB "
                                   "(0: searched through the index, approximate on HNSW/IVF).")
    window: str = param("hard", "hard: every candidate above the threshold; semi: only those below the anchor's own positive.")
    searchers: int = param(2, "Milvus engine: search requests in flight at once (the server searches one while hnsel reads another); "
                              "results do not depend on it.")
    rerank: float = param(2.0, "Milvus engine: rescore exactly the best rerank x budget candidates against every anchor, "
                               "correcting what an approximate index missed (0: search scores only).")

    def __post_init__(self) -> None:
        if self.window not in WINDOWS:
            raise SelectionError(f"--window {self.window!r}: use one of {', '.join(WINDOWS)}")
        if self.k < 1:
            raise SelectionError(f"--k must be at least 1, got {self.k}")
        if self.weight not in WEIGHTS:
            raise SelectionError(f"--weight {self.weight!r}: use one of {', '.join(WEIGHTS)}")
        if self.batch not in BATCHES:
            raise SelectionError(f"--batch {self.batch!r}: use one of {', '.join(BATCHES)}")
        if self.batch_size < 2 or self.chunk_size < 1 or self.depth < 1 or self.searchers < 1:
            raise SelectionError("--train-batch must be at least 2; --chunk-size, --depth and --searchers at least 1")
        if not self.paired_mb >= 0:
            raise SelectionError(f"--paired-mb must be 0 or more, got {self.paired_mb}")
        if not self.rerank >= 0:
            raise SelectionError(f"--rerank must be 0 or more (a multiple of the budget), got {self.rerank}")

    def scores(self, problem: SelectionProblem, rng: np.random.Generator, budget: int = 0,
               keep: list | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
        """``hardneg_scores`` with these parameters: (scores, violation counts, stats); the best ``rerank x budget``
        rescored exactly on the milvus engine (``budget`` 0: none; ``keep``: see ``hardneg_scores``)."""
        return hardneg_scores(problem, k=self.k, weight=self.weight, batch=self.batch, batch_size=self.batch_size,
                              chunk_size=self.chunk_size, depth=self.depth, rng=rng, paired_mb=self.paired_mb, window=self.window,
                              rerank=int(np.ceil(self.rerank * budget)), searchers=self.searchers, keep=keep)

    def select(self, problem: SelectionProblem, budget: int, rng: np.random.Generator) -> Selection:
        check_budget(budget, len(problem.candidate_ids))
        if problem.n_anchors == 0:
            raise SelectionError("no paired data: hardneg needs paired captions and images; ingest or embed a paired set first")
        scores, counts, stats = self.scores(problem, rng, budget)
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

