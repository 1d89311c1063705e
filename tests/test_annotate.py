"""Annotation export and import: the two-round loop through the CLI, Label Studio, the text modality, and
every refusal leaving the store exactly as it was."""

import csv
import hashlib
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from hnsel import api
from hnsel.cli import app
from hnsel.config import HnselConfig, StoreConfig
from hnsel.errors import InputError, ModelMismatchError
from hnsel.store import open_store
from hnsel.data.synthetic import make_pool, write_pool

DIM = 12
MODEL = {"model_name": "fake", "pretrained": "none", "dim": DIM, "config_sha256": "c0", "weights": "random:0", "heads_sha256": None}


class FakeEncoder:
    """Deterministic unit vectors from a caption's hash; ``model_info`` decides whether it matches the store."""

    def __init__(self, info=MODEL):
        self.model_info = dict(info)

    def encode_texts(self, texts):
        rows = [np.random.default_rng(int(hashlib.sha1(t.encode()).hexdigest()[:8], 16)).normal(size=DIM) for t in texts]
        rows = np.asarray(rows, dtype=np.float32).reshape(len(texts), DIM)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    def text_batch(self, texts):  # the Encoder's interface: vectors and, for probabilistic heads only, variances
        return self.encode_texts(texts), None


@pytest.fixture(scope="module")
def pool_files(tmp_path_factory):
    pool = make_pool(n_paired=15, n_unpaired=90, captions_per_image=2, dim=DIM, n_coarse=3, fine_per_coarse=3, seed=4)
    folder = tmp_path_factory.mktemp("pool")
    images, texts = write_pool(pool, folder)
    rng = np.random.default_rng(1)
    extra = rng.normal(size=(20, DIM))
    unpaired = folder / "texts_unpaired.jsonl"
    unpaired.write_text("".join(json.dumps({"id": f"q{i:02d}", "vector": v.tolist(), "pool": "unpaired", "text": f"query {i}"}) + "\n"
                                for i, v in enumerate(extra)))
    return images, texts, unpaired


@pytest.fixture(scope="module")
def shared(tmp_path_factory, pool_files):
    """A store with a model record, round 1 (6 images, hardneg) and round 2 (4 captions, text modality)."""
    config = HnselConfig(store=StoreConfig(uri=str(tmp_path_factory.mktemp("db") / "h.db"), namespace="annotate"))
    api.ingest(config, images=pool_files[0], texts=pool_files[1])
    api.ingest(config, texts=pool_files[2])
    with open_store(config.store) as store:
        store.set_meta("model", MODEL)
    images = api.select(config, budget=6, strategy="hardneg", seed=0, record=True)
    texts = api.select(config, budget=4, strategy="random", modality="text", seed=0, record=True)
    return config, list(images.selection.ids), list(texts.selection.ids)


def snapshot(config):
    with open_store(config.store) as store:
        rows = {kind: sorted(tuple(sorted(r.items())) for b in store.iter_rows(kind, "", ("id", "pool", "round", *extra)) for r in b)
                for kind, extra in (("images", ("uri",)), ("texts", ("image_id", "text")))}
        return rows, store.meta_keys()


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def refusals(picked, texts):
    """(name, header, rows, error type, message): each file must be refused whole."""
    vec5 = json.dumps([0.1] * 5)
    unselected = next(f"img{i:03d}" for i in range(15, 105) if f"img{i:03d}" not in picked)  # unpaired, never picked
    return [
        ("unknown id", ["image_id", "caption"], [[picked[0], "a cat"], ["img_nope", "a dog"]], InputError, "row 2: image 'img_nope' is not in the store"),
        ("not selected", ["image_id", "caption"], [[picked[0], "a cat"], [unselected, "a dog"]], InputError, f"row 2: image '{unselected}' was not selected in any round"),
        ("empty caption", ["image_id", "caption"], [[picked[0], "a cat"], [picked[1], "  "]], InputError, "row 2: empty caption"),
        ("no image id", ["image_id", "caption"], [["", "a cat"]], InputError, "row 1: empty image_id"),
        ("id reused", ["image_id", "caption", "caption_id"], [[picked[0], "a cat", "c1"], [picked[1], "a dog", "c1"]], InputError, "caption id 'c1' is also used"),
        ("id of a stored text", ["image_id", "caption", "caption_id"], [[picked[0], "a cat", "img000_c0"]], InputError, "already holds another text"),
        ("wrong dimension", ["image_id", "caption", "vector"], [[picked[0], "a cat", vec5]], InputError, "row 1: vector has 5 values"),
        ("some vectors", ["image_id", "caption", "vector"], [[picked[0], "a cat", json.dumps([0.1] * DIM)], [picked[1], "a dog", ""]], InputError, "row 2: no vector"),
        ("no columns", ["image", "text"], [[picked[0], "a cat"]], InputError, "row 1: no image_id or caption column"),
        ("text not selected", ["text_id", "image_id"], [[texts[0], "img000"], ["q99", "img000"]], InputError, "row 2: caption 'q99' is not in the store"),
        ("text to unknown image", ["text_id", "image_id"], [[texts[0], "img_nope"]], InputError, "row 1: image 'img_nope' is not in the store"),
        ("text to two images", ["text_id", "image_id"], [[texts[0], "img000"], [texts[0], "img001"]], InputError, "matched to two images"),
    ]


