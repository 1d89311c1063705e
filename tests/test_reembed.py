"""``hnsel reembed``: a store moved to a new model keeps its rounds, annotations and picks; a kill leaves the old space
in use and a rerun finishes; backbone features come from the cache where it holds them (tiny open_clip model, Lite)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _embed_helpers import write_images, write_tiny_config

from hnsel import api
from hnsel.config import HnselConfig, StoreConfig
from hnsel.errors import InputError
from hnsel.model.encoder import load_encoder, save_checkpoint
from hnsel.model.features import backbone_id
from hnsel.model.heads import ProjectionHead
from hnsel.schema import KINDS, MODEL_META_KEY, REEMBED_META_KEY, same_model
from hnsel.store import open_store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return str(write_tiny_config(tmp_path_factory.mktemp("model")))


def _manifest(folder: Path, n_paired: int = 4, n_unpaired: int = 8) -> Path:
    names = [f"img{i:02d}.png" for i in range(n_paired + n_unpaired)]
    write_images(folder / "images", names, size=36)
    path = folder / "photos.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "uri", "caption"])
        for i, name in enumerate(names):
            w.writerow([f"Photo {i}", f"images/{name}", f"a photo number {i} of a thing" if i < n_paired else ""])
    return path


def _perturbed_checkpoint(tiny: str, path: Path, seed: int) -> str:
    enc = load_encoder(tiny, "none", "cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in enc.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return str(save_checkpoint(path, enc.model, "hnsel-tiny", pretrained="none"))


def _heads_checkpoint(tiny: str, path: Path, seed: int) -> str:
    """Heads over the frozen tiny towers, as ``hnsel train --mode head`` writes them (the backbone recorded)."""
    base = load_encoder(tiny, "none", "cpu")
    torch.manual_seed(seed)
    heads = {"image": ProjectionHead("linear", 32, 16), "text": ProjectionHead("linear", 32, 16)}
    return str(save_checkpoint(path, base.model, "hnsel-tiny", pretrained="none", heads=heads, extra={"backbone": backbone_id(base)}))


def _rows(config: HnselConfig) -> dict[str, dict[str, dict]]:
    fields = {"images": ("id", "vector", "pool", "uri", "round"), "texts": ("id", "vector", "pool", "image_id", "text", "round")}
    with open_store(config.store) as store:
        return {kind: {r["id"]: r for b in store.iter_rows(kind, "", fields[kind]) for r in b} for kind in KINDS}


def _ledger(config: HnselConfig) -> dict[str, object]:
    """Every meta record but the model, the space and a re-embed's: round logs, picks, import journals."""
    with open_store(config.store) as store:
        keys = [k for k in store.meta_keys(strong=True) if k not in (MODEL_META_KEY, "space", REEMBED_META_KEY, "match")]
        return {k: store.get_meta(k) for k in keys}


def _scalars(rows: dict[str, dict[str, dict]]) -> dict:
    return {kind: {i: {k: v for k, v in r.items() if k != "vector"} for i, r in part.items()} for kind, part in rows.items()}


@pytest.fixture
def two_rounds(tmp_path, tiny) -> HnselConfig:
    """A store with a recorded round 1 (3 picks, 2 of them annotated) and a pending round 2 (2 picks)."""
    config = HnselConfig(store=StoreConfig(uri=str(tmp_path / "s.db")))
    api.embed(config, _manifest(tmp_path), model_name=tiny, pretrained="none", device="cpu", num_workers=0)
    first = api.select(config, budget=3, strategy="random", record=True)
    done = tmp_path / "done.csv"
    done.write_text("image_id,caption\n" + "".join(f"{i},a caption written for {i}\n" for i in list(first.selection.ids)[:2]))
    api.import_annotations(config, done, device="cpu")
    api.select(config, budget=2, strategy="random", record=True)
    return config


