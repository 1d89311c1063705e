"""ASCMR (Qi, Qian, Xu, Yang, Zhang, "Active Supervised Cross-Modal Retrieval", TPAMI 2025), as hnsel states it.

Only the paper's abstract is known: probabilistic multi-modal informativeness (each sample a Gaussian, so
uncertainty within and across modalities lives in one representation) spent with a density-aware allocation
(informativeness constrained by a semantic density regulariser). The formulas below are hnsel's; every choice the
abstract leaves open is listed in docs/ascmr.md.

**Match probability** of anchor ``j`` and candidate ``c`` (unit means, summed variances ``v_j``, ``u_c``; the
closed form of ``hnsel.model.probabilistic``): ``d = 2 - 2 s + u_c + v_j``, ``p = sigmoid(-a d + b)``
(``a = scale``, ``b = shift``). Its ambiguity is the binary entropy ``H(p)`` in bits (1 at ``p = 1/2``).

**Informativeness** ``I_c = (w_u * U_c + w_a * A_c) / (w_u + w_a)``, where ``U`` is the candidate's own summed
variance min-max normalised over the pool (intra-modal), ``A_c = sum_j H(p_jc)`` over the anchors that have
``c`` among their ``neighbors`` nearest candidates, divided by its pool maximum (cross-modal). ``w_u =
intra_weight`` and ``w_a = 1``; a term that is constant over the pool (no uncertainty stored, an untrained head, no
anchors) gets weight 0. Without stored uncertainties both variances are 0 (the deterministic stand-in): the
ambiguity then comes from similarities alone, and ``stats["ascmr"]["uncertainty"]`` says so.

**Density-aware allocation.** The ``shortlist x budget`` most informative candidates (``I > 0``; ties: id
ascending) each get their ``density_neighbors`` nearest candidates (one search), kept when shortlisted and
symmetrised into a neighbour graph with weights ``w_ck = max(s_ck, 0)``. Greedy on
``F(S) = sum_{c in S} I_c - lam * sum_{linked pairs c, k in S} w_ck``: the gain of ``c`` is
``I_c - lam * sum_{picked k linked to c} w_ck``. Gains only fall as picks accumulate, so a lazy greedy (a heap of
stale upper bounds) gives exactly the plain greedy's picks. A *region* is a neighbourhood around a leader: in
shortlist order each candidate joins the most similar already-made leader it is linked to, or leads a new region.
Cost: anchors / ``chunk_size`` searches of ``neighbors`` hits, shortlist / ``chunk_size`` searches of
``density_neighbors + 1`` hits; memory O(pool) floats + O(shortlist x (d + density_neighbors)); no anchors x pool
or pool x pool matrix.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import SelectionError
from .base import Selection, SelectionProblem, check_budget, fill_random, register
from .coreset import positions, sorter_for
from .density import normalise

__all__ = ["ASCMR", "binary_entropy", "match_logit", "match_entropy", "informativeness", "neighbour_graph", "lazy_greedy",
           "assign_regions", "gini"]

_LN2 = float(np.log(2.0))
TAIL_WARNING = 0.5  # mean entropy (bits) at the anchors' last hit above which the reason says the top-m cut is too short


def match_logit(s, u_cand, v_anchor, scale: float, shift: float) -> np.ndarray:
    """``-a * (2 - 2 s + u + v) + b``: the logit of the closed-form match probability of unit-mean Gaussians."""
    d = 2.0 - 2.0 * np.asarray(s, dtype=np.float64) + np.asarray(u_cand, dtype=np.float64) + np.asarray(v_anchor, dtype=np.float64)
    return -scale * d + shift


def binary_entropy(p) -> np.ndarray:
    """``-(p log2 p + (1 - p) log2 (1 - p))`` in bits, with ``0 log 0 = 0``."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log2(p), 0.0) + np.where(p < 1, (1 - p) * np.log2(1 - p), 0.0)
    return -terms


def match_entropy(logit) -> np.ndarray:
    """``H(sigmoid(z))`` in bits, computed from the logit without overflow: ``p softplus(-z) + (1 - p) softplus(z)``."""
    z = np.asarray(logit, dtype=np.float64)
    p = np.exp(-np.logaddexp(0.0, -z))
    return (p * np.logaddexp(0.0, -z) + (1.0 - p) * np.logaddexp(0.0, z)) / _LN2


