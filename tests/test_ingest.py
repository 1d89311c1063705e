"""Every ingest validation error names the file and row, and leaves the store exactly as it was.

Refused ingests only read the store, so they run once, on Lite; the ingests that write run on Lite and the server."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hnsel import api
from hnsel.config import HnselConfig, StoreConfig
from hnsel.errors import InputError
from hnsel.store import open_store


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def img(i, pool="paired", v=None):
    return {"id": f"i{i}", "vector": v or [1.0, float(i), 0.5], "pool": pool, "uri": f"file://{i}.jpg"}


def txt(i, image, pool="paired", v=None):
    row = {"id": f"t{i}", "vector": v or [0.5, 1.0, float(i)], "pool": pool, "text": f"caption {i}"}
    if image is not None:
        row["image_id"] = image
    return row


def _base_store(tmp_path, uri, namespace):
    cfg = HnselConfig(store=StoreConfig(uri=uri, namespace=namespace))
    images = write_jsonl(tmp_path / "base_images.jsonl", [img(0), img(1), img(2, "unpaired"), img(3, "unpaired")])
    texts = write_jsonl(tmp_path / "base_texts.jsonl", [txt(0, "i0"), txt(1, "i1")])
    api.ingest(cfg, images=images, texts=texts)
    return cfg


@pytest.fixture(scope="module")
def lite(tmp_path_factory):
    """One Lite store for the refused ingests: they write nothing, so they can share it."""
    tmp_path = tmp_path_factory.mktemp("ingest")
    return _base_store(tmp_path, str(tmp_path / "hnsel.db"), "t_ingest_lite")


@pytest.fixture(scope="module", params=["lite", pytest.param("server", marks=pytest.mark.server)])
def config(request, tmp_path_factory):
    """One store per backend for the ingests that write."""
    tmp_path = tmp_path_factory.mktemp("ingest_write")
    uri = str(tmp_path / "hnsel.db") if request.param == "lite" else request.getfixturevalue("milvus_server")
    return _base_store(tmp_path, uri, f"t_ingest_write_{request.param}")


def snapshot(cfg):
    with open_store(cfg.store) as store:
        rows = {kind: sorted((r["id"], r["pool"], tuple(round(x, 5) for x in r["vector"])) for b in store.iter_rows(kind, "", ("id", "pool", "vector")) for r in b)
                for kind in ("images", "texts")}
    return api.status(cfg), rows


BAD_IMAGES = [
    ("mixed dimensions", [img(10), {**img(11), "vector": [1.0, 2.0]}], r"row 2: vector has 2 dimensions, expected 3"),
    ("store dimension", [{**img(10), "vector": [1.0, 2.0]}, {**img(11), "vector": [1.0, 0.0]}], r"2 dimensions but the store holds 3"),
    ("nan", [img(10), {**img(11), "vector": [1.0, float("nan"), 0.0]}], r"row 2: vector holds NaN or infinite"),
    ("infinite", [{**img(10), "vector": [1.0, float("inf"), 0.0]}], r"row 1: vector holds NaN or infinite"),
    ("zero vector", [img(10), img(11), {**img(12), "vector": [0.0, 0.0, 0.0]}], r"row 3: vector is all zeros"),
    ("duplicate id", [img(10), img(11), img(10)], r"row 3: duplicate id 'i10'"),
    ("unknown pool", [img(10), img(11, "labelled")], r"row 2: pool must be 'paired' or 'unpaired'"),
    ("missing column", [{"id": "i10", "vector": [1.0, 0.0, 0.0]}], r"missing column\(s\) \['pool'\]"),
    ("non-string id", [{**img(10), "id": 7}], r"row 1: id must be a non-empty string"),
    ("text values", [{**img(10), "vector": [1.0, "a", 0.0]}], r"row 1: vector holds a value that is not a number"),
]


@pytest.mark.parametrize("case,rows,message", BAD_IMAGES, ids=[c[0] for c in BAD_IMAGES])
def test_bad_image_files_change_nothing(lite, tmp_path, case, rows, message):
    before = snapshot(lite)
    # a good texts file in the same call must not be written either
    texts = write_jsonl(tmp_path / "good_texts.jsonl", [txt(5, "i0")])
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r).replace("NaN", "NaN") + "\n" for r in rows))
    with pytest.raises(InputError, match=message) as info:
        api.ingest(lite, images=path, texts=texts)
    assert "bad.jsonl" in str(info.value) and "\n" not in str(info.value)
    assert snapshot(lite) == before


BAD_TEXTS = [
    ("paired text without image", [txt(10, None)], r"row 1: paired text 't10' needs an image_id"),
    ("image not in store", [txt(10, "i0"), txt(11, "nope")], r"row 2: paired text names image 'nope', which is not in the store"),
    ("image unpaired", [txt(10, "i2")], r"row 1: paired text names image 'i2', which is unpaired in the store"),
]


@pytest.mark.parametrize("case,rows,message", BAD_TEXTS, ids=[c[0] for c in BAD_TEXTS])
def test_bad_text_files_change_nothing(lite, tmp_path, case, rows, message):
    before = snapshot(lite)
    path = write_jsonl(tmp_path / "bad_texts.jsonl", rows)
    with pytest.raises(InputError, match=message):
        api.ingest(lite, texts=path)
    assert snapshot(lite) == before


def test_text_may_name_an_image_paired_in_the_same_call(config, tmp_path):
    images = write_jsonl(tmp_path / "imgs.jsonl", [img(20)])
    texts = write_jsonl(tmp_path / "txts.jsonl", [txt(20, "i20")])
    before = api.status(config)["texts"]["paired"]
    report = api.ingest(config, images=images, texts=texts)
    assert (report.images, report.texts) == (1, 1)
    assert api.status(config)["texts"]["paired"] == before + 1


def test_unpairing_an_image_with_captions_is_refused(lite, tmp_path):
    before = snapshot(lite)
    path = write_jsonl(tmp_path / "unpair.jsonl", [img(0, "unpaired")])
    with pytest.raises(InputError, match="paired text 't0' in the store describes it"):
        api.ingest(lite, images=path)
    assert snapshot(lite) == before


def test_parquet_input_is_normalised(config, tmp_path):
    table = pa.table({"id": ["p1"], "vector": pa.array([[3.0, 4.0, 0.0]], type=pa.list_(pa.float32())), "pool": ["unpaired"]})
    pq.write_table(table, tmp_path / "v.parquet")
    api.ingest(config, images=tmp_path / "v.parquet")
    with open_store(config.store) as store:
        (row,) = store.get("images", ["p1"], ["id", "vector", "uri", "round"])
    assert row["vector"] == pytest.approx([0.6, 0.8, 0.0], abs=1e-6)
    assert row["uri"] == "" and row["round"] == -1


def test_unknown_extension_and_missing_file(lite, tmp_path):
    with pytest.raises(InputError, match=r"unknown file type '.txt'"):
        api.ingest(lite, images=tmp_path / "x.txt")
    with pytest.raises(InputError, match="file not found"):
        api.ingest(lite, images=tmp_path / "missing.parquet")
