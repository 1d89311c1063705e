"""Soak test of hnsel's Milvus connection (issue 24): hold a store for --minutes with idle gaps and bursts of work.

One ``Store`` is held for the whole run (as ``hnsel simulate`` holds its process's connection) and a second one is
opened and closed around each burst (as each workflow step opens its own). Gaps are drawn from --seed: short ones,
and long ones past the 30 s after which pymilvus health-checks a reused connection and past the strikes a default
gRPC server allows for idle pings. A burst upserts a batch, reads it back by id, searches, counts and pages through
the collection. Every operation's outcome is recorded; any failure, and any GOAWAY gRPC logs on stderr, is counted.

    python benchmarks/soak_connection.py --uri /tmp/soak/lite.db --minutes 20 --out soak-lite.json
    python benchmarks/soak_connection.py --uri http://127.0.0.1:19530 --minutes 20 --out soak-server.json
    python benchmarks/soak_connection.py ... --pymilvus-keepalive     # the control: pymilvus's 10 s keepalive pings

Exit code 0 when no operation failed and no GOAWAY was logged, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hnsel.config import StoreConfig  # noqa: E402
from hnsel.store import connection, open_store  # noqa: E402

DIM = 64


def _capture_stderr() -> Path:
    """gRPC's C core logs GOAWAY on file descriptor 2: send it to a file this script reads back."""
    path = Path(tempfile.mkstemp(prefix="soak-stderr-", suffix=".log")[1])
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    os.dup2(fd, 2)
    return path


def _burst(store, rng: np.random.Generator, batch: int, step: int) -> dict:
    """One burst of the work a round does; returns its counts (raises on any failure)."""
    ids = [f"s{step:05d}-{i:05d}" for i in range(batch)]
    vectors = rng.normal(size=(batch, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store.upsert("images", {"id": ids, "vector": vectors, "pool": ["unpaired"] * batch, "uri": [""] * batch})
    back = store.get("images", ids[:: max(1, batch // 50)], ["id"])
    hits = store.search("images", vectors[:32], 10, "")
    total = store.count("images")
    paged = sum(len(rows) for rows in store.iter_rows("images", "", ("id",), batch_size=2048))
    return {"written": batch, "read_back": len(back), "searched": len(hits), "count": total, "paged": paged}


def _gap(rng: np.random.Generator, long_share: float) -> float:
    return float(rng.uniform(35, 150) if rng.random() < long_share else rng.uniform(0.5, 10))


def soak(uri: str, minutes: float, seed: int, batch: int, long_share: float) -> dict:
    rng = np.random.default_rng(seed)
    config = StoreConfig(uri=uri, namespace=f"soak_{uuid.uuid4().hex[:8]}")
    events: list[dict] = []
    start = time.monotonic()
    held = open_store(config)  # the connection held for the whole run
    held.ensure_collections(DIM)
    step = 0
    while time.monotonic() - start < minutes * 60:
        gap = min(_gap(rng, long_share), max(0.0, minutes * 60 - (time.monotonic() - start)))
        time.sleep(gap)
        step += 1
        event = {"step": step, "t_s": round(time.monotonic() - start, 1), "idle_before_s": round(gap, 1)}
        t0 = time.monotonic()
        try:
            event.update(_burst(held, rng, batch, step))
            with open_store(config) as fresh:  # a workflow step's own connection, opened after the gap
                event["fresh_count"] = fresh.count("images")
            event["ok"] = True
        except Exception as exc:  # recorded, not raised: the soak counts every failure
            event.update(ok=False, error=" ".join(str(exc).split())[:300])
        event["work_s"] = round(time.monotonic() - t0, 2)
        events.append(event)
        print(json.dumps(event), file=sys.stdout, flush=True)
    held.close()
    return {"uri": uri, "namespace": config.namespace, "minutes": minutes, "seed": seed, "steps": step, "events": events,
            "failures": sum(not e["ok"] for e in events), "longest_gap_s": max((e["idle_before_s"] for e in events), default=0.0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uri", required=True, help="a Milvus Lite file (.db) or a server URI")
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=2000, help="rows upserted per burst")
    parser.add_argument("--long-share", type=float, default=0.4, help="share of gaps drawn from 35-150 s (else 0.5-10 s)")
    parser.add_argument("--pymilvus-keepalive", action="store_true", help="the control: connect with pymilvus's own keepalive (10 s, idle pings)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.pymilvus_keepalive:
        connection.GRPC_OPTIONS.clear()  # hnsel's options withdrawn: pymilvus's defaults apply
    log = _capture_stderr()
    t0 = time.time()
    result = soak(args.uri, args.minutes, args.seed, args.batch, args.long_share)
    grpc_log = log.read_text(errors="replace")
    result.update(keepalive="pymilvus defaults" if args.pymilvus_keepalive else "hnsel (store/connection.py)",
                  goaway=grpc_log.count("GOAWAY"), too_many_pings=grpc_log.count("too_many_pings"), wall_s=round(time.time() - t0, 1),
                  load_average=os.getloadavg())
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "events"}), flush=True)
    return 0 if result["failures"] == 0 and result["goaway"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