def _uncertainty(values, n: int, what: str) -> tuple[np.ndarray, bool]:
    """(the summed variances as float64, whether the model gave them); zeros when None."""
    if values is None:
        return np.zeros(n), False
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(arr) != n:
        raise SelectionError(f"ascmr: {what} has {len(arr)} values for {n} samples; store one uncertainty per sample")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise SelectionError(f"ascmr: {what} must be finite and 0 or more (a summed variance); re-embed with the probabilistic heads")
    return arr, True


def _flatten(results) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Search results -> (query row per hit, hit ids, similarities), rows ascending, each row's hits best first."""
    lens = np.array([len(ids) for ids, _ in results], dtype=np.int64)
    if lens.sum() == 0:
        return np.zeros(0, np.int64), np.array([], dtype=object), np.zeros(0)
    ids = np.concatenate([np.asarray(i, dtype=object) for i, _ in results])
    sims = np.concatenate([np.asarray(s, dtype=np.float64) for _, s in results])
    return np.repeat(np.arange(len(results)), lens), ids, sims


def informativeness(problem: SelectionProblem, neighbors: int = 32, scale: float = 10.0, shift: float = 10.0,
                    intra_weight: float = 1.0, chunk_size: int = 1024) -> tuple[np.ndarray, dict[str, Any]]:
    """(``I`` per candidate, parts): parts hold ``intra`` (U), ``cross`` (A, max-normalised), ``ambiguity`` (raw sum),
    ``hits`` (anchors whose top-``neighbors`` reach each candidate), the weights used and the search statistics."""
    ids = problem.candidate_ids
    n = len(ids)
    u, has_u = _uncertainty(problem.candidate_uncertainty, n, "candidate_uncertainty")
    ambiguity, hits = np.zeros(n), np.zeros(n, dtype=np.int64)
    sorter, limit = sorter_for(ids), max(1, min(neighbors, problem.index.max_limit))
    anchors, with_v, tails = 0, 0, []
    for chunk in problem.anchors(chunk_size):
        v, has_v = _uncertainty(chunk.uncertainty, len(chunk.ids), "anchor uncertainty")
        rows, hit_ids, sims = _flatten(problem.index.search(chunk.vectors, limit, "candidates"))
        idx, found = positions(ids, hit_ids, sorter)
        h = np.zeros(len(sims))
        h[found] = match_entropy(match_logit(sims[found], u[idx], v[rows[found]], scale, shift))
        ambiguity += np.bincount(idx, weights=h[found], minlength=n)
        hits += np.bincount(idx, minlength=n)
        if len(rows):  # each anchor's last (least similar) hit: how much ambiguity the top-m cut leaves out
            last = np.flatnonzero(np.r_[rows[1:] != rows[:-1], True])
            tails.append(h[last])
        anchors, with_v = anchors + len(chunk.ids), with_v + (len(chunk.ids) if has_v else 0)
        problem.progress("ascmr ambiguity", anchors, problem.n_anchors)
    intra = normalise(u) if has_u else np.zeros(n)
    cross = ambiguity / ambiguity.max() if ambiguity.max() > 0 else np.zeros(n)
    w_u = float(intra_weight) if intra.max() > 0 else 0.0
    w_a = 1.0 if cross.max() > 0 else 0.0
    info = (w_u * intra + w_a * cross) / (w_u + w_a) if w_u + w_a > 0 else np.zeros(n)
    tail = np.concatenate(tails) if tails else np.zeros(0)
    return info, {"intra": intra, "cross": cross, "ambiguity": ambiguity, "hits": hits, "weights": (w_u, w_a),
                  "candidate_uncertainty": has_u, "anchors": anchors, "anchors_with_uncertainty": with_v,
                  "anchor_hits": int(hits.sum()), "tail_entropy_mean": float(tail.mean()) if len(tail) else 0.0,
                  "tail_entropy_max": float(tail.max()) if len(tail) else 0.0, "scale": float(scale), "shift": float(shift)}


