"""Regime-aware selection: how much of the budget covers unexplored regions and how much goes to hard negatives,
decided from the data at selection time (GitHub issue 7).

Hard-negative picks sit near captions the model already has: right for a finely-categorised pool (many
samples per fine category, the paired set already reaches them), wrong for a coverage-limited one (most
categories seen once or never, a small paired set), where covering new regions wins. ``auto`` measures which
regime the pool is in and splits the budget accordingly. Everything is neighbour searches on the
``NeighborIndex`` (Milvus in ``hnsel select``); no pool x pool matrix.

**Coverage.** For a seeded sample of ``sample`` candidates: ``d_P``, the cosine distance to the nearest paired
sample (top-1 among paired), and ``d_C``, the distance to the nearest other candidate (top-2 among candidates,
itself dropped). A candidate is *uncovered* when ``d_P > ratio * d_C``: the pool has something close to it,
the paired set nothing comparably close. ``uncovered`` is that fraction of the sample. Why not a quantile of
the paired set's own nearest-neighbour distances: when the paired set is a random part of the same pool (the
usual case), a candidate's nearest-paired distance and a paired sample's nearest-other-paired distance have
the same distribution in every regime, so such a threshold marks the same fraction of candidates whatever the
data. Against the pool's own spacing the ratio is near 1 when the paired set resolves the pool's fine
structure, and large where the pool holds tight groups the paired set never reached.

**Hard negatives.** The Surplus scores of ``hardneg`` (Top-1, full batch) for every candidate; reported: how
many are positive (the supply), their Gini coefficient and effective number ``(sum s)^2 / sum s^2``
(concentration: a few candidates holding the mass means the rest of the ranking is marginal).

**Split** of budget ``b``: ``random_share x b`` uniform picks (default 0; a guard for users who want part of
every round distributed exactly as random's picks); of the rest, ``coverage_share`` goes to coverage, the
remainder to hard negatives, capped at the positive supply (the excess goes to coverage, never to random fill).
Measured, ``coverage_share = clip(uncovered, min_coverage, max_coverage)`` with defaults 0.5 and 0.9: half the
budget covers new regions unless the pool is measurably less covered than that, and hard negatives always keep at
least a tenth. Why a floor of one half: on hnsel's scenes simulations (EXPERIMENTS.md, both regimes) both
coverage (``coreset``) and hard negatives beat random, the better of the two changed from round to round, and the
coverage measurement did not tell the regimes apart (a random-backbone embedding resolves neither); when the
measurement cannot decide, an even hedge is never far from the better of the two, while committing to one side
is sometimes far. Where the measurement is decisive (a pool whose regions the paired set never reached), the
share rises with it. Hard-negative picks first:
``density``'s greedy (informativeness minus ``lam`` x mean pairwise similarity) over the best-scored
candidates, so they do not all come from one crowded region. Then coverage picks: k-center greedy (as
``coreset``) from the paired set and the hard-negative picks, so coverage goes where neither reaches. Then the
random slice from what is left. Picks are returned coverage, hard negatives, random (then ``fill``, only if a
part could not be filled); ``reasons`` say which. Run again each round, the split follows the paired set as
it grows: that is how it adapts from round to round.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import SelectionError
from .base import Selection, SelectionProblem, check_budget, describe_params, fill_random, param, register
from .coreset import k_center_greedy
from .density import density_greedy
from .hardneg import HardNegative

__all__ = ["Auto", "coverage_gap", "concentration", "plan_split", "spread_floor", "coverage_picks"]


def coverage_gap(problem: SelectionProblem, sample: int, ratio: float, rng: np.random.Generator,
                 batch_size: int = 1024) -> dict[str, Any]:
    """Uncovered fraction of a seeded candidate sample: ``d_P > ratio * d_C`` (see the module docstring)."""
    n = len(problem.candidate_ids)
    chosen = np.sort(rng.choice(n, size=sample, replace=False)) if sample < n else np.arange(n)
    d_paired, d_pool = np.empty(len(chosen)), np.empty(len(chosen))
    for start in range(0, len(chosen), batch_size):
        indices = chosen[start:start + batch_size]
        vectors = problem.vectors_of(indices)
        for row, (_, sims) in enumerate(problem.index.search(vectors, 1, "paired")):
            d_paired[start + row] = 1.0 - float(sims[0]) if len(sims) else np.inf
        for row, (ids, sims) in enumerate(problem.index.search(vectors, 2, "candidates")):
            others = [float(s) for x, s in zip(ids, sims) if x != problem.candidate_ids[indices[row]]]
            d_pool[start + row] = 1.0 - others[0] if others else np.inf
        problem.progress("coverage of the pool", start + len(indices), len(chosen))
    uncovered = d_paired > ratio * d_pool + 1e-7  # 1e-7: float32 noise of a similarity near 1 (trained heads can be that tight)
    both = np.isfinite(d_paired) & np.isfinite(d_pool)
    return {"sampled": int(len(chosen)), "uncovered": float(uncovered.mean()) if len(chosen) else 0.0,
            "median_distance_to_paired": _median(d_paired), "median_distance_to_pool": _median(d_pool),
            "median_distance_ratio": _median(d_paired[both] / np.maximum(d_pool[both], 1e-6))}


def _median(x: np.ndarray) -> float | None:
    finite = x[np.isfinite(x)]
    return float(f"{np.median(finite):.4g}") if len(finite) else None  # significant digits: distances can be ~1e-4


def concentration(scores: np.ndarray) -> dict[str, Any]:
    """Supply and concentration of hard-negative scores: positives, Gini of their mass, effective number."""
    pos = np.sort(scores[scores > 0])
    if len(pos) == 0:
        return {"candidates_with_score": 0, "score_gini": None, "effective_hard_negatives": 0.0}
    n = len(pos)
    gini = float((2 * np.arange(1, n + 1) - n - 1) @ pos / (n * pos.sum()))
    return {"candidates_with_score": int(n), "score_gini": round(gini, 4),
            "effective_hard_negatives": round(float(pos.sum() ** 2 / (pos ** 2).sum()), 1)}


def spread_floor(spread: float | None, low: float, high: float) -> float:
    """Coverage share forced by diffuse hardness: 0 at ``violator_spread <= low``, 1 at ``>= high``, linear between."""
    if spread is None or not np.isfinite(spread):
        return 0.0
    return float(min(max((spread - low) / (high - low), 0.0), 1.0))


def plan_split(budget: int, uncovered: float, supply: int, *, random_share: float, min_coverage: float, max_coverage: float,
               coverage_share: float | None, floor: float = 0.0) -> dict[str, Any]:
    """Counts per part: random first, then coverage / hard negatives, hard negatives capped at ``supply``.

    ``floor``: the least coverage share whatever the coverage measurement says (``spread_floor``)."""
    n_random = int(math.floor(random_share * budget))
    rest = budget - n_random
    share = coverage_share if coverage_share is not None else max(min(max(uncovered, min_coverage), max_coverage), floor)
    n_coverage = int(round(share * rest))
    n_hardneg = rest - n_coverage
    capped = max(0, n_hardneg - supply)
    return {"coverage": n_coverage + capped, "hardneg": n_hardneg - capped, "random": n_random,
            "planned_coverage_share": round(float(share), 4), "moved_to_coverage": int(capped)}


def _reasoning(coverage: dict, conc: dict, plan: dict, fixed: bool, anchors: int, min_coverage: float,
               spread: float | None = None, diffuse: bool = False) -> str:
    if anchors == 0:
        return "No paired captions, so no hard negatives exist: everything not random covers the pool (k-center)."
    measured = (f"{coverage['uncovered']:.0%} of sampled candidates sit more than {coverage['ratio']:g}x farther from every paired "
                "sample than from their nearest candidate")
    if fixed:
        how = "the coverage share was fixed by the caller"
    elif diffuse:
        how = (f"hardness is diffuse: {conc['candidates_with_score']} candidates violate some caption, {spread:.2f}x the number "
               "independent chance draws would give, so hard negatives single out no distinct set and coverage pays")
    elif coverage["uncovered"] > min_coverage:
        how = f"looks coverage-limited: {measured}"
    else:
        how = f"no clear coverage gap ({measured}), so the budget is hedged at the {min_coverage:.0%} coverage floor"
    capped = f"; only {conc['candidates_with_score']} candidates violate any caption, so {plan['moved_to_coverage']} picks moved to coverage" \
        if plan["moved_to_coverage"] else ""
    return f"{how[0].upper() + how[1:]}: {plan['coverage']} picks cover new regions and {plan['hardneg']} are hard negatives{capped}."


def coverage_picks(problem: SelectionProblem, count: int, centres: np.ndarray, rng: np.random.Generator, *,
                   cache_mb: float = 256) -> tuple[np.ndarray, np.ndarray, dict]:
    """k-center greedy (``coreset``'s) whose centres start as the paired set plus the candidates ``centres``.

    Returns (picks, their distance to the nearest centre when picked; 2.0 when there was none, stats); costs as
    in coreset.py, plus one product of the candidates against ``centres``.
    """
    if count == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0), {}
    picks, radii, stats = k_center_greedy(problem, count, rng, cache_mb=cache_mb, centres=centres)
    return picks, np.where(np.isfinite(radii), radii, 2.0), stats


@register("auto")
@dataclass(frozen=True)
class Auto:
    """Split the budget between coverage (k-center) and hard negatives (density-guarded) by measured coverage;
    the hard-negative condition and score are those of its ``hardneg`` component."""

    coverage_share: float | None = param(None, "Fix the coverage part of the non-random budget, in [0, 1] (default: measured).")
    random_share: float = param(0.0, "Part of the budget drawn uniformly at random as a guard, in [0, 1).")
    min_coverage: float = param(0.5, "Lowest coverage share a measured coverage is clipped to (the hedge when the measurement cannot tell the regimes apart).")
    max_coverage: float = param(0.9, "Highest coverage share a measured coverage is clipped to.")
    ratio: float = param(2.0, "A candidate is uncovered when its nearest paired sample is more than RATIO times as far as its nearest candidate.")
    sample: int = param(2048, "Candidates measured for the coverage estimate.")
    lam: float = param(1.0, "Weight of the mean pairwise similarity of the hard-negative picks (crowding penalty).", flag="--lambda")
    shortlist: int = param(10, "Hard-negative picks are chosen among SHORTLIST x their count best-scored candidates.")
    hardneg: HardNegative = param(factory=HardNegative, help="The hard-negative condition and score (hardneg's parameters).")
    spread_low: float = param(0.6, "Violator spread at or below which hard negatives get their measured share (no coverage floor).")
    spread_high: float = param(0.9, "Violator spread at or above which the coverage floor is 1 (hardness is diffuse).")

    def __post_init__(self) -> None:
        numbers = ("coverage_share", "random_share", "min_coverage", "max_coverage", "ratio", "lam", "spread_low", "spread_high")
        for name in numbers:  # "0.5" from a command line
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, None if value.lower() in ("", "none", "auto") and name == "coverage_share" else float(value))
        for name in ("sample", "shortlist"):
            object.__setattr__(self, name, int(getattr(self, name)))
        if self.coverage_share is not None and not 0.0 <= self.coverage_share <= 1.0:
            raise SelectionError(f"auto: coverage_share must be in [0, 1] (or None to measure it), got {self.coverage_share}")
        if not 0.0 <= self.random_share < 1.0:
            raise SelectionError(f"auto: random_share must be in [0, 1), got {self.random_share}")
        if not 0.0 <= self.min_coverage <= self.max_coverage <= 1.0:
            raise SelectionError(f"auto: need 0 <= min_coverage <= max_coverage <= 1, got {self.min_coverage} and {self.max_coverage}")
        if not 0.0 <= self.spread_low < self.spread_high:
            raise SelectionError(f"auto: need 0 <= spread_low < spread_high, got {self.spread_low} and {self.spread_high}")
        if not self.ratio >= 1.0 or not self.lam >= 0 or self.sample < 1 or self.shortlist < 1:
            raise SelectionError("auto: ratio must be at least 1, lam at least 0, sample and shortlist at least 1")

    def select(self, problem: SelectionProblem, budget: int, rng: np.random.Generator) -> Selection:
        ids = problem.candidate_ids
        check_budget(budget, len(ids))
        coverage = dict(coverage_gap(problem, min(self.sample, len(ids)), self.ratio, rng), ratio=self.ratio)
        if problem.n_anchors:
            scores, counts, hn_stats = self.hardneg.scores(problem, rng, budget)
        else:
            scores, counts, hn_stats = np.zeros(len(ids)), np.zeros(len(ids), dtype=np.int64), {"truncated": 0}
        conc = concentration(scores)
        spread = hn_stats.get("violator_spread")
        floor = spread_floor(spread, self.spread_low, self.spread_high)
        plan = plan_split(budget, coverage["uncovered"] if problem.n_anchors else 1.0, conc["candidates_with_score"],
                          random_share=self.random_share, min_coverage=self.min_coverage, max_coverage=self.max_coverage,
                          coverage_share=self.coverage_share, floor=floor)
        parts, part_scores, cov_stats = self._pick(problem, scores, plan, rng)
        picked = np.concatenate([p for p in parts.values()]).astype(np.int64)
        reasons = np.array([r for r, p in parts.items() for _ in p], dtype=object)
        decision = {**{k: coverage[k] for k in ("uncovered", "sampled", "ratio", "median_distance_to_paired", "median_distance_to_pool",
                                                "median_distance_ratio")},
                    **conc, "violator_spread": spread, "spread_floor": round(floor, 4), "coverage_picks": len(parts["coverage"]), "hardneg_picks": len(parts["hardneg"]),
                    "random_picks": len(parts["random"]), "fill_picks": len(parts["fill"]),
                    "coverage_share": round(len(parts["coverage"]) / budget, 4), "hardneg_share": round(len(parts["hardneg"]) / budget, 4),
                    "planned_coverage_share": plan["planned_coverage_share"], "moved_to_coverage": plan["moved_to_coverage"],
                    "reason": _reasoning(coverage, conc, plan, self.coverage_share is not None, problem.n_anchors, self.min_coverage,
                                         spread, diffuse=floor > min(max(coverage["uncovered"], self.min_coverage), self.max_coverage))}
        stats = {"auto_decision": decision, "candidates": int(len(ids)), "candidates_with_score": conc["candidates_with_score"],
                 "picked_on_merit": int(len(parts["coverage"]) + len(parts["hardneg"])), "filled": len(parts["fill"]),
                 "anchors": int(hn_stats.get("anchors", 0)), "truncated": int(hn_stats.get("truncated", 0)),
                 **{k: hn_stats[k] for k in ("deepened", "range_searched", "thresholds") if k in hn_stats}, **cov_stats}
        return Selection(ids[picked], np.concatenate(part_scores), counts[picked], reasons, "auto", describe_params(self), stats)

    def _pick(self, problem: SelectionProblem, scores: np.ndarray, plan: dict, rng: np.random.Generator):
        """Hard negatives first, then k-center coverage around paired samples and those picks, then random."""
        n = len(problem.candidate_ids)
        taken = np.zeros(n, dtype=bool)
        hard = self._hardneg_picks(problem, scores, taken, plan["hardneg"])
        taken[hard] = True
        cov_picks, radii, cov_stats = coverage_picks(problem, plan["coverage"], hard, rng)
        taken[cov_picks] = True
        rand = fill_random(n, np.flatnonzero(taken), plan["random"], rng)
        taken[rand] = True
        fill = fill_random(n, np.flatnonzero(taken), plan["coverage"] + plan["hardneg"] + plan["random"] - int(taken.sum()), rng)
        parts = {"coverage": cov_picks, "hardneg": hard, "random": rand, "fill": fill}
        part_scores = [radii, scores[hard], np.zeros(len(rand)), np.zeros(len(fill))]
        return parts, part_scores, cov_stats

    def _hardneg_picks(self, problem: SelectionProblem, scores: np.ndarray, taken: np.ndarray, count: int) -> np.ndarray:
        """``count`` picks by density's greedy among the best-scored free candidates with score > 0."""
        free = np.flatnonzero((scores > 0) & ~taken)
        count = min(count, len(free))
        if count == 0:
            return np.zeros(0, dtype=np.int64)
        order = np.lexsort((problem.candidate_ids[free].astype(str), -scores[free]))
        short = free[order[:min(len(free), self.shortlist * count)]]
        u = scores[short] / scores[short].max()  # as density's min-max over the pool, where the minimum is 0
        rows, _, _ = density_greedy(u, problem.vectors_of(short), count, self.lam)
        return short[rows]
