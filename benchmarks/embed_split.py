"""Where `hnsel embed` spends its time: the towers alone, decoding alone, and the whole command, in one run.

On the same photos (Flickr8k's development images, ../shared/data/flickr8k-dev) and the same model:
(a) the image tower's forward pass alone on pre-decoded tensors (torch NCHW and channels-last, bf16 autocast in
channels-last, ONNX Runtime when installed; at each --threads and --batch-sizes), each variant's vectors compared
with the NCHW float32 path (the smallest cosine over the images); (b) decoding and transforms alone (the DataLoader
of hnsel/model/images.py) with 0 and --workers processes; (c) `hnsel embed` end to end (a subprocess, Milvus Lite in a
temporary folder, its own --json figures), and the old path in process (DataLoader beside an NCHW torch tower at
torch's default threads: what embed ran before the budget). Captions: tokens/s through the text tower in file order
and sorted by length, and `hnsel embed` of a captions-only manifest. The load average is printed: on shared cores the
ratios measured in the same run are what count.

    HF_HUB_OFFLINE=1 python benchmarks/embed_split.py                 # prints and writes BENCHMARKS.md
    python benchmarks/embed_split.py --configs small --images 64 --no-write
    python benchmarks/embed_split.py --device cuda --threads 16 --batch-sizes 64 256 --images 1024 --no-write
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from hnsel.model.encoder import load_encoder  # noqa: E402
from hnsel.model.images import image_batches  # noqa: E402
from hnsel.model.runtime import cpu_cores, onnx_image_tower, threads  # noqa: E402
from _sections import replace_section  # noqa: E402

CONFIGS = {"towers": "configs/effnet-lite0-minilm.json", "small": "configs/hnsel-small.json"}
FLICKR = ROOT.parent / "shared" / "data" / "flickr8k-dev"
SECTION = "## Embedding split"


def photos(n: int) -> tuple[list[str], list[str]]:
    """The first ``n`` photos (sorted by name) and all their captions."""
    data = json.loads((FLICKR / "dataset_flickr8k_dev.json").read_text(encoding="utf-8"))
    images = sorted(data["images"], key=lambda im: im["filename"])[:n]
    return [str(FLICKR / "images" / im["filename"]) for im in images], [s["raw"] for im in images for s in im["sentences"]]


CPU: dict[str, float] = {"last": 0.0}  # items per CPU-second of the last rate() (this process and its reaped children)


def cpu_seconds() -> float:
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def rate(n: int, fn) -> float:
    """Items per wall second of ``fn()``; items per CPU-second go to ``CPU["last"]`` (steadier on loaded cores)."""
    start, cpu = time.perf_counter(), cpu_seconds()
    fn()
    CPU["last"] = n / max(cpu_seconds() - cpu, 1e-9)
    return n / (time.perf_counter() - start)


def decode(encoder, uris: list[str], batch_size: int, workers: int) -> tuple[float, torch.Tensor]:
    out: list[torch.Tensor] = []
    speed = rate(len(uris), lambda: out.extend(b for _, b, _ in image_batches(uris, encoder.preprocess, batch_size, workers)))
    return speed, torch.cat(out)


def variants(encoder, device: str, thread_counts: list[int]) -> dict:
    """name -> (forward fn on a batch, threads it runs on); ONNX Runtime sessions are built per thread count."""
    visual = encoder.model.visual

    def channels_last(x):
        return visual(x.contiguous(memory_format=torch.channels_last))

    def bf16(x):
        with torch.autocast(device, dtype=torch.bfloat16):
            return channels_last(x).float()

    out = {}
    for t in thread_counts:
        out[f"torch NCHW, {t} thr"] = (visual, t, "nchw")
        out[f"torch channels-last, {t} thr"] = (channels_last, t, "cl")
        out[f"torch channels-last bf16, {t} thr"] = (bf16, t, "cl")
        if device == "cpu":
            try:
                out[f"ONNX Runtime, {t} thr"] = (onnx_image_tower(visual, t, Path(tempfile.gettempdir()) / "hnsel-bench-onnx"), t, "nchw")
            except Exception as exc:  # not installed, or not exact: say so once
                print(f"ONNX Runtime not measured: {type(exc).__name__}: {str(exc)[:120]}", flush=True)
    return out


def forward(encoder, tensors: torch.Tensor, fn, layout: str, num_threads: int, batch_size: int) -> tuple[float, np.ndarray]:
    """Images/s of the tower alone (after one warm-up batch) and the vectors embed would write (heads, unit rows)."""
    visual = encoder.model.visual
    visual.to(memory_format=torch.channels_last if layout == "cl" else torch.contiguous_format)
    device = encoder.device
    encoder.image_forward = fn
    vectors: list[np.ndarray] = []
    with threads(num_threads):
        encoder.image_batch(tensors[:batch_size].to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()

        def run():
            for s in range(0, len(tensors), batch_size):
                vectors.append(encoder.image_batch(tensors[s:s + batch_size].to(device))[0])
        speed = rate(len(tensors), run)
    encoder.image_forward = None
    visual.to(memory_format=torch.contiguous_format)
    return speed, np.concatenate(vectors)


def old_path(encoder, uris: list[str], batch_size: int, workers: int) -> float:
    """What embed ran before: the DataLoader beside the NCHW torch tower at torch's default threads (no writes)."""
    encoder.image_forward = None
    return rate(len(uris), lambda: [encoder.image_batch(b) for _, b, _ in image_batches(uris, encoder.preprocess, batch_size, workers)])


