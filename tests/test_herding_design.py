"""herding and design: the sparse / rank-one engines equal dense in-memory references, on ExactIndex and on Milvus."""

import numpy as np
import pytest
from conftest import clustered, exact_problem, unit

from hnsel import api
from hnsel.config import HnselConfig, StoreConfig
from hnsel.data.synthetic import make_pool, write_pool
from hnsel.errors import SelectionError
from hnsel.store import open_store
from hnsel.strategies import get_strategy
from hnsel.strategies.design import dense_design
from hnsel.strategies.herding import dense_herding, kernel, lazy_herding


def ids_of(picks):
    return [f"u{i:03d}" for i in picks]


def test_kernel_and_lazy_herding_known_answer():
    assert kernel(np.array([1.0]), 0.5)[0] == 1.0 and abs(kernel(np.array([0.0]), 1.0)[0] - np.exp(-2.0)) < 1e-12
    # three candidates; 0 and 1 cover each other well, 2 is alone; nothing paired
    rows = np.array([0, 0, 1, 1, 2])
    cols = np.array([0, 1, 1, 0, 2])
    vals = np.array([1.0, 0.9, 1.0, 0.9, 1.0])
    picks, gains, _ = lazy_herding(rows, cols, vals, np.zeros(3), 3)
    assert list(picks) == [0, 2, 1] and np.allclose(gains, [1.9, 1.0, 0.1])  # 1 adds only 1 - 0.9 once 0 is picked
    picks, gains, _ = lazy_herding(rows, cols, vals, np.zeros(3), 2)
    assert list(picks) == [0, 2] and list(gains) == [1.9, 1.0]  # the dense pair first (tie: index 0), then the loner
    picks, _, _ = lazy_herding(rows, cols, vals, np.array([0.0, 0.0, 1.0]), 1)  # 2 already covered by a paired sample
    assert list(picks) == [0]


@pytest.mark.parametrize("neighbours", [5, 150])
def test_herding_equals_dense_reference(neighbours):
    cand, paired, _, _ = clustered()
    problem = exact_problem(cand, paired, max_limit=4096)
    sel = get_strategy("herding", neighbours=neighbours, bandwidth=0.4, batch_size=32).select(problem, 25, np.random.default_rng(0))
    assert list(sel.ids) == ids_of(dense_herding(cand, paired, 25, 0.4, neighbours))
    assert np.all(np.diff(sel.scores) <= 1e-9)  # submodular: the greedy's gains only fall
    assert sel.stats["coverage_after"] > sel.stats["coverage_before"] and sel.stats["neighbours"] == neighbours


def test_herding_default_bandwidth_and_dense_regions():
    """The default bandwidth is stated; herding's first picks sit in the big cluster that coreset leaves for last."""
    cand, paired, _, _ = clustered()
    problem = exact_problem(cand, paired, max_limit=4096)
    sel = get_strategy("herding").select(problem, 10, np.random.default_rng(0))
    h = sel.stats["bandwidth"]
    assert 0 < h < 2 and sel.stats["bandwidth_rule"].startswith("median")
    assert list(sel.ids) == ids_of(dense_herding(cand, paired, 10, h, 32))
    core = get_strategy("coreset").select(problem, 10, np.random.default_rng(0))
    in_big = lambda s: sum(int(i[1:]) < 90 for i in s.ids)  # noqa: E731
    assert in_big(sel) > in_big(core)


def test_design_equals_dense_reference_and_lowers_variance():
    cand, paired, _, _ = clustered()
    problem = exact_problem(cand, paired)
    for dim in (12, 5):
        sel = get_strategy("design", dim=dim, ridge=0.5).select(problem, 25, np.random.default_rng(0))
        assert list(sel.ids) == ids_of(dense_design(cand, paired, 25, 0.5, dim))
        assert sel.stats["dim"] == dim and sel.stats["mean_variance_after"] < sel.stats["mean_variance_before"]
        assert abs(sel.stats["mean_variance_before"] - sel.stats["mean_variance_after"] - sel.scores.sum()) < 1e-9
    empty = exact_problem(cand, np.zeros((0, cand.shape[1]), np.float32))
    sel = get_strategy("design").select(empty, 5, np.random.default_rng(0))
    assert list(sel.ids) == ids_of(dense_design(cand, np.zeros((0, cand.shape[1])), 5, 1.0))


def test_design_known_answer():
    """Two directions; the paired set already spans the first, so the first pick is along the second."""
    cand = unit(np.array([[1, 0.01], [0.02, 1], [1, -0.01], [0.01, 1]], dtype=np.float32))
    paired = unit(np.array([[1, 0], [1, 0.001], [1, -0.001]], dtype=np.float32))
    sel = get_strategy("design", ridge=0.1).select(exact_problem(cand, paired), 1, np.random.default_rng(0))
    assert sel.ids[0] in {"u001", "u003"}


def test_bad_parameters():
    with pytest.raises(SelectionError, match="--bandwidth"):
        get_strategy("herding", bandwidth=0.0)
    with pytest.raises(SelectionError, match="--ridge"):
        get_strategy("design", ridge=-1.0)
    with pytest.raises(SelectionError, match="at least 1"):
        get_strategy("herding", neighbours=0)


@pytest.fixture(scope="module")
def pool():
    return make_pool(n_paired=20, n_unpaired=150, captions_per_image=3, dim=16, n_coarse=3, fine_per_coarse=3, seed=5)


@pytest.mark.parametrize("backend", ["lite", pytest.param("server", marks=pytest.mark.server)])
def test_milvus_equals_dense(backend, pool, tmp_path, request):
    """Through the store (Milvus Lite and a server): herding's neighbour searches and design's streamed passes give the
    dense references' picks, and the same seed gives the same picks."""
    uri = str(tmp_path / "hnsel.db") if backend == "lite" else request.getfixturevalue("milvus_server")
    images, texts = write_pool(pool, tmp_path / "pool")
    config = HnselConfig(store=StoreConfig(uri=uri, namespace=f"t_cover_{backend}_{tmp_path.name[-8:]}"))
    api.ingest(config, images=images, texts=texts)
    paired = pool.image_pool == "paired"
    cand_ids = np.array(sorted(pool.image_ids[~paired]), dtype=object)
    where = {x: i for i, x in enumerate(pool.image_ids)}
    cand = pool.image_vectors[[where[x] for x in cand_ids]].astype(np.float32)
    pv = pool.image_vectors[paired].astype(np.float32)
    with open_store(config.store) as store:
        problem = api.build_problem(store, "image")
        herd = get_strategy("herding", neighbours=150, bandwidth=0.5, batch_size=40).select(problem, 12, np.random.default_rng(0))
        design = get_strategy("design", dim=8, batch_size=40).select(problem, 12, np.random.default_rng(0))
    assert list(herd.ids) == list(cand_ids[dense_herding(cand, pv, 12, 0.5, 150)])
    assert list(design.ids) == list(cand_ids[dense_design(cand, pv, 12, 1.0, 8)])
    for name, first in (("herding", herd), ("design", design)):
        again = api.select(config, budget=12, strategy=name, params=dict(first.params), seed=4, record=False).selection
        assert list(again.ids) == list(first.ids)
