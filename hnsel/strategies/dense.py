"""The dense reference of hard-negative scores: numpy float32 products, blockwise (memory one block), thresholds and
surplus vectorised. Independent of both engines (``hardneg.py``, ``exact.py``), which the tests and
``benchmarks/select_scale.py`` check against it.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np

__all__ = ["dense_hardneg_scores", "dense_thresholds"]


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
