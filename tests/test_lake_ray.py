"""Data-lake shards (WebDataset tars, Parquet with image bytes) and Ray: readers, embedding on one process and on a
local Ray instance (the same vectors), resume, failures listed, `select --ray` equal to `select`, bad input refused."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _embed_helpers import write_tiny_config
from PIL import Image
from typer.testing import CliRunner

from hnsel import api
from hnsel.cli import app
from hnsel.config import HnselConfig, StoreConfig
from hnsel.data.shards import open_shards
from hnsel.errors import InputError, SelectionError
from hnsel.store import open_store
from hnsel.workflows.embed import embed

PER_SHARD = 4


def _jpeg(rng: np.random.Generator, size: int = 40) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(out, "JPEG")
    return out.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(folder: Path, n_shards: int = 3, corrupt: tuple[int, int] | None = None, seed: int = 0) -> str:
    """img2dataset-style shards ``00000.tar``...: ``{key}.jpg``, ``{key}.txt``, ``{key}.json`` per sample; returns the pattern."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(n_shards):
        with tarfile.open(folder / f"{s:05d}.tar", "w") as tar:
            for i in range(PER_SHARD):
                key = f"{s:05d}{i:04d}"
                image = b"not a jpeg at all" if corrupt == (s, i) else _jpeg(rng)
                _add(tar, f"{key}.jpg", image)
                _add(tar, f"{key}.txt", f"a photo number {s * PER_SHARD + i}".encode())
                _add(tar, f"{key}.json", json.dumps({"uid": f"u-{key}", "alt": [f"alt text {key}", "second"]}).encode())
    return str(folder / f"{{00000..{n_shards - 1:05d}}}.tar")


def write_parquet(path: Path, n: int = 6, struct: bool = True, seed: int = 1) -> Path:
    """A Hugging Face style export: ``image`` as {"bytes", "path"} structs (or plain bytes) and ``text``."""
    rng = np.random.default_rng(seed)
    images = [_jpeg(rng) for _ in range(n)]
    column = [{"bytes": b, "path": None} for b in images] if struct else images
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"image": column, "text": [f"caption {i}" if i % 3 else None for i in range(n)]}), path, row_group_size=4)
    return path


def _config(uri: str, namespace: str = "hnsel") -> HnselConfig:
    return HnselConfig(store=StoreConfig(uri=uri, namespace=namespace))


def _vectors(config: HnselConfig, kind: str) -> dict[str, np.ndarray]:
    with open_store(config.store) as store:
        return {r["id"]: np.asarray(r["vector"]) for rows in store.iter_rows(kind, "", ("id", "vector")) for r in rows}


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> str:
    return str(write_tiny_config(tmp_path_factory.mktemp("model")))


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("lake")
    return {"shards": write_shards(root / "wds", corrupt=(1, 2)), "parquet": str(write_parquet(root / "hf" / "train-0.parquet")), "root": root}


def _embed(config, source, tiny_config, **kw):
    return embed(config, source, model_name=tiny_config, pretrained="none", device="cpu", batch_size=4, **kw)


# --- readers ----------------------------------------------------------------------------------


def test_webdataset_ids_captions_and_json_fields(lake):
    shards = open_shards(lake["shards"])
    assert shards.format == "webdataset" and len(shards.units) == 3 and shards.total is None
    records = [r for u in shards.units for b in shards.read(u, 3) for r in b.records]
    assert [r.id for r in records[:2]] == ["000000000", "000000001"] and len(records) == 3 * PER_SHARD
    assert records[0].captions == ("a photo number 0",) and records[0].caption_ids == ("000000000#0",) and records[0].pool == "paired"
    assert records[0].uri.endswith("00000.tar#000000000.jpg") and records[0].data[:2] == b"\xff\xd8"
    by_json = open_shards(lake["shards"], id_field="uid", caption_field="alt", pool="unpaired")
    first = next(by_json.read(by_json.units[0])).records[0]
    assert first.id == "u-000000000" and first.captions == ("alt text 000000000", "second") and first.pool == "unpaired"
    missing = open_shards(lake["shards"], id_field="nope")
    batch = next(missing.read(missing.units[0]))
    assert not batch.records and "no 'nope' in 000000000.json" in batch.failures[0]["reason"]