def neighbour_graph(problem: SelectionProblem, short: np.ndarray, m: int, chunk_size: int = 1024) -> tuple[np.ndarray, ...]:
    """Symmetric kNN graph over the shortlist, as CSR: (indptr, cols, weights ``max(s, 0)``, mean kNN similarity per row).

    Row ``r`` is ``short[r]``; each row searches its ``m + 1`` nearest candidates (itself dropped, ``m`` kept); an
    edge joins ``r`` and ``q`` when either is among the other's ``m`` and both are shortlisted (weight: the larger).
    """
    ids, size = problem.candidate_ids, len(short)
    row_of = np.full(len(ids), -1, dtype=np.int64)
    row_of[short] = np.arange(size)
    sorter, limit = sorter_for(ids), max(1, min(m + 1, problem.index.max_limit))
    src, dst, wts, knn = [], [], [], np.zeros(size)
    for start in range(0, size, chunk_size):
        block = short[start:start + chunk_size]
        rows, hit_ids, sims = _flatten(problem.index.search(problem.vectors_of(block), limit, "candidates"))
        idx, found = positions(ids, hit_ids, sorter)
        rows, sims = rows[found], sims[found]
        keep = idx != block[rows]  # drop the query itself
        rows, idx, sims = rows[keep], idx[keep], sims[keep]
        rank = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")
        rows, idx, sims = rows[rank < m], idx[rank < m], sims[rank < m]
        knn[start:start + len(block)] = np.bincount(rows, weights=sims, minlength=len(block)) / np.maximum(np.bincount(rows, minlength=len(block)), 1)
        inside = row_of[idx] >= 0
        src.append(rows[inside] + start)
        dst.append(row_of[idx[inside]])
        wts.append(np.maximum(sims[inside], 0.0))
        problem.progress("ascmr neighbours", start + len(block), size)
    a = np.concatenate(src + dst) if src else np.zeros(0, np.int64)
    b = np.concatenate(dst + src) if src else np.zeros(0, np.int64)
    w = np.concatenate(wts + wts) if src else np.zeros(0)
    order = np.lexsort((-w, b, a))  # by (row, col), the largest weight first; keep the first of each pair
    a, b, w = a[order], b[order], w[order]
    first = np.r_[True, (a[1:] != a[:-1]) | (b[1:] != b[:-1])] if len(a) else np.zeros(0, bool)
    a, b, w = a[first], b[first], w[first]
    indptr = np.r_[0, np.cumsum(np.bincount(a, minlength=size))].astype(np.int64)
    return indptr, b.astype(np.int64), w, knn