def cli_embed(config: str, manifest: Path, device: str, batch_size: int, workers: int | None, env: dict | None, cwd: Path) -> dict:
    """`hnsel embed` in a subprocess run from ``cwd`` (whose .hnsel-cache keeps the exported tower between runs)."""
    with tempfile.TemporaryDirectory(prefix="hnsel-split-") as tmp:
        cmd = [sys.executable, str(ROOT / "cli.py"), "embed", str(manifest), "--model-name", str(ROOT / config), "--pretrained", "none",
               "--device", device, "--batch-size", str(batch_size), "--milvus-uri", str(Path(tmp) / "split.db"), "--json"]
        cmd += [] if workers is None else ["--num-workers", str(workers)]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env={**os.environ, **(env or {})}, timeout=3600)
        if done.returncode:
            raise SystemExit(f"hnsel embed failed: {done.stdout[-500:]} {done.stderr[-1500:]}")
        return json.loads(done.stdout[done.stdout.index("{"):])


def write_manifests(folder: Path, uris: list[str], captions: list[str]) -> tuple[Path, Path]:
    images, texts = folder / "images.csv", folder / "captions.csv"
    with open(images, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([("id", "uri"), *((f"img{i:05d}", uri) for i, uri in enumerate(uris))])
    with open(texts, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([("id", "uri", "caption"), *((f"cap{i:05d}", "", c) for i, c in enumerate(captions))])
    return images, texts


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(a * b, axis=1)))  # unit rows


def text_rate(encoder, captions: list[str], batch_size: int, by_length: bool) -> float:
    """Tokens/s through the text tower (padding not counted), batches in file order or sorted by length."""
    order = sorted(captions, key=len) if by_length else captions
    tokens = sum(int((encoder.tokenizer([c]) != 0).sum()) for c in order)
    encoder.text_batch(order[:batch_size])
    return rate(tokens, lambda: [encoder.text_batch(order[s:s + batch_size]) for s in range(0, len(order), batch_size)])


