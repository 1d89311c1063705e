"""The near-duplicate guard every strategy honours: no pick within a cosine radius of a paired sample or of another pick.

``hnsel select`` (and so ``hnsel simulate``) runs the chosen strategy through ``guarded_select``. A pick whose cosine
distance ``1 - s`` to its nearest paired sample (one top-1 search per pick) or to an earlier kept pick is at most
``radius`` is dropped; when that leaves fewer than the budget, the strategy runs again asking for more (doubling, up to
every candidate, each run from the same seed) and the kept picks are its answer's first ``budget`` survivors, in its
order. Greedy strategies (coreset, herding, design, hardneg's ranking) give the same prefix for a larger budget, so the
guard only removes picks and moves later ones up. ``DEDUP_RADIUS`` (0: off) is the one default; measured in EXPERIMENTS.md.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np

from ..errors import SelectionError
from .base import Selection, SelectionProblem, positions, sorter_for

__all__ = ["DEDUP_RADIUS", "DEDUP_PARAM", "guarded_select", "near_duplicates", "check_radius"]

DEDUP_RADIUS = 0.0  # off by default: the guard changes picks only where a user (or an experiment) asks for it
DEDUP_PARAM = "dedup_radius"  # its name in ``hnsel simulate --strategies name:dedup_radius=...`` and the API


def check_radius(radius: float) -> float:
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not 0.0 <= float(radius) < 2.0:
        raise SelectionError(f"--dedup-radius {radius!r}: use a cosine distance from 0 (off) up to below 2")
    return float(radius)


def near_duplicates(problem: SelectionProblem, indices: np.ndarray, radius: float) -> tuple[np.ndarray, int, int]:
    """(mask of the picks kept, dropped near a paired sample, dropped near an earlier kept pick), picks in order."""
    vectors = problem.vectors_of(indices)
    keep = np.ones(len(indices), dtype=bool)
    for row, (_, sims) in enumerate(problem.index.search(vectors, 1, "paired")):
        if len(sims) and 1.0 - float(sims[0]) <= radius:
            keep[row] = False
    near_paired = int((~keep).sum())
    kept: list[int] = []
    for row in np.flatnonzero(keep):
        if kept and float((1.0 - vectors[kept] @ vectors[row]).min()) <= radius:
            keep[row] = False
        else:
            kept.append(int(row))
    return keep, near_paired, int((~keep).sum()) - near_paired


def guarded_select(run: Callable[[int], Selection], problem: SelectionProblem, budget: int, radius: float) -> Selection:
    """``run(ask)`` (the strategy asking for ``ask`` picks, from the run's seed) with near-duplicates removed and refilled."""
    if radius <= 0:
        return run(budget)
    n, ask, sorter = len(problem.candidate_ids), budget, sorter_for(problem.candidate_ids)
    while True:
        sel = run(ask)
        indices, _ = positions(problem.candidate_ids, np.asarray(sel.ids, dtype=object), sorter)
        keep, near_paired, near_pick = near_duplicates(problem, indices, radius)
        if keep.sum() >= budget or ask >= n:
            break
        ask = min(n, 2 * ask)
    if keep.sum() < budget:
        raise SelectionError(f"only {int(keep.sum())} of the {n} candidates are farther than cosine distance {radius} from the paired "
                             f"set and from each other; lower --dedup-radius or ask for at most that many")
    rows = np.flatnonzero(keep)[:budget]
    stats = dict(sel.stats, dedup={"radius": radius, "asked": ask, "dropped_near_paired": near_paired, "dropped_near_pick": near_pick})
    return replace(sel, ids=sel.ids[rows], scores=sel.scores[rows], violations=sel.violations[rows], reasons=sel.reasons[rows], stats=stats)