@pytest.mark.parametrize("case", range(12), ids=[c[0] for c in refusals(["a", "b"], ["q"])])
def test_refusals_leave_the_store_unchanged(shared, tmp_path, case):
    config, picked, texts = shared
    name, header, rows, error, message = refusals(picked, texts)[case]
    path = write_csv(tmp_path / "ann.csv", header, rows)
    before = snapshot(config)
    with pytest.raises(error, match=message):
        api.import_annotations(config, path, encoder=FakeEncoder())
    assert snapshot(config) == before


def test_model_mismatch_and_bad_label_studio_are_refused(shared, tmp_path):
    config, picked, _ = shared
    path = write_csv(tmp_path / "ann.csv", ["image_id", "caption"], [[picked[0], "a cat"]])
    before = snapshot(config)
    with pytest.raises(ModelMismatchError, match="holds vectors of fake / none"):
        api.import_annotations(config, path, encoder=FakeEncoder(dict(MODEL, weights="sha256:other")))
    bad = tmp_path / "export.json"
    bad.write_text(json.dumps([{"id": 1, "data": {"image": "x"}, "annotations": []}]))
    with pytest.raises(InputError, match="task 1 has no data.image_id"):
        api.import_annotations(config, bad, encoder=FakeEncoder())
    assert snapshot(config) == before


def test_label_studio_round_trip_and_text_modality(shared, tmp_path):
    config, picked, texts = shared
    report = api.export_round(config, 1, "label-studio", tmp_path / "tasks.json")
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    assert report.rows == 6 and sorted(t["data"]["image_id"] for t in tasks) == sorted(picked)
    assert all(t["data"]["image"].startswith("synthetic://") and t["data"]["round"] == 1 for t in tasks)
    assert '<TextArea name="caption" toName="image"' in (tmp_path / "tasks.label_config.xml").read_text()
    result = lambda *texts: {"from_name": "caption", "to_name": "image", "type": "textarea", "value": {"text": list(texts)}}  # noqa: E731
    tasks[0]["annotations"] = [{"result": [result("a red circle", "a circle, red")]}, {"was_cancelled": True, "result": [result("zzz")]}]
    tasks[1]["annotations"] = [{"result": [result("two squares")]}]
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    done = api.import_annotations(config, tmp_path / "export.json", encoder=FakeEncoder())
    assert (done.texts_written, done.images_paired, done.rounds) == (3, 2, {1: 3})
    with open_store(config.store) as store:
        rows = store.get("texts", [f"{tasks[0]['data']['image_id']}#{hashlib.sha1(b'a red circle').hexdigest()[:16]}"], ["vector", "pool", "text"])
        assert rows[0]["pool"] == "paired" and rows[0]["text"] == "a red circle"
        np.testing.assert_allclose(rows[0]["vector"], FakeEncoder().encode_texts(["a red circle"])[0], atol=1e-6)
    before = snapshot(config)
    again = api.import_annotations(config, tmp_path / "export.json", encoder=FakeEncoder())
    assert (again.texts_written, again.texts_unchanged, again.images_paired) == (0, 3, 0) and snapshot(config) == before
    # text modality: the export carries the captions; the annotator names the image each describes
    api.export_round(config, 2, "csv", tmp_path / "texts.csv")
    exported = list(csv.DictReader(open(tmp_path / "texts.csv")))
    assert sorted(r["text_id"] for r in exported) == sorted(texts) and all(r["text"].startswith("query") for r in exported)
    assert api.export_round(config, 2, "label-studio", tmp_path / "t.json").files[1].endswith("t.label_config.xml")
    assert '<Text name="caption" value="$text"/>' in (tmp_path / "t.label_config.xml").read_text()
    assert json.loads((tmp_path / "t.json").read_text())[0]["data"]["text"].startswith("query")
    path = write_csv(tmp_path / "found.csv", ["text_id", "image_id"], [[texts[0], "img003"], [texts[1], picked[2]]])
    found = api.import_annotations(config, path)
    assert (found.modality, found.texts_written, found.images_paired) == ("text", 2, 1)
    with open_store(config.store) as store:
        assert {r["id"]: (r["pool"], r["image_id"]) for r in store.get("texts", texts[:2], ["id", "pool", "image_id"])} == {
            texts[0]: ("paired", "img003"), texts[1]: ("paired", picked[2])}


