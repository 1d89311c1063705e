"""MaxHerding (Bae, Noh and Sutherland, arXiv 2407.12212): greedy generalised coverage of the candidates.

Coverage of a set ``L`` (the paired samples plus the picks) is ``sum_i max_{x in L} k(x_i, x)`` over the candidates
``i``, with the Gaussian kernel ``k(a, b) = exp(-||a - b||^2 / h^2) = exp(-(2 - 2 s(a, b)) / h^2)`` on unit vectors.
Unlike k-center (``coreset``), which chases the single farthest point, a pick's gain is the coverage it adds to
everything near it, so picks go to dense regions the paired set does not reach yet. Each step picks
``argmax_x sum_i max(0, k(x_i, x) - m_i)``, ``m_i`` = candidate i's best kernel value to anything paired or picked.

Sparse kernel: candidate i sees only its ``neighbours`` most similar candidates (one top-k search each on the
``NeighborIndex``); ``k(x_i, x) = 0`` for an ``x`` outside that list. Its ``m_i`` starts from one top-1 search
against the paired pool (exact, not truncated). Memory: ``N x neighbours`` kernel values, stored by column (the
candidates each pick covers), never ``N x N``. The objective is monotone submodular, so the greedy is lazy: a
candidate's stale gain is an upper bound, and only the heap's top is recomputed (O(its column) each).

Bandwidth: ``h`` given, or the median over the candidates of the distance to their farthest returned neighbour, so a
candidate's typical neighbour list reaches kernel values down to ``exp(-1)``; the decision summary reports the rule.
Ties go to the smallest candidate index (ids are sorted), as ``dense_herding`` (the in-memory reference) does.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from ..errors import SelectionError
from .base import Selection, SelectionProblem, check_budget, param, positions, register, sorter_for
from .coreset import nearest_centre_distances

__all__ = ["Herding", "neighbour_lists", "lazy_herding", "dense_herding", "kernel"]


def kernel(similarity: np.ndarray, h: float) -> np.ndarray:
    """The Gaussian kernel of unit vectors from their cosine similarity: ``exp(-(2 - 2 s) / h^2)`` (float64)."""
    return np.exp(-(2.0 - 2.0 * np.asarray(similarity, dtype=np.float64)) / (h * h))


def neighbour_lists(problem: SelectionProblem, neighbours: int, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, columns, similarities): candidate ``rows[j]`` has candidate ``columns[j]`` among its top ``neighbours``."""
    n = len(problem.candidate_ids)
    sorter = sorter_for(problem.candidate_ids)
    rows, cols, sims = [], [], []
    done = 0
    for indices, vectors in problem.candidate_batches(batch_size):
        hits = problem.index.search(vectors, neighbours, "candidates")
        counts = np.array([len(ids) for ids, _ in hits], dtype=np.int64)
        flat_ids = np.concatenate([np.asarray(ids, dtype=object) for ids, _ in hits]) if counts.sum() else np.zeros(0, dtype=object)
        at, found = positions(problem.candidate_ids, flat_ids, sorter)  # one binary search per batch
        rows.append(np.repeat(np.asarray(indices, dtype=np.int64), counts)[found])
        cols.append(at)
        sims.append(np.concatenate([np.asarray(s, dtype=np.float32) for _, s in hits])[found] if counts.sum() else np.zeros(0, np.float32))
        done += len(indices)
        problem.progress("herding neighbours", done, n)
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(sims)


def default_bandwidth(rows: np.ndarray, sims: np.ndarray, n: int) -> float:
    """The median over candidates of the Euclidean distance to the farthest neighbour returned for it."""
    lowest = np.full(n, np.inf)
    np.minimum.at(lowest, rows, sims.astype(np.float64))
    lowest = lowest[np.isfinite(lowest)]
    h = float(np.median(np.sqrt(np.maximum(2.0 - 2.0 * lowest, 0.0)))) if len(lowest) else 0.0
    return h if h > 1e-6 else 1.0  # a pool of identical vectors: any bandwidth covers it


