"""Nothing lost or corrupted (issue 24): ids kept exactly through export and import, a concurrent ingest never undoing a
round's marks (and repair restoring marks a write undid), re-ingest keeping what a file lacks, file vectors refused
beside a model's, a killed ingest seen and finished, a pending image not paired without its captions."""

import csv
import json
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from typer.testing import CliRunner

from hnsel import api
from hnsel.cli import app
from hnsel.config import HnselConfig, StoreConfig
from hnsel.errors import InputError, ModelMismatchError, StoreError
from hnsel.store import open_store
from hnsel.store.milvus import Store

DIM = 6
MODEL = {"model_name": "fake", "pretrained": "none", "dim": DIM, "config_sha256": "c0", "weights": "random:0", "heads_sha256": None}
runner = CliRunner()


def vec(key):
    """A fixed unit-ish vector per string key (the same key, the same vector)."""
    return np.random.default_rng(abs(hash(key)) % (2**32)).normal(size=DIM).tolist()


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def images_rows(ids, pool, uri=True):
    return [{"id": i, "vector": vec("img" + i), "pool": pool, **({"uri": f"file:///photos/{k}.jpg"} if uri else {})} for k, i in enumerate(ids)]


def loaded(uri, namespace, tmp_path, unpaired):
    """Five paired images with a caption each, and ``unpaired`` images."""
    config = HnselConfig(store=StoreConfig(uri=uri, namespace=namespace))
    paired = [f"p{k}" for k in range(5)]
    images = write_jsonl(tmp_path / "images.jsonl", images_rows(paired, "paired") + images_rows(unpaired, "unpaired"))
    texts = write_jsonl(tmp_path / "texts.jsonl", [{"id": f"t{k}", "vector": vec(f"t{k}"), "pool": "paired", "image_id": i,
                                                    "text": f"caption {k}"} for k, i in enumerate(paired)])
    api.ingest(config, images=images, texts=texts)
    return config


def rows_of(config, kind, fields):
    with open_store(config.store) as store:
        return {r["id"]: r for b in store.iter_rows(kind, "", ("id", *fields)) for r in b}


def cli(*args, code=0):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == code, res.output
    return res


def flags(config):
    return ["--milvus-uri", config.store.uri, "--namespace", config.store.namespace]