def run(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def test_two_round_loop_through_the_cli(tmp_path, pool_files):
    db = ["--milvus-uri", tmp_path / "h.db"]
    run("ingest", "--images", pool_files[0], "--texts", pool_files[1], *db)
    first = json.loads(run("select", "--budget", 8, "--strategy", "density", "--json", *db).stdout)
    picked = [p["id"] for p in first["picks"]]
    assert first["round"] == 1
    for fmt, name in (("csv", "r1.csv"), ("jsonl", "r1.jsonl"), ("label-studio", "r1.json")):
        run("annotate", "export", "--round", 1, "--format", fmt, "--out", tmp_path / name, *db)
    rows = list(csv.DictReader(open(tmp_path / "r1.csv")))
    assert list(rows[0]) == ["round", "image_id", "uri", "caption"] and sorted(r["image_id"] for r in rows) == sorted(picked)
    assert [json.loads(line)["image_id"] for line in open(tmp_path / "r1.jsonl")] == [r["image_id"] for r in rows]
    assert len(json.loads((tmp_path / "r1.json").read_text())) == 8
    vec = lambda i: json.dumps(np.random.default_rng(i).normal(size=DIM).tolist())  # noqa: E731
    answers = [[picked[0], "a cat", vec(0)], [picked[0], "a cat on a mat", vec(1)], *[[p, f"thing {i}", vec(i + 2)] for i, p in enumerate(picked[1:4])]]
    write_csv(tmp_path / "captions.csv", ["image_id", "caption", "vector"], answers)
    imported = json.loads(run("annotate", "import", tmp_path / "captions.csv", "--json", *db).stdout)
    assert (imported["texts_written"], imported["images_paired"]) == (5, 4)
    status = json.loads(run("status", "--json", *db).stdout)
    assert status["texts"]["paired"] == 30 + 5 and status["images"]["paired"] == 15 + 4
    assert [(r["round"], r["annotated"], r["pending"]) for r in status["rounds"]] == [(1, 4, 4)]
    again = json.loads(run("annotate", "import", tmp_path / "captions.csv", "--json", *db).stdout)
    assert (again["texts_written"], again["images_paired"]) == (0, 0) and json.loads(run("status", "--json", *db).stdout) == status
    second = json.loads(run("select", "--budget", 8, "--strategy", "coreset", "--json", *db).stdout)
    assert second["round"] == 2 and not {p["id"] for p in second["picks"]} & set(picked)
    assert "released 4" in run("round", "release", "--round", 1, *db).stdout
    rounds = json.loads(run("round", "list", "--json", *db).stdout)
    assert [(r["round"], r["annotated"], r["pending"], r["released"]) for r in rounds] == [(1, 4, 0, 4), (2, 0, 8, 0)]
    left = 90 - 4 - 8  # annotated and round-2 samples are not candidates; released ones are again
    assert len(json.loads(run("select", "--budget", left, "--strategy", "random", "--no-record", "--json", *db).stdout)["picks"]) == left
    reimport = CliRunner().invoke(app, ["annotate", "import", str(tmp_path / "captions.csv"), *map(str, db)])
    assert reimport.exit_code == 0 and "0 captions written" in reimport.stdout  # annotated images keep their round
    bad = write_csv(tmp_path / "late.csv", ["image_id", "caption"], [[picked[5], "too late"]])
    refused = CliRunner().invoke(app, ["annotate", "import", str(bad), *map(str, db)])
    assert refused.exit_code == 1 and "was not selected in any round (or was released)" in refused.stderr
    assert "Traceback" not in refused.output and len(refused.stderr.strip().splitlines()) == 1
