"""A user's own files: manifest column mapping (--id-column, --uri-column, --caption-column) and the same photo
under a second id (content digest), through the readers, the embed workflow and the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _embed_helpers import write_images

from hnsel.data import load_source, read_folder
from hnsel.errors import InputError

NAMES = ["a.jpg", "b.jpg", "sub/c.jpg", "d.jpg"]
OWN_ROWS = [  # a user's file: filename,caption; b twice (two captions), d without a caption
    {"filename": "a.jpg", "caption": "a dog on grass"},
    {"filename": "b.jpg", "caption": "two children"},
    {"filename": "b.jpg", "caption": "kids playing"},
    {"filename": "sub/c.jpg", "caption": "a red boat"},
    {"filename": "d.jpg", "caption": ""},
]


def write_rows(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".csv":
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture
def photos(tmp_path) -> Path:
    write_images(tmp_path / "images", NAMES)
    return tmp_path / "images"


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_uri_column_without_id_column_gives_the_folder_ids(tmp_path, photos, suffix):
    path = write_rows(tmp_path / f"captions{suffix}", OWN_ROWS)
    ds = load_source(path, images_dir=photos, uri_column="filename")
    by_id = {r.id: r for r in ds.images}
    assert set(by_id) == {r.id for r in read_folder(photos).images} == set(NAMES)
    assert by_id["b.jpg"].captions == ("two children", "kids playing")
    assert by_id["b.jpg"].caption_ids == ("b.jpg#0", "b.jpg#1")
    assert by_id["sub/c.jpg"].uri == str(photos / "sub" / "c.jpg")
    assert {i: r.pool for i, r in by_id.items()} == {"a.jpg": "paired", "b.jpg": "paired", "sub/c.jpg": "paired", "d.jpg": "unpaired"}


def test_id_and_caption_columns_are_mapped(tmp_path, photos):
    rows = [{"photo_id": "P 1", "file": "a.jpg", "text": "one"}, {"photo_id": "P 1", "file": "a.jpg", "text": "two"},
            {"photo_id": "p2", "file": "b.jpg", "text": None}]
    ds = load_source(write_rows(tmp_path / "own.jsonl", rows), images_dir=photos, id_column="photo_id", uri_column="file",
                     caption_column="text")
    assert [(r.id, r.captions, r.pool) for r in ds.images] == [("P 1", ("one", "two"), "paired"), ("p2", (), "unpaired")]


def test_a_file_outside_the_images_folder_keeps_its_uri_as_id(tmp_path, photos):
    write_images(tmp_path / "other", ["x.jpg"])
    rows = [{"filename": str(tmp_path / "other" / "x.jpg"), "caption": "far away"}, {"filename": "a.jpg", "caption": "near"}]
    ds = load_source(write_rows(tmp_path / "c.csv", rows), images_dir=photos, uri_column="filename")
    assert [r.id for r in ds.images] == [str(tmp_path / "other" / "x.jpg"), "a.jpg"]


def test_split_column_feeds_split_aware_commands(tmp_path, photos):
    rows = [dict(r, split="test" if r["filename"] == "a.jpg" else "train") for r in OWN_ROWS]
    ds = load_source(write_rows(tmp_path / "s.csv", rows), images_dir=photos, uri_column="filename", split="test")
    assert [r.id for r in ds.images] == ["a.jpg"]


@pytest.mark.parametrize("kwargs, message", [
    ({}, r"no 'uri' column of image paths \(its columns: filename, caption\); name it with --uri-column, e.g. --uri-column filename, "
         r"and --id-column for the ids"),
    ({"uri_column": "file"}, r"--uri-column 'file': the manifest has no such column \(its columns: filename, caption\)"),
    ({"uri_column": "filename", "caption_column": "text"}, r"--caption-column 'text': the manifest has no such column"),
    ({"uri_column": "filename", "id_column": "photo"}, r"--id-column 'photo': the manifest has no such column"),
])
def test_column_errors_name_the_columns_and_the_flags(tmp_path, photos, kwargs, message):
    with pytest.raises(InputError, match=message):
        load_source(write_rows(tmp_path / "captions.csv", OWN_ROWS), images_dir=photos, **kwargs)


def test_without_id_column_a_row_needs_an_image(tmp_path, photos):
    rows = [*OWN_ROWS[:2], {"filename": "", "caption": "a caption of nothing"}]
    with pytest.raises(InputError, match=r"row 3: no image path in column 'filename'; without an id column"):
        load_source(write_rows(tmp_path / "captions.csv", rows), images_dir=photos, uri_column="filename")


def test_column_flags_refused_for_other_sources(photos):
    with pytest.raises(InputError, match=r"--uri-column apply to .csv/.jsonl/.parquet manifests, not to a folder"):
        load_source(photos, uri_column="filename")


# --- embed: the same photo under a second id; a manifest captioning a folder's images ----------------------------------

@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    from _embed_helpers import write_tiny_config

    return str(write_tiny_config(tmp_path_factory.mktemp("model")))


@pytest.fixture(scope="module")
def encoder(tiny_config):
    from hnsel.model.encoder import load_encoder

    return load_encoder(tiny_config, "none", "cpu")


def _config(tmp_path):
    from hnsel.config import HnselConfig, StoreConfig

    return HnselConfig(store=StoreConfig(uri=str(tmp_path / "hnsel.db")))


def _counts(config) -> dict:
    from hnsel.workflows.ingest import status

    info = status(config)
    return {"images": info["images"], "texts": info["texts"]}


def test_folder_then_own_manifest_pairs_the_same_ids(tmp_path, photos, encoder):
    from hnsel.workflows.embed import embed

    config = _config(tmp_path)
    first = embed(config, photos, encoder=encoder)
    assert first.images_embedded == 4 and _counts(config)["images"] == {"paired": 0, "unpaired": 4}
    csv_path = write_rows(tmp_path / "captions.csv", OWN_ROWS)
    second = embed(config, csv_path, encoder=encoder, images_dir=photos, uri_column="filename")
    assert (second.images_embedded, second.images_skipped, second.images_paired, second.texts_embedded) == (0, 4, 3, 4)
    assert _counts(config) == {"images": {"paired": 3, "unpaired": 1}, "texts": {"paired": 4, "unpaired": 0}}
    again = embed(config, csv_path, encoder=encoder, images_dir=photos, uri_column="filename")  # nothing left to do
    assert (again.images_embedded, again.images_paired, again.texts_embedded) == (0, 0, 0)


def test_same_file_under_another_id_is_refused_and_nothing_written(tmp_path, photos, encoder):
    from hnsel.workflows.embed import embed

    config = _config(tmp_path)
    embed(config, photos, encoder=encoder)
    rows = [{"id": f"photo-{i}", "uri": name, "caption": f"caption {i}"} for i, name in enumerate(NAMES)]
    manifest = write_rows(tmp_path / "renamed.csv", rows)
    with pytest.raises(InputError, match=r"image 'photo-0' \(.*a\.jpg\) is the same file as image 'a.jpg', already stored under id "
                                         r"'a.jpg' \(4 such images\); nothing was embedded.*--allow-duplicates"):
        embed(config, manifest, encoder=encoder, images_dir=photos)
    assert _counts(config) == {"images": {"paired": 0, "unpaired": 4}, "texts": {"paired": 0, "unpaired": 0}}
    report = embed(config, manifest, encoder=encoder, images_dir=photos, allow_duplicates=True)
    assert report.images_embedded == 4 and [d["same_as"] for d in report.duplicates] == NAMES
    assert _counts(config)["images"] == {"paired": 4, "unpaired": 4}


def test_same_file_twice_in_one_source_is_refused(tmp_path, photos, encoder):
    from hnsel.workflows.embed import embed

    (photos / "copy-of-a.jpg").write_bytes((photos / "a.jpg").read_bytes())
    config = _config(tmp_path)
    with pytest.raises(InputError, match=r"image 'copy-of-a.jpg' .* is the same file as image 'a.jpg', also listed in this source"):
        embed(config, photos, encoder=encoder)
    assert _counts(config)["images"] == {"paired": 0, "unpaired": 0}


def test_cli_own_csv_with_filename_column(tmp_path, photos, tiny_config):
    from typer.testing import CliRunner

    from hnsel.cli import app

    csv_path = write_rows(tmp_path / "captions.csv", OWN_ROWS)
    base = ["--model-name", tiny_config, "--pretrained", "none", "--device", "cpu", "--num-workers", "0", "--milvus-uri", str(tmp_path / "h.db")]
    runner = CliRunner()
    refused = runner.invoke(app, ["embed", str(csv_path), "--images-dir", str(photos), *base])
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    assert "its columns: filename, caption" in refused.output and "--uri-column filename" in refused.output
    done = runner.invoke(app, ["embed", str(csv_path), "--images-dir", str(photos), "--uri-column", "filename", *base, "--json"])
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout)
    assert (summary["images_embedded"], summary["texts_embedded"]) == (4, 4)
    status = json.loads(runner.invoke(app, ["status", "--milvus-uri", str(tmp_path / "h.db"), "--json"]).stdout)
    assert status["images"] == {"paired": 3, "unpaired": 1} and status["texts"]["paired"] == 4
    renamed = write_rows(tmp_path / "renamed.csv", [{"name": "x", "file": "a.jpg"}])
    dup = runner.invoke(app, ["embed", str(renamed), "--images-dir", str(photos), "--id-column", "name", "--uri-column", "file", *base])
    assert dup.exit_code == 1 and "the same file as image 'a.jpg'" in dup.output and len(dup.output.strip().splitlines()) == 1


def test_eval_and_simulate_read_the_own_file_through_the_same_flags(tmp_path, photos, tiny_config):
    from typer.testing import CliRunner

    from hnsel.cli import app

    csv_path = write_rows(tmp_path / "captions.csv", OWN_ROWS)
    model = ["--model-name", tiny_config, "--pretrained", "none", "--device", "cpu", "--cache-dir", str(tmp_path / "cache")]
    runner = CliRunner()
    result = runner.invoke(app, ["eval", str(csv_path), "--images-dir", str(photos), "--uri-column", "filename", "--split", "all", *model, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rsum"] >= 0
    refused = runner.invoke(app, ["eval", str(csv_path), "--images-dir", str(photos), "--split", "all", *model])
    assert refused.exit_code == 1 and "--uri-column filename" in refused.stderr
    trained = runner.invoke(app, ["train", str(csv_path), "--images-dir", str(photos), "--uri-column", "filename", "--split", "all",
                                  "--epochs", "1", "--train-batch", "2", "--val-fraction", "0", "--out", str(tmp_path / "m"), *model, "--json"])
    assert trained.exit_code == 0, trained.output
    assert (json.loads(trained.stdout)["n_images"], json.loads(trained.stdout)["n_texts"]) == (3, 4)  # d.jpg has no caption
    # simulate reads the same mapping; this file has no split column, so it stops at the splits, not at the columns
    sim = runner.invoke(app, ["simulate", str(csv_path), "--out", str(tmp_path / "sim"), "--images-dir", str(photos), "--uri-column", "filename",
                              "--model-name", tiny_config])
    assert sim.exit_code == 1 and "must be two splits of the source (it has none)" in sim.stderr


def test_an_image_stored_before_digests_were_kept_is_found_by_its_path(tmp_path, photos, encoder):
    from hnsel.store import open_store
    from hnsel.store.digests import DIGESTS
    from hnsel.workflows.embed import embed

    config = _config(tmp_path)
    embed(config, photos, encoder=encoder)
    with open_store(config.store) as store:  # as a store embedded by an earlier hnsel: no digests
        store.client.drop_collection(store.name(DIGESTS))
    (tmp_path / "elsewhere").mkdir()
    rows = [{"id": "first", "uri": str(photos / "a.jpg"), "caption": "x"}]
    with pytest.raises(InputError, match=r"image 'first' .* is the same file as image 'a.jpg', already stored"):
        embed(config, write_rows(tmp_path / "elsewhere" / "m.csv", rows), encoder=encoder)
