"""Head training on arrays, the train/eval workflows on the scenes dataset, checkpoints, bad inputs, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _embed_helpers import write_images, write_karpathy, write_tiny_config
from typer.testing import CliRunner

from hnsel.cli import app
from hnsel.config import HnselConfig, StoreConfig
from hnsel.data.images import open_image
from hnsel.data.scenes import generate_scenes
from hnsel.model.encoder import load_encoder
from hnsel.errors import ConfigError, InputError, ModelMismatchError
from hnsel.model.metrics import evaluate_recall
from hnsel.model.features import FeatureCache, backbone_features
from hnsel.model.train import apply_heads, split_validation, train_heads
from hnsel.workflows.train import evaluate, train

# The shared tiny config pools the CLS token (its image features are nearly collinear, mean cosine 0.995)
# and reads 16 tokens (the scenes captions have 24-34 words): heads cannot learn from it. Average pooling
# and a 48-token context keep enough of the colours and words in random weights for heads to learn.
LEARNABLE = dict(
    embed_dim=64,
    vision_cfg={"image_size": 32, "layers": 1, "width": 64, "patch_size": 8, "head_width": 32, "pool_type": "avg"},
    text_cfg={"context_length": 48, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
)
# Measured once (600 scenes, seeds 0/1/2, 20 epochs, mlp head): untrained test R-sum 42.5 (chance is ~53 for
# 60 test images), trained 117.5 / 100.8 / 110.0. A 40-point margin is far above seed noise yet well below
# what training gives.
RSUM_MARGIN = 40.0


def synthetic(n_img: int, d: int = 16, captions: int = 3, seed: int = 0):
    """Images and captions that are two noisy linear views of shared latents: heads can align them."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n_img, d))
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    index = np.repeat(np.arange(n_img), captions)
    images = latent @ a + 0.5 * rng.normal(size=(n_img, d))
    texts = latent[index] @ b + 0.5 * rng.normal(size=(len(index), d))
    return images.astype(np.float32), texts.astype(np.float32), index


@pytest.fixture(scope="module")
def arrays():
    images, texts, index = synthetic(240)
    train_part = (images[:200], texts[:600], index[:600])
    val = (images[200:], texts[600:], index[600:] - 200)
    return train_part, val


@pytest.mark.parametrize("loss", ["infonce", "vsepp", "triplet-sn", "kendall", "infonce+0.5*kendall"])
def test_every_loss_raises_validation_rsum_and_the_best_epoch_is_returned(arrays, loss):
    train_part, val = arrays
    heads, curve = train_heads(*train_part, val=val, loss=loss, epochs=6, batch_size=64, lr=1e-2, seed=0, patience=2)
    assert curve[0]["epoch"] == 0 and curve[0]["loss"] is None
    best = max(c["val_rsum"] for c in curve)
    assert best > curve[0]["val_rsum"] + 100  # untrained ~20 of 600 on 40 images
    got = evaluate_recall(apply_heads(heads["image"], val[0]), apply_heads(heads["text"], val[1]), val[2])["rsum"]
    assert got == pytest.approx(best)


def test_epoch_zero_is_the_base_model_and_seeds_reproduce(arrays):
    train_part, val = arrays
    heads, curve = train_heads(*train_part, val=val, head="mlp", hidden=32, epochs=2, batch_size=64, seed=3)
    base = evaluate_recall(apply_heads(None, val[0]), apply_heads(None, val[1]), val[2])["rsum"]
    assert curve[0]["val_rsum"] == pytest.approx(base)
    again, _ = train_heads(*train_part, val=val, head="mlp", hidden=32, epochs=2, batch_size=64, seed=3)
    other, _ = train_heads(*train_part, val=val, head="mlp", hidden=32, epochs=2, batch_size=64, seed=4)
    for side in ("image", "text"):
        a, b, c = (h[side].state_dict() for h in (heads, again, other))
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert not all(torch.equal(a[k], c[k]) for k in a)


def test_patience_stops_early_and_no_validation_runs_every_epoch(arrays):
    train_part, val = arrays
    _, curve = train_heads(*train_part, val=val, epochs=30, lr=0.5, batch_size=64, patience=1)  # lr far too high: diverges
    assert len(curve) < 31
    _, curve = train_heads(*train_part, val_fraction=0.0, epochs=3, batch_size=64)
    assert [c["epoch"] for c in curve] == [0, 1, 2, 3] and all(c["val_rsum"] is None for c in curve)


def test_split_validation_holds_out_whole_images():
    images, texts, index = synthetic(20, captions=2)
    texts[:, 0] = index  # tag each caption with its image
    images[:, 0] = np.arange(20)
    (ti, tt, tx), (vi, vt, vx) = split_validation(images, texts, index, 0.25, np.random.default_rng(0))
    assert len(vi) == 5 and len(ti) == 15 and len(vt) == 10 and len(tt) == 30
    assert np.array_equal(ti[tx, 0], tt[:, 0]) and np.array_equal(vi[vx, 0], vt[:, 0])
    assert not set(ti[:, 0]) & set(vi[:, 0])