def test_reembed_switches_both_collections_and_keeps_the_ledger(two_rounds, tmp_path, tiny):
    config = two_rounds
    before, ledger = _rows(config), _ledger(config)
    checkpoint = _perturbed_checkpoint(tiny, tmp_path / "new.pt", seed=1)
    report = api.reembed(config, pretrained=checkpoint, device="cpu", cache_dir=None)
    assert report.switched and report.images_embedded == 12 and report.texts_embedded == len(before["texts"]) == 6
    assert report.collections == {"images": "hnsel_images__m1", "texts": "hnsel_texts__m1"}
    assert sorted(report.dropped) == ["hnsel_images", "hnsel_texts"]
    after = _rows(config)
    assert _scalars(after) == _scalars(before)  # pools, rounds, uris, captions: every row as it was
    assert _ledger(config) == ledger  # round logs, picks and import journals untouched
    new = load_encoder(None, checkpoint, "cpu")
    with open_store(config.store) as store:
        assert same_model(store.get_meta(MODEL_META_KEY), new.model_info)
        assert store.name("images") == "hnsel_images__m1" and not store.has_field("images", "uncertainty")
        assert "hnsel_images" not in store.list_collections()
    from PIL import Image

    ids = sorted(after["images"])
    want = new.encode_images([Image.open(after["images"][i]["uri"]) for i in ids])
    np.testing.assert_allclose(np.array([after["images"][i]["vector"] for i in ids]), want, atol=1e-4)
    tids = sorted(after["texts"])
    want = new.encode_texts([after["texts"][i]["text"] for i in tids])
    np.testing.assert_allclose(np.array([after["texts"][i]["vector"] for i in tids]), want, atol=1e-4)
    assert not np.allclose(before["images"][ids[0]]["vector"], after["images"][ids[0]]["vector"], atol=1e-3)
    # round 3 on the new space: none of the 5 ids already picked is offered again
    third = api.select(config, budget=3, strategy="random", record=True)  # every candidate left
    picked = {i for i, r in before["images"].items() if r["round"] >= 1}
    assert len(picked) == 5 and not picked & set(third.selection.ids) and len(set(third.selection.ids)) == 3
    status = api.status(config, rounds=True)
    assert status["model"]["checkpoint_sha256"] == new.model_info["weights"].partition(":")[2]
    assert [r["round"] for r in status["rounds"]] == [1, 2, 3] and status["reembed"] is None
    # the same model again: nothing to do
    again = api.reembed(config, pretrained=checkpoint, device="cpu", cache_dir=None)
    assert not again.switched and again.images_embedded == 0


def test_images_without_uri_refused_in_one_line_and_nothing_changes(tmp_path, tiny):
    config = HnselConfig(store=StoreConfig(uri=str(tmp_path / "s.db")))
    api.embed(config, _manifest(tmp_path, 2, 3), model_name=tiny, pretrained="none", device="cpu", num_workers=0)
    with open_store(config.store) as store:
        row = store.get("images", ["Photo 3"], ["id", "vector", "pool", "round"])[0]
        store.upsert("images", {"id": ["Photo 3"], "vector": [row["vector"]], "pool": ["unpaired"], "uri": [""]})
    before = _rows(config)
    checkpoint = _perturbed_checkpoint(tiny, tmp_path / "new.pt", seed=2)
    with pytest.raises(InputError) as err:
        api.reembed(config, pretrained=checkpoint, device="cpu", cache_dir=None)
    message = str(err.value)
    assert "\n" not in message and "1 images have no uri" in message and "nothing was changed" in message
    assert _rows(config) == before
    with open_store(config.store) as store:
        assert store.get_meta(REEMBED_META_KEY) is None and not any("__m" in n for n in store.list_collections())


def test_unreadable_image_keeps_the_old_space_then_a_rerun_resumes(tmp_path, tiny):
    config = HnselConfig(store=StoreConfig(uri=str(tmp_path / "s.db")))
    api.embed(config, _manifest(tmp_path), model_name=tiny, pretrained="none", device="cpu", num_workers=0)
    old_model = api.status(config)["model"]
    gone = tmp_path / "images" / "img05.png"
    kept = gone.read_bytes()
    gone.unlink()
    checkpoint = _perturbed_checkpoint(tiny, tmp_path / "new.pt", seed=3)
    with pytest.raises(InputError, match=r"1 images could not be re-embedded \(first: id 'Photo 5'.*the old space is still in use"):
        api.reembed(config, pretrained=checkpoint, device="cpu", cache_dir=None)
    status = api.status(config)
    assert status["model"] == old_model and status["collections"]["images"] == "hnsel_images"
    assert status["reembed"] is not None and status["reembed"]["stopped"] is True
    assert len(api.select(config, budget=2, strategy="random", record=False).selection.ids) == 2  # the old space still serves
    gone.write_bytes(kept)
    report = api.reembed(config, pretrained=checkpoint, device="cpu", cache_dir=None)
    assert report.resumed and report.switched and report.images_resumed == 11 and report.images_embedded == 1
    assert api.status(config)["reembed"] is None


