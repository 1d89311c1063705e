"""The exact engine's own work on a device, at full scale and without a Milvus server: ``select_scale.py``'s pool (the
same generator, sizes and seed) held in memory, every caption's exact threshold, then every caption x every candidate
by ``exact_hardneg_scores``'s blockwise products on ``--device``. Reports each phase (``SelectionProblem.timings``), the
products' achieved GFLOP/s, and, on a seeded caption sample, whether the device's scores equal the CPU's (ids and order
of the top ``--budget``, the largest score difference).

What it leaves out: streaming the candidates out of Milvus (a store-side cost, the same on any device;
``select_scale.py --engine exact`` measures it with a server).

    python benchmarks/exact_device.py --size 1000000 --device cuda --check-captions 2000 --out exact_device.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hnsel.data.synthetic import make_pool  # noqa: E402
from hnsel.strategies.base import AnchorChunk, ArrayVectors, ExactIndex, SelectionProblem, top_by_score  # noqa: E402
from hnsel.strategies.exact import exact_hardneg_scores  # noqa: E402

DIM, CAPTIONS_PER_IMAGE = 512, 5  # select_scale.py's


def problem_for(pool, captions: np.ndarray) -> SelectionProblem:
    """Candidates: the unpaired images (id order); anchors: ``captions`` (indices into the pool's captions); paired: the
    paired images, in memory."""
    paired = pool.image_pool == "paired"
    order = np.argsort(pool.image_ids[~paired].astype(str), kind="stable")
    cand_ids, cand = pool.image_ids[~paired][order], pool.image_vectors[~paired][order]
    paired_ids, paired_vectors = pool.image_ids[paired], pool.image_vectors[paired]
    index = ExactIndex({"paired": (paired_ids, paired_vectors)})
    text_ids, text_vectors = pool.text_ids[captions], pool.text_vectors[captions]
    positives = [frozenset([x]) for x in pool.text_image_ids[captions]]

    def anchors(chunk_size: int):
        for s in range(0, len(text_ids), chunk_size):
            yield AnchorChunk(text_ids[s:s + chunk_size], text_vectors[s:s + chunk_size], tuple(positives[s:s + chunk_size]))

    return SelectionProblem(cand_ids, index, anchors, len(text_ids), vectors=ArrayVectors(cand, paired_ids, paired_vectors))


def run(pool, captions: np.ndarray, device: str, budget: int) -> dict:
    problem = problem_for(pool, captions)
    started = time.perf_counter()
    scores, counts, stats = exact_hardneg_scores(problem, device=device)
    wall = time.perf_counter() - started
    flop = 2.0 * stats["anchors"] * len(problem.candidate_ids) * DIM
    top = top_by_score(problem.candidate_ids, scores, budget)
    return {"device": stats["device"], "device_name": stats.get("device_name"), "anchors": stats["anchors"], "candidates": len(problem.candidate_ids),
            "wall_s": wall, "timings_s": dict(problem.timings), "products_gflops": flop / max(problem.timings.get("products", 0.0), 1e-9) / 1e9,
            "violations": int(counts.sum()), "top": problem.candidate_ids[top].tolist(), "scores": scores}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1_000_000, help="unpaired images (select_scale.py's pool for that size)")
    ap.add_argument("--device", default="auto", help="where the products run: auto, cpu, cuda, cuda:N")
    ap.add_argument("--check-captions", type=int, default=2000, help="a seeded caption sample scored on --device and on the CPU, compared (0: skip)")
    ap.add_argument("--out", default="benchmarks/results/exact_device.json")
    args = ap.parse_args()
    import torch

    t0 = time.perf_counter()
    n_paired = max(2, int(round(0.15 * args.size)) // CAPTIONS_PER_IMAGE)
    pool = make_pool(n_paired=n_paired, n_unpaired=args.size, captions_per_image=CAPTIONS_PER_IMAGE, dim=DIM, n_coarse=50, fine_per_coarse=20, seed=0)
    budget = max(10, args.size // 100)
    out = {"size": args.size, "captions": len(pool.text_ids), "budget": budget, "generated_s": time.perf_counter() - t0,
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                       "torch_threads": torch.get_num_threads()}}
    print(f"pool: {args.size:,} candidates, {len(pool.text_ids):,} captions, {n_paired:,} paired images; generated in {out['generated_s']:.1f} s", flush=True)
    full = run(pool, np.arange(len(pool.text_ids)), args.device, budget)
    out["full"] = {k: v for k, v in full.items() if k != "scores"}
    print(f"all captions on {full['device']} ({full['device_name']}): {full['wall_s']:.1f} s; products {full['products_gflops']:.0f} GFLOP/s; "
          f"phases {json.dumps({k: round(v, 2) for k, v in full['timings_s'].items()})}", flush=True)
    if args.check_captions:
        sample = np.sort(np.random.default_rng(0).permutation(len(pool.text_ids))[:args.check_captions])
        on_device = run(pool, sample, args.device, budget)
        on_cpu = run(pool, sample, "cpu", budget)
        diff = float(np.abs(on_device["scores"] - on_cpu["scores"]).max())
        same = on_device["top"] == on_cpu["top"]
        out["check"] = {"captions": len(sample), "device_s": on_device["wall_s"], "cpu_s": on_cpu["wall_s"], "cpu_products_gflops": on_cpu["products_gflops"],
                        "device_timings_s": on_device["timings_s"], "cpu_timings_s": on_cpu["timings_s"], "top_identical": same, "max_score_diff": diff,
                        "violations": [on_device["violations"], on_cpu["violations"]]}
        print(f"check on {len(sample):,} captions: {on_device['device']} {on_device['wall_s']:.1f} s, cpu {on_cpu['wall_s']:.1f} s "
              f"({on_cpu['products_gflops']:.0f} GFLOP/s); top {budget} identical: {same}; max score difference {diff:.2e}; "
              f"violations {on_device['violations']} / {on_cpu['violations']}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