def test_empty_or_inconsistent_paired_arrays_are_refused():
    with pytest.raises(InputError, match="empty"):
        train_heads(np.zeros((0, 4)), np.zeros((0, 4)), np.zeros(0, dtype=int))
    with pytest.raises(InputError, match="outside"):
        train_heads(np.ones((2, 4)), np.ones((3, 4)), np.array([0, 1, 2]))
    with pytest.raises(ConfigError, match="hinge"):
        train_heads(np.ones((2, 4)), np.ones((2, 4)), np.array([0, 1]), loss="hinge")


def test_feature_cache_round_trip_and_file_change(tmp_path):
    cache = FeatureCache(tmp_path, "model|x|tag:a")
    cache.put(["a", "b"], np.eye(2, dtype=np.float32))
    again = FeatureCache(tmp_path, "model|x|tag:a")
    vectors, hits = again.get(["b", "c", "a"])
    assert hits.tolist() == [True, False, True] and vectors[0].tolist() == [0, 1] and vectors[2].tolist() == [1, 0]
    assert FeatureCache(tmp_path, "model|x|tag:b").get(["a"])[1].tolist() == [False]


# ---------------------------------------------------------------------------------------------
# workflows on the scenes dataset with a tiny random model


@pytest.fixture(scope="module")
def model_config(tmp_path_factory):
    return str(write_tiny_config(tmp_path_factory.mktemp("model"), name="hnsel-learnable", **LEARNABLE))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenes")
    generate_scenes(out, n=600, seed=0, image_size=64, captions=2)
    return out / "dataset_scenes.json"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, scenes, model_config):
    base = tmp_path_factory.mktemp("run")
    cache = base / "cache"
    report = train(HnselConfig(), scenes, out=base / "out", model_name=model_config, pretrained="none", head="mlp", epochs=20,
                   patience=5, seed=0, cache_dir=cache, device="cpu")
    return report, cache


def test_head_training_on_scenes_beats_the_untrained_model(trained, scenes, model_config):
    report, cache = trained
    assert report.mode == "head" and report.n_images == 480 and report.n_val_images == 60
    untrained = evaluate(HnselConfig(), scenes, model_name=model_config, pretrained="none", cache_dir=cache, device="cpu")
    tuned = evaluate(HnselConfig(), scenes, pretrained=report.checkpoint, cache_dir=cache, device="cpu")
    assert untrained.n_images == tuned.n_images == 60 and tuned.n_texts == 120
    assert tuned.metrics["rsum"] > untrained.metrics["rsum"] + RSUM_MARGIN


def test_checkpoint_round_trips_through_the_encoder(trained, scenes):
    report, cache = trained
    out = report.out
    assert json.load(open(f"{out}/curve.json"))[0]["epoch"] == 0
    assert open(f"{out}/curve.csv").readline().strip() == "epoch,loss,val_rsum,seconds"
    assert json.load(open(f"{out}/train_config.json"))["head"] == "mlp"
    encoder = load_encoder(None, report.checkpoint, "cpu")  # the checkpoint names its own model
    assert encoder.image_head is not None and encoder.image_head.spec["kind"] == "mlp"
    uris = [str(scenes.parent / "images" / f"scene_{i:06d}.png") for i in range(4)]
    texts = ["a red circle in the centre", "two small blue squares"]
    raw_images, raw_texts, stats = backbone_features(encoder, uris, texts, cache_dir=cache)
    assert stats == {"computed_images": 0, "computed_texts": 2}  # the training run cached these images
    via_encoder = encoder.encode_images([open_image(u) for u in uris])
    assert np.allclose(via_encoder, apply_heads(encoder.image_head, raw_images), atol=1e-5)
    assert np.allclose(encoder.encode_texts(texts), apply_heads(encoder.text_head, raw_texts), atol=1e-5)


def test_eval_refuses_a_missing_split_and_another_models_checkpoint(trained, tmp_path, model_config):
    report, cache = trained
    source = write_karpathy(tmp_path, splits=("train", "val", "train"))
    with pytest.raises(InputError, match="no images in split 'test'"):
        evaluate(HnselConfig(), source, pretrained=report.checkpoint, cache_dir=cache, device="cpu")
    other = write_tiny_config(tmp_path, name="hnsel-other")
    with pytest.raises(ModelMismatchError, match="hnsel-other"):
        evaluate(HnselConfig(), source, split="train", model_name=str(other), pretrained=report.checkpoint, device="cpu")


def test_train_refuses_an_empty_paired_set(tmp_path, model_config):
    write_images(tmp_path / "folder", ["a.png", "b.png"])  # images without captions: nothing is paired
    with pytest.raises(InputError, match="no paired images"):
        train(HnselConfig(), tmp_path / "folder", out=tmp_path / "out", model_name=model_config, pretrained="none", device="cpu")
    assert not (tmp_path / "out").exists()


