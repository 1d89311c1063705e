"""The time-versus-agreement curve at full scale: load ``select_scale.py``'s pool into a fresh Milvus server (HNSW with
``--M`` and ``--ef-construction``), measure agreement on a seeded caption sample (``select_scale.measure_engine``: hnsel
and the dense baseline on the same captions, with the exact re-rank curve), then time ``hnsel select`` (milvus engine,
every caption) for each ``--ef`` and ``--rerank`` factor, as a user runs it (a subprocess; wall time and peak RSS from
``/usr/bin/time -v``, the time by phase from its ``--json`` summary; the Milvus server's peak RSS from /proc).

    python benchmarks/select_full_ef.py --size 1000000 --M 32 --ef-construction 200 --ef 64,256 --rerank 0,2 --sample-captions 10000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import select_scale as sc  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1_000_000)
    ap.add_argument("--M", type=int, default=sc.HNSW_PARAMS["M"], help="HNSW graph degree")
    ap.add_argument("--ef-construction", type=int, default=sc.HNSW_PARAMS["efConstruction"], help="HNSW build-time beam")
    ap.add_argument("--ef", default="64,256,1024")
    ap.add_argument("--rerank", default="2", help="hardneg --rerank factors, comma-separated (each with each ef)")
    ap.add_argument("--searchers", default="2", help="hardneg --searchers values, comma-separated (each with each ef and rerank)")
    ap.add_argument("--envs", default="base", help="environment variants for the hnsel process, run in this order for each setting, "
                    "semicolon-separated, each 'base' (as is) or NAME=VALUE[,NAME=VALUE] (e.g. 'base;OPENBLAS_NUM_THREADS=1;OPENBLAS_NUM_THREADS=1;base')")
    ap.add_argument("--repeat", type=int, default=1, help="time each setting this many times in a row (the first run after a load warms Milvus up)")
    ap.add_argument("--sample-captions", type=int, default=0, help="also measure agreement on a seeded sample of N captions, at each ef")
    ap.add_argument("--rerank-curve", default="0,1,1.1,1.25,1.5,2,3,5")
    ap.add_argument("--out", default="benchmarks/results/select_full_ef.json")
    args = ap.parse_args()
    n_paired = max(2, int(round(0.15 * args.size)) // sc.CAPTIONS_PER_IMAGE)
    pool = sc.make_pool(n_paired=n_paired, n_unpaired=args.size, captions_per_image=sc.CAPTIONS_PER_IMAGE, dim=sc.DIM,
                        n_coarse=50, fine_per_coarse=20, seed=0)
    budget = max(10, args.size // 100)
    hnsel = str(Path(sys.executable).with_name("hnsel"))
    efs = [int(x) for x in args.ef.split(",")]
    reranks = [float(x) for x in args.rerank.split(",")]
    index_params = {"M": args.M, "efConstruction": args.ef_construction}
    results = {"size": args.size, "captions": len(pool.text_ids), "budget": budget, "index_params": index_params, "machine": sc.machine(),
               "loadavg_start": os.getloadavg(), "samples": [], "runs": []}
    with sc.milvus_server() as (uri, others):
        namespace = f"full{args.size}"
        config = sc.StoreConfig(uri=uri, namespace=namespace, index_type="HNSW", index_params=index_params, search_params=sc.HNSW_SEARCH)
        results["ingest"] = sc.ingest_columnar(config, pool)
        results["index_build"] = sc.wait_index(config, 3600)
        print("loaded", results["ingest"]["rows"], "rows; index", results["index_build"], flush=True)
        if args.sample_captions:
            rng = np.random.default_rng(0)  # the sample select_scale.py and select_attach.py draw
            sample_idx = np.sort(rng.permutation(len(pool.text_ids))[:args.sample_captions])
            sample = set(pool.text_ids[sample_idx].tolist())
            opts = argparse.Namespace(seed=0, device=None, rerank=max(reranks), full_hnsel=False, torch_import_s=None, searchers=2,
                                      rerank_curve=[float(x) for x in args.rerank_curve.split(",")])
            cache: dict = {}
            for ef in efs:
                cfg = sc.StoreConfig(uri=uri, namespace=namespace, index_type="HNSW", index_params=index_params, search_params={"ef": ef})
                rec = {"ef": ef, "captions_scored": len(sample_idx), "loadavg_start": os.getloadavg()}
                rec = sc.measure_engine(rec, "milvus", cfg, pool, sample, sample_idx, budget, others, cache, opts)
                results["samples"].append(rec)
                Path(args.out).write_text(json.dumps(results, indent=1, default=str))
        del pool
        settings = [(e, r, int(n)) for e in efs for r in reranks for n in args.searchers.split(",")]
        envs = [{} if v.strip() in ("", "base") else dict(kv.split("=", 1) for kv in v.split(",")) for v in args.envs.split(";")]
        for ef, rerank, searchers, env in [s + (e,) for s in settings for _ in range(args.repeat) for e in envs]:
            toml = Path(tempfile.mkdtemp()) / "hnsel.toml"
            toml.write_text(f'[store]\nuri = "{uri}"\nnamespace = "{namespace}"\nindex_type = "HNSW"\n[store.search_params]\nef = {ef}\n')
            for pid in others:
                sc._reset_peak(pid)
            load = os.getloadavg()
            t0 = time.perf_counter()
            run = subprocess.run(["/usr/bin/time", "-v", hnsel, "select", "--config", str(toml), "--strategy", "hardneg", "--budget", str(budget),
                                  "--no-record", "--engine", "milvus", "--rerank", str(rerank), "--searchers", str(searchers), "--json"], capture_output=True, text=True,
                                 env={**os.environ, **env})
            wall = time.perf_counter() - t0
            summary = json.loads(run.stdout) if run.returncode == 0 else {}
            rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr)
            stats = summary.get("stats", {})
            entry = {"ef": ef, "rerank": rerank, "searchers": searchers, "env": env, "reranked": stats.get("reranked"), "rerank_found": stats.get("rerank_found"), "wall_s": wall,
                     "seconds": summary.get("seconds"), "client_peak_rss": int(rss.group(1)) * 1024 if rss else None,
                     "server_peak_rss": sum(sc._status(p, "VmHWM") for p in others) if others else None, "loadavg_start": load,
                     "anchors": stats.get("anchors"), "candidates": stats.get("candidates"),
                     "deepened": stats.get("deepened"), "timings_s": summary.get("timings_s"), "returncode": run.returncode, "stderr_tail": run.stderr[-500:] if run.returncode else "",
                     "picks": [p["id"] for p in summary.get("picks", [])]}
            results["runs"].append(entry)
            print(f"ef {ef}, rerank {rerank}, searchers {searchers}, env {env}: {entry['seconds']} s (wall {wall:.1f}), client peak {entry['client_peak_rss']}, "
                  f"server peak {entry['server_peak_rss']}, anchors {entry['anchors']}, candidates {entry['candidates']}, load {load[0]:.1f}\n"
                  f"  time by phase {entry['timings_s']}", flush=True)
            Path(args.out).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
