"""The Milvus fixtures themselves: a real server answers, data round-trips, namespaces keep tests apart."""

from __future__ import annotations

import numpy as np
import pytest
from pymilvus import DataType, MilvusClient

DIM = 8
_namespaces_seen: set[str] = set()


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _create_images(client: MilvusClient, collection_name: str) -> None:
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=512)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
    schema.add_field("pool", DataType.VARCHAR, max_length=64)
    schema.add_field("round", DataType.INT64)
    index_params = client.prepare_index_params()
    index_params.add_index(field_name="vector", index_type="FLAT", metric_type="COSINE")
    client.create_collection(collection_name, schema=schema, index_params=index_params)


@pytest.mark.server
def test_server_answers_over_http(milvus_server):
    assert milvus_server.startswith("http://127.0.0.1:")
    client = MilvusClient(milvus_server)
    assert client.get_server_version().startswith("v2.")
    assert isinstance(client.list_collections(), list)


def test_lite_uri_is_a_fresh_file_in_tmp_path(lite_uri, tmp_path):
    assert lite_uri.startswith(str(tmp_path))
    assert not lite_uri.startswith(("http://", "https://"))
    assert MilvusClient(lite_uri).list_collections() == []


def test_round_trip_sees_its_own_writes(store_uri, namespace):
    """Upsert then read back at once with Strong consistency (a server defaults to Bounded)."""
    client = MilvusClient(store_uri)
    name = f"{namespace}_images"
    _create_images(client, name)
    vectors = _unit(np.random.default_rng(0), 20)
    rows = [{"id": f"img{i}", "vector": vectors[i], "pool": "a" if i < 10 else "b", "round": 0} for i in range(20)]
    assert client.upsert(name, rows)["upsert_count"] == 20

    count = client.query(name, filter="", output_fields=["count(*)"], consistency_level="Strong")
    assert count[0]["count(*)"] == 20
    hits = client.search(name, data=[vectors[3]], limit=3, filter='pool == "a"', output_fields=["pool"],
                         consistency_level="Strong")[0]
    assert hits[0]["id"] == "img3"
    assert hits[0]["distance"] == pytest.approx(1.0, abs=1e-5)
    expected = np.argsort(-(vectors[:10] @ vectors[3]))[:3]
    assert [h["id"] for h in hits] == [f"img{i}" for i in expected]
    assert {h["entity"]["pool"] for h in hits} == {"a"}
    client.drop_collection(name)


@pytest.mark.parametrize("turn", [1, 2])
def test_namespace_is_unique_and_isolates_collections(store_uri, namespace, turn):
    assert namespace not in _namespaces_seen
    _namespaces_seen.add(namespace)
    client = MilvusClient(store_uri)
    _create_images(client, f"{namespace}_images")
    mine = [c for c in client.list_collections() if c.startswith(f"{namespace}_")]
    assert mine == [f"{namespace}_images"]
    others = {c.split("_images")[0] for c in client.list_collections()} & _namespaces_seen - {namespace}
    assert not others, "a collection of an earlier test's namespace leaked"
    client.drop_collection(f"{namespace}_images")
