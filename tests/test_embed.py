"""OpenCLIP encoder (tiny random config, no download), checkpoints, and the embed workflow into Milvus Lite."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch
from _embed_helpers import write_images, write_tiny_config, write_truncated
from PIL import Image
from typer.testing import CliRunner

from hnsel.config import HnselConfig, StoreConfig
from hnsel.data.scenes import generate_scenes
from hnsel.model.encoder import load_encoder, save_checkpoint
from hnsel.schema import same_model
from hnsel.errors import HnselError, InputError, ModelMismatchError
from hnsel.model.heads import ProjectionHead
from hnsel.workflows.embed import embed, write_bulk


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    return str(write_tiny_config(tmp_path_factory.mktemp("model")))


@pytest.fixture(scope="module")
def encoder(tiny_config):
    return load_encoder(tiny_config, "none", "cpu")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenes")
    generate_scenes(out, n=12, seed=0, image_size=64, captions=2)
    return out


def _images(scenes, n=5):
    return [Image.open(scenes / "images" / f"scene_{i:06d}.png") for i in range(n)]


def _config(uri, namespace="hnsel"):
    return HnselConfig(store=StoreConfig(uri=uri, namespace=namespace))


# --- the encoder ------------------------------------------------------------------------------


def test_vectors_are_unit_float32_and_reproducible(encoder, tiny_config, scenes):
    images, texts = _images(scenes), ["a small red circle", "two big blue squares at the top"]
    iv, tv = encoder.encode_images(images), encoder.encode_texts(texts)
    assert iv.shape == (5, 32) and tv.shape == (2, 32) and iv.dtype == tv.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(iv, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(tv, axis=1), 1, atol=1e-5)
    assert not np.allclose(iv[0], iv[1])
    again = load_encoder(tiny_config, "none", "cpu")  # random weights come from a fixed seed
    np.testing.assert_array_equal(again.encode_images(images), iv)
    assert same_model(again.model_info, encoder.model_info) and encoder.model_info["dim"] == 32


def test_batches_equal_one_by_one(encoder, scenes):
    images, texts = _images(scenes, 6), [f"caption number {i}" for i in range(6)]
    one = np.concatenate([encoder.encode_images([im]) for im in images])
    np.testing.assert_allclose(encoder.encode_images(images), one, atol=1e-5)
    one = np.concatenate([encoder.encode_texts([t]) for t in texts])
    np.testing.assert_allclose(encoder.encode_texts(texts), one, atol=1e-5)


def _perturbed(tiny_config):
    enc = load_encoder(tiny_config, "none", "cpu")
    with torch.no_grad():
        for p in enc.model.parameters():
            p.add_(0.01 * torch.randn_like(p, generator=torch.Generator().manual_seed(p.numel())))
    return enc


def test_hnsel_checkpoint_loads_through_pretrained_path(tmp_path, tiny_config, encoder, scenes):
    trained = _perturbed(tiny_config)
    images = _images(scenes)
    expected = trained.encode_images(images)
    path = save_checkpoint(tmp_path / "ck.pt", trained.model, "hnsel-tiny", pretrained="none", extra={"epoch": 1})
    loaded = load_encoder(None, str(path), "cpu")  # the checkpoint carries its config
    np.testing.assert_allclose(loaded.encode_images(images), expected, atol=1e-6)
    assert not np.allclose(expected, encoder.encode_images(images), atol=1e-4)
    assert not same_model(loaded.model_info, encoder.model_info) and loaded.model_info["weights"].startswith("sha256:")
    np.testing.assert_allclose(load_encoder(tiny_config, str(path), "cpu").encode_texts(["x"]), trained.encode_texts(["x"]), atol=1e-6)
    with pytest.raises(ModelMismatchError, match="checkpoint is for model 'hnsel-tiny'"):
        load_encoder("RN50", str(path), "cpu")


def test_plain_state_dict_loads_with_model_name(tmp_path, tiny_config, scenes):
    trained = _perturbed(tiny_config)
    torch.save(trained.model.state_dict(), tmp_path / "plain.pt")
    loaded = load_encoder(tiny_config, str(tmp_path / "plain.pt"), "cpu")
    np.testing.assert_allclose(loaded.encode_images(_images(scenes)), trained.encode_images(_images(scenes)), atol=1e-6)
    with pytest.raises(HnselError, match="plain state dict.*--model-name"):
        load_encoder(None, str(tmp_path / "plain.pt"), "cpu")


def test_heads_apply_after_the_backbone(tmp_path, encoder, scenes):
    image_head = ProjectionHead("linear", 32, 16)
    text_head = ProjectionHead("mlp", 32, 16, hidden=8)
    path = save_checkpoint(tmp_path / "heads.pt", encoder.model, "hnsel-tiny", heads={"image": image_head, "text": text_head})
    loaded = load_encoder(None, str(path), "cpu")
    images = _images(scenes, 3)
    with torch.no_grad():
        raw = encoder.model.encode_image(torch.stack([encoder.preprocess(im) for im in images]))
        expected = torch.nn.functional.normalize(image_head(raw), dim=-1).numpy()
    assert loaded.dim == 16 and loaded.model_info["heads_sha256"]
    np.testing.assert_allclose(loaded.encode_images(images), expected, atol=1e-5)
    assert loaded.encode_texts(["a"]).shape == (1, 16)


def test_probabilistic_checkpoint_embeds_vectors_and_their_uncertainty(tmp_path, lite_uri, encoder, scenes):
    """Heads trained by ``hnsel train --probabilistic`` load from the checkpoint; embed stores each sample's summed
    variance beside its vector, and the heads' match parameters in the store (what ascmr reads)."""
    from hnsel.model.probabilistic import uncertainty
    from hnsel.schema import MATCH_META_KEY
    from hnsel.store import open_store

    heads = {side: ProjectionHead("linear", 32, 16, variance=0.1) for side in ("image", "text")}
    with torch.no_grad():  # trained heads: each sample's variance depends on it
        for head in heads.values():
            head.logvar.weight.normal_(0, 0.3)
            head.spec["match"] = {"scale": 7.0, "shift": 6.0}
    path = save_checkpoint(tmp_path / "gauss.pt", encoder.model, "hnsel-tiny", heads=heads)
    loaded = load_encoder(None, str(path), "cpu")
    assert loaded.probabilistic and not encoder.probabilistic
    embed(_config(lite_uri), scenes / "dataset_scenes.json", encoder=loaded, batch_size=5)
    image = Image.open(scenes / "images" / "scene_000003.png")
    with torch.no_grad():
        raw = encoder.model.encode_image(encoder.preprocess(image)[None])
        expected = float(uncertainty(heads["image"].log_variance(raw))[0])
    with open_store(_config(lite_uri).store) as store:
        (row,) = store.get("images", ["scene_000003"], ["id", "vector", "uncertainty"])
        texts = [r["uncertainty"] for b in store.iter_rows("texts", "", ("id", "uncertainty")) for r in b]
        assert store.get_meta(MATCH_META_KEY) == {"scale": 7.0, "shift": 6.0}
    assert row["uncertainty"] == pytest.approx(expected, rel=1e-5) and row["uncertainty"] != pytest.approx(0.1, rel=1e-3)
    np.testing.assert_allclose(np.asarray(row["vector"]), loaded.encode_images([image])[0], atol=1e-5)
    assert len(texts) == 24 and min(texts) > 0


