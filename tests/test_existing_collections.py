"""Collections hnsel did not create: pool values or filters mapped in hnsel.toml, a mapping that matches nothing
named with what the pool field holds, and rounds on a read_only collection kept in hnsel's own meta collection.
Run on Milvus Lite and on the server (``store_uri``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import unit
from typer.testing import CliRunner

from hnsel import api
from hnsel.cli import app
from hnsel.config import CollectionConfig, HnselConfig, StoreConfig, load_config
from hnsel.errors import ConfigError, SelectionError
from hnsel.store import open_store

N_LABELED, N_UNLABELED, DIM = 12, 40, 8


def _create(uri: str, prefix: str) -> None:
    """``{prefix}_photos`` and ``{prefix}_captions`` as another tool made them: other field names, pools 'labeled' /
    'unlabeled' in a field 'split', no round field."""
    from pymilvus import DataType, MilvusClient

    rng = np.random.default_rng(0)
    client = MilvusClient(uri=uri)
    try:
        for name, key, extra in ((f"{prefix}_photos", "photo_id", ()), (f"{prefix}_captions", "cap_id", ("photo",))):
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field(key, DataType.VARCHAR, is_primary=True, max_length=64)
            schema.add_field("clip_vec", DataType.FLOAT_VECTOR, dim=DIM)
            schema.add_field("split", DataType.VARCHAR, max_length=16)
            for field in extra:
                schema.add_field(field, DataType.VARCHAR, max_length=64)
            index = client.prepare_index_params()
            index.add_index(field_name="clip_vec", index_type="FLAT", metric_type="COSINE")
            client.create_collection(name, schema=schema, index_params=index, consistency_level="Strong")
        photos = unit(rng.normal(size=(N_LABELED + N_UNLABELED, DIM)))
        client.insert(f"{prefix}_photos", [{"photo_id": f"ph{i:03d}", "clip_vec": v.tolist(), "split": "labeled" if i < N_LABELED else "unlabeled"}
                                           for i, v in enumerate(photos)])
        captions = unit(photos[:N_LABELED] + 0.1 * rng.normal(size=(N_LABELED, DIM)))
        client.insert(f"{prefix}_captions", [{"cap_id": f"c{i:03d}", "clip_vec": v.tolist(), "split": "labeled", "photo": f"ph{i:03d}"}
                                             for i, v in enumerate(captions)])
    finally:
        client.close()


def _config(uri: str, prefix: str, **pools) -> HnselConfig:
    images = CollectionConfig(collection_name=f"{prefix}_photos", id="photo_id", vector="clip_vec", pool="split", read_only=True, **pools)
    texts = CollectionConfig(collection_name=f"{prefix}_captions", id="cap_id", vector="clip_vec", pool="split", image_id="photo",
                             read_only=True, **pools)
    return HnselConfig(store=StoreConfig(uri=uri, namespace=prefix, images=images, texts=texts))


def _toml(path, uri: str, prefix: str, mapped: bool):
    pools = 'paired = "labeled"\nunpaired = "unlabeled"\n' if mapped else ""
    path.write_text(f'[store]\nuri = "{uri}"\nnamespace = "{prefix}"\n'
                    f'[store.images]\ncollection_name = "{prefix}_photos"\nid = "photo_id"\nvector = "clip_vec"\npool = "split"\n{pools}read_only = true\n'
                    f'[store.texts]\ncollection_name = "{prefix}_captions"\nid = "cap_id"\nvector = "clip_vec"\npool = "split"\n'
                    f'image_id = "photo"\n{pools}read_only = true\n')
    return path


@pytest.fixture
def existing(store_uri, namespace):
    _create(store_uri, namespace)
    return store_uri, namespace


def test_unmapped_pools_are_named_with_the_values_the_field_holds(existing):
    config = _config(*existing)
    info = api.status(config)
    assert info["images"] == {"paired": 0, "unpaired": 0}
    photos = next(w for w in info["warnings"] if "_photos" in w)
    assert (f"{N_LABELED + N_UNLABELED} rows, {N_LABELED + N_UNLABELED} in no pool; paired = 'paired' (paired) and unpaired = 'unpaired' "
            "(unpaired) match none; pool values seen: labeled, unlabeled") in photos
    with pytest.raises(SelectionError, match=r"_photos: 52 rows, 52 in no pool.*pool values seen: labeled, unlabeled; map the pools under "
                                             r"\[store.images\]"):
        api.select(config, budget=3, strategy="random", record=False)


@pytest.mark.parametrize("pools", [{"paired": "labeled", "unpaired": "unlabeled"},
                                   {"paired_filter": 'split == "labeled"', "unpaired_filter": 'split in ["unlabeled"]'}], ids=["values", "filters"])
def test_mapped_pools_select_and_rounds_stay_in_hnsels_meta(existing, pools):
    config = _config(*existing, **pools)
    info = api.status(config)
    assert (info["images"], info["texts"], info.get("warnings")) == ({"paired": N_LABELED, "unpaired": N_UNLABELED}, {"paired": N_LABELED, "unpaired": 0}, None)
    first = api.select(config, budget=10, strategy="hardneg", seed=0, record=True)
    second = api.select(config, budget=10, strategy="hardneg", seed=0, record=True)
    assert (first.round, second.round) == (1, 2) and not set(first.selection.ids) & set(second.selection.ids)
    assert {i for i in first.selection.ids} <= {f"ph{i:03d}" for i in range(N_LABELED, N_LABELED + N_UNLABELED)}
    assert api.status(config, rounds=True)["selected"] == 20
    with open_store(config.store) as store:  # the read_only collection was never written: no round field, rows as they were
        assert not store.has_field("images", "round") and store.count("images") == N_LABELED + N_UNLABELED
        assert {r["pool"] for b in store.iter_rows("images", "", ("id", "pool")) for r in b} == (
            {"paired", "unpaired"} if "paired" in pools else {"labeled", "unlabeled"})


def test_a_round_kept_in_meta_survives_a_new_process_and_release(existing, tmp_path):
    uri, prefix = existing
    toml = _toml(tmp_path / "hnsel.toml", uri, prefix, mapped=True)
    runner = CliRunner()
    picks = []
    for _ in range(2):
        result = runner.invoke(app, ["select", "--config", str(toml), "--budget", "15", "--strategy", "random", "--seed", "0", "--json"])
        assert result.exit_code == 0, result.output
        picks.append({p["id"] for p in json.loads(result.stdout)["picks"]})
    assert not picks[0] & picks[1]  # the same seed, yet round 1's picks were not offered again
    status = json.loads(runner.invoke(app, ["status", "--config", str(toml), "--json"]).stdout)
    assert [(r["round"], r["pending"]) for r in status["rounds"]] == [(1, 15), (2, 15)]
    exported = runner.invoke(app, ["annotate", "export", "--round", "1", "--config", str(toml), "--out", str(tmp_path / "r1.csv")])
    assert exported.exit_code == 0, exported.output
    assert {line.split(",")[1] for line in (tmp_path / "r1.csv").read_text().splitlines()[1:]} == picks[0]
    assert runner.invoke(app, ["round", "release", "--round", "1", "--config", str(toml)]).exit_code == 0
    result = runner.invoke(app, ["select", "--config", str(toml), "--budget", "25", "--strategy", "random", "--no-record", "--json"])
    assert result.exit_code == 0, result.output
    unlabeled = {f"ph{i:03d}" for i in range(N_LABELED, N_LABELED + N_UNLABELED)}
    assert {p["id"] for p in json.loads(result.stdout)["picks"]} == unlabeled - picks[1]  # round 1's picks are back, round 2's are not


def test_unmapped_collection_through_the_cli_is_one_line(existing, tmp_path):
    uri, prefix = existing
    toml = _toml(tmp_path / "hnsel.toml", uri, prefix, mapped=False)
    result = CliRunner().invoke(app, ["select", "--config", str(toml), "--budget", "3", "--strategy", "random"])
    assert result.exit_code == 1 and "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1
    assert "pool values seen: labeled, unlabeled" in result.stderr
    status = CliRunner().invoke(app, ["status", "--config", str(toml)])
    assert status.exit_code == 0 and "warning: collection" in status.stderr and "pool values seen: labeled, unlabeled" in status.stderr


def test_pool_mapping_config_errors(tmp_path):
    toml = tmp_path / "hnsel.toml"
    toml.write_text('[store.images]\npaired = "x"\nunpaired = "x"\n')
    with pytest.raises(ConfigError, match="paired and unpaired both map to 'x'"):
        load_config(toml)
    toml.write_text('[store.images]\npaired = 3\n')
    with pytest.raises(ConfigError, match="paired must be a string"):
        load_config(toml)