def test_full_mode_with_the_image_tower_locked(tmp_path):
    config = str(write_tiny_config(tmp_path))
    source = write_karpathy(tmp_path / "data", splits=("train",) * 6)
    # no validation set: every epoch runs and the last weights are kept
    report = train(HnselConfig(), source, out=tmp_path / "out", model_name=config, pretrained="none", mode="full", lock="image",
                   epochs=2, batch_size=4, lr=1e-3, val_fraction=0.0, cache_dir=None, device="cpu")
    assert report.mode == "full" and [c["epoch"] for c in report.curve] == [0, 1, 2] and report.best_epoch == 2
    start, tuned = load_encoder(config, "none", "cpu").model.state_dict(), load_encoder(None, report.checkpoint, "cpu")
    state = tuned.model.state_dict()
    assert tuned.image_head is None and tuned.text_head is None
    assert all(torch.equal(start[k], state[k]) for k in start if k.startswith("visual."))
    assert not all(torch.equal(start[k], state[k]) for k in start if not k.startswith("visual."))


def test_eval_of_store_vectors_matches_eval_of_the_source(tmp_path, model_config):
    from hnsel.workflows.embed import embed

    generate_scenes(tmp_path / "s", n=30, seed=1, image_size=64, captions=2)
    source = tmp_path / "s" / "dataset_scenes.json"
    config = HnselConfig(store=StoreConfig(uri=str(tmp_path / "hnsel.db")))
    embed(config, source, model_name=model_config, pretrained="none", device="cpu", batch_size=16)
    from_store = evaluate(config, store=True)
    from_source = evaluate(config, source, split=None, model_name=model_config, pretrained="none", cache_dir=None, device="cpu")
    assert from_store.n_images == 30 and from_store.n_texts == 60
    for direction in ("i2t", "t2i"):
        assert from_store.metrics[direction] == pytest.approx(from_source.metrics[direction])


def test_cli_eval_json_and_bad_flags(trained, scenes):
    report, cache = trained
    runner = CliRunner()
    result = runner.invoke(app, ["eval", str(scenes), "--pretrained", report.checkpoint, "--cache-dir", str(cache), "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert set(got) == {"i2t", "t2i", "rsum"} and set(got["i2t"]) == {"r1", "r5", "r10"}
    assert got["rsum"] == pytest.approx(sum(got[d][k] for d in ("i2t", "t2i") for k in ("r1", "r5", "r10")))
    bad = runner.invoke(app, ["train", str(scenes), "--loss", "vsepp+hinge", "--pretrained", "none"])
    assert bad.exit_code == 1 and "hinge" in bad.output and "Traceback" not in bad.output
    bad = runner.invoke(app, ["train", "--store", str(scenes)])
    assert bad.exit_code == 1 and "not both" in bad.output


# --- small paired sets: a validation set too small to choose an epoch ---------------------------------------------------

def test_a_tiny_validation_set_cannot_keep_the_untrained_epoch():
    from hnsel.model.train import MIN_VAL_IMAGES

    images, texts, index = synthetic(60)
    val = (images[:1], texts[:3], index[:3])  # one held-out image: every model scores R-sum 600 on it
    train_part = (images[10:], texts[30:], index[30:] - 10)
    heads, curve = train_heads(*train_part, val=val, epochs=4, batch_size=32, lr=1e-2, seed=0, patience=1)
    assert curve[0]["val_rsum"] == 600 and len(curve) == 5  # no early stop on a flat 600
    assert [c.get("kept", False) for c in curve] == [False, False, False, False, True]
    enough = (images[:MIN_VAL_IMAGES], texts[:3 * MIN_VAL_IMAGES], index[:3 * MIN_VAL_IMAGES])
    _, curve = train_heads(*train_part, val=enough, epochs=4, batch_size=32, lr=1e-2, seed=0, patience=1)
    kept = [c for c in curve if c.get("kept")]
    assert len(kept) == 1 and kept[0]["val_rsum"] == max(c["val_rsum"] for c in curve)


def test_train_on_ten_paired_images_warns_and_says_which_epoch_it_kept(tmp_path, model_config):
    from typer.testing import CliRunner

    from hnsel.cli import app

    out = tmp_path / "scenes"
    generate_scenes(out, n=10, seed=1, image_size=64, captions=2)  # --split all: the 10 of every split, 1 held out
    common = ["--model-name", model_config, "--pretrained", "none", "--device", "cpu", "--split", "all", "--epochs", "3",
              "--cache-dir", str(tmp_path / "cache"), "--milvus-uri", str(tmp_path / "h.db")]
    result = CliRunner().invoke(app, ["train", str(out / "dataset_scenes.json"), "--out", str(tmp_path / "m"), *common, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["n_images"] == 10 and summary["best_epoch"] == 3 and [c["epoch"] for c in summary["curve"]] == [0, 1, 2, 3]
    assert summary["warning"].startswith("validation has only 1 image(s), too few to choose an epoch")
    assert "kept the last (epoch 3)" in summary["warning"] and summary["kept_because"].startswith("kept epoch 3, the last")
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("warning: validation has only 1 image(s)")
    result = CliRunner().invoke(app, ["train", str(out / "dataset_scenes.json"), "--out", str(tmp_path / "m2"), *common, "--val-fraction", "0"])
    assert result.exit_code == 0, result.output
    assert "kept epoch 3, the last: there is no validation set" in result.stdout and "checkpoint (epoch 3)" in result.stdout