def lazy_greedy(info: np.ndarray, ids: np.ndarray, indptr: np.ndarray, cols: np.ndarray, weights: np.ndarray, budget: int,
                lam: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy on ``sum I - lam * sum of linked picked pairs' weights``: (rows in pick order, gains, penalties when picked).

    Ties go to the smaller id. Penalties only grow, so a popped entry whose penalty is unchanged is the true best.
    """
    pen = np.zeros(len(info))
    heap = [(-float(info[r]), str(ids[r]), r, 0.0) for r in range(len(info))]
    heapq.heapify(heap)
    picks, gains, pens = [], [], []
    while len(picks) < budget and heap:
        neg_gain, key, r, seen = heapq.heappop(heap)
        if pen[r] != seen:
            heapq.heappush(heap, (-(float(info[r]) - lam * pen[r]), key, r, float(pen[r])))
            continue
        picks.append(r)
        gains.append(-neg_gain)
        pens.append(seen)
        span = slice(indptr[r], indptr[r + 1])
        pen[cols[span]] += weights[span]
    return np.asarray(picks, dtype=np.int64), np.asarray(gains), np.asarray(pens)


def assign_regions(indptr: np.ndarray, cols: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Leader row of each row's region. Rows in order (the shortlist's: most informative first): a row joins the
    most similar earlier leader it is linked to (ties: the earlier one), else leads a new region."""
    size = len(indptr) - 1
    region, leader = np.arange(size), np.zeros(size, dtype=bool)
    for r in range(size):
        nb, w = cols[indptr[r]:indptr[r + 1]], weights[indptr[r]:indptr[r + 1]]
        ok = (nb < r) & leader[nb]
        if ok.any():
            region[r] = nb[ok][np.lexsort((nb[ok], -w[ok]))[0]]
        else:
            leader[r] = True
    return region


def gini(counts) -> float:
    """Gini coefficient of non-negative counts: 0 when equal, ``1 - 1/n`` when one holds everything."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    if len(x) == 0 or x.sum() == 0:
        return 0.0
    return float(2.0 * np.sum(np.arange(1, len(x) + 1) * x) / (len(x) * x.sum()) - (len(x) + 1) / len(x))


def _allocation_stats(short_ids: np.ndarray, region: np.ndarray, rows: np.ndarray) -> dict[str, Any]:
    """How many picks each region received, with and without the regulariser (the top ``len(rows)`` by informativeness)."""
    leaders = np.flatnonzero(region == np.arange(len(region)))
    picks = np.bincount(region[rows], minlength=len(region))[leaders]
    plain = np.bincount(region[: len(rows)], minlength=len(region))[leaders]
    supply = np.bincount(region, minlength=len(region))[leaders]
    top = np.lexsort((short_ids[leaders].astype(str), -picks))[:10]
    k = max(len(rows), 1)
    return {"regions": int(len(leaders)), "regions_picked": int((picks > 0).sum()),
            "max_share": round(float(picks.max(initial=0)) / k, 4), "max_share_without_regulariser": round(float(plain.max(initial=0)) / k, 4),
            "gini": round(gini(picks), 4), "gini_without_regulariser": round(gini(plain), 4),
            "top_regions": [{"region": str(short_ids[leaders[i]]), "picks": int(picks[i]), "shortlisted": int(supply[i])} for i in top if picks[i] > 0]}


DEFAULT_SCALE = DEFAULT_SHIFT = 10.0  # without calibrated heads: most ambiguous at similarity 0.5 with zero variances


@register("ascmr")
@dataclass(frozen=True)
class ASCMR:
    """Probabilistic cross-modal informativeness, allocated greedily under a neighbour-density penalty (docs/ascmr.md)."""

    neighbors: int = field(default=32, metadata={"help": "Nearest candidates searched per paired anchor to measure the cross-modal ambiguity."})
    scale: float | None = field(default=None, metadata={"help": "Match-probability slope a in sigmoid(-a*d + b) (default: the probabilistic "
                                                                "heads' calibrated value stored with the vectors, else 10)."})
    shift: float | None = field(default=None, metadata={"help": "Match-probability offset b in sigmoid(-a*d + b) (default: the probabilistic "
                                                                "heads' calibrated value, else 10)."})
    intra_weight: float = field(default=1.0, metadata={
        "help": "Weight of a candidate's own normalised uncertainty against the cross-modal ambiguity (weight 1)."})
    lam: float = field(default=0.5, metadata={"flag": "--lambda",
        "help": "Density penalty: informativeness lost per picked linked neighbour at similarity 1 (0 = rank by informativeness)."})
    density_neighbors: int = field(default=10, metadata={"help": "Nearest candidates per shortlisted candidate that form the density neighbour graph."})
    shortlist: int = field(default=10, metadata={"help": "The allocation considers the shortlist x budget most informative candidates."})
    chunk_size: int = field(default=1024, metadata={"help": "Query vectors per neighbour search (anchors and shortlisted candidates)."})

    def __post_init__(self) -> None:
        for name in ("neighbors", "density_neighbors", "shortlist", "chunk_size"):
            if int(getattr(self, name)) < 1:
                raise SelectionError(f"ascmr: {name} must be at least 1, got {getattr(self, name)}")
        if self.scale is not None and not self.scale > 0:
            raise SelectionError(f"ascmr: scale must be greater than 0, got {self.scale}")
        if not self.intra_weight >= 0 or not self.lam >= 0:
            raise SelectionError(f"ascmr: intra_weight and --lambda must be 0 or more, got {self.intra_weight} and {self.lam}")

    def match(self, problem: SelectionProblem) -> tuple[float, float]:
        """(a, b): as given, else the model's calibrated values (``problem.match``), else 10 and 10."""
        stored = problem.match or {}
        return (float(self.scale if self.scale is not None else stored.get("scale", DEFAULT_SCALE)),
                float(self.shift if self.shift is not None else stored.get("shift", DEFAULT_SHIFT)))

    def select(self, problem: SelectionProblem, budget: int, rng: np.random.Generator) -> Selection:
        ids = problem.candidate_ids
        check_budget(budget, len(ids))
        scale, shift = self.match(problem)
        info, parts = informativeness(problem, self.neighbors, scale, shift, self.intra_weight, self.chunk_size)
        positive = np.flatnonzero(info > 0)
        short = positive[np.lexsort((ids[positive].astype(str), -info[positive]))][: self.shortlist * budget]
        indptr, cols, weights, knn = neighbour_graph(problem, short, self.density_neighbors, self.chunk_size)
        rows, gains, pens = lazy_greedy(info[short], ids[short], indptr, cols, weights, budget, float(self.lam))
        picked = short[rows]
        filled = fill_random(len(ids), picked, budget - len(picked), rng)
        w_u, w_a = parts["weights"]
        own = w_u * parts["intra"][picked] >= w_a * parts["cross"][picked]
        reasons = np.concatenate([np.where(own & (w_u > 0), "uncertainty", "ambiguity"), ["fill"] * len(filled)]).astype(object)
        chosen = np.concatenate([picked, filled]).astype(np.int64)
        scores = np.concatenate([gains, info[filled]])
        decision = self._decision(parts, ids[short], assign_regions(indptr, cols, weights), rows, budget, len(filled))
        decision.update(penalised_picks=int((pens > 0).sum()), mean_neighbor_similarity={
            "picks": round(float(knn[rows].mean()), 4) if len(rows) else 0.0, "shortlist": round(float(knn.mean()), 4) if len(knn) else 0.0})
        stats = {"candidates": int(len(ids)), "candidates_with_score": int(len(positive)), "picked_on_merit": int(len(picked)),
                 "filled": int(len(filled)), "anchors": parts["anchors"], "shortlist": int(len(short)), "ascmr": decision}
        return Selection(ids[chosen], scores, parts["hits"][chosen], reasons, "ascmr", dict(self.__dict__), stats)

    def _decision(self, parts: dict, short_ids: np.ndarray, region: np.ndarray, rows: np.ndarray, budget: int, n_fill: int) -> dict[str, Any]:
        w_u, w_a = parts["weights"]
        anchor_source = ("model" if parts["anchors_with_uncertainty"] == parts["anchors"] and parts["anchors"] else
                         "partial: missing ones count as 0" if parts["anchors_with_uncertainty"] else "fallback: zero variance")
        source = {"candidates": "model" if parts["candidate_uncertainty"] else "fallback: zero variance", "anchors": anchor_source}
        alloc = _allocation_stats(short_ids, region, rows)
        stand_in = "" if parts["candidate_uncertainty"] and anchor_source == "model" else (
            " Some samples carry no stored uncertainty (a model without probabilistic heads): their variance counts as 0, "
            "so ambiguity comes from similarities alone.")
        reason = (f"{len(rows)} of {budget} picks spread over {alloc['regions_picked']} of {alloc['regions']} dense regions "
                  f"(largest share {alloc['max_share']:.0%}; {alloc['max_share_without_regulariser']:.0%} without the density regulariser)"
                  + (f", {n_fill} filled at random (too few candidates with informativeness > 0)" if n_fill else "") + "." + stand_in
                  + (f" Anchors' {self.neighbors}-th nearest candidates are still ambiguous (mean entropy {parts['tail_entropy_mean']:.2f} bits): "
                     "raise neighbors, or pass the scale and shift of trained probabilistic heads." if parts["tail_entropy_mean"] > TAIL_WARNING else ""))
        return dict(alloc, uncertainty=source, weights={"intra": w_u, "cross": w_a}, scale=parts["scale"], shift=parts["shift"], lam=self.lam,
                    anchor_hits=parts["anchor_hits"], tail_entropy_mean=round(parts["tail_entropy_mean"], 4),
                    tail_entropy_max=round(parts["tail_entropy_max"], 4), fill=int(n_fill), reason=reason)
