"""Density-aware budget allocation, in the spirit of ASCMR (TPAMI 2025): informative picks that do not crowd.

Hard-negative picks tend to come from one dense region of the embedding space (many captions are confused
there). ``density`` chooses the set ``S`` (``|S| = budget``) that maximises

    F(S) = sum_{i in S} u_i  -  lambda * mean_{i < j in S} s(x_i, x_j)

where ``u`` is an informativeness score normalised to [0, 1] (min-max over the candidates): the
hard-negative Surplus score by default (``base="hardneg"``), or the distance to the nearest paired sample
(``base="coreset"``). ``s`` is the cosine similarity; the mean of an empty or one-element set is 0.

It is maximised by greedy marginal gain. With ``m`` picks whose pairwise similarities sum to ``P``, adding
``c`` (``r_c`` = its summed similarity to the picks) changes the mean from ``P / C(m, 2)`` to
``(P + r_c) / C(m + 1, 2)``, so the gain is ``u_c - lambda * [(P + r_c) / C(m + 1, 2) - P / C(m, 2)]``.

Scale: the first term grows with the budget, the mean does not, so ``lambda`` defaults to the budget
(a mean similarity of 1 then costs as much as the picks' whole informativeness). Measured on a synthetic
20k pool (100 fine categories, 64-d, budget 200, Milvus Lite), mean pairwise similarity of the picks and
fine categories they cover: lambda 0 (the hardneg ranking) 0.387 / 6; lambda 5: 0.372 / 7; lambda 200
(the default): 0.139 / 40; lambda 1000: 0.041 / 49; random picks 0.069 / 90.

Cost: the base score is one float per candidate (for hardneg, computed through neighbour searches, see
hardneg.py). The greedy runs on a shortlist of the ``shortlist * budget`` most informative candidates
(seeded random ones when too few score above 0): their vectors (``M x d``) and one running similarity sum
each. Each pick adds one similarity row to the new pick (``M`` floats): O(budget x M x d) in all; no
pool x pool (or shortlist x shortlist) matrix is built.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import SelectionError
from .base import Selection, SelectionProblem, check_budget, describe_params, param, register
from .coreset import nearest_centre_distances
from .hardneg import HardNegative

__all__ = ["Density", "density_greedy", "normalise", "BASES"]

BASES = ("hardneg", "coreset")


def normalise(scores: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1]; all equal (or non-finite) gives zeros."""
    scores = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(scores)
    if not finite.any():
        return np.zeros(len(scores))
    lo, hi = scores[finite].min(), scores[finite].max()
    out = np.where(finite, scores, hi)
    return (out - lo) / (hi - lo) if hi > lo else np.zeros(len(scores))


def _pairs(m: int) -> float:
    return m * (m - 1) / 2.0


def density_greedy(u: np.ndarray, vectors: np.ndarray, budget: int, lam: float) -> tuple[np.ndarray, np.ndarray, dict]:
    """Greedy maximiser of ``sum u - lam * mean pairwise similarity`` over rows of ``vectors``.

    Returns (picked row indices in pick order, their marginal gains, stats). Ties go to the lowest row.
    """
    r = np.zeros(len(u), dtype=np.float64)  # summed similarity of each row to the picks
    pair_sum, picks, gains = 0.0, [], []
    taken = np.zeros(len(u), dtype=bool)
    for m in range(budget):
        before = pair_sum / _pairs(m) if m >= 2 else 0.0
        after = (pair_sum + r) / _pairs(m + 1) if m >= 1 else np.zeros(len(u))
        gain = np.where(taken, -np.inf, u - lam * (after - before))
        c = int(np.argmax(gain))
        picks.append(c)
        gains.append(float(gain[c]))
        taken[c] = True
        pair_sum += float(r[c])
        r += vectors @ vectors[c]
    mean_sim = pair_sum / _pairs(budget) if budget >= 2 else 0.0
    stats = {"informativeness": float(u[picks].sum()), "mean_pairwise_similarity": mean_sim,
             "objective": float(u[picks].sum() - lam * mean_sim)}
    return np.asarray(picks, dtype=np.int64), np.asarray(gains), stats


def shortlist(u: np.ndarray, ids: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of the ``size`` best by (u descending, id ascending) among u > 0, then seeded random others."""
    positive = np.flatnonzero(u > 0)
    best = positive[np.lexsort((ids[positive].astype(str), -u[positive]))][:size]
    if len(best) >= size:
        return best
    rest = np.setdiff1d(np.arange(len(u)), best)
    return np.concatenate([best, rng.choice(rest, size=size - len(best), replace=False)]).astype(np.int64)


@register("density")
@dataclass(frozen=True)
class Density:
    """Maximise summed informativeness minus ``lam`` x the mean pairwise similarity of the picks (greedy)."""

    base: str = param("hardneg", "Informativeness: hardneg (its score, normalised) or coreset (distance to the nearest paired sample).")
    lam: float | None = param(None, "Weight of the crowding penalty (0: the base ranking; default: the budget, so a mean similarity of 1 "
                                    "costs as much as the picks' whole informativeness).", flag="--lambda")
    shortlist: int = param(10, "The greedy considers the SHORTLIST x budget most informative candidates.")
    hardneg: HardNegative = param(factory=HardNegative, help="The hard-negative score used when base is hardneg (hardneg's parameters).")

    def __post_init__(self) -> None:
        if self.base not in BASES:
            raise SelectionError(f"--base {self.base!r}: use one of {', '.join(BASES)}")
        if self.lam is not None and not self.lam >= 0:
            raise SelectionError(f"--lambda must be 0 or more, got {self.lam}")
        if self.shortlist < 1:
            raise SelectionError(f"density: shortlist must be at least 1, got {self.shortlist}")

    def _base_scores(self, problem: SelectionProblem, rng: np.random.Generator, budget: int) -> tuple[np.ndarray, np.ndarray, dict]:
        if self.base == "coreset":
            dist = nearest_centre_distances(problem)
            return normalise(np.where(np.isinf(dist), 2.0, dist)), np.zeros(len(dist), dtype=np.int64), {}
        if problem.n_anchors == 0:
            raise SelectionError("no paired data: density with --base hardneg needs paired captions and images; use --base coreset")
        scores, counts, stats = self.hardneg.scores(problem, rng, budget)
        return normalise(scores), counts, {"candidates_with_score": int((scores > 0).sum()), "truncated": stats["truncated"]}

    def select(self, problem: SelectionProblem, budget: int, rng: np.random.Generator) -> Selection:
        ids = problem.candidate_ids
        check_budget(budget, len(ids))
        u, counts, stats = self._base_scores(problem, rng, budget)
        short = shortlist(u, ids, min(len(ids), self.shortlist * budget), rng)
        vectors = problem.vectors_of(short)
        lam = float(budget if self.lam is None else self.lam)
        rows, gains, greedy_stats = density_greedy(u[short], vectors, budget, lam)
        picked = short[rows]
        reasons = np.where(u[picked] > 0, "density", "diverse").astype(object)
        return Selection(ids[picked], gains, counts[picked], reasons, "density", describe_params(self),
                         dict(stats, **greedy_stats, candidates=int(len(ids)), shortlist=int(len(short)), lam=lam))
