"""The exact engine: hard-negative scores by blockwise matrix products (``problem.engine == "exact"``).

The same definitions as the neighbour-search path (../shared/ALGORITHM.md, ``hardneg.py``): the same thresholds
(``_anchor_chunks_with_thresholds``: exact in-memory full batch, or seeded mini batch), the same window, weight and
statistics; only the violators are found differently. Instead of one top-``depth`` search per anchor, deepened where
it saturates, every (anchor, candidate) similarity is computed, with torch on the best device (CUDA when available,
else the CPU): the anchors (vectors, thresholds and, for ``window=semi``, their similarity to their own positive) are
held on the device, the candidates stream once through ``problem.candidate_batches`` (a Milvus query iterator with
bounded batches on a store), and each batch is multiplied by blocks of anchors sized by ``memory_mb``. Per candidate,
the surplus (float64) and the violation count are accumulated; no anchors x pool matrix is ever built.

Cost: anchors x pool x dim multiply-adds (2 flop each), no approximation and no deepening; memory O(anchors x dim)
on the device, one candidate batch and one tile (anchor block x batch), plus one float and one count per candidate
on the host. torch is imported only when this engine runs.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from ..errors import SelectionError
from .base import SelectionProblem
from .thresholds import anchor_chunks_with_thresholds, chance_stats, positive_similarities

__all__ = ["ENGINES", "exact_hardneg_scores", "exact_anchors", "score_candidates", "resolve_device", "check_device_name", "below_float32",
           "above_float32"]

ENGINES = ("milvus", "exact")
TILE_BYTES = 8  # per tile element: the float32 similarity, two masks, slack
HIT_BYTES = 40  # per gathered violation: row and column (int64), similarity, surplus and threshold (float64)
DEFAULT_MEMORY_MB = {"cpu": 64.0, "cuda": 1024.0}  # the tile's budget (the gathered violations get as much again)


def _torch():
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a dependency of hnsel
        raise SelectionError("the exact engine needs torch; install it (pip install torch) or use the milvus engine") from exc
    return torch


DEVICE_NAMES = re.compile(r"auto|cpu|cuda(:[0-9]+)?")  # what ``resolve_device`` accepts


def check_device_name(device: str | None) -> None:
    """Refuse a device name the exact engine cannot use, before any work (and whichever engine runs): no torch import."""
    if device is not None and not (isinstance(device, str) and DEVICE_NAMES.fullmatch(device)):
        raise SelectionError(f"--device {device!r}: use auto, cpu, cuda or cuda:N")


def resolve_device(device: str | None = None):
    """A ``torch.device``: ``device`` as given (``cpu``, ``cuda``, ``cuda:1``); None or ``auto``: CUDA when available, else CPU."""
    torch = _torch()
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        out = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise SelectionError(f"--device {device!r}: use auto, cpu or cuda (cuda:N)") from exc
    if out.type == "cuda" and not torch.cuda.is_available():
        raise SelectionError(f"--device {device}: no CUDA device is available here; use cpu or auto")
    if out.type not in ("cpu", "cuda"):
        raise SelectionError(f"--device {device}: the exact engine runs on cpu or cuda")
    return out


def below_float32(x: np.ndarray) -> np.ndarray:
    """The largest float32 <= x (NaN stays NaN): for a float32 s, ``s > below_float32(x)`` iff ``s > x``."""
    x = np.asarray(x, dtype=np.float64)
    f = x.astype(np.float32)
    return np.where(f > x, np.nextafter(f, np.float32(-np.inf)), f).astype(np.float32)


def above_float32(x: np.ndarray) -> np.ndarray:
    """The smallest float32 >= x (NaN stays NaN): for a float32 s, ``s < above_float32(x)`` iff ``s < x``."""
    x = np.asarray(x, dtype=np.float64)
    f = x.astype(np.float32)
    return np.where(f < x, np.nextafter(f, np.float32(np.inf)), f).astype(np.float32)


def exact_anchors(problem: SelectionProblem, *, k: int, batch: str, batch_size: int, chunk_size: int, rng: np.random.Generator,
                  paired_mb: float, window: str, stats: dict, negatives: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Every anchor with a threshold, on the host: (vectors float32, ``xi`` float64, positive similarity or None).

    Thresholds and the ``negatives`` tally come from the same generator as the neighbour-search path, so the
    thresholds, the seeded mini-batch shuffle and the chance statistics are the same.
    """
    vectors, xis, uppers = [], [], []
    for chunk, xi in anchor_chunks_with_thresholds(problem, k, batch, batch_size, chunk_size, rng, paired_mb, stats, negatives):
        valid = np.flatnonzero(~np.isnan(xi))
        stats["anchors"] += len(xi)
        stats["anchors_without_negatives"] += len(xi) - len(valid)
        if len(valid):
            vectors.append(np.asarray(chunk.vectors, dtype=np.float32)[valid])
            xis.append(np.asarray(xi, dtype=np.float64)[valid])
            if window == "semi":
                uppers.append(positive_similarities(problem, chunk)[valid])
        problem.progress("thresholds", stats["anchors"], problem.n_anchors)
    if not vectors:
        return np.zeros((0, 0), np.float32), np.zeros(0), None
    upper = np.concatenate(uppers) if window == "semi" else None
    return np.concatenate(vectors), np.concatenate(xis), upper


