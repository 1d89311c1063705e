"""Embedding throughput: images per second through hnsel's embed pipeline, and the data-loading share.

Random weights (no download): the speed of a forward pass does not depend on the weights. Images are
scenes upscaled to 384x288 JPEGs, so decoding costs about what a photo does. For each model and batch
size the same pipeline as ``hnsel embed`` runs (DataLoader workers decode and preprocess, the main
process encodes); "loading" is the time the encoder waited for decoded batches.

    HF_HUB_OFFLINE=1 python benchmarks/embed_throughput.py            # prints and writes BENCHMARKS.md
    python benchmarks/embed_throughput.py --models small --batch-sizes 32 64 --images 256 --no-write
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from hnsel.data import read_folder  # noqa: E402
from hnsel.data.scenes import generate_scenes  # noqa: E402
from hnsel.model.encoder import load_encoder, register_config  # noqa: E402
from hnsel.workflows.embed import _batches  # noqa: E402
from _sections import replace_section  # noqa: E402

SMALL = {  # a small ViT: a quarter of ViT-B-32's width, a third of its depth
    "embed_dim": 256,
    "vision_cfg": {"image_size": 224, "layers": 4, "width": 256, "patch_size": 32, "head_width": 64},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 256, "heads": 4, "layers": 4},
}
MODELS = {"ViT-B-32": "ViT-B-32", "small": "hnsel-bench-small"}
SECTION = "## Embedding throughput"


def make_images(folder: Path, n: int) -> list:
    generate_scenes(folder, n=n, seed=0, image_size=96, captions=1)
    for path in sorted((folder / "images").glob("*.png")):
        from PIL import Image

        Image.open(path).convert("RGB").resize((384, 288)).save(path.with_suffix(".jpg"), quality=90)
        path.unlink()
    return read_folder(folder / "images").images


def measure(encoder, records, batch_size: int, workers: int) -> dict:
    next(iter(_batches(records[:batch_size], encoder, batch_size, 0)))  # warm up the model once
    waited = encoded = 0.0
    start = time.perf_counter()
    batches = _batches(records, encoder, batch_size, workers)
    while True:
        t0 = time.perf_counter()
        item = next(batches, None)
        waited += time.perf_counter() - t0
        if item is None:
            break
        t0 = time.perf_counter()
        encoder.encode_image_tensors(item[1])
        encoded += time.perf_counter() - t0
    total = time.perf_counter() - start
    return {"images_per_second": len(records) / total, "load_share": waited / total, "encode_share": encoded / total, "seconds": total}


def table(rows: list[dict], args) -> str:
    lines = [
        SECTION,
        "",
        f"`benchmarks/embed_throughput.py` on {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads, CPU, fp32, random weights, {args.workers} decoding worker(s), "
        f"JPEGs of 384x288 ({args.images} per row, or two batches when more). \"loading\" is the share of wall time the encoder waited for decoded images. "
        f"Load average before the run: {args.load:.1f} (other jobs on the same cores make the numbers lower and noisier).",
        "",
        "| model | batch size | images | images/s | loading | encoding |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch_size']} | {r['images']} | {r['images_per_second']:.1f} | {r['load_share']:.0%} | {r['encode_share']:.0%} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 64, 128, 256])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--workers", type=int, default=max(0, min(4, (os.cpu_count() or 1) - 1)))
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    args.load = os.getloadavg()[0]
    register_config(MODELS["small"], SMALL)
    rows = []
    with tempfile.TemporaryDirectory(prefix="hnsel-bench-") as tmp:
        records = make_images(Path(tmp), max(args.images, 2 * max(args.batch_sizes)))
        for model in args.models:
            encoder = load_encoder(MODELS[model], "none", "cpu")
            for batch_size in args.batch_sizes:
                n = max(args.images, 2 * batch_size)  # at least two batches, so decoding can overlap encoding
                row = {"model": model, "batch_size": batch_size, "images": n, **measure(encoder, records[:n], batch_size, args.workers)}
                print(f"{model:10s} batch {batch_size:4d}: {row['images_per_second']:7.1f} images/s, loading {row['load_share']:.0%}", flush=True)
                rows.append(row)
    text = table(rows, args)
    print(text)
    if not args.no_write:
        replace_section(SECTION, text + "\n")


if __name__ == "__main__":
    main()