def test_bad_models_fail_fast_with_one_line(tmp_path, tiny_config):
    cases = [
        (("no-such-model", "none"), HnselError, "unknown model 'no-such-model'"),
        ((tiny_config, "laion9000"), HnselError, "unknown pretrained tag 'laion9000'"),
        ((tiny_config, str(tmp_path / "missing.pt")), InputError, "checkpoint file not found"),
    ]
    for (name, pretrained), error, message in cases:
        with pytest.raises(error, match=message):
            load_encoder(name, pretrained, "cpu")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"embed_dim": 8}))
    with pytest.raises(InputError, match="lacks \\['vision_cfg', 'text_cfg'\\]"):
        load_encoder(str(bad), "none", "cpu")
    with pytest.raises(HnselError, match="--device"):
        load_encoder(tiny_config, "none", "tpu")


@pytest.mark.skipif(os.environ.get("HF_HUB_OFFLINE") != "1", reason="needs HF_HUB_OFFLINE=1 to fail without network")
def test_known_tag_without_weights_names_the_tag():
    with pytest.raises(HnselError, match="cannot download the pretrained 'openai' weights of ViT-B-32.*--model-name effnet-lite0-minilm.*--pretrained /path"):
        load_encoder("ViT-B-32", "openai", "cpu")


# --- the workflow -----------------------------------------------------------------------------


def test_embed_scenes_into_store_then_refuse_another_model(lite_uri, tiny_config, encoder, scenes, tmp_path):
    from hnsel.store import open_store

    report = embed(_config(lite_uri), scenes / "dataset_scenes.json", encoder=encoder, batch_size=5)
    assert (report.images_embedded, report.texts_embedded, report.failures) == (12, 24, [])
    with open_store(_config(lite_uri).store) as store:
        assert store.count("images", 'pool == "paired"') == 12 and store.count("texts", 'pool == "paired"') == 24
        row = store.get("images", ["scene_000003"], ["id", "vector"])[0]
        expected = encoder.encode_images([Image.open(scenes / "images" / "scene_000003.png")])[0]
        np.testing.assert_allclose(np.asarray(row["vector"]), expected, atol=1e-5)
        texts = store.get("texts", ["6", "7"], ["id", "image_id"])
        assert {t["image_id"] for t in texts} == {"scene_000003"}
        assert same_model(store.get_meta("model"), encoder.model_info)
    other = write_tiny_config(tmp_path, "other-tiny")
    with pytest.raises(ModelMismatchError, match="holds vectors of hnsel-tiny / none.*other-tiny.*--namespace"):
        embed(_config(lite_uri), scenes / "images", model_name=str(other), pretrained="none", device="cpu", pool="unpaired")
    again = embed(_config(lite_uri), scenes / "dataset_scenes.json", encoder=encoder, overwrite=True)
    assert (again.images_embedded, again.images_skipped) == (12, 0)


