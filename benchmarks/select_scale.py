"""Selection scale: hnsel's hard-negative selection on Milvus against the exact dense numpy computation.

For each pool size: a clustered synthetic pool (``hnsel.data.synthetic.make_pool``, dim 512, 5 captions per
paired image, ``--caption-ratio`` captions per unpaired image), ingested through ``Store.upsert`` into
Milvus Lite (FLAT) and/or a ``milvus-server`` 2.3.5 this script starts and stops itself (FLAT, HNSW).
Then ``hardneg`` (Top-1, Surplus, full batch) is scored exactly as ``HardNegative.select`` does it
(``build_problem`` -> ``hardneg_scores`` -> ``rank_with_fill``) with timers wrapped around its pieces,
and ``dense_hardneg_scores`` (blockwise float32 numpy products, exact; its GFLOP/s are recorded) gives the
reference scores and selection. ``--engine milvus`` (default) scores through Milvus searches; ``--engine exact``
through the exact engine (``hnsel/strategies/exact.py``: the candidates streamed once from the store, blockwise
torch products on ``--device``, CUDA when available); ``--engine milvus,exact`` measures both. Every hnsel time
is also reported as a speed-up against the dense baseline of the same run (dense s / hnsel s, on the same
captions).

Sampling: ``--sample-captions N`` (all backends) and ``--lite-sample N`` (Lite only; Lite FLAT costs a
constant time per query) score only N random paired captions (seeded). hnsel and the dense reference
then solve the same sub-problem (thresholds still use every paired image), so agreement is exact to
check; the per-caption parts of the wall time are scaled by captions/N and marked "extrapolated".

    python benchmarks/select_scale.py --sizes 10000 --backends lite,server --index FLAT,HNSW
    python benchmarks/select_scale.py --sizes 100000 --lite-sample 1000
    python benchmarks/select_scale.py --sizes 1000000 --backends server --sample-captions 2000
    python benchmarks/select_scale.py --sizes 5000 --backends lite --engine milvus,exact --no-write

Results accumulate in benchmarks/results/select_scale.json (one record per size/backend/index/engine); the
"## Selection scale" table of BENCHMARKS.md is rebuilt from all records (``--no-write`` skips both).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from hnsel.config import StoreConfig  # noqa: E402
from hnsel.data.synthetic import make_pool  # noqa: E402
from hnsel.store import build_problem, open_store  # noqa: E402
from hnsel.strategies import AnchorChunk, dense, exact, hardneg, thresholds  # noqa: E402
from _sections import replace_section  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "select_scale.json"
SECTION = "## Selection scale"
DIM = 512
CAPTIONS_PER_IMAGE = 5
HNSW_PARAMS = {"M": 16, "efConstruction": 100}
HNSW_SEARCH = {"ef": 64}
TMP_DIRS: list[Path] = []


# --- memory ---------------------------------------------------------------------------------------
def _status(pid: int | str, key: str) -> int:
    """A /proc/PID/status value in bytes (VmHWM: peak RSS since start or the last reset)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _reset_peak(pid: int | str) -> None:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # Linux >= 4.0: VmHWM := VmRSS
    except OSError:
        pass


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


class Peak:
    """Peak RSS of this process and of ``others`` (a Milvus process) over a ``with`` block."""

    def __init__(self, others: list[int]):
        self.others = others

    def __enter__(self):
        gc.collect()
        for pid in ["self", *self.others]:
            _reset_peak(pid)
        self.base = _status("self", "VmRSS")
        return self

    def __exit__(self, *exc):
        self.client = _status("self", "VmHWM")
        self.server = sum(_status(p, "VmHWM") for p in self.others)


# --- timing hooks: wrappers around hnsel's own functions, no change to their behaviour ------------
class Timers:
    def __init__(self):
        self.t: dict[str, float] = {}
        self.n: dict[str, int] = {}

    @contextmanager
    def time(self, key: str, count: int = 1):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.t[key] = self.t.get(key, 0.0) + time.perf_counter() - start
            self.n[key] = self.n.get(key, 0) + count


def _wrap(module, name: str, timers: Timers, key: str):
    original = getattr(module, name)

    def timed(*args, **kwargs):
        with timers.time(key):
            return original(*args, **kwargs)

    setattr(module, name, timed)
    return original


