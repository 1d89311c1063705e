"""The report map's 2-D layout: trustworthiness against sklearn's, PCA's known answers, UMAP where installed, the choice."""

from __future__ import annotations

import numpy as np
import pytest

from hnsel.errors import InputError
from hnsel.report import layout as layout_module
from hnsel.report.layout import fit_layout, trustworthiness


def _clusters(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, dim)) * 3
    x = centres[rng.integers(0, 6, n)] + rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_trustworthiness_matches_sklearn_and_its_known_answers():
    manifold = pytest.importorskip("sklearn.manifold")
    x = _clusters(150, 12, 0)
    rng = np.random.default_rng(1)
    for y in (x[:, :2], rng.normal(size=(150, 2)), x @ rng.normal(size=(12, 2))):
        for k in (5, 10):
            assert trustworthiness(x, y, k) == pytest.approx(manifold.trustworthiness(x, y, n_neighbors=k), abs=1e-12)
    assert trustworthiness(x, x.copy(), 10) == 1.0  # every neighbourhood kept
    with pytest.raises(ValueError):
        trustworthiness(x[:10], x[:10, :2], 5)


def test_pca_layout_places_new_points_and_states_its_variance():
    rng = np.random.default_rng(2)
    x = np.zeros((200, 5))
    x[:, 0], x[:, 1], x[:, 2] = rng.normal(size=200) * 3, rng.normal(size=200) * 2, rng.normal(size=200) * 0.1
    coords, fit = fit_layout(x, "pca", seed=0)
    assert fit.method == "pca" and fit.fitted == 200
    assert sum(fit.explained) > 0.99 and fit.explained[0] > fit.explained[1]
    np.testing.assert_allclose(fit.place(x[:7]), coords[:7], atol=1e-5)
    np.testing.assert_allclose(np.abs(np.corrcoef(coords[:, 0], x[:, 0])[0, 1]), 1.0, atol=1e-3)
    assert fit.trustworthiness > 0.95 and "PCA fitted on 200 sampled points; trustworthiness" in fit.describe()
    assert "the axes hold" in fit.describe()


def test_the_layout_choice(monkeypatch):
    x = _clusters(20, 6, 3)
    monkeypatch.setattr(layout_module, "umap_installed", lambda: False)
    assert fit_layout(x, "auto", 0)[1].method == "pca"
    with pytest.raises(InputError, match="--layout umap needs umap-learn: pip install 'hnsel\\[map\\]', or pass --layout pca"):
        fit_layout(x, "umap", 0)
    with pytest.raises(InputError, match="use one of auto, umap, pca"):
        fit_layout(x, "tsne", 0)
    monkeypatch.setattr(layout_module, "umap_installed", lambda: True)
    assert fit_layout(x, "auto", 0)[1].method == "pca"  # too few points for UMAP's neighbour graph


def test_umap_layout_keeps_neighbourhoods_and_is_seeded():
    pytest.importorskip("umap")
    x = _clusters(160, 16, 4)
    coords, fit = fit_layout(x, "auto", seed=7)
    assert fit.method == "umap" and coords.shape == (160, 2)
    assert fit.trustworthiness > 0.9 and fit.describe().startswith("UMAP (cosine, 15 neighbours) fitted on 160 sampled points")
    again, _ = fit_layout(x, "umap", seed=7)
    np.testing.assert_allclose(again, coords, atol=1e-4)
    placed = fit.place(x[:5])
    assert placed.shape == (5, 2) and np.isfinite(placed).all()
