"""The time-versus-agreement curve at full scale: load ``select_scale.py``'s pool into a fresh Milvus server (HNSW),
then time ``hnsel select`` (milvus engine, every caption) for each ``--ef``, as a user runs it (a subprocess; wall time
and peak RSS from ``/usr/bin/time -v``). Agreement per ef comes from the sample runs (``select_attach.py``).

    python benchmarks/select_full_ef.py --size 1000000 --ef 64,256,1024
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import select_scale as sc  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1_000_000)
    ap.add_argument("--ef", default="64,256,1024")
    ap.add_argument("--out", default="benchmarks/results/select_full_ef.json")
    args = ap.parse_args()
    n_paired = max(2, int(round(0.15 * args.size)) // sc.CAPTIONS_PER_IMAGE)
    pool = sc.make_pool(n_paired=n_paired, n_unpaired=args.size, captions_per_image=sc.CAPTIONS_PER_IMAGE, dim=sc.DIM,
                        n_coarse=50, fine_per_coarse=20, seed=0)
    budget = max(10, args.size // 100)
    hnsel = str(Path(sys.executable).with_name("hnsel"))
    results = {"size": args.size, "captions": len(pool.text_ids), "budget": budget, "runs": []}
    with sc.milvus_server() as (uri, _):
        namespace = f"full{args.size}"
        config = sc.StoreConfig(uri=uri, namespace=namespace, index_type="HNSW", index_params=sc.HNSW_PARAMS, search_params=sc.HNSW_SEARCH)
        results["ingest"] = sc.ingest_columnar(config, pool)
        results["index_build"] = sc.wait_index(config, 2400)
        print("loaded", results["ingest"]["rows"], "rows; index", results["index_build"], flush=True)
        del pool
        for ef in [int(x) for x in args.ef.split(",")]:
            toml = Path(tempfile.mkdtemp()) / "hnsel.toml"
            toml.write_text(f'[store]\nuri = "{uri}"\nnamespace = "{namespace}"\nindex_type = "HNSW"\n[store.search_params]\nef = {ef}\n')
            t0 = time.perf_counter()
            run = subprocess.run(["/usr/bin/time", "-v", hnsel, "select", "--config", str(toml), "--strategy", "hardneg", "--budget", str(budget),
                                  "--no-record", "--engine", "milvus", "--json"], capture_output=True, text=True)
            wall = time.perf_counter() - t0
            summary = json.loads(run.stdout) if run.returncode == 0 else {}
            rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr)
            entry = {"ef": ef, "wall_s": wall, "seconds": summary.get("seconds"), "client_peak_rss": int(rss.group(1)) * 1024 if rss else None,
                     "anchors": summary.get("stats", {}).get("anchors"), "candidates": summary.get("stats", {}).get("candidates"),
                     "deepened": summary.get("stats", {}).get("deepened"), "returncode": run.returncode,
                     "picks": [p["id"] for p in summary.get("picks", [])]}
            results["runs"].append(entry)
            print(f"ef {ef}: {entry['seconds']} s (wall {wall:.1f}), client peak {entry['client_peak_rss']}, anchors {entry['anchors']}, "
                  f"candidates {entry['candidates']}", flush=True)
            Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
