"""Rounds in the store: recording, never offering a pick twice, release, the log, read-only stores."""

import dataclasses
import json

import pytest

from hnsel import api
from hnsel.config import CollectionConfig, HnselConfig, StoreConfig
from hnsel.errors import SelectionError
from hnsel.store import open_store
from hnsel.strategies import list_strategies
from hnsel.data.synthetic import make_pool, write_pool
from hnsel.workflows.rounds import picks_hash, round_key


@pytest.fixture(scope="module")
def pool_files(tmp_path_factory):
    pool = make_pool(n_paired=15, n_unpaired=90, captions_per_image=2, dim=12, n_coarse=3, fine_per_coarse=3, seed=3)
    return write_pool(pool, tmp_path_factory.mktemp("pool"))


def loaded(uri, namespace, pool_files):
    config = HnselConfig(store=StoreConfig(uri=uri, namespace=namespace))
    api.ingest(config, images=pool_files[0], texts=pool_files[1])
    return config


def rounds_of(config):
    with open_store(config.store) as store:
        return {r["id"]: r["round"] for batch in store.iter_rows("images", "", ("id", "round")) for r in batch}


def test_record_skip_and_release(store_uri, namespace, pool_files):
    config = loaded(store_uri, namespace, pool_files)
    first = api.select(config, budget=10, strategy="hardneg", seed=1, record=True)
    assert first.round == 1 and first.summary()["round"] == 1
    second = api.select(config, budget=10, strategy="random", seed=1, record=True)
    assert second.round == 2 and not set(first.selection.ids) & set(second.selection.ids)
    held = rounds_of(config)
    assert {i for i, r in held.items() if r == 1} == set(first.selection.ids)
    assert {i for i, r in held.items() if r == 2} == set(second.selection.ids)
    info = api.status(config, rounds=True)
    assert info["selected"] == 20
    assert [(r["round"], r["strategy"], r["size"], r["annotated"], r["pending"]) for r in info["rounds"]] == [
        (1, "hardneg", 10, 0, 10), (2, "random", 10, 0, 10)]
    assert api.release(config, 1) == {"round": 1, "released": 10, "annotated": 0}
    assert sum(r == 1 for r in rounds_of(config).values()) == 0
    third = api.select(config, budget=80, strategy="random", seed=0, record=False)  # 90 - 10 still in round 2: all of round 1 is back
    assert set(first.selection.ids) <= set(third.selection.ids)
    assert api.status(config, rounds=True)["rounds"][0]["released"] == 10
    with pytest.raises(SelectionError, match="round 7 is not in the round log"):
        api.release(config, 7)


def test_log_reproduces_the_selection(tmp_path, pool_files):
    uri = str(tmp_path / "h.db")
    a, b = loaded(uri, "run_a", pool_files), loaded(uri, "run_b", pool_files)
    picked = api.select(a, budget=12, strategy="density", params={"lam": 3.0}, seed=5, record=True)
    log = api.show_round(a, 1)
    assert log["picks_sha256"] == picks_hash(picked.selection.ids) and log["state"] == "recorded"
    # every resolved parameter, the hardneg component's too: the log alone reproduces the selection
    assert log["params"] == {"base": "hardneg", "lam": 3.0, "shortlist": 10, "k": 1, "weight": "surplus", "batch": "full", "batch_size": 128,
                             "chunk_size": 512, "depth": 64, "paired_mb": 1024, "window": "hard", "searchers": 2, "rerank": 2.0}
    assert log["seed"] == 5 and log["modality"] == "image"
    assert "token" not in log["config"]["store"] and log["config"]["store"]["namespace"] == "run_a"
    again = api.select(b, budget=log["budget"], strategy=log["strategy"], params=log["params"], modality=log["modality"], seed=log["seed"], record=False)
    assert picks_hash(again.selection.ids) == log["picks_sha256"]  # same data, same seed, same picks
    with open_store(a.store) as store:
        assert len(json.dumps(store.get_meta(round_key(1)))) < 4000  # ids are not copied into the log


def test_every_strategy_never_offers_a_pick_twice(tmp_path, pool_files):
    config = loaded(str(tmp_path / "h.db"), "contract", pool_files)
    seen: set[str] = set()
    for name in list_strategies():
        result = api.select(config, budget=8, strategy=name, seed=2, record=True)
        ids = set(result.selection.ids)
        assert len(ids) == 8 and not ids & seen, name
        seen |= ids
    with open_store(config.store) as store:
        paired = {r["id"] for batch in store.iter_rows("images", store.pool_filter("images", "paired")) for r in batch}
    assert not seen & paired
    with pytest.raises(SelectionError, match=f"larger than the {90 - len(seen)} candidates"):
        api.select(config, budget=91 - len(seen), strategy="coreset", record=True)


def test_read_only_store_keeps_its_rounds_in_the_meta_collection(tmp_path, pool_files):
    config = loaded(str(tmp_path / "h.db"), "mapped", pool_files)
    mapped = dataclasses.replace(config, store=dataclasses.replace(
        config.store, images=CollectionConfig(collection_name="mapped_images", read_only=True)))
    result = api.select(mapped, budget=5, strategy="coreset", record=True)
    assert result.round == 1 and result.note is None
    assert set(rounds_of(config).values()) == {-1}  # no row of the read_only collection was written
    rounds = api.status(mapped, rounds=True)["rounds"]
    assert [(r["round"], r["size"], r["pending"], r["state"]) for r in rounds] == [(1, 5, 5, "recorded")]
    again = api.select(mapped, budget=5, strategy="coreset", record=True)
    assert again.round == 2 and not set(again.selection.ids) & set(result.selection.ids)  # never offered twice
    assert api.status(mapped)["selected"] == 10
    assert api.release(mapped, 1) == {"round": 1, "released": 5, "annotated": 0}
    third = api.select(mapped, budget=85, strategy="random", seed=0, record=False)  # 90 - round 2's 5: round 1's picks are back
    assert set(result.selection.ids) <= set(third.selection.ids)