def score_candidates(problem: SelectionProblem, vectors: np.ndarray, xi: np.ndarray, upper: np.ndarray | None, weight: str, *,
                     device, memory_mb: float, candidate_batch: int, stats: dict) -> tuple[np.ndarray, np.ndarray]:
    """Stream the candidates once; per batch, all anchors in blocks on ``device``: (scores float64, counts int64)."""
    torch = _torch()
    n = len(problem.candidate_ids)
    scores = np.zeros(n, dtype=np.float64)
    counts = np.zeros(n, dtype=np.int64)
    if len(xi) == 0:
        return scores, counts
    anchors = torch.from_numpy(np.ascontiguousarray(vectors)).to(device)
    xi32 = torch.from_numpy(below_float32(xi)).to(device)  # s > xi exactly, compared in float32
    xi64 = torch.from_numpy(np.asarray(xi, dtype=np.float64)).to(device)
    up32 = None if upper is None else torch.from_numpy(np.nan_to_num(above_float32(upper), nan=np.inf)).to(device)
    done = 0
    for indices, batch in problem.timed_iter("candidate_stream", problem.candidate_batches(candidate_batch)):
        if len(indices) == 0:
            continue
        with problem.timed("products"):
            cand = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(device)
            block = max(1, int(memory_mb * 2**20) // (len(indices) * TILE_BYTES))
            stats["anchor_block"] = min(stats["anchor_block"] or len(xi), block)  # anchors per product, for the largest batch
            b_scores, b_counts = _score_batch(torch, anchors, xi32, xi64, up32, cand, block, int(memory_mb * 2**20) // HIT_BYTES, weight, stats)
            np.add.at(scores, np.asarray(indices, dtype=np.int64), b_scores.cpu().numpy())
            np.add.at(counts, np.asarray(indices, dtype=np.int64), b_counts.cpu().numpy())
        stats["candidate_batches"] += 1
        done += len(indices)
        problem.progress("scoring candidates", done, n)
    return scores, counts


def _score_batch(torch, anchors, xi32, xi64, up32, cand, block: int, max_hits: int, weight: str, stats: dict):
    """One candidate batch against every anchor, ``block`` anchors at a time: (scores float64, counts int64) on the device.

    Violations are gathered (``nonzero``) and added per candidate (``bincount``, ``index_add_`` in float64): the cost
    beyond the product is one comparison per pair plus O(violations), at most ``max_hits`` gathered at once.
    """
    m = cand.shape[0]
    scores = torch.zeros(m, dtype=torch.float64, device=cand.device)
    counts = torch.zeros(m, dtype=torch.int64, device=cand.device)
    for start in range(0, anchors.shape[0], block):
        stop = min(start + block, anchors.shape[0])
        sims = anchors[start:stop] @ cand.T  # (block, m) float32
        mask = sims > xi32[start:stop, None]
        if up32 is not None:  # semi-hard: at or above the anchor's own positive is a likely false negative
            hard = int(torch.count_nonzero(mask))
            mask &= sims < up32[start:stop, None]
        nnz = int(torch.count_nonzero(mask))
        if up32 is not None:
            stats["above_positive"] += hard - nnz
        step = stop - start if nnz <= max_hits else max(1, max_hits // m)  # rows per gather: at most max_hits violations
        for r0 in range(0, stop - start if nnz else 0, step):
            rows, cols = mask[r0:r0 + step].nonzero(as_tuple=True)
            counts += torch.bincount(cols, minlength=m)
            if weight == "surplus":
                rows += r0
                scores.index_add_(0, cols, sims[rows, cols].double() - xi64[start + rows])
    if weight == "count":
        scores = counts.double()
    return scores, counts


def exact_hardneg_scores(problem: SelectionProblem, *, k: int = 1, weight: str = "surplus", batch: str = "full", batch_size: int = 128,
                         chunk_size: int = 512, rng: np.random.Generator | None = None, paired_mb: float = 1024, window: str = "hard",
                         device: str | None = None, memory_mb: float | None = None,
                         candidate_batch: int = 8192) -> tuple[np.ndarray, np.ndarray, dict]:
    """``hardneg_scores`` computed exactly by blockwise products: (scores, violation counts, stats) aligned with
    ``problem.candidate_ids``.

    ``device``: ``cpu``, ``cuda`` (``cuda:N``) or None for the best available; ``memory_mb``: budget of one tile (anchor
    block x candidate batch; default 64 MB on a CPU, 1 GB on a GPU), and as much again for the violations gathered from
    it; ``candidate_batch``: candidates per streamed batch.
    The other parameters are ``hardneg_scores``'s. Stats: those of the search path (``deepened``, ``range_searched``
    and ``truncated`` are 0: nothing is searched) plus ``engine``, ``device``, ``anchor_block`` and ``candidate_batches``.
    """
    torch = _torch()
    rng = rng if rng is not None else np.random.default_rng(0)
    dev = resolve_device(device)
    budget = float(memory_mb) if memory_mb is not None else DEFAULT_MEMORY_MB[dev.type]
    if not budget > 0 or candidate_batch < 1:
        raise SelectionError("the exact engine needs memory_mb > 0 and candidate_batch >= 1")
    stats: dict[str, Any] = {"engine": "exact", "device": str(dev), "anchors": 0, "anchors_without_negatives": 0, "deepened": 0,
                             "range_searched": 0, "truncated": 0, "unknown_hits": 0, "above_positive": 0, "candidate_batches": 0,
                             "anchor_block": 0, "reranked": 0, "rerank_raised": 0, "rerank_found": 1.0}
    if dev.type == "cuda":
        stats["device_name"] = torch.cuda.get_device_name(dev)
    negatives: dict[frozenset, list[int]] = {}
    vectors, xi, upper = exact_anchors(problem, k=k, batch=batch, batch_size=batch_size, chunk_size=chunk_size, rng=rng,
                                       paired_mb=paired_mb, window=window, stats=stats, negatives=negatives)
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # no TF32 on a GPU: float32 products, as the reference computes them
    try:
        with torch.inference_mode():
            scores, counts = score_candidates(problem, vectors, xi, upper, weight, device=dev, memory_mb=budget,
                                              candidate_batch=candidate_batch, stats=stats)
    finally:
        torch.set_float32_matmul_precision(precision)
    stats.update(chance_stats(counts, negatives if stats.get("thresholds") == "exact in memory" else None, k))
    return scores, counts, stats