def images_part(name: str, encoder, uris: list[str], args, manifest: Path, cwd: Path) -> dict:
    out: dict = {"config": name, "images": len(uris), "forward": []}
    out["decode_0"], tensors = decode(encoder, uris, 64, 0)
    out["decode_cpu"] = CPU["last"]
    out["decode_w"], _ = decode(encoder, uris, 64, args.workers)
    print(f"{name}: decoding {out['decode_0']:.1f} images/s in process, {out['decode_w']:.1f} with {args.workers} worker(s)", flush=True)
    reference = None
    for label, (fn, t, layout) in variants(encoder, args.device, args.threads).items():
        for bs in args.batch_sizes:
            speed, vectors = forward(encoder, tensors, fn, layout, t, bs)
            reference = vectors if reference is None else reference
            row = {"variant": label, "threads": t, "batch_size": bs, "images_per_second": speed, "per_cpu_second": CPU["last"],
                   "min_cosine": min_cosine(vectors, reference)}
            out["forward"].append(row)
            print(f"{name}: {label:34s} batch {bs:4d}: {speed:7.1f} images/s ({CPU['last']:.1f} per CPU-s), min cosine {row['min_cosine']:.6f}", flush=True)
    out["old_path"] = old_path(encoder, uris, 64, args.workers)
    out["old_path_cpu"] = CPU["last"]
    print(f"{name}: old path (NCHW beside {args.workers} worker(s), {torch.get_num_threads()} thr): {out['old_path']:.1f} images/s", flush=True)
    workers = None if args.workers == default_workers() else args.workers
    for key, env in (("embed_cold", {}), ("embed", {}), ("embed_torch", {"HNSEL_IMAGE_RUNTIME": "torch"})):
        cpu = cpu_seconds()
        summary = cli_embed(CONFIGS[name], manifest, args.device, 64, workers, env, cwd)
        out[key] = {k: summary.get(k) for k in ("images_per_second", "image_runtime", "seconds", "load_seconds", "encode_seconds", "write_seconds")}
        out[key]["cpu_seconds"] = cpu_seconds() - cpu  # the whole command: imports, model load, Milvus Lite
        print(f"{name}: hnsel embed ({key}): {summary['images_per_second']:.1f} images/s on {summary.get('image_runtime')}", flush=True)
    return out


def texts_part(name: str, encoder, captions: list[str], manifest: Path, args, cwd: Path) -> dict:
    out = {"captions": len(captions), "tokens_file_order": text_rate(encoder, captions, 64, False),
           "tokens_by_length": text_rate(encoder, captions, 64, True)}
    summary = cli_embed(CONFIGS[name], manifest, args.device, 64, None, None, cwd)
    out["embed_captions_per_second"] = summary["texts_embedded"] / summary["seconds"]
    tokens = sum(int((encoder.tokenizer([c]) != 0).sum()) for c in captions)
    out["embed_tokens_per_second"] = tokens / summary["seconds"]
    print(f"{name}: text tower {out['tokens_file_order']:.0f} tokens/s in file order, {out['tokens_by_length']:.0f} sorted by length; "
          f"hnsel embed {out['embed_tokens_per_second']:.0f} tokens/s ({out['embed_captions_per_second']:.1f} captions/s)", flush=True)
    return out


def default_workers() -> int:
    return max(0, min(4, (os.cpu_count() or 1) - 1))  # hnsel embed's own default (hnsel/cli/embed.py)


def summary_rows(part: dict) -> dict:
    """The limit (fastest exact forward, decoding with the workers) and embed's share of it."""
    exact = [r for r in part["forward"] if r["min_cosine"] >= 0.999]
    best = max(exact, key=lambda r: r["images_per_second"])
    nchw = max((r for r in part["forward"] if r["variant"].startswith("torch NCHW")), key=lambda r: r["images_per_second"])
    limit = min(best["images_per_second"], part["decode_w"])
    shared = 1 / (1 / best["images_per_second"] + 1 / part["decode_w"])  # both on the same cores, one after the other
    loop = part["images"] / sum(part["embed"][k] for k in ("load_seconds", "encode_seconds", "write_seconds"))
    return {"best": best, "nchw": nchw, "limit": limit, "shared": shared, "ratio": part["embed"]["images_per_second"] / limit,
            "ratio_shared": part["embed"]["images_per_second"] / shared, "loop": loop, "loop_ratio": loop / limit,
            "loop_shared": loop / shared}


