"""Ray scale: embedding samples/s and hard-negative selection time, one process against Ray with 1 and 2 workers.

Embedding: ``--shards`` WebDataset shards of ``--images`` JPEGs (``--size`` px, smooth noise, img2dataset's layout:
``{key}.jpg``, ``{key}.txt``, ``{key}.json``) through ``hnsel embed`` into a Milvus server this script starts
(``milvus-server`` 2.3.5, the tests' launcher): once on one process (DataLoader decoding, ``--num-workers``), then with
``ray=True`` and 1, 2... actors (``--workers``) on a local Ray instance started once (``ray.init``, timed apart). A Ray
warm-up run on one shard goes first and is not reported (it pays the first worker processes' imports). "steady" is
the rate between the first and the last progress report: the actors' model loading excluded.

Selection: a synthetic pool (``make_pool``) ingested into the same server (FLAT), then ``hardneg`` (Top-1, Surplus,
full batch, ``engine="milvus"``) on one process and with ``ray=True`` and 1, 2... tasks; the picks must be identical.

    HF_HUB_OFFLINE=1 python benchmarks/ray_scale.py                     # prints and writes BENCHMARKS.md
    python benchmarks/ray_scale.py --images 128 --pool 5000 --no-write  # a quick look
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import sys
import tarfile
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from _sections import replace_section  # noqa: E402

SECTION = "## Ray scale"


def load_average() -> float:
    return os.getloadavg()[0]


def make_shards(folder: Path, n_images: int, n_shards: int, size: int, seed: int = 0) -> str:
    """JPEGs that decode like photos (smooth gradients plus noise), in img2dataset's tar layout; returns the pattern."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-n_images // n_shards)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for s in range(n_shards):
        with tarfile.open(folder / f"{s:05d}.tar", "w") as tar:
            for i in range(min(per, n_images - s * per)):
                key = f"{s:05d}{i:04d}"
                base = np.stack([np.sin(rng.uniform(1, 6) * xx + rng.uniform(0, 6)), np.cos(rng.uniform(1, 6) * yy), xx * yy], axis=-1)
                pixels = np.clip(127 + 100 * base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(pixels).save(buf, "JPEG", quality=90)
                for ext, data in (("jpg", buf.getvalue()), ("txt", f"a photo of scene {s}-{i}".encode()),
                                  ("json", json.dumps({"key": key, "status": "success"}).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(folder / f"{{00000..{n_shards - 1:05d}}}.tar")


@contextmanager
def milvus_server():
    import importlib.util

    spec = importlib.util.spec_from_file_location("hnsel_tests_conftest", ROOT / "tests" / "conftest.py")
    ct = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ct)
    exe = str(Path(sys.executable).with_name("milvus-server")) if Path(sys.executable).with_name("milvus-server").exists() else shutil.which("milvus-server")
    base = Path(tempfile.mkdtemp(prefix="hnsel-ray-bench-"))
    proc, uri = ct._start_server(exe, base)
    try:
        yield uri
    finally:
        ct._stop_server(proc)
        shutil.rmtree(base, ignore_errors=True)


class Clock:
    """Progress callback recording when images were reported done: the steady rate excludes start-up."""

    def __init__(self):
        self.marks: list[tuple[float, int]] = []

    def __call__(self, task: str, done: int, total) -> None:
        if task == "embedding images":
            self.marks.append((time.perf_counter(), done))

    def steady(self) -> float | None:
        """Images per second between the first and the last report; None with fewer than 4 reports (too bursty)."""
        if len(self.marks) < 4 or self.marks[-1][0] == self.marks[0][0]:
            return None
        (t0, n0), (t1, n1) = self.marks[0], self.marks[-1]
        return (n1 - n0) / (t1 - t0)


def embed_run(uri: str, namespace: str, pattern: str, args, ray_workers: int | None) -> dict:
    from hnsel.config import HnselConfig, StoreConfig
    from hnsel.workflows.embed import embed

    config = HnselConfig(store=StoreConfig(uri=uri, namespace=namespace))
    clock, load = Clock(), load_average()
    kw = dict(ray=True, ray_batch_size=args.batch_size, ray_concurrency=ray_workers) if ray_workers else {}
    t0 = time.perf_counter()
    report = embed(config, pattern, model_name=args.model, pretrained="none", device="cpu", batch_size=args.batch_size,
                   num_workers=args.num_workers, on_progress=clock, **kw)
    wall = time.perf_counter() - t0
    return {"how": f"Ray, {ray_workers} actor(s)" if ray_workers else f"one process ({args.num_workers} decoding worker)",
            "images": report.images_embedded, "failed": len(report.failures), "wall_s": round(wall, 1),
            "images_per_s": round(report.images_embedded / wall, 1), "steady_per_s": clock.steady() and round(clock.steady(), 1),
            "reports": len(clock.marks), "encode_s": round(report.encode_seconds, 1),
            "encoder_per_s": round(report.images_embedded / report.encode_seconds, 1) if report.encode_seconds else None,
            "load_before": round(load, 1), "load_after": round(load_average(), 1)}


def select_runs(uri: str, args) -> list[dict]:
    from hnsel import api
    from hnsel.config import HnselConfig, StoreConfig
    from hnsel.data.synthetic import make_pool, write_pool

    pool = make_pool(n_paired=args.paired, n_unpaired=args.pool, captions_per_image=args.captions, dim=args.dim, seed=0)
    folder = Path(tempfile.mkdtemp(prefix="hnsel-ray-pool-"))
    images, texts = write_pool(pool, folder)
    config = HnselConfig(store=StoreConfig(uri=uri, namespace="bench_select"))
    api.ingest(config, images=images, texts=texts)
    shutil.rmtree(folder, ignore_errors=True)
    rows, reference = [], None
    for workers in [None, *args.workers]:
        load = load_average()
        t0 = time.perf_counter()
        result = api.select(config, budget=args.budget, strategy="hardneg", engine="milvus",
                            **({"ray": True, "ray_workers": workers} if workers else {}), record=False)
        wall = time.perf_counter() - t0
        ids = list(result.selection.ids)
        reference = reference or ids
        rows.append({"how": f"Ray, {workers} task(s)" if workers else "one process", "anchors": result.selection.stats["anchors"],
                     "candidates": len(pool.image_ids) - args.paired, "wall_s": round(wall, 1), "same_picks": ids == reference,
                     "load_before": round(load, 1), "load_after": round(load_average(), 1)})
        print(rows[-1], flush=True)
    return rows


def section(embeds: list[dict], selects: list[dict], args, ray_init_s: float, load0: float, load1: float) -> str:
    lines = [SECTION, "",
             f"`benchmarks/ray_scale.py` on {platform.machine()}, {os.cpu_count()} cores, no GPU, Python {platform.python_version()}, "
             f"a local Ray instance (`ray.init`, {ray_init_s:.1f} s to start) and a Milvus 2.3.5 standalone server on the same cores. "
             f"1-minute load average {load0:.1f} before the script, {load1:.1f} after (other jobs shared the machine).", "",
             f"**Embedding**: {embeds[0]['images'] + embeds[0]['failed']} JPEGs of {args.size} px in {args.shards} WebDataset shards, "
             f"`{Path(args.model).name}` (random weights, 64 px input, CPU, fp32), batch {args.batch_size}, into the server. \"wall\" is the "
             "whole `embed` call: model load, collections, Ray's actor start and model load per run. \"steady\": images between the "
             "first and the last progress report over that time (start-up excluded; - when fewer than 4 reports came; on Ray the "
             "first report comes after the first shard is read and encoded, so its steady rate leaves that out and reads high). \"encoder s\": "
             "time inside the encoder calls (images and captions), summed over the actors.", "",
             "| run | images | wall s | images/s | steady images/s | encoder s | load before / after |", "|---|---:|---:|---:|---:|---:|---|"]
    for r in embeds:
        lines.append(f"| {r['how']} | {r['images']} | {r['wall_s']} | {r['images_per_s']} | {r['steady_per_s'] or '-'} | {r['encode_s']} | "
                     f"{r['load_before']} / {r['load_after']} |")
    lines += ["", f"**Selection**: `hardneg` (Top-1, Surplus, full batch, Milvus searches) over a synthetic pool, dim {args.dim}, "
              f"{args.pool:,} candidates, {args.paired} paired images x {args.captions} captions, budget {args.budget}, FLAT on the server.", "",
              "| run | anchors | wall s | same picks | load before / after |", "|---|---:|---:|---|---|"]
    for r in selects:
        lines.append(f"| {r['how']} | {r['anchors']:,} | {r['wall_s']} | {'yes' if r['same_picks'] else 'NO'} | {r['load_before']} / {r['load_after']} |")
    lines += ["", "Why the actors' encoder time is lower than the single process's: a CPU actor runs torch on one thread (Ray sets "
              "it), while the single process runs torch on as many threads as cores beside its decoding worker, and the "
              "oversubscribed cores slow every product (measured apart on this machine, load ~2.5: 768 images, 8.1 s of encoding "
              "with 2 torch threads and 1.9 s with 1, the same decoding worker).", "",
              "**What 2 cores can and cannot show.** They show that the Ray paths are correct (identical picks; the tests check "
              "identical vectors) and what they cost in overhead: Ray's start, a new actor process and model load per run, "
              "the object store between the read tasks and the actors. They cannot show scaling: two Ray workers, the "
              "read tasks, the Milvus server and the driver share the same two cores, so a second worker takes CPU "
              "from the first (a CPU actor runs torch on one thread; the single process uses both cores), and the "
              "searches of a second selection task queue on the same server. Read the 2-worker rows as contention, "
              "not as the speed-up a cluster gives.", "",
              "**Expected on N GPUs.** Embedding is data-parallel: each actor holds a full model and takes whole "
              "blocks, so encoding scales linearly in GPUs as long as three things keep up: (1) decoding: here the read tasks "
              "decoded and preprocessed the 256 px JPEGs at roughly 5-10 ms of a (shared) core each, so a GPU encoding "
              "ViT-B-32 at a few thousand images/s (not measured here: no GPU) needs on the order of 10-20 cores of read "
              "tasks, which Ray Data schedules on any node's CPUs; (2) reading: each shard is read whole by one task "
              "(img2dataset writes 10,000 samples a shard by default), so the shard count bounds the read parallelism: "
              "use several times as many shards as GPUs; (3) writing: each actor upserts its own batches to the Milvus proxy "
              "(one client upserted 4,500-7,400 rows/s of 512-d vectors into a standalone server on these 2 cores, "
              "`## Selection scale` ingest), which is why on a server every actor writes its own batches and the driver "
              "writes nothing; add proxies and data nodes with the GPUs. Expect ~N x the one-GPU rate up to the first of these limits. Selection scales with the "
              "searches: each task runs its anchors' searches against the server, so the time falls as ~1/N tasks "
              "until the query nodes saturate; add query nodes or replicas (`load_collection(replica_number=...)`) "
              "with the tasks. Each task also pays a fixed cost once: listing the candidate ids and loading the paired vectors "
              "(O(pool + paired)), so more tasks help only while each keeps many more anchors' searches than that (at ~3 ms a "
              "search on a server, 1,000 anchors are 3 s of searching). On 2 cores the selection rows show the overhead: "
              "Ray's tasks start, build the problem again and search the same one server."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1536)
    parser.add_argument("--shards", type=int, default=12)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--model", default=str(ROOT / "configs" / "hnsel-small.json"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--pool", type=int, default=10_000)
    parser.add_argument("--paired", type=int, default=300)
    parser.add_argument("--captions", type=int, default=5)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    load0 = load_average()
    work = Path(tempfile.mkdtemp(prefix="hnsel-ray-shards-"))
    try:
        pattern = make_shards(work / "wds", args.images, args.shards, args.size)
        with milvus_server() as uri:
            import ray

            t0 = time.perf_counter()
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
            ray_init_s = time.perf_counter() - t0
            embeds = [embed_run(uri, "bench_one", pattern, args, None)]
            print(embeds[-1], flush=True)
            embed_run(uri, "bench_warmup", pattern.replace(f"{{00000..{args.shards - 1:05d}}}", "00000"), args, 1)  # not reported
            for workers in args.workers:
                embeds.append(embed_run(uri, f"bench_ray{workers}", pattern, args, workers))
                print(embeds[-1], flush=True)
            selects = select_runs(uri, args)
            ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = section(embeds, selects, args, ray_init_s, load0, load_average())
    print(text)
    if not args.no_write:
        replace_section(SECTION, text)


if __name__ == "__main__":
    main()
