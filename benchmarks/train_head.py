"""Head training: seconds per epoch and final test R-sum for each loss, on the scenes dataset.

Two measurements, both written to the "## Head training" section of BENCHMARKS.md:

1. Quality on scenes at 2k, 10k and 50k pairs (5 captions per image, Karpathy train/val/test split
   80/10/10). No pretrained CLIP weights can be downloaded here, so the backbone is a small random-weight
   open_clip model (average-pooled 1-layer ViT on 32 px, 1-layer text tower, 64-d): the numbers show
   that heads learn and how the losses compare, not what a pretrained CLIP reaches. Features are
   extracted once through hnsel's cache; head training starts from those arrays, as an active-learning
   round does. Early stopping on validation R-sum (patience 3), test R-sum of the best epoch.
2. Speed at ViT-B-32's width (512-d random features): seconds per epoch at 20k and 50k pairs, the
   cost that matters for "20k pairs in under a minute" (it depends on shapes only, not on the data).

    HF_HUB_OFFLINE=1 python benchmarks/train_head.py                # prints and writes BENCHMARKS.md
    python benchmarks/train_head.py --pairs 2000 --losses vsepp --no-write
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

import numpy as np  # noqa: E402
import torch  # noqa: E402

from hnsel.data import load_source  # noqa: E402
from hnsel.data.scenes import generate_scenes  # noqa: E402
from hnsel.model.encoder import load_encoder, register_config  # noqa: E402
from hnsel.model.metrics import evaluate_recall  # noqa: E402
from hnsel.model.features import backbone_features  # noqa: E402
from hnsel.model.train import apply_heads, train_heads  # noqa: E402
from hnsel.workflows.train import paired_from_dataset  # noqa: E402
from _sections import replace_section  # noqa: E402

SECTION = "## Head training"
LOSSES = ("infonce", "vsepp", "triplet-sn", "kendall", "infonce+0.5*kendall")
MODEL = "hnsel-bench-avg"
CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8, "head_width": 32, "pool_type": "avg"},
    "text_cfg": {"context_length": 48, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}
CAPTIONS = 5


def scenes_features(data_dir: Path, pairs: int, cache_dir: Path) -> dict:
    """{split: (image feats, text feats, index)} of a scenes dataset with ``pairs`` captions."""
    out = data_dir / f"scenes-{pairs}"
    if not (out / "dataset_scenes.json").exists():
        generate_scenes(out, n=pairs // CAPTIONS, seed=0, image_size=64, captions=CAPTIONS)
    dataset = load_source(out / "dataset_scenes.json")
    encoder = load_encoder(MODEL, "none", "cpu")
    splits = {}
    for split in ("train", "val", "test"):
        part = paired_from_dataset(dataset.split(split), split)
        images, texts, _ = backbone_features(encoder, part.uris, part.texts, cache_dir=cache_dir, num_workers=1)
        splits[split] = (images, texts, part.text_image_index)
    return splits


def quality(splits: dict, loss: str, head: str, epochs: int) -> dict:
    test = splits["test"]
    start = time.perf_counter()
    heads, curve = train_heads(*splits["train"], val=splits["val"], loss=loss, head=head, epochs=epochs, patience=3, seed=0)
    seconds = time.perf_counter() - start
    trained = [c for c in curve if c["epoch"] > 0]
    rsum = evaluate_recall(apply_heads(heads["image"], test[0]), apply_heads(heads["text"], test[1]), test[2])["rsum"]
    best = max(curve, key=lambda c: c["val_rsum"])["epoch"]
    return {"loss": loss, "epoch_seconds": float(np.mean([c["seconds"] for c in trained])), "epochs": len(trained),
            "best_epoch": best, "test_rsum": rsum, "total_seconds": seconds}


def speed(pairs: int, loss: str, dim: int = 512, epochs: int = 2) -> tuple[float, float]:
    """(wall, CPU) seconds per epoch on random ``dim``-d features (5 captions per image, no validation).

    Training runs on one thread, so CPU seconds are what the wall clock shows on an idle core even
    when other processes share the machine.
    """
    rng = np.random.default_rng(0)
    n_img = pairs // CAPTIONS
    images = rng.normal(size=(n_img, dim)).astype(np.float32)
    index = np.repeat(np.arange(n_img), CAPTIONS)
    texts = (images[index] + rng.normal(size=(pairs, dim))).astype(np.float32)
    wall, cpu = time.perf_counter(), time.process_time()
    _, curve = train_heads(images, texts, index, loss=loss, epochs=epochs, val_fraction=0.0, seed=0)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall / epochs, cpu / epochs


def table(quality_rows: list[dict], speed_rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        SECTION, "",
        f"`python benchmarks/train_head.py` on {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads (training uses 1). Batch 256 captions, AdamW lr 1e-3. "
        f"1-minute load average {args.load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end: "
        "other processes shared the 2 cores, so wall-clock seconds are inflated.", "",
        f"### Test R-sum on scenes ({args.head} heads, random-weight 64-d backbone; at most {args.epochs} epochs, patience 3)", "",
        "Untrained = the backbone's own cosine similarities (epoch 0). Recalls are in percent; R-sum is out of 600.", "",
        "| pairs | test images | loss | s / epoch | epochs run | untrained R-sum | test R-sum |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in quality_rows:
        lines.append(f"| {r['pairs']} | {r['test_images']} | {r['loss']} | {r['epoch_seconds']:.2f} | {r['epochs']} "
                     f"| {r['untrained']:.1f} | {r['test_rsum']:.1f} |")
    lines += ["", "### Seconds per epoch at ViT-B-32 width (512-d features, linear heads, no validation)", "",
              "Wall clock, and in brackets the CPU time of the (single-threaded) training: roughly what an idle core takes.", "",
              "| pairs | " + " | ".join(args.losses) + " |", "|---:|" + "---:|" * len(args.losses)]
    for r in speed_rows:
        lines.append(f"| {r['pairs']} | " + " | ".join(f"{r[loss][0]:.2f} ({r[loss][1]:.2f})" for loss in args.losses) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="*", type=int, default=[2000, 10000, 50000])
    parser.add_argument("--speed-pairs", nargs="*", type=int, default=[20000, 50000])
    parser.add_argument("--losses", nargs="+", default=list(LOSSES))
    parser.add_argument("--head", default="mlp", choices=["linear", "mlp"])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--data-dir", type=Path, default=None, help="keep generated scenes and the feature cache here")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    register_config(MODEL, CONFIG)
    args.load = os.getloadavg()
    quality_rows, speed_rows = [], []
    with tempfile.TemporaryDirectory(prefix="hnsel-bench-") as tmp:
        data_dir = args.data_dir or Path(tmp)
        for pairs in args.pairs:
            splits = scenes_features(data_dir, pairs, data_dir / "cache")
            test = splits["test"]
            untrained = evaluate_recall(apply_heads(None, test[0]), apply_heads(None, test[1]), test[2])["rsum"]
            for loss in args.losses:
                row = {"pairs": pairs, "test_images": len(test[0]), "untrained": untrained, **quality(splits, loss, args.head, args.epochs)}
                print(f"{pairs:6d} pairs {loss:22s} {row['epoch_seconds']:6.2f} s/epoch, {row['epochs']} epochs, "
                      f"test R-sum {untrained:.1f} -> {row['test_rsum']:.1f}", flush=True)
                quality_rows.append(row)
    for pairs in args.speed_pairs:
        row = {"pairs": pairs, **{loss: speed(pairs, loss) for loss in args.losses}}
        print(f"{pairs:6d} pairs at 512-d: " + ", ".join(f"{loss} {row[loss][0]:.2f}s ({row[loss][1]:.2f}s CPU)" for loss in args.losses), flush=True)
        speed_rows.append(row)
    text = table(quality_rows, speed_rows, args)
    print(text)
    if not args.no_write:
        replace_section(SECTION, text + "\n")


if __name__ == "__main__":
    main()
