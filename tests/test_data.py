"""Readers: folders, manifests (CSV / JSONL / Parquet), COCO, Karpathy; pools; open_image."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _embed_helpers import write_coco, write_images, write_karpathy, write_truncated

from hnsel.data import ImageReadError, detect_format, load_source, open_image
from hnsel.errors import HnselError, InputError

ROWS = [
    {"id": "a", "uri": "img/a.png", "caption": "a red thing", "image_id": "", "pool": ""},
    {"id": "a", "uri": "img/a.png", "caption": "a thing, red", "image_id": "", "pool": ""},
    {"id": "b", "uri": "img/b.png", "caption": "", "image_id": "", "pool": ""},
    {"id": "t1", "uri": "", "caption": "a caption of a", "image_id": "a", "pool": ""},
    {"id": "t2", "uri": "", "caption": "a lonely caption", "image_id": "", "pool": ""},
]


def write_manifest(folder: Path, suffix: str, rows: list[dict]) -> Path:
    path = folder / f"manifest{suffix}"
    if suffix == ".csv":
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_manifest_formats_read_the_same(tmp_path, suffix):
    write_images(tmp_path / "img", ["a.png", "b.png"])
    ds = load_source(write_manifest(tmp_path, suffix, ROWS))
    by_id = {r.id: r for r in ds.images}
    assert set(by_id) == {"a", "b"}
    assert by_id["a"].captions == ("a red thing", "a thing, red", "a caption of a")
    assert by_id["a"].caption_ids == ("a#0", "a#1", "t1")
    assert by_id["a"].uri == str((tmp_path / "img" / "a.png").resolve())
    assert (by_id["a"].pool, by_id["b"].pool) == ("paired", "unpaired")
    assert [(t.id, t.text, t.pool) for t in ds.texts] == [("t2", "a lonely caption", "unpaired")]


def test_manifest_relative_uris_follow_images_dir(tmp_path):
    path = write_manifest(tmp_path, ".csv", ROWS[2:3])
    ds = load_source(path, images_dir=tmp_path / "elsewhere")
    assert ds.images[0].uri == str(tmp_path / "elsewhere" / "img" / "b.png")


def test_manifest_pool_column_and_flag(tmp_path):
    rows = [dict(ROWS[0], pool="unpaired"), dict(ROWS[2], pool="unpaired")]
    ds = load_source(write_manifest(tmp_path, ".csv", rows))
    assert [r.pool for r in ds.images] == ["unpaired", "unpaired"]
    with pytest.raises(InputError, match="1 paired image.*no caption.*'b'"):
        load_source(write_manifest(tmp_path, ".jsonl", rows), pool="paired")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_manifest_missing_column_fails_at_once(tmp_path, suffix):
    rows = [{"id": "a", "path": "a.png"}]
    with pytest.raises(InputError, match=r"manifest\..*no 'uri' column .*\(its columns: id, path\).*--uri-column path"):
        load_source(write_manifest(tmp_path, suffix, rows))


@pytest.mark.parametrize("bad, message", [
    ({"id": "", "uri": "x.png"}, "row 2: empty id"),
    ({"id": "c", "uri": "x.png", "pool": "maybe"}, "row 2: pool 'maybe'"),
    ({"id": "c", "uri": ""}, "row 2: id 'c' has neither uri nor caption"),
    ({"id": "a", "uri": "other.png"}, "row 2: id 'a' appears twice with different uris"),
    ({"id": "c", "uri": "", "caption": "x", "image_id": "zz"}, "row 2: caption 'c' names image_id 'zz'"),
])
def test_manifest_bad_rows_name_the_row(tmp_path, bad, message):
    rows = [{"id": "a", "uri": "a.png", "caption": "", "image_id": "", "pool": ""}, {"caption": "", "image_id": "", "pool": "", **bad}]
    with pytest.raises(InputError, match=message):
        load_source(write_manifest(tmp_path, ".csv", rows))


def test_folder_is_recursive_and_filters_extensions(tmp_path):
    write_images(tmp_path, ["x.jpg", "sub/y.PNG", "sub/deeper/z.webp"])
    (tmp_path / "notes.txt").write_text("not an image")
    ds = load_source(tmp_path)
    assert [r.id for r in ds.images] == ["sub/deeper/z.webp", "sub/y.PNG", "x.jpg"]
    assert {r.pool for r in ds.images} == {"unpaired"}
    with pytest.raises(InputError, match="3 paired image"):
        load_source(tmp_path, pool="paired")


def test_coco(tmp_path):
    path = write_coco(tmp_path, n_images=3, captions_per_image=2)
    assert detect_format(path) == "coco"
    ds = load_source(path, images_dir=tmp_path / "val")
    assert [r.id for r in ds.images] == ["100", "101", "102"]
    assert ds.images[1].caption_ids == ("1002", "1003")
    assert ds.images[1].captions == ("image 1 caption 0", "image 1 caption 1")
    assert Path(ds.images[0].uri).is_file()
    assert {r.pool for r in ds.images} == {"paired"}
    assert [r.pool for r in load_source(path, images_dir=tmp_path / "val", pool="unpaired").images] == ["unpaired"] * 3


def test_coco_orphan_caption_is_an_error(tmp_path):
    path = write_coco(tmp_path)
    doc = json.loads(path.read_text())
    doc["annotations"].append({"id": 9, "image_id": 999, "caption": "lost"})
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="no image entry.*'999'"):
        load_source(path)


@pytest.mark.parametrize("coco", [False, True])
def test_karpathy(tmp_path, coco):
    path = write_karpathy(tmp_path, coco=coco)
    assert detect_format(path) == "karpathy"
    ds = load_source(path)
    assert [r.id for r in ds.images] == (["5000", "5001", "5002", "5003"] if coco else ["1000", "1001", "1002", "1003"])
    assert all(Path(r.uri).is_file() for r in ds.images)
    assert ds.images[1].caption_ids == ("2", "3") and ds.images[1].captions == ("photo 1 take 0", "photo 1 take 1")
    test = load_source(path, split="test")
    assert [r.split for r in test.images] == ["test"]
    with pytest.raises(InputError, match="no images in split 'restval'"):
        load_source(path, split="restval")


def test_detect_format_errors(tmp_path):
    with pytest.raises(InputError, match="source not found"):
        detect_format(tmp_path / "nope.csv")
    (tmp_path / "x.json").write_text('{"hello": 1}')
    with pytest.raises(InputError, match="neither COCO"):
        detect_format(tmp_path / "x.json")
    (tmp_path / "x.tsv").write_text("id\turi\n")
    with pytest.raises(InputError, match="unknown source type '.tsv'"):
        detect_format(tmp_path / "x.tsv")


def test_open_image_reads_local_and_fsspec_urls(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    (path,) = write_images(tmp_path, ["a.png"], size=24)
    local = open_image(path)
    assert local.mode == "RGB" and local.size == (24, 24)
    with fsspec.open("memory://hnsel-test/a.png", "wb") as fh:
        fh.write(path.read_bytes())
    remote = open_image("memory://hnsel-test/a.png")
    assert remote.tobytes() == local.tobytes()
    assert open_image(f"file://{path}").tobytes() == local.tobytes()


def test_open_image_failures_have_reasons(tmp_path):
    (tmp_path / "text.jpg").write_text("hello")
    truncated = write_truncated(tmp_path / "cut.jpg")
    cases = {tmp_path / "missing.png": "missing file", tmp_path / "text.jpg": "not an image", truncated: "truncated or corrupt",
             "memory://hnsel-test/absent.png": "missing file"}
    for uri, reason in cases.items():
        with pytest.raises(ImageReadError) as info:
            open_image(uri)
        assert info.value.reason.startswith(reason)
        assert isinstance(info.value, HnselError) and str(uri) in str(info.value)