def instrument(store, problem, timers: Timers, sample: set[str] | None):
    """Time Milvus calls (raw client vs result parsing), searches per pool, the anchor stream; filter anchors."""
    client_search = store.client.search

    def raw_search(*args, **kwargs):
        with timers.time("milvus_call", len(kwargs.get("data", []))):
            return client_search(*args, **kwargs)

    store.client.search = raw_search
    index = problem.index
    search, range_search = index.search, index.range_search

    def timed_search(vectors, limit, pool):
        with timers.time(f"search_{pool}", len(vectors)):
            return search(vectors, limit, pool)

    def timed_range(vectors, radius, limit, pool, exclude=()):
        with timers.time("range_search", len(vectors)):
            return range_search(vectors, radius, limit, pool, exclude)

    index.search, index.range_search = timed_search, timed_range
    stream = problem.anchors

    def anchors(chunk_size):
        it = stream(chunk_size * (1 if sample is None else 1))
        while True:
            with timers.time("anchor_stream"):
                chunk = next(it, None)
                if chunk is not None and sample is not None:
                    keep = np.array([x in sample for x in chunk.ids], dtype=bool)
                    chunk = AnchorChunk(chunk.ids[keep], chunk.vectors[keep], tuple(p for p, k in zip(chunk.positives, keep) if k),
                                        None if chunk.uncertainty is None else chunk.uncertainty[keep])
            if chunk is None:
                return
            if len(chunk.ids):
                yield chunk

    problem.anchors = anchors
    if sample is not None:
        problem.n_anchors = len(sample)