def test_resume_after_interruption_loses_and_duplicates_nothing(lite_uri, encoder, scenes):
    from hnsel.store import open_store

    class Stop(Exception):
        pass

    def stop_after_two_batches(task, done, total):
        if task == "embedding images" and done >= 8:
            raise Stop

    with pytest.raises(Stop):
        embed(_config(lite_uri), scenes / "dataset_scenes.json", encoder=encoder, batch_size=4, on_progress=stop_after_two_batches)
    with open_store(_config(lite_uri).store) as store:
        assert (store.count("images"), store.count("texts")) == (8, 16)
    report = embed(_config(lite_uri), scenes / "dataset_scenes.json", encoder=encoder, batch_size=4)
    assert (report.images_skipped, report.images_embedded, report.texts_embedded) == (8, 4, 8)
    with open_store(_config(lite_uri).store) as store:
        assert (store.count("images"), store.count("texts")) == (12, 24)
        ids = [r["id"] for batch in store.iter_rows("texts") for r in batch]
        assert len(ids) == len(set(ids)) == 24


def test_bad_images_are_skipped_and_listed(lite_uri, encoder, tmp_path):
    from hnsel.store import open_store

    write_images(tmp_path / "img", ["good.png", "good2.jpg"])
    (tmp_path / "img" / "text.png").write_text("not an image")
    write_truncated(tmp_path / "img" / "cut.jpg")
    rows = [("good", "img/good.png", "fine"), ("good2", "img/good2.jpg", ""), ("text", "img/text.png", "broken"),
            ("cut", "img/cut.jpg", "cut"), ("gone", "img/gone.png", "gone"), ("t", "", "just words")]
    with open(tmp_path / "m.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("id", "uri", "caption"), *rows])
    report = embed(_config(lite_uri), tmp_path / "m.csv", encoder=encoder, batch_size=2, errors_path=tmp_path / "errors.csv")
    reasons = {f["id"]: f["reason"] for f in report.failures}
    assert set(reasons) == {"text", "cut", "gone"} and reasons["gone"] == "missing file"
    assert reasons["text"].startswith("not an image") and reasons["cut"].startswith("truncated")
    with open(tmp_path / "errors.csv") as fh:
        assert {r["id"]: r["reason"] for r in csv.DictReader(fh)} == reasons
    with open_store(_config(lite_uri).store) as store:
        assert sorted(r["id"] for b in store.iter_rows("images") for r in b) == ["good", "good2"]
        texts = {r["id"]: r["pool"] for b in store.iter_rows("texts", output_fields=("id", "pool")) for r in b}
        assert texts == {"good#0": "paired", "t": "unpaired"}  # captions of unreadable images are not stored


def test_bulk_writes_parquet_files(tmp_path, encoder, scenes):
    pytest.importorskip("pymilvus.bulk_writer")
    import pyarrow.parquet as pq

    report = write_bulk(_config(str(tmp_path / "unused.db")), scenes / "dataset_scenes.json", tmp_path / "bulk", encoder=encoder, batch_size=8)
    tables = {kind: pq.read_table(files[0]) for kind, files in report.bulk_files.items()}
    assert tables["images"].num_rows == 12 and tables["texts"].num_rows == 24
    assert set(tables["texts"].column_names) >= {"id", "vector", "pool", "image_id", "text", "round"}
    vectors = np.asarray(tables["images"].column("vector").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    manifest = json.loads((tmp_path / "bulk" / "hnsel_bulk.json").read_text())
    assert manifest["collections"]["images"]["collection_name"] == "hnsel_images" and not (tmp_path / "unused.db").exists()


# --- the CLI ----------------------------------------------------------------------------------


def test_cli_embed_and_errors(tmp_path, tiny_config, scenes):
    from hnsel.cli import app

    runner = CliRunner()
    uri = str(tmp_path / "cli.db")
    args = ["embed", str(scenes / "images"), "--model-name", tiny_config, "--pretrained", "none", "--device", "cpu",
            "--milvus-uri", uri, "--num-workers", "0", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["images_embedded"] == 12 and summary["model"]["model_name"] == "hnsel-tiny"
    (tmp_path / "bad.csv").write_text("id,path\na,a.png\n")
    result = runner.invoke(app, ["embed", str(tmp_path / "bad.csv"), "--milvus-uri", uri, "--pretrained", "none"])
    assert result.exit_code == 1 and "--uri-column path" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["datasets", "scenes", str(tmp_path / "sc"), "--num-images", "6", "--per-category", "3", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["categories"] == 2