def test_heads_run_on_cached_features_with_the_same_vectors(tmp_path, tiny):
    """reembed writes the backbone features; a second checkpoint over the same towers reads them (only heads run), and
    embed of new images does too; the vectors equal those computed without any cache."""
    config = HnselConfig(store=StoreConfig(uri=str(tmp_path / "s.db")))
    plain = HnselConfig(store=StoreConfig(uri=str(tmp_path / "s.db"), namespace="plain"))
    source = _manifest(tmp_path)
    cache = tmp_path / "cache"
    api.embed(config, source, model_name=tiny, pretrained="none", device="cpu", num_workers=0)
    first = _heads_checkpoint(tiny, tmp_path / "h1.pt", seed=4)
    one = api.reembed(config, pretrained=first, device="cpu", cache_dir=cache)
    assert one.switched and one.image_features_cached == 0 and one.text_features_cached == 0
    second = _heads_checkpoint(tiny, tmp_path / "h2.pt", seed=5)
    two = api.reembed(config, pretrained=second, device="cpu", cache_dir=cache)
    assert two.switched and two.image_features_cached == 12 and two.text_features_cached == 4
    api.embed(plain, source, pretrained=second, device="cpu", num_workers=0, cache_dir=None)
    cached, computed = _rows(config), _rows(plain)
    for kind in KINDS:
        assert sorted(cached[kind]) == sorted(computed[kind])
        for i in cached[kind]:
            np.testing.assert_allclose(cached[kind][i]["vector"], computed[kind][i]["vector"], atol=1e-5)
    fresh = HnselConfig(store=StoreConfig(uri=str(tmp_path / "s.db"), namespace="fresh"))
    report = api.embed(fresh, source, pretrained=second, device="cpu", num_workers=0, cache_dir=cache)
    assert report.image_features_cached == 12 and report.images_embedded == 12
    for i, row in _rows(fresh)["images"].items():
        np.testing.assert_allclose(row["vector"], computed["images"][i]["vector"], atol=1e-5)


_KILLABLE = """
import sys
from hnsel import api
from hnsel.config import HnselConfig, StoreConfig

def progress(task, done, total):
    print(task, done, total, flush=True)

api.reembed(HnselConfig(store=StoreConfig(uri=sys.argv[1])), pretrained=sys.argv[2], device="cpu", batch_size=1, num_workers=0,
            cache_dir=None, on_progress=progress)
print("finished", flush=True)
"""

_DUMP = """
import json, sys
sys.path.insert(0, sys.argv[2])
from test_reembed import _ledger, _rows
from hnsel.config import HnselConfig, StoreConfig
from hnsel.store import open_store
config = HnselConfig(store=StoreConfig(uri=sys.argv[1]))
with open_store(config.store) as store:
    names = {kind: store.name(kind) for kind in ("images", "texts")}
print(json.dumps({"rows": _rows(config), "ledger": _ledger(config), "names": names}, default=float))
"""


def _env() -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))


def _cli(cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True, timeout=timeout, env=_env(), cwd=cwd)
    assert done.returncode == 0, f"hnsel {' '.join(args)}: {done.stderr}"
    return done