# --- Milvus server ----------------------------------------------------------------------------------
def _conftest():
    spec = importlib.util.spec_from_file_location("hnsel_tests_conftest", ROOT / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextmanager
def milvus_server():
    """A milvus-server on free ports (the tests' launcher), stopped with SIGINT, its data dir removed."""
    ct = _conftest()
    exe = str(Path(sys.executable).with_name("milvus-server")) if Path(sys.executable).with_name("milvus-server").exists() else shutil.which("milvus-server")
    base = Path(tempfile.mkdtemp(prefix="hnsel-bench-milvus-"))
    proc = ct._launch(exe, base / "data", base / "milvus-server.log")
    try:
        started = time.perf_counter()
        uri, problem = ct._wait_ready(proc, base / "data")
        if not uri:
            raise SystemExit(f"milvus-server did not start: {problem}\n{ct._log_tail(base)}")
        milvus = [p for p in _descendants(proc.pid) if "milvus" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")
                  and b"run" in Path(f"/proc/{p}/cmdline").read_bytes()]
        print(f"server {uri} ready in {time.perf_counter() - started:.1f} s, milvus pids {milvus}", flush=True)
        yield uri, milvus
    finally:
        ct._stop_server(proc)
        shutil.rmtree(base, ignore_errors=True)


# --- one measurement --------------------------------------------------------------------------------
def ingest(config: StoreConfig, pool, batch: int = 50_000) -> dict:
    with open_store(config) as store:
        store.ensure_collections(DIM)
        t0 = time.perf_counter()
        n = len(pool.image_ids)
        for s in range(0, n, batch):
            e = min(n, s + batch)
            store.upsert("images", {"id": pool.image_ids[s:e], "vector": pool.image_vectors[s:e], "pool": pool.image_pool[s:e],
                                    "uri": [""] * (e - s)})
        t_images = time.perf_counter() - t0
        t0 = time.perf_counter()
        m = len(pool.text_ids)
        for s in range(0, m, batch):
            e = min(m, s + batch)
            store.upsert("texts", {"id": pool.text_ids[s:e], "vector": pool.text_vectors[s:e], "pool": ["paired"] * (e - s),
                                   "image_id": pool.text_image_ids[s:e], "text": [""] * (e - s)})
        t_texts = time.perf_counter() - t0
    return {"images_s": t_images, "texts_s": t_texts, "rows": n + m, "rows_per_s": (n + m) / (t_images + t_texts)}


def ingest_columnar(config: StoreConfig, pool, batch: int = 7_000) -> dict:
    """Bulk load for large pools: hnsel's schema (``ensure_collections``), rows sent as columns by the pymilvus
    ORM. Skips ``Store.upsert``'s per-row dicts and round look-ups; not what ``hnsel ingest`` does."""
    from pymilvus import Collection, connections

    with open_store(config) as store:
        store.ensure_collections(DIM)
        names = {kind: store.name(kind) for kind in ("images", "texts")}
    alias = f"bench{os.getpid()}"
    connections.connect(alias, uri=config.uri)
    out = {}
    try:
        for kind, cols in (("images", lambda s, e: [pool.image_ids[s:e].tolist(), pool.image_vectors[s:e], pool.image_pool[s:e].tolist(), [""] * (e - s), [-1] * (e - s)]),
                           ("texts", lambda s, e: [pool.text_ids[s:e].tolist(), pool.text_vectors[s:e], ["paired"] * (e - s), pool.text_image_ids[s:e].tolist(), [""] * (e - s), [-1] * (e - s)])):
            collection = Collection(names[kind], using=alias)
            order = [f.name for f in collection.schema.fields]
            assert order[:3] == ["id", "vector", "pool"], order
            n = len(pool.image_ids) if kind == "images" else len(pool.text_ids)
            t0 = time.perf_counter()
            for s in range(0, n, batch):
                collection.insert(cols(s, min(n, s + batch)))
            out[f"{kind}_s"] = time.perf_counter() - t0
    finally:
        connections.disconnect(alias)
    rows = len(pool.image_ids) + len(pool.text_ids)
    return dict(out, rows=rows, rows_per_s=rows / (out["images_s"] + out["texts_s"]), loader="columnar (pymilvus ORM)")


def wait_index(config: StoreConfig, timeout: float) -> dict:
    """Flush, then poll the images index until every row is indexed (server only)."""
    with open_store(config) as store:
        name = store.name("images")
        t0 = time.perf_counter()
        try:
            store.client.flush(name)
        except Exception as exc:  # noqa: BLE001
            print("flush failed:", exc)
        flushed = time.perf_counter() - t0
        info = {}
        while time.perf_counter() - t0 < timeout:
            info = store.client.describe_index(name, index_name=store.fields("images").vector)
            total, done = int(info.get("total_rows", 0)), int(info.get("indexed_rows", 0))
            if total and done >= total and int(info.get("pending_index_rows", 0)) == 0:
                break
            time.sleep(2)
        took = time.perf_counter() - t0
        return {"flush_s": flushed, "index_s": took, "indexed_rows": int(info.get("indexed_rows", 0)),
                "total_rows": int(info.get("total_rows", 0)), "complete": int(info.get("indexed_rows", 0)) >= int(info.get("total_rows", 1))}


def time_candidate_stream(problem, timers: Timers) -> None:
    """Time the candidates' stream from the store (the exact engine's one pass over the pool) apart from the products."""
    if problem.vectors is None:
        return
    stream = problem.vectors.candidate_batches

    def timed(batch_size):
        it = stream(batch_size)
        while True:
            with timers.time("candidate_stream"):
                batch = next(it, None)
            if batch is None:
                return
            yield batch

    problem.vectors.candidate_batches = timed


def run_hnsel(config: StoreConfig, budget: int, seed: int, sample: set[str] | None, others: list[int], engine: str = "milvus",
              device: str | None = None, rerank: float = 0.0, searchers: int = 2) -> dict:
    """One selection as ``HardNegative.select`` runs it (``rerank``: its factor of the budget, ``searchers``: search requests
    in flight; milvus engine), timed by parts."""
    timers = Timers()
    originals = {(module, name): _wrap(module, name, timers, key) for module, name, key in
                 ((thresholds, "full_thresholds", "thresholds"), (hardneg, "_violators", "violators"), (hardneg, "_accumulate", "accumulate"))}
    search_scores = {}
    rerank_exact = hardneg.rerank_exact

    def keep_search_scores(problem, scores, *args, **kwargs):  # the scores before the re-rank, for the re-rank curve
        search_scores["scores"] = scores.copy()
        with timers.time("rerank"):
            return rerank_exact(problem, scores, *args, **kwargs)

    hardneg.rerank_exact = keep_search_scores
    score_candidates = _wrap(exact, "score_candidates", timers, "exact_scoring")
    load = vars(thresholds.PairedSide)["load"]
    _wrap(thresholds.PairedSide, "load", timers, "paired_load")
    try:
        with Peak(others) as peak:
            t0 = time.perf_counter()
            with open_store(config) as store:
                with timers.time("list_candidates"):
                    problem = build_problem(store, "image")
                problem.engine = engine
                instrument(store, problem, timers, sample)
                time_candidate_stream(problem, timers)
                with timers.time("hardneg_scores"):
                    scores, counts, stats = hardneg.hardneg_scores(problem, device=device, rerank=int(np.ceil(rerank * budget)), searchers=searchers)
                with timers.time("rank"):
                    sel = hardneg.rank_with_fill(problem.candidate_ids, scores, counts, budget, np.random.default_rng(seed), "hardneg", {}, stats)
            wall = time.perf_counter() - t0
    finally:
        for (module, name), fn in originals.items():
            setattr(module, name, fn)
        exact.score_candidates = score_candidates
        thresholds.PairedSide.load = load
        hardneg.rerank_exact = rerank_exact
    t, n = timers.t, timers.n
    split = {
        "list_candidates": t.get("list_candidates", 0.0),
        "anchor_stream": t.get("anchor_stream", 0.0),
        "thresholds": t.get("paired_load", 0.0) + t.get("thresholds", 0.0),  # paired side into memory + xi (search or matmul)
        "candidate_search": t.get("search_candidates", 0.0) + t.get("range_search", 0.0),
        "violators_python": t.get("violators", 0.0) - t.get("search_candidates", 0.0) - t.get("range_search", 0.0),
        "aggregation": t.get("accumulate", 0.0),
        "rerank": t.get("rerank", 0.0),
        "rank": t.get("rank", 0.0),
    }
    if engine == "exact":  # no searches: one pass over the candidates from the store, then products on the device
        split = {k: split[k] for k in ("list_candidates", "anchor_stream", "thresholds", "rank")}
        split["candidate_stream"] = t.get("candidate_stream", 0.0)
        split["products"] = t.get("exact_scoring", 0.0) - split["candidate_stream"]
    split["other"] = wall - sum(split.values())
    searches = t.get("search_paired", 0.0) + t.get("search_candidates", 0.0) + t.get("range_search", 0.0)
    return {"engine": engine, "device": stats.get("device"), "wall_s": wall, "split_s": split, "thresholds_mode": stats.get("thresholds", "index search"),
            "threshold_search_s": t.get("search_paired", 0.0), "milvus_call_s": t.get("milvus_call", 0.0), "result_parsing_s": searches - t.get("milvus_call", 0.0),
            "queries": {k: n.get(k, 0) for k in ("search_paired", "search_candidates", "range_search")}, "stats": stats,
            "client_peak_rss": peak.client, "client_base_rss": peak.base, "server_peak_rss": peak.server,
            "ids": sel.ids.tolist(), "merit": int(sel.stats["picked_on_merit"]), "scores": scores, "counts": counts,
            "candidate_ids": problem.candidate_ids, "search_scores": search_scores.get("scores", scores), "rerank": rerank}


def extrapolate(result: dict, factor: float) -> float:
    """Fixed parts as measured; per-caption parts (searches, thresholds, aggregation, products) times ``factor``."""
    s = result["split_s"]
    fixed = s["list_candidates"] + s["anchor_stream"] + s["rank"] + s["other"] + s.get("candidate_stream", 0.0)
    return fixed + factor * (result["wall_s"] - fixed)


def run_dense(pool, sample_idx: np.ndarray, budget: int, seed: int, candidate_ids: np.ndarray) -> dict:
    paired = pool.image_pool == "paired"
    cand = np.flatnonzero(~paired)
    if not np.array_equal(pool.image_ids[cand], candidate_ids):  # score exactly the candidates the store listed, in its order
        row = {x: i for i, x in enumerate(pool.image_ids)}
        listed = np.array([row[x] for x in candidate_ids], dtype=np.int64)
        print(f"  note: the store listed {len(candidate_ids)} of the pool's {len(cand)} candidates "
              f"({len(set(cand) - set(listed))} missing); the dense baseline scores the listed ones", flush=True)
        cand = listed
    positives = [frozenset([x]) for x in pool.text_image_ids[sample_idx]]
    anchors, negatives, candidates = pool.text_vectors[sample_idx], pool.image_vectors[paired], pool.image_vectors[cand]
    with Peak([]) as peak:
        t0 = time.perf_counter()
        scores, counts = dense.dense_hardneg_scores(anchors, positives, pool.image_ids[paired], negatives, candidates)
        sel = hardneg.rank_with_fill(candidate_ids, scores, counts, budget, np.random.default_rng(seed), "dense", {}, {})
        wall = time.perf_counter() - t0
    flop = 2.0 * len(anchors) * (len(negatives) + len(candidates)) * anchors.shape[1]  # thresholds + scores, multiply-add = 2
    print(f"  dense {wall:.2f} s: {flop / 1e9:.1f} GFLOP at {flop / wall / 1e9:.1f} GFLOP/s", flush=True)
    return {"wall_s": wall, "flop": flop, "gflops": flop / wall / 1e9, "peak_rss": peak.client, "base_rss": peak.base,
            "ids": sel.ids.tolist(), "merit": int(sel.stats["picked_on_merit"]), "scores": scores, "counts": counts}


def rerank_curve(h: dict, d: dict, budget: int, factors: list[float], seed: int) -> list[dict]:
    """Agreement with the dense picks if the best ``factor x budget`` search scores were rescored exactly, for each factor.

    Computed from the same run's search scores (before its own re-rank) and the dense scores of the same captions:
    the exact re-rank gives a shortlisted candidate exactly its dense score (``tests/test_hardneg.py``), so this is the
    pick list each factor would produce without searching again. The run's own factor is measured (``agreement``).
    """
    ids, search = h["candidate_ids"], h["search_scores"]
    order = np.lexsort((ids.astype(str), -search))
    positive = int((search > 0).sum())
    out = []
    for factor in factors:
        scores = search.copy()
        short = order[:min(positive, int(np.ceil(factor * budget)))]
        scores[short] = d["scores"][short]
        sel = hardneg.rank_with_fill(ids, scores, d["counts"], budget, np.random.default_rng(seed), "curve", {}, {})
        a, b = set(sel.ids.tolist()), set(d["ids"])
        out.append({"rerank": factor, "shortlist": int(len(short)), "jaccard": len(a & b) / len(a | b),
                    "identical_order": sel.ids.tolist() == d["ids"]})
    return out


def agreement(h: dict, d: dict, budget: int) -> dict:
    a, b = set(h["ids"]), set(d["ids"])
    ha, da = set(h["ids"][:h["merit"]]), set(d["ids"][:d["merit"]])
    both = (h["counts"] > 0) & (d["counts"] > 0)
    return {"jaccard": len(a & b) / len(a | b), "overlap": len(a & b) / budget,
            "merit_jaccard": len(ha & da) / max(1, len(ha | da)), "merit_hnsel": h["merit"], "merit_dense": d["merit"],
            "pair_recall": float(np.minimum(h["counts"], d["counts"]).sum() / max(1, d["counts"].sum())),
            "violations_hnsel": int(h["counts"].sum()), "violations_dense": int(d["counts"].sum()),
            "max_abs_score_diff": float(np.max(np.abs(h["scores"] - d["scores"]))) if len(h["scores"]) else 0.0,
            "identical_order": h["ids"] == d["ids"], "both_scored": int(both.sum())}


def measure_size(size: int, args, server, done: list[dict]) -> list[dict]:
    n_captions = args.captions or int(round(args.caption_ratio * size))
    n_paired = max(2, n_captions // CAPTIONS_PER_IMAGE)
    t0 = time.perf_counter()
    pool = make_pool(n_paired=n_paired, n_unpaired=size, captions_per_image=CAPTIONS_PER_IMAGE, dim=DIM,
                     n_coarse=args.coarse, fine_per_coarse=args.fine, seed=args.seed)
    print(f"size {size}: {n_paired} paired images, {len(pool.text_ids)} captions; generated in {time.perf_counter() - t0:.1f} s", flush=True)
    budget = max(10, size // 100)
    rng = np.random.default_rng(args.seed)
    records, dense_cache = [], {}
    for backend in args.backends:
        for index in args.index:
            if backend == "lite" and index != "FLAT":
                continue  # Milvus Lite: FLAT is what hnsel uses there
            sample_n = args.sample.get(f"{backend}:{index}") or (args.lite_sample if backend == "lite" else 0) or args.sample_captions
            sample_idx = np.sort(rng.permutation(len(pool.text_ids))[:sample_n]) if sample_n and sample_n < len(pool.text_ids) else np.arange(len(pool.text_ids))
            rng = np.random.default_rng(args.seed)  # every run with the same N gets the same sample
            sample = set(pool.text_ids[sample_idx].tolist()) if len(sample_idx) < len(pool.text_ids) else None
            tmp = Path(tempfile.mkdtemp(prefix="hnsel-bench-lite-"))
            TMP_DIRS.append(tmp)  # removed again at exit: Milvus Lite may still write its file after close
            try:
                if backend == "lite":
                    uri, others = str(tmp / "bench.db"), []
                else:
                    uri, others = server()
                config = StoreConfig(uri=uri, namespace=f"b{size}_{index.lower()}_{int(time.time())}", index_type=index,
                                     index_params=HNSW_PARAMS if index == "HNSW" else {}, search_params=HNSW_SEARCH if index == "HNSW" else {})
                rec = {"size": size, "paired_images": n_paired, "captions": len(pool.text_ids), "captions_scored": len(sample_idx),
                       "backend": backend, "index": index, "budget": budget, "dim": DIM, "loadavg_start": os.getloadavg()}
                with Peak(others) as p:
                    rec["ingest"] = ingest_columnar(config, pool) if args.loader == "columnar" and backend == "server" else ingest(config, pool)
                rec["ingest"]["server_peak_rss"] = p.server
                print(f"  {backend} {index}: ingest {rec['ingest']['rows']} rows in {rec['ingest']['images_s'] + rec['ingest']['texts_s']:.1f} s", flush=True)
                if backend == "lite" and not others:
                    others = [p for p in _descendants(os.getpid()) if "milvus" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")]
                if backend == "server":
                    rec["index_build"] = wait_index(config, args.index_timeout)
                    print(f"  index {rec['index_build']}", flush=True)
                    if not rec["index_build"]["complete"]:
                        rec["note"] = "index build did not finish within --index-timeout; selection not run"
                        d = run_dense(pool, sample_idx, budget, args.seed, pool.image_ids[pool.image_pool != "paired"])
                        rec["dense"] = {k: v for k, v in d.items() if k not in ("ids", "scores", "counts")}
                        rec["dense"]["wall_full_s"] = d["wall_s"] * len(pool.text_ids) / len(sample_idx)
                        rec["dense"]["extrapolated"] = len(sample_idx) < len(pool.text_ids)
                        print(f"  dense {d['wall_s']:.1f} s (full {rec['dense']['wall_full_s']:.0f})", flush=True)
                        records.append(rec)
                        continue
                for engine in args.engine:
                    records.append(measure_engine(dict(rec, engine=engine), engine, config, pool, sample, sample_idx, budget,
                                                  others, dense_cache, args))
                    if not args.no_write:
                        save(done + records, args)  # a later failure or interruption keeps what was measured
                if backend == "server":
                    with open_store(config) as store:
                        for kind in ("images", "texts", "meta"):
                            store.client.drop_collection(store.name(kind))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return records


def measure_engine(rec: dict, engine: str, config: StoreConfig, pool, sample: set[str] | None, sample_idx: np.ndarray, budget: int,
                   others: list[int], dense_cache: dict, args) -> dict:
    """hnsel's selection with one engine, the dense baseline on the same captions (once per sample), and the speed-up."""
    h = run_hnsel(config, budget, args.seed, sample, others, engine, args.device, args.rerank if engine == "milvus" else 0.0, args.searchers)
    key = len(sample_idx)
    if key not in dense_cache:
        dense_cache[key] = run_dense(pool, sample_idx, budget, args.seed, h["candidate_ids"])
    d = dense_cache[key]
    factor = len(pool.text_ids) / len(sample_idx)
    rec["loadavg_end"] = os.getloadavg()
    rec["hnsel"] = {k: v for k, v in h.items() if k not in ("ids", "scores", "counts", "candidate_ids")}
    rec["hnsel"]["wall_full_s"] = extrapolate(h, factor)
    rec["hnsel"]["extrapolated"] = factor > 1
    rec["dense"] = {k: v for k, v in d.items() if k not in ("ids", "scores", "counts")}
    rec["dense"]["wall_full_s"] = d["wall_s"] * factor
    rec["dense"]["extrapolated"] = factor > 1
    rec["agreement"] = agreement(h, d, budget)
    rec["rerank"] = h["rerank"]
    if engine == "milvus" and args.rerank_curve:
        rec["rerank_curve"] = rerank_curve(h, d, budget, args.rerank_curve, args.seed)
        print("  re-rank curve (factor: Jaccard) " + ", ".join(f"{c['rerank']}: {c['jaccard']:.4f}" for c in rec["rerank_curve"]), flush=True)
    rec["speedup_vs_dense"] = d["wall_s"] / h["wall_s"]  # measured on the same captions
    if engine == "exact":  # the products alone: captions x candidates x dim multiply-adds
        rec["torch_import_s"] = args.torch_import_s  # once per process, before any timer: not in the select time
        products = 2.0 * len(sample_idx) * len(h["candidate_ids"]) * DIM
        rec["hnsel"]["products_gflops"] = products / max(h["split_s"]["products"], 1e-9) / 1e9
    if args.full_hnsel and factor > 1 and (engine == "milvus" or h.get("device") == "cuda"):
        # hnsel's time on every caption, measured rather than scaled (the exact engine on a CPU is measured on the sample
        # only: at 1M x 150k x 512 its products alone are 1.5e14 flop, about 25 min at the 1e11 flop/s of 2 cores)
        hf = run_hnsel(config, budget, args.seed, None, others, engine, args.device, h["rerank"], args.searchers)
        rec["hnsel_full"] = {k: hf[k] for k in ("wall_s", "split_s", "stats", "queries", "client_peak_rss", "server_peak_rss")}
        rec["hnsel_full"]["overlap_with_sample_run"] = len(set(hf["ids"]) & set(h["ids"])) / budget
        rec["hnsel_full"]["speedup_vs_dense"] = rec["dense"]["wall_full_s"] / hf["wall_s"]  # against the extrapolated dense time
        print(f"  hnsel on all {len(pool.text_ids)} captions: {hf['wall_s']:.1f} s", flush=True)
    where = f"{engine} engine" + (f" on {h['device']}" if h.get("device") else "")
    print(f"  hnsel ({where}) {h['wall_s']:.2f} s (full {rec['hnsel']['wall_full_s']:.1f}), dense {d['wall_s']:.2f} s "
          f"({d['gflops']:.1f} GFLOP/s): {rec['speedup_vs_dense']:.2f}x the dense baseline; agreement {rec['agreement']}", flush=True)
    print(f"  split {json.dumps({k: round(v, 2) for k, v in h['split_s'].items()})}"
          + (f"; products at {rec['hnsel']['products_gflops']:.1f} GFLOP/s" if engine == "exact" else ""), flush=True)
    return rec


# --- report -------------------------------------------------------------------------------------------
def machine() -> dict:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")), "?")
    mem = _status("self", "VmRSS") and int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    from importlib.metadata import version

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"nproc": os.cpu_count(), "ram_bytes": mem, "cpu": cpu, "gpu": gpu, "python": platform.python_version(), "numpy": np.__version__,
            "torch": torch.__version__, "pymilvus": version("pymilvus"), "milvus_lite": version("milvus-lite"), "milvus_server": version("milvus")}


def _gb(x: float) -> str:
    return f"{x / 2**30:.2f}"


def table(records: list[dict]) -> str:
    head = ("| pool | captions (scored) | backend | index | engine | ingest s (rows/s) | index build s | hnsel select s (x dense) | thresholds | "
            "split: list / stream / thresholds / cand. search / parse / python | client peak GB | Milvus peak GB | "
            "dense s (GFLOP/s) | dense peak GB | Jaccard | violating-pair recall |\n|" + "---|" * 16)
    rows = [head]
    for r in sorted(records, key=lambda r: (r["size"], r["backend"], r["index"], r.get("engine", "milvus"))):
        ing = r["ingest"]
        ib = r.get("index_build")
        build = f"{ib['index_s']:.0f}" + ("" if ib["complete"] else f" (incomplete: {ib['indexed_rows']}/{ib['total_rows']})") if ib else "-"
        ingest_s = f"{ing['images_s'] + ing['texts_s']:.0f} ({ing['rows_per_s']:.0f})" + (" columnar bulk" if ing.get("loader") else "")
        if "hnsel" not in r:
            d = r.get("dense")
            dense = (f"{d['wall_full_s']:.0f} **extrapolated** (measured {d['wall_s']:.1f} on {r['captions_scored']:,} captions)" if d else "-")
            rows.append(f"| {r['size']:,} | {r['captions']:,} | {r['backend']} | {r['index']} | - | {ingest_s} | {build} | {r.get('note', '-')} | - | - | - | "
                        f"{_gb(ing.get('server_peak_rss', 0))} | {dense} | {_gb(d['peak_rss']) if d else '-'} | - | - |")
            continue
        h, d, a = r["hnsel"], r["dense"], r["agreement"]
        s = h["split_s"]
        ext = h["extrapolated"]
        sel = f"{h['wall_full_s']:.0f} **extrapolated** (measured {h['wall_s']:.1f})" if ext else f"{h['wall_s']:.1f}"
        speedup = r.get("speedup_vs_dense", d["wall_s"] / h["wall_s"])  # older records: the same ratio, from their times
        if "hnsel_full" in r:
            sel = f"{r['hnsel_full']['wall_s']:.0f} on all captions, measured ({h['wall_s']:.1f} on the sample)"
        sel += f" ({speedup:.2f}x" + (f"; all captions {r['hnsel_full']['speedup_vs_dense']:.2f}x" if "speedup_vs_dense" in r.get("hnsel_full", {}) else "") + ")"
        dense = f"{d['wall_full_s']:.0f} **extrapolated** (measured {d['wall_s']:.1f})" if d["extrapolated"] else f"{d['wall_s']:.1f}"
        dense += f" ({d['gflops']:.0f})" if "gflops" in d else ""
        # Records before in-memory thresholds split the threshold time into search + python.
        thresholds = s.get("thresholds", s.get("threshold_search", 0.0) + s.get("threshold_python", 0.0))
        if "products" in s:  # the exact engine: the candidates' stream and the products instead of searches
            split = (f"{s['list_candidates']:.1f} / {s['anchor_stream']:.1f} / {thresholds:.1f} / cand. stream {s['candidate_stream']:.1f} / "
                     f"products {s['products']:.1f} on {h.get('device')} / {s['rank'] + s['other']:.1f}")
        else:
            python = s["violators_python"] + s["aggregation"] + s["rank"] + s["other"]
            split = (f"{s['list_candidates']:.1f} / {s['anchor_stream']:.1f} / {thresholds:.1f} / {s['candidate_search']:.1f} / "
                     f"{h['result_parsing_s']:.1f} / {python:.1f}")
        mode = {"exact in memory": "exact, in memory", "index search": f"{r['index']} filtered search"}.get(h.get("thresholds_mode", "index search"), "?")
        scored = f"{r['captions']:,} ({r['captions_scored']:,})" if r["captions_scored"] < r["captions"] else f"{r['captions']:,}"
        rows.append(f"| {r['size']:,} | {scored} | {r['backend']} | {r['index']} | {r.get('engine', 'milvus')} | {ingest_s} | {build} | {sel} | {mode} | {split} | "
                    f"{_gb(h['client_peak_rss'])} | {_gb(max(h['server_peak_rss'], ing.get('server_peak_rss', 0))) if r['backend'] == 'server' else 'in client'} | {dense} | {_gb(d['peak_rss'])} | "
                    f"{a['jaccard']:.4f} | {a['pair_recall']:.4f} |")
    return "\n".join(rows)


def section(data: dict, notes: str) -> str:
    m = data["machine"]
    return (f"{SECTION}\n\n`benchmarks/select_scale.py` (raw numbers: `benchmarks/results/select_scale.json`). Machine: {m['nproc']} cores "
            f"({m['cpu']}), {m['ram_bytes'] / 2**30:.0f} GiB RAM, {m.get('gpu') or 'no GPU'}; Python {m['python']}, numpy {m['numpy']}, "
            f"{'torch ' + m['torch'] + ', ' if m.get('torch') else ''}pymilvus {m['pymilvus']}, "
            f"Milvus Lite {m['milvus_lite']}, milvus-server {m['milvus_server']} (Milvus 2.3.5 standalone).\n\n"
            f"Commands: {'; '.join(f'`{c}`' for c in data['commands'])}\n\n" + table(data["records"]) + "\n\n" + notes.strip() + "\n\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000", help="unpaired pool sizes, comma-separated")
    ap.add_argument("--caption-ratio", type=float, default=0.15, help="paired captions per unpaired image (150k at 1M)")
    ap.add_argument("--captions", type=int, default=0, help="a fixed paired-caption count instead of --caption-ratio")
    ap.add_argument("--backends", default="lite,server")
    ap.add_argument("--engine", default="milvus", help="how hnsel scores: milvus (searches), exact (blockwise products), or both, comma-separated")
    ap.add_argument("--device", default=None, help="the exact engine's device: cpu, cuda (default: CUDA when available, else CPU)")
    ap.add_argument("--index", default="FLAT,HNSW", help="server index types; Lite always runs FLAT")
    ap.add_argument("--rerank", type=float, default=2.0, help="hardneg's exact re-rank, a factor of the budget (milvus engine; 0: off)")
    ap.add_argument("--rerank-curve", default="0,1,1.1,1.25,1.5,2,3", help="factors whose agreement is computed from the same run's search scores")
    ap.add_argument("--searchers", type=int, default=2, help="hardneg's search requests in flight (milvus engine)")
    ap.add_argument("--sample-captions", type=int, default=0, help="score only N random captions (all backends), extrapolate")
    ap.add_argument("--lite-sample", type=int, default=0, help="the same for Milvus Lite only")
    ap.add_argument("--full-hnsel", action="store_true", help="with a caption sample, also time hnsel on every caption")
    ap.add_argument("--sample", default="", help="per backend and index, e.g. server:FLAT=1000,lite:FLAT=500")
    ap.add_argument("--loader", default="hnsel", choices=["hnsel", "columnar"],
                    help="server ingest: hnsel's Store.upsert, or a columnar bulk insert for large pools")
    ap.add_argument("--index-timeout", type=float, default=900.0, help="seconds to wait for the server's index build")
    ap.add_argument("--coarse", type=int, default=50)
    ap.add_argument("--fine", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--notes", default="", help="a file whose text follows the table in BENCHMARKS.md")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--report-only", action="store_true", help="rebuild the BENCHMARKS.md section from the JSON, measure nothing")
    args = ap.parse_args()
    args.backends = args.backends.split(",")
    args.engine = [x.strip() for x in args.engine.split(",") if x.strip()]
    args.rerank_curve = [float(x) for x in args.rerank_curve.split(",") if x.strip()]
    if not args.engine or set(args.engine) - set(exact.ENGINES):
        ap.error(f"--engine {','.join(args.engine)}: use {' or '.join(exact.ENGINES)}, comma-separated")
    args.index = [x.upper() for x in args.index.split(",")]
    args.sample = {k.split(":")[0] + ":" + k.split(":")[1].upper(): int(v) for k, v in (x.split("=") for x in args.sample.split(",") if x)}
    args.torch_import_s = None
    if "exact" in args.engine:  # torch loads once per process (about a second); measured apart from every selection
        t0 = time.perf_counter()
        exact.resolve_device(args.device)
        args.torch_import_s = time.perf_counter() - t0
        print(f"torch imported in {args.torch_import_s:.1f} s; exact engine on {exact.resolve_device(args.device)}", flush=True)
    import atexit

    atexit.register(lambda: [shutil.rmtree(d, ignore_errors=True) for d in TMP_DIRS])

    state: dict = {}

    def server():
        if "ctx" not in state:
            state["ctx"] = milvus_server()
            state["value"] = state["ctx"].__enter__()
        return state["value"]

    records = []
    if args.report_only:
        args.sizes = ""
    try:
        for size in [int(x) for x in args.sizes.split(",") if x]:
            records += measure_size(size, args, server, records)
    finally:
        if "ctx" in state:
            state["ctx"].__exit__(None, None, None)
    if not args.no_write:
        save(records, args)


def save(records: list[dict], args) -> None:
    """Merge ``records`` into the results JSON (replacing the same size/backend/index) and rebuild the section."""
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"records": [], "commands": []}
    def key(r):
        return r["size"], r["backend"], r["index"], r.get("engine", "milvus")

    done = {key(r) for r in records}
    data["records"] = [r for r in data["records"] if key(r) not in done] + records
    args_in = sys.argv[1:]  # the command without --notes FILE / --notes=FILE: the notes are not part of the measurement
    dropped = {i + j for i, a in enumerate(args_in) if a == "--notes" for j in (0, 1)}
    argv = [a for i, a in enumerate(args_in) if i not in dropped and not a.startswith("--notes=")]
    command = "python benchmarks/select_scale.py " + " ".join(argv)
    if not args.report_only:
        data["commands"] = [c for c in data.get("commands", []) if c != command] + [command]
    data["machine"] = machine()
    data["notes"] = Path(args.notes).read_text() if args.notes else data.get("notes", "")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
    tmp.replace(RESULTS)
    replace_section(SECTION, section(data, data["notes"]))

if __name__ == "__main__":
    main()
