"""``hnsel select --ray``: hard-negative scores summed over anchor shards scored by Ray tasks.

**Selection** (``hnsel select --ray``, strategy ``hardneg`` with full-batch thresholds): the driver streams the paired
anchors once and cuts them into one shard per worker; each Ray task opens the Milvus server, builds the same
``SelectionProblem`` restricted to its anchors and runs ``hardneg_scores``; the driver adds the partial scores and
counts (a candidate's score is a sum over anchors) and ranks as usual, so the picks are the single process's.
Strategies whose score is not a sum over anchors (auto, coreset, density, random, ascmr) and mini-batch thresholds
(one shuffle over all anchors) are refused with ``--ray``: they run on one process, without it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator

import numpy as np

from ..config import StoreConfig
from ..errors import SelectionError
from .ray_cluster import check_reachable, connect, import_ray, one_line

__all__ = ["check_select_ray", "select_hardneg"]


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
    import_ray()
    check_reachable(address)


def _score_shard(store_config: StoreConfig, modality: str, chosen: Any, chunks: list, engine: str, device: str | None,
                 max_limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict, list]:
    """One Ray task: ``hardneg_scores`` over the store's problem restricted to ``chunks`` of anchors; the candidates it
    scored (ids, scores, violation counts), its stats, and what the driver's exact re-rank needs of its anchors (empty
    without a re-rank)."""
    from ..store import build_problem, open_store

    with open_store(store_config) as store:
        problem = build_problem(store, modality, None, max_limit)
        problem = dataclasses.replace(problem, anchors=lambda chunk_size: iter(chunks), n_anchors=sum(len(c.ids) for c in chunks))
        problem.engine, problem.device = engine, device
        kept: list = []
        scores, counts, stats = chosen.scores(problem, np.random.default_rng(0), keep=kept if _reranks(chosen, engine) else None)
    hit = np.flatnonzero(counts)
    return problem.candidate_ids[hit], scores[hit], counts[hit], stats, kept


def _reranks(chosen: Any, engine: str) -> bool:
    return engine == "milvus" and getattr(chosen, "rerank", 0) > 0


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
    from ..strategies.hardneg import rank_with_fill, rerank_exact
    from ..strategies.thresholds import chance_stats

    check_budget(budget, len(problem.candidate_ids))
    if problem.n_anchors == 0:
        raise SelectionError("no paired data: hardneg needs paired captions and images; ingest or embed a paired set first")
    cluster = connect(address)
    try:
        ray = cluster.ray
        tasks = max(1, min(workers or max(1, int(cluster.cpus)), math.ceil(problem.n_anchors / chosen.chunk_size)))
        per_task = math.ceil(problem.n_anchors / tasks)
        remote = ray.remote(num_cpus=1, max_retries=1)(_score_shard)
        pending, sizes, order, positives = [], {}, {}, {}
        for group in _anchor_shards(problem, chosen.chunk_size, per_task):
            for chunk in group:
                for pos in chunk.positives:
                    positives[pos] = positives.get(pos, 0) + 1
            ref = remote.remote(store.config, modality, chosen, group, problem.engine, problem.device, problem.index.max_limit)
            pending.append(ref)
            sizes[ref] = sum(len(c.ids) for c in group)
            order[ref] = len(order)
        ids = problem.candidate_ids
        sorter = sorter_for(ids)
        scores, counts = np.zeros(len(ids)), np.zeros(len(ids), np.int64)
        stats, done, parts, kept = {}, 0, 0, {}
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            try:
                hit_ids, hit_scores, hit_counts, part, kept[order[ready[0]]] = ray.get(ready[0])
            except Exception as exc:
                raise SelectionError(f"a Ray task stopped: {one_line(exc)}") from None
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
    if _reranks(chosen, problem.engine):  # on the sums, with the shards' anchors in stream order: as one process does it
        with problem.timed("rerank"):
            rerank_exact(problem, scores, counts, [c for shard in sorted(kept) for c in kept[shard]], math.ceil(chosen.rerank * budget),
                         chosen.weight, stats)
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
