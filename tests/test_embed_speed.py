"""The fast image path of `hnsel embed` (hnsel.model.runtime): the same vectors as the plain NCHW float32 tower,
the thread budget beside the decoding workers, the exported tower's cache, and captions batched by length.

Real photos from ../shared/data/flickr8k-dev and the offline towers config (EfficientNet-Lite0 + MiniLM)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from hnsel.cli import app
from hnsel.errors import HnselError
from hnsel.model import runtime
from hnsel.model.encoder import load_encoder
from hnsel.model.images import image_batches
from hnsel.workflows.embed import _by_length

ROOT = Path(__file__).resolve().parents[1]
TOWERS = str(ROOT / "configs" / "effnet-lite0-minilm.json")
FLICKR = ROOT.parent / "shared" / "data" / "flickr8k-dev"
pytestmark = pytest.mark.skipif(not FLICKR.is_dir() and not os.environ.get("CI"), reason="needs ../shared/data/flickr8k-dev")


def photo_paths(n: int = 6) -> list[str]:
    return [str(p) for p in sorted((FLICKR / "images").glob("*.jpg"))[:n]]


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    encoder = load_encoder(TOWERS, "none", "cpu")
    return next(iter(image_batches(photo_paths(), encoder.preprocess, 8)))[1]


def plain_vectors(photos: torch.Tensor) -> np.ndarray:
    """Today's path: a freshly loaded encoder, NCHW float32 torch tower."""
    encoder = load_encoder(TOWERS, "none", "cpu")
    assert encoder.image_forward is None and encoder.image_runtime is None
    return encoder.image_batch(photos)[0]


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(a * b, axis=1)))


def test_forward_threads_leave_the_decoders_their_cores():
    assert runtime.forward_threads(0, cores=2) == 2
    assert runtime.forward_threads(1, cores=2) == 1
    assert runtime.forward_threads(4, cores=2) == 1
    assert runtime.forward_threads(3, cores=16) == 13


def test_onnx_runtime_gives_the_plain_vectors(photos, tmp_path):
    pytest.importorskip("onnxruntime")
    encoder = load_encoder(TOWERS, "none", "cpu")
    assert runtime.accelerate(encoder, num_workers=1, cache_dir=tmp_path) == "onnx"
    assert len(list(tmp_path.glob("*.onnx"))) == 1
    assert min_cosine(encoder.image_batch(photos)[0], plain_vectors(photos)) >= 0.999
    features = encoder.image_features(photos)  # what train caches goes through the same tower
    assert features.shape == (len(photos), 1280) and features.dtype == torch.float32


def test_channels_last_gives_the_plain_vectors(photos, tmp_path, monkeypatch):
    monkeypatch.setenv(runtime.RUNTIME_ENV, "auto")
    monkeypatch.setattr(runtime, "MIN_COSINE", 1.5)  # no export can pass: auto falls back to torch in channels-last
    encoder = load_encoder(TOWERS, "none", "cpu")
    assert runtime.accelerate(encoder, cache_dir=tmp_path) == "torch-channels-last"
    assert min_cosine(encoder.image_batch(photos)[0], plain_vectors(photos)) >= 0.999


def test_torch_runtime_leaves_the_tower_alone(photos, monkeypatch):
    monkeypatch.setenv(runtime.RUNTIME_ENV, "torch")
    encoder = load_encoder(TOWERS, "none", "cpu")
    assert runtime.accelerate(encoder) == "torch" and encoder.image_forward is None


def test_a_damaged_cached_export_is_made_again(photos, tmp_path):
    pytest.importorskip("onnxruntime")
    first = load_encoder(TOWERS, "none", "cpu")
    runtime.accelerate(first, cache_dir=tmp_path)
    (cached,) = tmp_path.glob("*.onnx")
    cached.write_bytes(b"not an onnx file")
    again = load_encoder(TOWERS, "none", "cpu")
    assert runtime.accelerate(again, cache_dir=tmp_path) == "onnx"
    assert cached.stat().st_size > 1_000_000
    assert min_cosine(again.image_batch(photos)[0], plain_vectors(photos)) >= 0.999


def test_onnx_required_but_missing_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as on a machine without it
    monkeypatch.setenv(runtime.RUNTIME_ENV, "onnx")
    encoder = load_encoder(TOWERS, "none", "cpu")
    with pytest.raises(HnselError, match="pip install onnxruntime onnx"):
        runtime.accelerate(encoder, cache_dir=tmp_path)
    monkeypatch.setenv(runtime.RUNTIME_ENV, "auto")
    assert runtime.accelerate(encoder, cache_dir=tmp_path) == "torch-channels-last"


