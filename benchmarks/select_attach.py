"""Measure hnsel's selection against a Milvus server that already holds a ``select_scale.py`` pool (for example one
whose run stopped after the index build), without ingesting it again.

    python benchmarks/select_attach.py --uri http://127.0.0.1:PORT --namespace b1000000_hnsw_TIMESTAMP --size 1000000 \
        --sample-captions 10000 --engine milvus,exact [--full-hnsel]

The pool is generated again with ``select_scale.py``'s parameters and seed (``make_pool`` is deterministic), the caption
sample drawn as ``select_scale.py`` draws it, and every measurement is ``select_scale.measure_engine``: hnsel with each
engine, the dense baseline on the same captions (its GFLOP/s), agreement, peak memory. Prints the records as JSON;
nothing is written to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import select_scale as sc  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--uri", required=True)
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--index", default="HNSW")
    ap.add_argument("--sample-captions", type=int, default=10000)
    ap.add_argument("--engine", default="milvus")
    ap.add_argument("--device", default=None)
    ap.add_argument("--full-hnsel", action="store_true")
    ap.add_argument("--caption-ratio", type=float, default=0.15)
    ap.add_argument("--captions", type=int, default=None)
    ap.add_argument("--coarse", type=int, default=50)
    ap.add_argument("--fine", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ef", type=int, default=None, help="HNSW search ef (default: select_scale's)")
    ap.add_argument("--rerank", type=float, default=2.0, help="hardneg's exact re-rank, a factor of the budget (0: off)")
    ap.add_argument("--searchers", type=int, default=2, help="hardneg's search requests in flight")
    ap.add_argument("--rerank-curve", default="0,1,1.1,1.25,1.5,2,3", help="factors whose agreement is computed from the same search scores")
    args = ap.parse_args()
    args.rerank_curve = [float(x) for x in args.rerank_curve.split(",") if x.strip()]
    args.engine = [x for x in args.engine.split(",") if x]
    args.torch_import_s = None
    if "exact" in args.engine:
        t0 = time.perf_counter()
        sc.exact.resolve_device(args.device)
        args.torch_import_s = time.perf_counter() - t0
    n_captions = args.captions or int(round(args.caption_ratio * args.size))
    n_paired = max(2, n_captions // sc.CAPTIONS_PER_IMAGE)
    pool = sc.make_pool(n_paired=n_paired, n_unpaired=args.size, captions_per_image=sc.CAPTIONS_PER_IMAGE, dim=sc.DIM,
                        n_coarse=args.coarse, fine_per_coarse=args.fine, seed=args.seed)
    budget = max(10, args.size // 100)
    rng = np.random.default_rng(args.seed)
    sample_idx = np.sort(rng.permutation(len(pool.text_ids))[:args.sample_captions])
    sample = set(pool.text_ids[sample_idx].tolist())
    others = [int(p) for p in os.popen("pgrep -f 'milvus run standalone'").read().split()]
    config = sc.StoreConfig(uri=args.uri, namespace=args.namespace, index_type=args.index,
                            index_params=sc.HNSW_PARAMS if args.index == "HNSW" else {},
                            search_params=(dict(sc.HNSW_SEARCH, **({"ef": args.ef} if args.ef else {}))) if args.index == "HNSW" else {})
    records, cache = [], {}
    for engine in args.engine:
        rec = {"size": args.size, "paired_images": n_paired, "captions": len(pool.text_ids), "captions_scored": len(sample_idx),
               "backend": "server", "index": args.index, "budget": budget, "dim": sc.DIM, "loadavg_start": os.getloadavg(),
               "engine": engine, "attached": args.namespace, "search_params": config.search_params}
        args.full_hnsel = args.full_hnsel and engine == "milvus"
        records.append(sc.measure_engine(rec, engine, config, pool, sample, sample_idx, budget, others, cache, args))
    print(json.dumps(records, indent=1, default=str))


if __name__ == "__main__":
    main()
