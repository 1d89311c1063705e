"""The report map's 2-D layout: UMAP (``umap-learn``, the ``[map]`` extra) where installed, PCA otherwise.

The layout is fitted on a seeded sample (the caller's), and the points outside it (the picks beyond the sample,
earlier rounds' picks) are placed by the fitted map (UMAP's ``transform``, PCA's projection). Its quality is
stated the same way for both: the trustworthiness (Venna and Kaski) of the fitted sample's 2-D neighbourhoods,
computed here in numpy on at most ``QUALITY_POINTS`` points; PCA also states its explained variance.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import InputError

__all__ = ["LAYOUTS", "MapLayout", "fit_layout", "trustworthiness", "umap_installed"]

LAYOUTS = ("auto", "umap", "pca")
QUALITY_POINTS = 1000  # trustworthiness is O(n^2): a seeded subsample of the fitted points
QUALITY_K = 10
UMAP_MIN_POINTS = 30  # below this UMAP's neighbour graph says little: PCA


@dataclass
class MapLayout:
    """How the map was laid out: ``method`` (umap or pca), the fitted sample's size, its quality, and ``place``."""

    method: str
    fitted: int
    trustworthiness: float | None
    explained: list[float] = field(default_factory=list)  # PCA: variance held by each axis
    place: Callable[[np.ndarray], np.ndarray] | None = None  # 2-D coordinates of points outside the fitted sample

    def describe(self) -> str:
        what = "UMAP (cosine, 15 neighbours)" if self.method == "umap" else "PCA"
        parts = [f"{what} fitted on {self.fitted:,} sampled points"]
        if self.trustworthiness is not None:
            parts.append(f"trustworthiness {self.trustworthiness:.3f} (k = {QUALITY_K}; 1 keeps every neighbourhood, about 0.5 is random)")
        if self.explained:
            parts.append("the axes hold " + " and ".join(f"{x:.0%}" for x in self.explained) + " of the variance")
        return "; ".join(parts)


def umap_installed() -> bool:
    return importlib.util.find_spec("umap") is not None


def _choose(method: str, n: int) -> str:
    if method not in LAYOUTS:
        raise InputError(f"--layout {method!r}: use one of {', '.join(LAYOUTS)}")
    if method == "umap" and not umap_installed():
        raise InputError("--layout umap needs umap-learn: pip install 'hnsel[map]', or pass --layout pca")
    if method == "auto":
        return "umap" if umap_installed() and n >= UMAP_MIN_POINTS else "pca"
    return method


def fit_layout(x: np.ndarray, method: str, seed: int) -> tuple[np.ndarray, MapLayout]:
    """2-D coordinates of the rows of ``x`` (the sample) and the layout that places further points."""
    x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    chosen = _choose(method, len(x))
    if len(x) == 0:
        return np.zeros((0, 2)), MapLayout(chosen, 0, None)
    if chosen == "umap" and len(x) >= 4:
        coords, layout = _umap(x, seed)
    else:
        coords, layout = _pca(x)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(x), size=min(QUALITY_POINTS, len(x)), replace=False))
    layout.trustworthiness = trustworthiness(x[rows], coords[rows], QUALITY_K) if len(rows) > 2 * QUALITY_K + 1 else None
    return coords, layout


def _pca(x: np.ndarray) -> tuple[np.ndarray, MapLayout]:
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=0)
    _, s, vt = np.linalg.svd(x64 - mean, full_matrices=False)
    comps = np.vstack([vt[:2], np.zeros((max(0, 2 - len(vt)), x.shape[1]))])

    def place(y: np.ndarray) -> np.ndarray:
        return (np.asarray(y, dtype=np.float64).reshape(len(y), -1) - mean) @ comps.T

    explained = (s[:2] ** 2 / max(float((s**2).sum()), 1e-12)).tolist()
    return place(x64), MapLayout("pca", len(x), None, explained, place)


def _umap(x: np.ndarray, seed: int) -> tuple[np.ndarray, MapLayout]:
    import warnings

    import umap  # the [map] extra; slow to import (numba), so only here

    reducer = umap.UMAP(n_components=2, n_neighbors=min(15, len(x) - 1), min_dist=0.1, metric="cosine", random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_jobs overridden by random_state": the seed is the point
        coords = reducer.fit_transform(x)

    def place(y: np.ndarray) -> np.ndarray:
        if len(y) == 0:
            return np.zeros((0, 2))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(reducer.transform(np.asarray(y, dtype=np.float32).reshape(len(y), -1)), dtype=np.float64)

    return np.asarray(coords, dtype=np.float64), MapLayout("umap", len(x), None, [], place)


def trustworthiness(x: np.ndarray, y: np.ndarray, k: int = QUALITY_K) -> float:
    """Trustworthiness of the embedding ``y`` of ``x`` (Venna and Kaski 2001; sklearn's definition, Euclidean):
    1 - 2 / (n k (2n - 3k - 1)) * sum over points of (rank in ``x`` - k) for each of its ``k`` nearest in ``y``
    that is not among its ``k`` nearest in ``x``."""
    n = len(x)
    if not 0 < k < n / 2:
        raise ValueError(f"k = {k} needs 0 < k < n / 2 (n = {n})")

    def dist(a: np.ndarray) -> np.ndarray:
        a = a.astype(np.float64)
        sq = (a * a).sum(1)
        d = sq[:, None] + sq[None, :] - 2 * a @ a.T
        np.fill_diagonal(d, np.inf)
        return d

    order_x = np.argsort(dist(x), axis=1, kind="stable")
    ranks = np.empty((n, n), dtype=np.int64)
    ranks[np.arange(n)[:, None], order_x] = np.arange(1, n + 1)[None, :]
    near_y = np.argsort(dist(y), axis=1, kind="stable")[:, :k]
    r = ranks[np.arange(n)[:, None], near_y] - k
    penalty = np.where(r > 0, r, 0).sum()
    return float(1.0 - 2.0 / (n * k * (2.0 * n - 3.0 * k - 1.0)) * penalty)
