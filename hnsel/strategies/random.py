"""Uniform random selection, the baseline every other strategy must beat."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import Selection, SelectionProblem, check_budget, register

__all__ = ["RandomSelection"]


@register("random")
@dataclass(frozen=True)
class RandomSelection:
    """``budget`` candidates drawn uniformly without replacement with the run's seed."""

    def select(self, problem: SelectionProblem, budget: int, rng: np.random.Generator) -> Selection:
        ids = problem.candidate_ids
        check_budget(budget, len(ids))
        picked = rng.choice(len(ids), size=budget, replace=False)
        zeros = np.zeros(budget)
        return Selection(ids[picked], zeros, zeros.astype(np.int64), np.array(["random"] * budget, dtype=object),
                         "random", {}, {"candidates": int(len(ids))})
