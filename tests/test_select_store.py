"""Selection through Milvus (Lite and a real server) equals the dense numpy computation, exactly on FLAT."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from hnsel import api
from hnsel.config import HnselConfig, StoreConfig
from hnsel.store import open_store
from hnsel.strategies.dense import dense_hardneg_scores
from hnsel.strategies.hardneg import hardneg_scores
from hnsel.data.synthetic import make_pool, write_pool


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def pool():
    return make_pool(n_paired=20, n_unpaired=150, captions_per_image=3, dim=16, n_coarse=3, fine_per_coarse=3, seed=5)


def _load(tmp_path, uri, namespace, pool):
    """A store holding the synthetic pool plus 60 unpaired captions (for the text modality)."""
    images, texts = write_pool(pool, tmp_path / "pool")
    rng = np.random.default_rng(9)
    extra = unit(pool.text_vectors[rng.integers(0, len(pool.text_vectors), 60)] + 0.05 * rng.normal(size=(60, 16)))
    extra_path = tmp_path / "pool" / "texts_unpaired.jsonl"
    extra_path.write_text("".join(json.dumps({"id": f"q{i:02d}", "vector": v.tolist(), "pool": "unpaired", "text": f"caption {i}"}) + "\n" for i, v in enumerate(extra)))
    config = HnselConfig(store=StoreConfig(uri=uri, namespace=namespace))
    api.ingest(config, images=images, texts=texts)
    api.ingest(config, texts=extra_path)
    return config, extra


@pytest.fixture(scope="module", params=["lite", pytest.param("server", marks=pytest.mark.server)])
def shared(request, tmp_path_factory, pool):
    """One loaded store per backend for the read-only tests of this module."""
    tmp = tmp_path_factory.mktemp("shared")
    uri = str(tmp / "hnsel.db") if request.param == "lite" else request.getfixturevalue("milvus_server")
    return _load(tmp, uri, f"t_shared_{request.param}", pool)


@pytest.fixture
def loaded(tmp_path, store_uri, namespace, pool):
    return _load(tmp_path, store_uri, namespace, pool)


def reference(pool, extra, modality, k, weight):
    paired = pool.image_pool == "paired"
    img_ids, img = pool.image_ids[paired], pool.image_vectors[paired]
    if modality == "image":
        pos = [frozenset([i]) for i in pool.text_image_ids]
        cand_ids = np.array(sorted(pool.image_ids[~paired]), dtype=object)
        cand = pool.image_vectors[[int(x[3:]) for x in cand_ids]]
        scores, counts = dense_hardneg_scores(pool.text_vectors, pos, img_ids, img, cand, k=k, weight=weight)
        return cand_ids, scores, counts
    pos = [frozenset(pool.text_ids[pool.text_image_ids == i]) for i in img_ids]
    cand_ids = np.array([f"q{i:02d}" for i in range(len(extra))], dtype=object)
    scores, counts = dense_hardneg_scores(img, pos, pool.text_ids, pool.text_vectors, extra, k=k, weight=weight)
    return cand_ids, scores, counts


@pytest.mark.parametrize("modality", ["image", "text"])
@pytest.mark.parametrize("weight", ["surplus", "count"])
@pytest.mark.parametrize("k", [1, 5])
def test_milvus_scores_equal_dense(shared, pool, modality, weight, k):
    config, extra = shared
    cand_ids, ref_scores, ref_counts = reference(pool, extra, modality, k, weight)
    with open_store(config.store) as store:
        problem = api.build_problem(store, modality, max_limit=8)  # a small cap forces deepening and range pages
        paired_mb = 0 if weight == "count" else 64  # both threshold paths: Milvus filtered search, and exact in memory
        scores, counts, stats = hardneg_scores(problem, k=k, weight=weight, depth=2, chunk_size=16, paired_mb=paired_mb)
    assert stats["thresholds"] == ("index search" if paired_mb == 0 else "exact in memory")
    assert list(problem.candidate_ids) == list(cand_ids)
    assert np.abs(scores - ref_scores).max() < 1e-4
    assert (counts == ref_counts).all()
    assert counts.sum() > 0 and stats["truncated"] == 0
    if modality == "image":
        assert stats["deepened"] > 0 and stats["range_searched"] > 0  # the small cap forced both paths


@pytest.mark.parametrize("modality", ["image", "text"])
@pytest.mark.parametrize("weight", ["surplus", "count"])
def test_exact_engine_select_equals_dense(shared, pool, modality, weight):
    """``select --engine exact``: the candidates streamed out of Milvus and every pair scored; the picks are the dense
    reference's (ids and order, by score then id) and so are their scores."""
    config, extra = shared
    cand_ids, ref_scores, ref_counts = reference(pool, extra, modality, 1, weight)
    budget = int((ref_scores > 0).sum())
    result = api.select(config, budget=budget, strategy="hardneg", params={"weight": weight}, modality=modality, seed=0,
                        engine="exact", device="cpu", record=False)
    sel = result.selection
    assert sel.stats["engine"] == "exact" and sel.stats["engine_choice"] == {"engine": "exact", "requested": "exact", "reason": "--engine exact"}
    order = np.lexsort((cand_ids.astype(str), -ref_scores))[:budget]
    assert list(sel.ids) == list(cand_ids[order]) and set(sel.reasons) == {"score"}
    assert np.abs(sel.scores - ref_scores[order]).max() < 1e-4
    assert list(sel.violations) == list(ref_counts[order])