def table(parts: list[dict], texts: dict, args, loads: tuple) -> str:
    lines = [SECTION, "", f"`benchmarks/embed_split.py` on {platform.machine()}, {cpu_cores()} cores, torch {torch.__version__}, device "
             f"{args.device}, random weights (speed does not depend on them), the first {args.images} Flickr8k-dev photos "
             f"(JPEG, about 500x375), {args.workers} decoding worker(s). Load average {loads[0]:.1f} at the start and "
             f"{loads[1]:.1f} at the end (other jobs share these cores: the ratios, measured in the same run, are what count).", "",
             "Image tower alone on pre-decoded tensors; min cosine: the vectors embed writes (heads, unit rows) against the NCHW "
             "float32 path; per CPU-s: images per second of CPU time (all threads), steadier than wall time on loaded cores.", "",
             "| config | variant | batch | images/s | per CPU-s | min cosine |", "|---|---|---:|---:|---:|---:|"]
    for p in parts:
        lines += [f"| {p['config']} | {r['variant']} | {r['batch_size']} | {r['images_per_second']:.1f} | {r['per_cpu_second']:.1f} | "
                  f"{r['min_cosine']:.6f} |" for r in p["forward"]]
    lines += ["", "Decoding, the old path and `hnsel embed` (images/s); limit = min(fastest exact forward, decoding with the "
              "workers); shared = 1/(1/forward + 1/decoding), the bound when both run on the same cores. embed: its own images/s "
              "(from opening the store to the last write); its loop: images / (waiting for decoded batches + encoding + writing), "
              "without the fixed start (Milvus Lite, the tower's ONNX session), which a few hundred images do not amortise.", "",
              "| config | decoding (in process / workers) | fastest exact forward | old path | embed (first run) | embed | embed on torch "
              "| embed / limit | embed / shared | embed's loop | loop / limit | loop / shared |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in parts:
        s = summary_rows(p)
        lines.append(f"| {p['config']} | {p['decode_0']:.1f} / {p['decode_w']:.1f} ({p['decode_cpu']:.1f} per CPU-s) | {s['best']['images_per_second']:.1f} "
                     f"({s['best']['variant']}, batch {s['best']['batch_size']}) | {p['old_path']:.1f} | "
                     f"{p['embed_cold']['images_per_second']:.1f} | {p['embed']['images_per_second']:.1f} ({p['embed']['image_runtime']}; "
                     f"{p['images'] / p['embed']['cpu_seconds']:.1f} per CPU-s of the whole command) | "
                     f"{p['embed_torch']['images_per_second']:.1f} | {s['ratio']:.0%} | {s['ratio_shared']:.0%} | {s['loop']:.1f} | "
                     f"{s['loop_ratio']:.0%} | {s['loop_shared']:.0%} |")
    lines += ["", "Captions (tokens/s, padding not counted): the text tower in file order and sorted by length, and `hnsel embed` "
              "of a captions-only manifest.", "", "| config | captions | file order | by length | hnsel embed | embed captions/s |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, t in texts.items():
        lines.append(f"| {name} | {t['captions']} | {t['tokens_file_order']:.0f} | {t['tokens_by_length']:.0f} | "
                     f"{t['embed_tokens_per_second']:.0f} | {t['embed_captions_per_second']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 64])
    parser.add_argument("--threads", nargs="+", type=int, default=sorted({1, cpu_cores()}))
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    uris, captions = photos(args.images)
    parts, texts = [], {}
    with tempfile.TemporaryDirectory(prefix="hnsel-split-") as tmp:
        image_csv, caption_csv = write_manifests(Path(tmp), uris, captions)
        for name in args.configs:
            encoder = load_encoder(str(ROOT / CONFIGS[name]), "none", args.device)
            parts.append(images_part(name, encoder, uris, args, image_csv, Path(tmp)))
            texts[name] = texts_part(name, encoder, captions, caption_csv, args, Path(tmp))
    text = table(parts, texts, args, (load_start, os.getloadavg()[0]))
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"images": parts, "texts": texts, "load": [load_start, os.getloadavg()[0]]}, indent=1, default=str))
    if not args.no_write:
        replace_section(SECTION, text + "\n")


if __name__ == "__main__":
    main()
