"""Helpers for the embed, data and scenes tests: a tiny open_clip config and small image fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

# Tiny enough to build in well under a second: 32 px images, one layer per tower, 32-d embeddings.
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def write_tiny_config(folder: Path, name: str = "hnsel-tiny", **changes) -> Path:
    """Write the tiny config (with top-level ``changes``) as ``folder/name.json``."""
    path = Path(folder) / f"{name}.json"
    path.write_text(json.dumps({**TINY_CONFIG, **changes}), encoding="utf-8")
    return path


def write_images(folder: Path, names: list[str], seed: int = 0, size: int = 40) -> list[Path]:
    """Random-noise RGB images (PNG or JPEG by extension), one per name; sub-folders are created."""
    rng = np.random.default_rng(seed)
    paths = []
    for name in names:
        path = Path(folder) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def write_truncated(path: Path, seed: int = 1) -> Path:
    """A JPEG cut in half: opens, but fails to decode."""
    write_images(path.parent, [path.name], seed=seed, size=64)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_coco(folder: Path, n_images: int = 3, captions_per_image: int = 2) -> Path:
    """``annotations/captions_val.json`` and ``val/`` images in COCO form; returns the JSON path."""
    names = [f"COCO_val_{i:04d}.jpg" for i in range(n_images)]
    write_images(folder / "val", names)
    images = [{"id": 100 + i, "file_name": name, "width": 40, "height": 40} for i, name in enumerate(names)]
    annotations = [{"id": 1000 + i * captions_per_image + k, "image_id": 100 + i, "caption": f"image {i} caption {k}"}
                   for i in range(n_images) for k in range(captions_per_image)]
    path = folder / "annotations" / "captions_val.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"info": {}, "images": images, "annotations": annotations}), encoding="utf-8")
    return path


def write_karpathy(folder: Path, splits: tuple[str, ...] = ("train", "val", "test", "train"), coco: bool = False) -> Path:
    """``dataset_flickr.json`` (or a COCO-style one with cocoid and filepath) beside its images."""
    entries = []
    for i, split in enumerate(splits):
        filepath = "val2014" if coco else ""
        name = f"{1000 + i}.jpg"
        write_images(folder / filepath if filepath else folder, [name], seed=i)
        entry = {"filename": name, "imgid": i, "split": split, "sentids": [2 * i, 2 * i + 1],
                 "sentences": [{"raw": f"photo {i} take {k}", "tokens": ["photo", str(i)], "imgid": i, "sentid": 2 * i + k} for k in range(2)]}
        if coco:
            entry.update(filepath=filepath, cocoid=5000 + i)
        entries.append(entry)
    path = folder / ("dataset_coco.json" if coco else "dataset_flickr30k.json")
    path.write_text(json.dumps({"dataset": "coco" if coco else "flickr30k", "images": entries}), encoding="utf-8")
    return path