def test_select_picks_dense_top_and_writes_file(loaded, pool, tmp_path):
    config, extra = loaded
    cand_ids, ref_scores, _ = reference(pool, extra, "image", 1, "surplus")
    budget = int((ref_scores > 0).sum()) + 5  # some picks must be random fill
    result = api.select(config, budget=budget, strategy="hardneg", seed=3, out=tmp_path / "picks.parquet", record=False)
    merit = np.lexsort((cand_ids.astype(str), -ref_scores))[: budget - 5]
    assert list(result.selection.ids[: budget - 5]) == list(cand_ids[merit])
    assert list(result.selection.reasons).count("fill") == 5
    table = pq.read_table(tmp_path / "picks.parquet").to_pydict()
    assert list(table) == ["rank", "id", "score", "violations", "reason", "uri"]
    assert table["id"] == list(result.selection.ids) and table["rank"][:3] == [1, 2, 3]
    assert table["uri"][0].startswith("synthetic://")
    again = api.select(config, budget=budget, strategy="hardneg", seed=3, record=False)
    assert list(again.selection.ids) == list(result.selection.ids)


@pytest.mark.parametrize("engine", ["milvus", "exact"])
def test_select_reports_where_its_time_went(shared, engine):
    """``timings_s``: one entry per phase the engine ran, in the order they ran; all but the searches on other threads add
    up to the selection's wall time."""
    config, _ = shared
    summary = api.select(config, budget=5, strategy="hardneg", seed=0, engine=engine, device="cpu", record=False).summary()
    timings = summary["timings_s"]
    ran = ["list_candidates", "paired_side", "anchor_stream", "thresholds"]
    ran += ["search_wait", "searches_in_threads", "aggregation", "rerank"] if engine == "milvus" else ["candidate_stream", "products"]
    assert list(timings) == ran + ["write", "other"]
    assert all(v >= 0 for v in timings.values()) and timings["anchor_stream"] > 0
    wall = sum(v for k, v in timings.items() if k != "searches_in_threads")
    assert wall == pytest.approx(summary["seconds"], abs=0.01)


def test_status_counts(shared, pool):
    config, _ = shared
    info = api.status(config)
    # vectors ingested from files: no model record, no re-embed under way, the configured collections in use
    assert info == {"images": {"paired": 20, "unpaired": 150}, "texts": {"paired": 60, "unpaired": 60}, "dim": 16, "selected": 0,
                    "model": None, "reembed": None,
                    "collections": {"images": config.store.collection_name("images"), "texts": config.store.collection_name("texts")}}


def test_reingest_replaces_rows(loaded, tmp_path):
    config, _ = loaded
    path = tmp_path / "again.jsonl"
    path.write_text(json.dumps({"id": "img020", "vector": [1.0] + [0.0] * 15, "pool": "unpaired", "uri": "new://x"}) + "\n")
    api.ingest(config, images=path)
    with open_store(config.store) as store:
        rows = store.get("images", ["img020"], ["id", "vector", "uri"])
        assert rows[0]["uri"] == "new://x" and rows[0]["vector"][0] == pytest.approx(1.0)
        assert store.count("images") == 170


def test_a_short_page_does_not_end_the_stream(lite_uri, monkeypatch):
    """A server answers an iterator-mode page with fewer rows than asked when the page spans segments (at 1M rows a
    listing once stopped at 138,000 of 1,000,000 candidates): only an empty page ends ``iter_rows``."""
    config = StoreConfig(uri=lite_uri, namespace="short_pages")
    ids = [f"u{i:03d}" for i in range(57)]
    with open_store(config) as store:
        store.ensure_collections(4)
        store.upsert("images", {"id": ids, "vector": np.eye(4, dtype=np.float32)[np.arange(57) % 4] + 0.1, "pool": ["unpaired"] * 57})
        rpc = store.rpc

        def short_pages(action, method, *args, **kwargs):
            rows = rpc(action, method, *args, **kwargs)
            return rows[:3] if method == "query" and kwargs.get("iterator") else rows  # the lowest ids, as a short page holds

        monkeypatch.setattr(store, "rpc", short_pages)
        pages = list(store.iter_rows("images", store.pool_filter("images", "unpaired"), ("id",), 10))
        problem = api.build_problem(store, "image")
    assert [r["id"] for page in pages for r in page] == ids and all(len(p) <= 3 for p in pages)
    assert list(problem.candidate_ids) == ids


def test_hnsw_builds_with_hnsels_defaults_unless_configured():
    assert StoreConfig(index_type="HNSW").build_params == {"M": 32, "efConstruction": 200}
    assert StoreConfig(index_type="hnsw").build_params == {"M": 32, "efConstruction": 200}
    assert StoreConfig(index_type="HNSW", index_params={"M": 8, "efConstruction": 64}).build_params == {"M": 8, "efConstruction": 64}
    assert StoreConfig().build_params == {} and StoreConfig(index_type="IVF_FLAT").build_params == {}


@pytest.mark.server
def test_an_hnsw_store_on_a_server_is_built_with_the_default_parameters(milvus_server, namespace):
    from hnsel.store import open_store

    with open_store(StoreConfig(uri=milvus_server, namespace=namespace, index_type="HNSW")) as store:
        store.ensure_collections(16)
        index = store.client.describe_index(store.name("images"), store.client.list_indexes(store.name("images"))[0])
        params = {k: int(v) for k, v in index.get("params", index).items() if k in ("M", "efConstruction")}
        assert index["index_type"] == "HNSW" and params == {"M": 32, "efConstruction": 200}
        for kind in ("images", "texts", "meta"):
            store.client.drop_collection(store.name(kind))