def lazy_herding(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, m: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Lazy greedy over the sparse kernel (``values[j] = k(x_rows[j], x_cols[j])``) from coverage ``m`` (changed in place).

    Returns (picked indices, their gains, stats). Ties: the smallest index.
    """
    n = len(m)
    order = np.argsort(cols, kind="stable")
    starts = np.searchsorted(cols[order], np.arange(n + 1))
    col_rows, col_vals = rows[order], values[order]

    def gain(c: int) -> float:
        r, v = col_rows[starts[c]:starts[c + 1]], col_vals[starts[c]:starts[c + 1]]
        return float(np.maximum(v - m[r], 0.0).sum())

    heap = [(-gain(c), c) for c in range(n)]
    heapq.heapify(heap)
    picks, gains, evaluations = [], [], n
    while len(picks) < budget:
        _, c = heapq.heappop(heap)
        fresh = (-gain(c), c)
        evaluations += 1
        if heap and fresh > heap[0]:
            heapq.heappush(heap, fresh)
            continue
        picks.append(c)
        gains.append(-fresh[0])
        r, v = col_rows[starts[c]:starts[c + 1]], col_vals[starts[c]:starts[c + 1]]
        m[r] = np.maximum(m[r], v)
    return np.asarray(picks, dtype=np.int64), np.asarray(gains), {"gain_evaluations": evaluations}


def dense_herding(candidates: np.ndarray, paired: np.ndarray, budget: int, h: float, neighbours: int | None = None) -> list[int]:
    """The in-memory reference: the full ``N x N`` kernel (each row cut to its ``neighbours`` most similar, ties by
    index, when given), plain greedy with ``argmax``. For tests and small pools only."""
    sims = candidates @ candidates.T
    k = kernel(sims, h)
    if neighbours is not None and neighbours < len(candidates):
        keep = np.argsort(-sims, axis=1, kind="stable")[:, :neighbours]
        mask = np.zeros_like(k, dtype=bool)
        np.put_along_axis(mask, keep, True, axis=1)
        k = np.where(mask, k, 0.0)
    m = kernel((candidates @ paired.T).max(axis=1), h) if len(paired) else np.zeros(len(candidates))
    picks: list[int] = []
    for _ in range(budget):
        gain = np.maximum(k - m[:, None], 0.0).sum(axis=0)
        gain[picks] = -np.inf
        c = int(np.argmax(gain))
        picks.append(c)
        m = np.maximum(m, k[:, c])
    return picks


@register("herding")
@dataclass(frozen=True)
class Herding:
    """MaxHerding: each pick adds the most kernel coverage of the candidates beyond what the paired set and the picks give."""

    neighbours: int = param(32, "Neighbours per candidate in the sparse kernel (top-k searches; more: closer to the full kernel).")
    bandwidth: float | None = param(None, "Kernel bandwidth h (default: the median distance of a candidate to its farthest listed neighbour).")
    batch_size: int = param(1024, "Candidate vectors per streamed batch of neighbour searches.", flag="--candidate-batch")

    def __post_init__(self) -> None:
        if self.neighbours < 1 or self.batch_size < 1:
            raise SelectionError("herding: neighbours and batch_size must be at least 1")
        if self.bandwidth is not None and not self.bandwidth > 0:
            raise SelectionError(f"--bandwidth must be above 0, got {self.bandwidth}")

    def select(self, problem: SelectionProblem, budget: int, rng: np.random.Generator) -> Selection:
        ids = problem.candidate_ids
        check_budget(budget, len(ids))
        limit = max(1, min(self.neighbours, problem.index.max_limit))
        rows, cols, sims = neighbour_lists(problem, limit, self.batch_size)
        h = float(self.bandwidth) if self.bandwidth is not None else default_bandwidth(rows, sims, len(ids))
        dist = nearest_centre_distances(problem)
        m = np.where(np.isinf(dist), 0.0, kernel(1.0 - dist, h))
        before = float(m.sum())
        picks, gains, stats = lazy_herding(rows, cols, kernel(sims, h), m, budget)
        rule = "given (--bandwidth)" if self.bandwidth is not None else "median distance to the farthest listed neighbour"
        stats.update(candidates=int(len(ids)), bandwidth=h, bandwidth_rule=rule, neighbours=limit,
                     mean_neighbours_returned=float(len(rows) / max(len(ids), 1)), coverage_before=before / len(ids),
                     coverage_after=float(m.sum()) / len(ids))
        return Selection(ids[picks], gains, np.zeros(budget, dtype=np.int64), np.array(["herding"] * budget, dtype=object),
                         "herding", self.__dict__.copy(), stats)