def test_image_budget_sets_and_restores_torch_threads(tmp_path, monkeypatch):
    monkeypatch.setenv(runtime.RUNTIME_ENV, "torch")
    monkeypatch.setattr(runtime, "cpu_cores", lambda: 3)
    encoder = load_encoder(TOWERS, "none", "cpu")
    before = torch.get_num_threads()
    with runtime.image_budget(encoder, num_workers=2) as name:
        assert name == "torch" and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_captions_batched_by_length_give_the_same_vectors():
    captions = [json.dumps(s) for s in ("a dog", "two children are playing football on a wide green field near the sea",
                                         "a man", "a woman rides a red bicycle down a busy street")]
    assert [len(c) for c in _by_length(captions, lambda c: c)] == sorted(len(c) for c in captions)
    encoder = load_encoder(TOWERS, "none", "cpu")
    together = encoder.text_batch(captions)[0]
    ordered = _by_length(list(range(len(captions))), lambda i: captions[i])
    short, long = ordered[:2], ordered[2:]  # the short batch is trimmed to its own length
    assert encoder.tokens([captions[i] for i in short]).shape[1] < encoder.tokens(captions).shape[1]
    apart = np.zeros_like(together)
    for part in (short, long):
        apart[part] = encoder.text_batch([captions[i] for i in part])[0]
    assert min_cosine(apart, together) >= 0.999


def test_embed_cli_uses_the_fast_tower_and_stores_the_plain_vectors(photos, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the exported tower is cached under ./.hnsel-cache/onnx
    monkeypatch.delenv(runtime.RUNTIME_ENV, raising=False)
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,uri\n" + "".join(f"p{i},{p}\n" for i, p in enumerate(photo_paths())), encoding="utf-8")
    db = str(tmp_path / "h.db")
    result = CliRunner().invoke(app, ["embed", str(manifest), "--model-name", TOWERS, "--pretrained", "none", "--milvus-uri", db,
                                      "--num-workers", "1", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{"):])
    assert summary["images_embedded"] == 6
    want = "onnx" if _has_onnxruntime() else "torch-channels-last"
    assert summary["image_runtime"] == want
    from hnsel.config import HnselConfig, StoreConfig
    from hnsel.store import open_store

    with open_store(HnselConfig(store=StoreConfig(uri=db, namespace="hnsel")).store) as store:
        rows = store.get("images", [f"p{i}" for i in range(6)], ["id", "vector"])
    stored = np.array([r["vector"] for r in sorted(rows, key=lambda r: int(r["id"][1:]))], np.float32)
    assert min_cosine(stored, plain_vectors(photos)) >= 0.999


def test_unknown_runtime_is_refused_before_the_store_is_touched(tmp_path, monkeypatch):
    monkeypatch.setenv(runtime.RUNTIME_ENV, "fastest")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"id,uri\np0,{photo_paths(1)[0]}\n", encoding="utf-8")
    db = tmp_path / "h.db"
    result = CliRunner().invoke(app, ["embed", str(manifest), "--model-name", TOWERS, "--pretrained", "none", "--milvus-uri", str(db)])
    assert result.exit_code == 1
    assert "HNSEL_IMAGE_RUNTIME='fastest' is not one of auto, onnx, torch" in result.output
    assert "Traceback" not in result.output and not db.exists()


def _has_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def test_train_features_go_through_the_same_fast_tower(photos, tmp_path, monkeypatch):
    from hnsel.model.features import backbone_features

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(runtime.RUNTIME_ENV, raising=False)
    encoder = load_encoder(TOWERS, "none", "cpu")
    images, _, stats = backbone_features(encoder, photo_paths(), ["a dog"], cache_dir=None)
    assert encoder.image_runtime == ("onnx" if _has_onnxruntime() else "torch-channels-last")
    plain = load_encoder(TOWERS, "none", "cpu").image_features(photos).numpy()
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    assert images.shape == plain.shape and min_cosine(unit(images), unit(plain)) >= 0.999


def test_on_onnx_runtime_both_the_session_and_torch_are_budgeted(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.chdir(tmp_path)  # the exported tower is cached under ./.hnsel-cache/onnx
    monkeypatch.delenv(runtime.RUNTIME_ENV, raising=False)
    monkeypatch.setattr(runtime, "cpu_cores", lambda: 3)
    encoder = load_encoder(TOWERS, "none", "cpu")
    before = torch.get_num_threads()
    with runtime.image_budget(encoder, num_workers=2) as name:
        assert name == "onnx" and torch.get_num_threads() == 1  # the paired captions' text tower beside the decoders
    assert torch.get_num_threads() == before
    assert encoder.image_forward.session.get_session_options().intra_op_num_threads == 1  # the tower's budget: 3 - 2