def _dump(uri: str) -> dict:
    """Rows, ledger and collection names read by another process (Milvus Lite serves one process per file)."""
    done = subprocess.run([sys.executable, "-c", _DUMP, uri, str(ROOT / "tests")], capture_output=True, text=True, timeout=600, env=_env())
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_sigkill_during_reembed_leaves_the_old_space_and_a_rerun_finishes(tmp_path, tiny):
    """Every step in its own process, as a user runs them: embed, select, reembed killed with SIGKILL, status, select on the
    old space, reembed again (it resumes), then the store holds the new space with every row and the whole ledger."""
    uri, cache = str(tmp_path / "s.db"), str(tmp_path / "cache")
    _cli(tmp_path, "embed", str(_manifest(tmp_path, 4, 36)), "--model-name", tiny, "--pretrained", "none", "--device", "cpu",
         "--num-workers", "0", "--milvus-uri", uri)
    _cli(tmp_path, "select", "--budget", "3", "--strategy", "random", "--milvus-uri", uri)
    before = _dump(uri)
    checkpoint = _perturbed_checkpoint(tiny, tmp_path / "new.pt", seed=6)
    child = subprocess.Popen([sys.executable, "-c", _KILLABLE, uri, checkpoint], stdout=subprocess.PIPE, text=True, env=_env(),
                             start_new_session=True)
    try:
        for line in child.stdout:  # pages of 8 rows: kill once two pages of images are written, the rest not yet
            words = line.split()
            if words[:2] == ["re-embedding", "images"] and words[2].isdigit() and int(words[2]) >= 16:
                break
        assert child.poll() is None, "reembed finished (or failed) before it could be killed"
        os.killpg(child.pid, signal.SIGKILL)  # the process and the Milvus Lite server it started
    finally:
        child.wait(timeout=60)
    status = json.loads(_cli(tmp_path, "status", "--milvus-uri", uri, "--json").stdout)
    assert status["collections"] == {"images": "hnsel_images", "texts": "hnsel_texts"} and status["reembed"]["stopped"]
    killed = _dump(uri)
    assert killed["rows"] == before["rows"] and killed["ledger"] == before["ledger"]  # the old space, untouched
    _cli(tmp_path, "select", "--budget", "2", "--strategy", "random", "--no-record", "--milvus-uri", uri)  # and still served
    summary = json.loads(_cli(tmp_path, "reembed", "--pretrained", checkpoint, "--milvus-uri", uri, "--device", "cpu", "--num-workers",
                              "0", "--cache-dir", cache, "--json").stdout)
    assert summary["resumed"] and summary["switched"] and summary["images_resumed"] >= 16
    assert summary["images_resumed"] + summary["images_embedded"] == 40
    after = _dump(uri)
    assert after["names"] == {"images": "hnsel_images__m1", "texts": "hnsel_texts__m1"}
    assert after["ledger"] == before["ledger"] and _scalars(after["rows"]) == _scalars(before["rows"])
    new = load_encoder(None, checkpoint, "cpu")
    texts = sorted(after["rows"]["texts"])
    want = new.encode_texts([after["rows"]["texts"][i]["text"] for i in texts])
    np.testing.assert_allclose([after["rows"]["texts"][i]["vector"] for i in texts], want, atol=1e-4)


def test_a_crash_between_the_switch_and_the_cleanup_is_finished_by_a_rerun(tmp_path, tiny, monkeypatch):
    """Stopped after the one write that switches (the re-embed record and the old pair still there): the store already
    serves the new space, and a rerun only finishes the cleanup."""
    from hnsel.store.milvus import Store

    config = HnselConfig(store=StoreConfig(uri=str(tmp_path / "s.db")))
    api.embed(config, _manifest(tmp_path, 2, 4), model_name=tiny, pretrained="none", device="cpu", num_workers=0)
    api.select(config, budget=2, strategy="random", record=True)
    before, ledger = _rows(config), _ledger(config)
    checkpoint = _perturbed_checkpoint(tiny, tmp_path / "new.pt", seed=7)
    real = Store.delete_meta

    def crash(self, keys):
        if list(keys) == [REEMBED_META_KEY]:
            raise KeyboardInterrupt  # the process stops right after the switch
        return real(self, keys)

    monkeypatch.setattr(Store, "delete_meta", crash)
    with pytest.raises(KeyboardInterrupt):
        api.reembed(config, pretrained=checkpoint, device="cpu", cache_dir=None)
    monkeypatch.setattr(Store, "delete_meta", real)
    status = api.status(config)
    assert status["collections"] == {"images": "hnsel_images__m1", "texts": "hnsel_texts__m1"} and status["reembed"]["stopped"]
    with open_store(config.store) as store:
        assert {"hnsel_images", "hnsel_texts"} <= set(store.list_collections())
    report = api.reembed(config, pretrained=checkpoint, device="cpu", cache_dir=None)
    assert report.resumed and report.images_embedded == 0 and report.images_resumed == 6
    assert sorted(report.dropped) == ["hnsel_images", "hnsel_texts"]
    assert _scalars(_rows(config)) == _scalars(before) and _ledger(config) == ledger and api.status(config)["reembed"] is None