# --- 1. ids are opaque: never stripped on import ------------------------------------------------------------------------
TRICKY = ["cat", "cat ", "img000\r", " lead", "Cat"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_ids_with_edge_whitespace_round_trip_export_and_import(lite_uri, namespace, tmp_path, fmt):
    config = loaded(lite_uri, namespace, tmp_path, TRICKY)
    picked = api.select(config, budget=len(TRICKY), strategy="random", seed=0, record=True).selection.ids
    assert sorted(picked) == sorted(TRICKY)
    exported = api.export_round(config, 1, format=fmt, out=tmp_path / f"r1.{fmt}")
    if fmt == "csv":
        with open(exported.files[0], newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    else:
        rows = [json.loads(line) for line in open(exported.files[0], encoding="utf-8")]
    assert sorted(r["image_id"] for r in rows) == sorted(TRICKY)  # the export wrote every id exactly
    for r in rows:
        r["caption"], r["vector"] = f"the one named {r['image_id']!r}", json.dumps(vec("cap" + r["image_id"]))
    answered = tmp_path / f"answered.{fmt}"
    if fmt == "csv":
        with open(answered, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        write_jsonl(answered, rows)
    report = api.import_annotations(config, answered)
    assert (report.texts_written, report.images_paired) == (len(TRICKY), len(TRICKY))
    texts = {r["image_id"]: r["text"] for r in rows_of(config, "texts", ("image_id", "text")).values() if not r["id"].startswith("t")}
    assert texts == {i: f"the one named {i!r}" for i in TRICKY}  # each caption on its own image, none on a look-alike
    assert {i: r["pool"] for i, r in rows_of(config, "images", ("pool",)).items() if i in TRICKY} == dict.fromkeys(TRICKY, "paired")


def test_label_studio_image_ids_are_not_stripped(lite_uri, namespace, tmp_path):
    """Text modality through Label Studio: the image id an annotator typed is looked up exactly as typed."""
    from hnsel.data.annotator_files import read_annotations

    path = tmp_path / "ls.json"
    path.write_text(json.dumps([{"data": {"text_id": "q1", "text": "x"}, "annotations": [
        {"result": [{"from_name": "image_id", "value": {"text": ["cat "]}}]}]}]))
    modality, rows = read_annotations(path)
    assert modality == "text" and [a.image_id for a in rows] == ["cat "]


# --- 3. a concurrent ingest never undoes a selection -----------------------------------------------------------------
def test_ingest_rewriting_rows_while_a_select_marks_them_keeps_the_marks(store_uri, namespace, tmp_path, monkeypatch):
    """The race of issue 24 made certain: a select has picked and is about to mark; an ingest of the same rows starts,
    reads their round, then waits (up to 5 s) for the select to mark before it writes. Without the row lock the select
    marks at once and the ingest writes round -1 back over the marks; with it, the select marks after the ingest."""
    unpaired = [f"u{k:02d}" for k in range(30)]
    config = loaded(store_uri, namespace, tmp_path, unpaired)
    again = write_jsonl(tmp_path / "again.jsonl", images_rows(unpaired, "unpaired"))
    about_to_mark, ingest_read, marked = threading.Event(), threading.Event(), threading.Event()
    write, set_round = Store._write, Store.set_round

    def slow_write(self, kind, *args):
        if threading.current_thread().name == "ingest" and kind == "images" and not ingest_read.is_set():
            ingest_read.set()
            marked.wait(5.0)
        return write(self, kind, *args)

    def waiting_set_round(self, kind, ids, number):
        if threading.current_thread().name != "select":
            return set_round(self, kind, ids, number)
        about_to_mark.set()
        ingest_read.wait(120)
        out = set_round(self, kind, ids, number)
        marked.set()
        return out

    monkeypatch.setattr(Store, "_write", slow_write)
    monkeypatch.setattr(Store, "set_round", waiting_set_round)
    results, errors = {}, []

    def run(name, job):
        try:
            results[name] = job()
        except BaseException as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    select = threading.Thread(target=run, name="select", args=("select", lambda: api.select(config, budget=12, strategy="random", seed=3, record=True)))
    select.start()
    assert about_to_mark.wait(120)
    ingest = threading.Thread(target=run, name="ingest", args=("ingest", lambda: api.ingest(config, images=again)))
    ingest.start()
    ingest.join(240)
    select.join(240)
    assert not errors, errors
    picks = set(results["select"].selection.ids)
    rounds = {i: r["round"] for i, r in rows_of(config, "images", ("round",)).items()}
    assert {i for i, n in rounds.items() if n == 1} == picks and len(picks) == 12
    assert api.show_round(config, 1)["pending"] == 12


def test_repair_restores_marks_a_write_undid(store_uri, namespace, tmp_path):
    config = loaded(store_uri, namespace, tmp_path, [f"u{k:02d}" for k in range(20)])
    picks = list(api.select(config, budget=8, strategy="random", seed=1, record=True).selection.ids)
    with open_store(config.store) as store:  # what the old ingest did: the rows written back without their round
        rows = store.get("images", picks, ["id", "vector", "pool", "uri"])
        store.client.upsert(store.name("images"), [dict(r, round=-1) for r in rows])
    assert "round 1: its log says 8 samples, its rows carry 0" in cli("status", *flags(config)).stdout
    result = api.repair(config)
    assert result["repaired"] == ["round 1: its log says 8 samples but its rows carried 0 (a write undid the marks): 8 marked again"]
    assert {i for i, r in rows_of(config, "images", ("round",)).items() if r["round"] == 1} == set(picks)
    assert api.repair(config) == {"repaired": [], "running": [], "left": []}
    assert api.status(config, rounds=True)["unfinished"] == []


# --- 4. re-ingest keeps what a file lacks ---------------------------------------------------------------------------
def test_reingest_without_optional_columns_keeps_uri_and_text(store_uri, namespace, tmp_path):
    config = loaded(store_uri, namespace, tmp_path, ["u0", "u1"])
    before_images, before_texts = rows_of(config, "images", ("uri",)), rows_of(config, "texts", ("image_id", "text"))
    images = write_jsonl(tmp_path / "bare_images.jsonl", [{"id": i, "vector": vec("new" + i), "pool": "unpaired"} for i in ("u0", "u1", "u2")])
    texts = write_jsonl(tmp_path / "bare_texts.jsonl", [{"id": "t0", "vector": vec("newt0"), "pool": "paired", "image_id": "p0"}])
    api.ingest(config, images=images, texts=texts)
    after_images, after_texts = rows_of(config, "images", ("uri",)), rows_of(config, "texts", ("image_id", "text"))
    assert {i: after_images[i]["uri"] for i in ("u0", "u1")} == {i: before_images[i]["uri"] for i in ("u0", "u1")} != {"u0": "", "u1": ""}
    assert after_images["u2"]["uri"] == "" and after_texts["t0"]["text"] == before_texts["t0"]["text"] == "caption 0"
    with open_store(config.store) as store:  # the vectors were rewritten: the new file was ingested
        (row,) = store.get("images", ["u0"], ["vector"])
    assert np.allclose(row["vector"], np.asarray(vec("newu0")) / np.linalg.norm(vec("newu0")), atol=1e-5)


# --- 5. file vectors beside a model's --------------------------------------------------------------------------------
def test_file_vectors_are_refused_where_a_model_embedded_the_store(lite_uri, namespace, tmp_path):
    config = loaded(lite_uri, namespace, tmp_path, ["u0"])
    with open_store(config.store) as store:
        store.set_meta("model", MODEL)
    more = write_jsonl(tmp_path / "more.jsonl", images_rows(["u5"], "unpaired"))
    refused = cli("ingest", "--images", more, *flags(config), code=1)
    assert "holds vectors of fake / none (dim 6)" in refused.stderr and "--model-name fake" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.output
    with pytest.raises(ModelMismatchError, match="--model-name 'other'"):
        api.ingest(config, images=more, model_name="other")
    assert "u5" not in rows_of(config, "images", ())
    assert api.ingest(config, images=more, model_name="fake").images == 1  # said to be the store's model: accepted
    with pytest.raises(InputError, match="has no model record"):
        api.ingest(HnselConfig(store=StoreConfig(uri=lite_uri, namespace=namespace + "x")), images=more, model_name="fake")


# --- 6. an ingest killed half way ---------------------------------------------------------------------------------------
KILLED_INGEST = textwrap.dedent("""
    import os, signal, sys
    from hnsel.config import HnselConfig, StoreConfig
    from hnsel.store.milvus import Store
    from hnsel.workflows.ingest import ingest

    uri, namespace, images, texts = sys.argv[1:5]
    upsert = Store.upsert
    Store.upsert = lambda self, kind, data: os.kill(os.getpid(), signal.SIGKILL) if kind == "texts" else upsert(self, kind, data)
    ingest(HnselConfig(store=StoreConfig(uri=uri, namespace=namespace)), images=images, texts=texts)
    print("not killed")
""")


def killed_ingest(config, images, texts):
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(config.store.uri)  # this process's embedded Lite server holds the file until released
    res = subprocess.run([sys.executable, "-c", KILLED_INGEST, config.store.uri, config.store.namespace, str(images), str(texts)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == -9, res.stdout + res.stderr


def more_files(tmp_path):
    ids = [f"m{k}" for k in range(6)]
    images = write_jsonl(tmp_path / "more_images.jsonl", images_rows(ids, "paired"))
    texts = write_jsonl(tmp_path / "more_texts.jsonl", [{"id": f"mt{k}", "vector": vec(f"mt{k}"), "pool": "paired", "image_id": i,
                                                          "text": f"more {k}"} for k, i in enumerate(ids)])
    return images, texts


@pytest.mark.parametrize("finish", ["repair", "rerun"])
def test_killed_ingest_is_shown_refused_by_select_and_finished(lite_uri, namespace, tmp_path, finish):
    config = loaded(lite_uri, namespace, tmp_path, [f"u{k}" for k in range(10)])
    images, texts = more_files(tmp_path)
    killed_ingest(config, images, texts)  # its images written, none of its captions
    assert api.status(config)["images"]["paired"] == 11 and api.status(config)["texts"]["paired"] == 5
    shown = cli("status", *flags(config)).stdout
    assert f"ingest of {images}, {texts}" in " ".join(shown.split()) and "the store holds part of it" in shown
    refused = cli("select", *flags(config), "--budget", 3, "--strategy", "random", code=1)
    assert "holds part of an ingest" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    if finish == "repair":
        assert "finished from its files (6 images and 6 texts written)" in " ".join(cli("round", "repair", *flags(config)).stdout.split())
    else:
        assert api.ingest(config, images=images, texts=texts).texts == 6
    assert api.status(config)["texts"]["paired"] == 11 and api.status(config, rounds=True)["unfinished"] == []
    assert api.select(config, budget=3, strategy="random", seed=0, record=True).round == 1


def test_killed_ingest_whose_file_changed_is_left_for_the_user(lite_uri, namespace, tmp_path):
    config = loaded(lite_uri, namespace, tmp_path, [f"u{k}" for k in range(10)])
    images, texts = more_files(tmp_path)
    killed_ingest(config, images, texts)
    texts.write_text(texts.read_text() + "\n")
    result = api.repair(config)
    assert result["repaired"] == [] and "cannot be finished" in result["left"][0] and str(texts) in result["left"][0]
    with pytest.raises(StoreError, match="holds part of an ingest"):
        api.select(config, budget=3, strategy="random", record=False)
    assert "dropped its record" in api.repair(config, force=True)["repaired"][0]
    assert api.select(config, budget=3, strategy="random", record=False).selection.ids.size == 3


# --- 7. a pending image is not paired without its captions --------------------------------------------------------------
def test_pending_image_reingested_as_paired_needs_captions(lite_uri, namespace, tmp_path):
    config = loaded(lite_uri, namespace, tmp_path, [f"u{k}" for k in range(10)])
    picked = list(api.select(config, budget=2, strategy="random", seed=2, record=True).selection.ids)
    paired = write_jsonl(tmp_path / "paired.jsonl", images_rows(picked, "paired"))
    with pytest.raises(InputError, match=rf"image '{picked[0]}' is pending in round 1 .*hnsel round release --round 1"):
        api.ingest(config, images=paired)
    assert api.show_round(config, 1)["annotated"] == 0 and api.show_round(config, 1)["pending"] == 2
    captions = write_jsonl(tmp_path / "captions.jsonl", [{"id": f"c{i}", "vector": vec("c" + i), "pool": "paired", "image_id": i, "text": "a photo"}
                                                         for i in picked])
    api.ingest(config, images=paired, texts=captions)  # with their captions they are annotated
    assert api.show_round(config, 1)["annotated"] == 2