def test_a_truncated_shard_keeps_what_was_read(tmp_path):
    pattern = write_shards(tmp_path, n_shards=1)
    data = (tmp_path / "00000.tar").read_bytes()
    (tmp_path / "00000.tar").write_bytes(data[: len(data) // 2])
    shards = open_shards(pattern)
    batches = list(shards.read(shards.units[0]))
    records = [r for b in batches for r in b.records]
    failures = [f for b in batches for f in b.failures]
    assert 0 < len(records) < PER_SHARD and len(failures) == 1 and failures[0]["reason"].startswith(f"shard unreadable after {len(records)} samples")


def test_parquet_bytes_struct_and_plain(tmp_path):
    path = write_parquet(tmp_path / "a.parquet", n=6)
    shards = open_shards(str(path))
    assert shards.format == "parquet-bytes" and shards.total == 6 and [u.row_offset for u in shards.units] == [0, 4]
    records = [r for u in shards.units for b in shards.read(u, 2) for r in b.records]
    assert [r.id for r in records] == [f"a.parquet#{i}" for i in range(6)]
    assert [r.pool for r in records] == ["unpaired", "paired", "paired"] * 2 and records[1].captions == ("caption 1",)
    plain = tmp_path / "img2dataset.parquet"
    rng = np.random.default_rng(0)
    pq.write_table(pa.table({"key": ["k1", "k2"], "caption": ["x", "y"], "jpg": [_jpeg(rng), b""]}), plain)
    got = [b for u in open_shards(str(plain)).units for b in open_shards(str(plain)).read(u)]
    assert [r.id for r in got[0].records] == ["k1"] and got[0].failures == [{"id": "k2", "uri": f"{plain}#row=1", "reason": "no image bytes"}]
    assert api.open_shards(str(plain), image_column="jpg").columns[str(plain)].image == "jpg"


# --- one process --------------------------------------------------------------------------------


def test_embed_shards_lists_corrupt_images_and_resumes(lake, tiny_config, tmp_path):
    config = _config(str(tmp_path / "hnsel.db"))
    report = _embed(config, lake["shards"], tiny_config, errors_path=tmp_path / "errors.csv")
    assert report.format == "webdataset" and report.images_embedded == 3 * PER_SHARD - 1 and report.texts_embedded == 3 * PER_SHARD - 1
    assert [f["id"] for f in report.failures] == ["000010002"] and "not an image" in report.failures[0]["reason"]
    assert "000010002" in (tmp_path / "errors.csv").read_text()
    again = _embed(config, lake["shards"], tiny_config)
    assert again.images_embedded == 0 and again.images_skipped == 3 * PER_SHARD - 1 and len(again.failures) == 1
    parquet = _embed(config, lake["parquet"], tiny_config)
    assert parquet.format == "parquet-bytes" and parquet.images_embedded == 6 and parquet.texts_embedded == 4
    assert len(_vectors(config, "images")) == 3 * PER_SHARD - 1 + 6


def _count(config) -> tuple[int, int]:
    with open_store(config.store) as store:
        return store.count("images"), store.count("texts")


@pytest.mark.parametrize("case", ["no shard", "not a tar", "no column", "unreachable ray", "select ray on lite", "select ray auto"])
def test_bad_input_is_one_line_and_leaves_the_store(lake, tiny_config, tmp_path, case):
    uri = str(tmp_path / "hnsel.db")
    config = _config(uri)
    _embed(config, lake["parquet"], tiny_config)
    before = _count(config)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "00000.tar").write_bytes(b"<html>403 Forbidden</html>" * 40)
    model = ["--model-name", tiny_config, "--pretrained", "none", "--device", "cpu", "--milvus-uri", uri]
    args, expected = {
        "no shard": (["embed", str(tmp_path / "none-{000..003}.tar"), *model], "the pattern matches no shard"),
        "not a tar": (["embed", str(tmp_path / "bad" / "{00000..00000}.tar"), *model], "not a tar file"),
        "no column": (["embed", lake["parquet"], "--image-column", "picture", *model], "no image column 'picture'"),
        "unreachable ray": (["embed", lake["shards"], "--ray-address", "127.0.0.1:1", *model], "cannot reach Ray at 127.0.0.1:1"),
        "select ray on lite": (["select", "--strategy", "hardneg", "--ray", "--milvus-uri", uri, "-n", "1"], "--ray needs a Milvus server"),
        "select ray auto": (["select", "--ray", "--milvus-uri", "http://127.0.0.1:1", "-n", "1"], "--ray distributes --strategy hardneg"),
    }[case]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert expected in result.output and "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert _count(config) == before


def test_ray_refusals_name_the_fix(tmp_path):
    server = _config("http://127.0.0.1:1")
    with pytest.raises(SelectionError, match="--ray needs --batch full"):
        api.select(server, budget=1, strategy="hardneg", params={"batch": "mini"}, ray=True, record=False)
    with pytest.raises(InputError, match="--ray reads WebDataset shards or Parquet"):
        embed(_config(str(tmp_path / "x.db")), str(tmp_path), ray=True)


# --- Ray ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance for the module (2 CPUs); hnsel uses it as it finds it and leaves it running."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_embed_equals_one_process_and_resumes(lake, tiny_config, store_uri, namespace, tmp_path, ray_local):
    """Lite: the actors return vectors and the driver writes; a server: the actors write and ask it which ids are stored."""
    single = _config(str(tmp_path / "single.db"))  # the reference, on one process (the backend does not change a vector)
    _embed(single, lake["shards"], tiny_config)
    on_ray = _config(store_uri, namespace)
    _embed(on_ray, lake["shards"].replace("{00000..00002}", "00000"), tiny_config)  # shard 0 stored already: resumed, not redone
    report = _embed(on_ray, lake["shards"], tiny_config, ray=True, ray_batch_size=3)
    lite = not store_uri.startswith("http")
    assert report.ray["workers"] == 1 and report.ray["writes"] == ("driver (Milvus Lite)" if lite else "workers (Milvus server)")
    assert report.images_skipped == PER_SHARD and report.images_embedded == 2 * PER_SHARD - 1 and report.texts_embedded == 2 * PER_SHARD - 1
    assert [f["id"] for f in report.failures] == ["000010002"] and "not an image" in report.failures[0]["reason"]
    for kind in ("images", "texts"):
        want, got = _vectors(single, kind), _vectors(on_ray, kind)
        assert sorted(got) == sorted(want) and len(want) == 3 * PER_SHARD - 1
        np.testing.assert_allclose(np.stack([got[i] for i in sorted(want)]), np.stack([want[i] for i in sorted(want)]), atol=1e-5)


def _probabilistic_checkpoint(tiny_config: str, path: Path) -> str:
    """The tiny model with Gaussian heads (docs/ascmr.md): its samples carry an uncertainty beside the vector."""
    import torch

    from hnsel.model.encoder import load_encoder, save_checkpoint
    from hnsel.model.heads import ProjectionHead

    heads = {side: ProjectionHead("linear", 32, 16, variance=0.1) for side in ("image", "text")}
    with torch.no_grad():
        for head in heads.values():
            head.logvar.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(0))
    return str(save_checkpoint(path, load_encoder(tiny_config, "none", "cpu").model, "hnsel-tiny", heads=heads))


def _rows(config: HnselConfig, kind: str) -> dict[str, tuple[np.ndarray, float]]:
    with open_store(config.store) as store:
        return {r["id"]: (np.asarray(r["vector"]), r["uncertainty"]) for rows in store.iter_rows(kind, "", ("id", "vector", "uncertainty")) for r in rows}


def test_cli_ray_embed_parquet_json(lake, tiny_config, tmp_path, ray_local):
    """Through the CLI, a probabilistic checkpoint: the same vectors and uncertainties as one process, JSON alone on stdout."""
    checkpoint = _probabilistic_checkpoint(tiny_config, tmp_path / "gauss.pt")
    single = _config(str(tmp_path / "single.db"))
    embed(single, lake["parquet"], pretrained=checkpoint, device="cpu", batch_size=4)
    uri = str(tmp_path / "ray.db")
    result = CliRunner().invoke(app, ["embed", lake["parquet"], "--ray", "--ray-image-batch", "4", "--pretrained", checkpoint,
                                      "--device", "cpu", "--milvus-uri", uri, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["format"] == "parquet-bytes" and summary["images_embedded"] == 6 and summary["texts_embedded"] == 4 and summary["ray"]["cpus"] == 2
    for kind in ("images", "texts"):
        want, got = _rows(single, kind), _rows(_config(uri), kind)
        assert sorted(got) == sorted(want) and len(want) == {"images": 6, "texts": 4}[kind]
        np.testing.assert_allclose(np.stack([got[i][0] for i in want]), np.stack([want[i][0] for i in want]), atol=1e-5)
        np.testing.assert_allclose([got[i][1] for i in want], [want[i][1] for i in want], rtol=1e-5)
        assert min(u for _, u in got.values()) > 0


@pytest.fixture(scope="module")
def server_pool(milvus_server, tmp_path_factory) -> HnselConfig:
    """A synthetic pool on the session's Milvus server (FLAT), with unpaired captions for the text modality."""
    from hnsel.data.synthetic import make_pool, write_pool

    folder = tmp_path_factory.mktemp("pool")
    pool = make_pool(n_paired=24, n_unpaired=160, captions_per_image=3, dim=16, n_coarse=3, fine_per_coarse=3, seed=11)
    images, texts = write_pool(pool, folder)
    rng = np.random.default_rng(3)
    extra = pool.text_vectors[rng.integers(0, len(pool.text_vectors), 50)] + 0.05 * rng.normal(size=(50, 16))
    unpaired = folder / "texts_unpaired.jsonl"
    unpaired.write_text("".join(json.dumps({"id": f"q{i:02d}", "vector": v.tolist(), "pool": "unpaired"}) + "\n" for i, v in enumerate(extra)))
    config = _config(milvus_server, "t_lake_ray_select")
    api.ingest(config, images=images, texts=texts)
    api.ingest(config, texts=unpaired)
    return config


@pytest.mark.server
@pytest.mark.parametrize("modality", ["image", "text"])
def test_select_ray_equals_select_on_flat(server_pool, ray_local, modality):
    params = {"chunk_size": 16, "weight": "surplus"}
    one = api.select(server_pool, budget=20, strategy="hardneg", params=params, modality=modality, engine="milvus", record=False)
    many = api.select(server_pool, budget=20, strategy="hardneg", params=params, modality=modality, engine="milvus", ray=True, ray_workers=2, record=False)
    a, b = one.selection, many.selection
    assert list(b.ids) == list(a.ids) and list(b.reasons) == list(a.reasons) and list(b.violations) == list(a.violations)
    np.testing.assert_allclose(b.scores, a.scores, rtol=1e-12)
    assert b.stats["ray"]["tasks"] == 2 and b.stats["anchors"] == a.stats["anchors"] > 0 and a.stats["candidates_with_score"] > 20
    for key in ("violations", "expected_violations", "violator_spread", "deepened", "thresholds"):
        assert b.stats[key] == a.stats[key], key
