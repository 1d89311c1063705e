"""``hnsel select``: pick samples with a registered strategy over the store, write them, record them as a round.

Called through ``hnsel.api``: takes an ``HnselConfig`` and plain values, returns a ``SelectResult``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..config import HnselConfig
from ..errors import SelectionError
from ..schema import KIND_OF, ProgressFn
from ..store import Store, build_problem, open_store
from ..store.problem import require_collections, side_kinds
from ..strategies import Selection, get_strategy
from ..strategies.exact import ENGINES, check_device_name
from ..strategies.guard import DEDUP_RADIUS, check_radius, guarded_select
from ..tables import check_table_path, write_table
from .repair import refuse_partial_ingest, repair_dead
from .rounds import abandon_round, record_round, recordable, reserve_round

__all__ = ["select", "SelectResult"]


@dataclass
class SelectResult:
    selection: Selection
    uris: list[str]
    modality: str
    seed: int
    seconds: float
    out: Path | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    round: int | None = None  # the round number recorded in the store, None when not recorded
    note: str | None = None  # why a requested recording did not happen
    repaired: list[str] = field(default_factory=list)  # unfinished rounds or imports of stopped processes this run finished or rolled back
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase (``SelectionProblem.timed``; see ``timing_summary``)

    def summary(self) -> dict[str, Any]:
        s = self.selection
        return {
            "strategy": s.strategy, "params": s.params, "modality": self.modality, "seed": self.seed, "budget": len(s),
            "seconds": round(self.seconds, 3), "out": str(self.out) if self.out else None, "stats": s.stats,
            "round": self.round, "note": self.note, "repaired": self.repaired, "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "picks": [{"rank": i + 1, "id": s.ids[i], "score": float(s.scores[i]), "violations": int(s.violations[i]),
                       "reason": s.reasons[i], "uri": self.uris[i]} for i in range(len(s))],
        }


def select(config: HnselConfig, budget: int, strategy: str = "auto", params: dict[str, Any] | None = None, modality: str = "image",
           seed: int | None = None, out: str | Path | None = None, on_progress: ProgressFn | None = None,
           max_limit: int | None = None, record: bool = True, engine: str = "auto", device: str = "auto", ray: bool | str = False,
           ray_workers: int | None = None, dedup_radius: float = DEDUP_RADIUS) -> SelectResult:
    """Pick ``budget`` candidates with a registered strategy; optionally write them to ``out``.

    ``record`` (default True, as the CLI): keep the picks as the next round (``rounds``) so later selections skip them
    (``record=False``: a look that changes nothing); on a
    read_only collection nothing is written and ``SelectResult.note`` says so. A recording selection first
    finishes or rolls back what stopped processes left unfinished (``SelectResult.repaired``), then claims its
    round number and waits for earlier rounds still recording, so concurrent selections never share picks.

    ``engine``: how hard-negative scores are computed: ``milvus`` (neighbour searches), ``exact`` (every
    similarity by blockwise products on ``device``, the candidates streamed once from the store: the exact answer
    at any index type) or ``auto`` (exact when a CUDA device is present or the pool is small; see ``choose_engine``).

    ``ray``: ``True`` or a Ray address: hardneg's scores are computed by ``ray_workers`` Ray tasks over shards of the
    anchors against the Milvus server, then added and ranked here (``ray_select.select_hardneg``: the same picks).

    ``dedup_radius``: no pick within this cosine distance of a paired sample or of another pick (0: off; see
    ``strategies.guard``), whatever the strategy.
    """
    seed = config.seed if seed is None else seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SelectionError(f"--seed {seed}: use an integer of 0 or more")
    chosen = get_strategy(strategy, **(params or {}))
    dedup_radius = check_radius(dedup_radius)
    if ray:
        from .ray_select import check_select_ray

        check_select_ray(chosen, config.store, ray, ray_workers)
    if engine not in ENGINES + ("auto",):
        raise SelectionError(f"--engine {engine!r}: use auto, milvus or exact")
    check_device_name(device)  # refused whichever engine runs, before a round is recorded
    side_kinds(modality)
    if budget < 1:
        raise SelectionError(f"--budget must be at least 1, got {budget}")
    if out is not None:
        check_table_path(out)  # a bad extension or a missing folder is refused before any work (and before a round is recorded)
    started = time.perf_counter()
    with open_store(config.store) as store:
        refuse_partial_ingest(store)  # a half-written store would give answers about rows that are not all there
        lease, note, repaired = None, None, []
        if record:
            note = recordable(store, modality) if store.has(KIND_OF[modality]) else None
            if note is None:
                require_collections(store)  # an empty store is refused before anything is written
                repaired = repair_dead(store)
                lease = reserve_round(store, config, modality, seed, budget, strategy, params or {}, _waiting(on_progress))
        try:
            selection, uris, written, timings = _select_and_write(store, chosen, modality, budget, seed, out, on_progress, max_limit, engine,
                                                                  device, ray, ray_workers, dedup_radius)
            number = record_round(store, lease, selection) if lease is not None else None
        except BaseException:
            if lease is not None:
                abandon_round(store, lease)
            raise
    seconds = time.perf_counter() - started
    return SelectResult(selection, uris, modality, seed, seconds, out=written, round=number, note=note, repaired=repaired,
                        timings=timing_summary(timings, seconds))


# Phases timed on other threads than the caller's: they overlap the rest and are not part of the wall-time sum.
THREAD_PHASES = ("searches_in_threads",)


def timing_summary(timings: dict[str, float], seconds: float) -> dict[str, float]:
    """The phases in the order they first ran, plus ``other`` (the rest of ``seconds``: ranking, the round record,
    opening the store): every phase but ``THREAD_PHASES`` adds up to ``seconds``."""
    out = dict(timings)
    out["other"] = max(0.0, seconds - sum(v for k, v in timings.items() if k not in THREAD_PHASES))
    return out


# The cost model ``auto`` chooses by (seconds; measured on 2 CPU cores, BENCHMARKS.md "Selection scale"): a Milvus
# neighbour search per anchor, against one torch import plus every product at the BLAS rate.
LITE_QUERY_S_PER_10K = 0.009  # Milvus Lite FLAT: ~9 ms a query at 10k candidates, linear in the pool
SERVER_QUERY_S = 0.003  # a Milvus server: ~3 ms per anchor (FLAT at 10k, HNSW at 1M with deepening)
CPU_FLOPS = 1e11  # float32 products on the CPU, blockwise (the exact engine measured 1.1e11 on 2 cores)
TORCH_IMPORT_S = 1.5  # measured 1.1-1.3 s
STREAM_S = {"lite": 1.8e-4, "server": 6e-5}  # seconds per candidate vector streamed out of the store (Lite: 0.9 s per 5,000)


def _cuda_present() -> bool:
    """A CUDA device torch can use; the driver is looked for first, so a machine without one never imports torch here."""
    if not (os.path.exists("/proc/driver/nvidia/version") or os.environ.get("CUDA_VISIBLE_DEVICES")):
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def choose_engine(engine: str, n_candidates: int, n_anchors: int, dim: int, lite: bool) -> tuple[str, str]:
    """(the engine, why). ``auto``: ``exact`` when a CUDA device is present; on a CPU, ``exact`` only when the cost
    model above says it is faster than the searches (large pools on Milvus Lite), else ``milvus``, which imports no torch."""
    if engine != "auto":
        return engine, f"--engine {engine}"
    if _cuda_present():
        return "exact", "a CUDA device is present: every similarity on the GPU"
    search_s = n_anchors * (LITE_QUERY_S_PER_10K * max(n_candidates, 1) / 1e4 if lite else SERVER_QUERY_S)
    exact_s = TORCH_IMPORT_S + n_candidates * STREAM_S["lite" if lite else "server"] + 2.0 * n_anchors * n_candidates * dim / CPU_FLOPS
    which = "exact" if exact_s < search_s else "milvus"
    return which, (f"no CUDA device; {n_anchors:,} anchors x {n_candidates:,} candidates: about {search_s:.0f} s of "
                   f"{'Milvus Lite' if lite else 'Milvus server'} searches against {exact_s:.0f} s of CPU products")


def _waiting(on_progress: ProgressFn | None) -> Callable[[str], None] | None:
    return None if on_progress is None else (lambda message: on_progress(message, 0, None))


def _select_and_write(store: Store, chosen: Any, modality: str, budget: int, seed: int, out: str | Path | None,
                      on_progress: ProgressFn | None, max_limit: int | None, engine: str = "auto",
                      device: str = "auto", ray: bool | str = False,
                      ray_workers: int | None = None, dedup_radius: float = DEDUP_RADIUS) -> tuple[Selection, list[str], Path | None, dict[str, float]]:
    side, _ = side_kinds(modality)
    problem = build_problem(store, modality, on_progress, max_limit)
    problem.engine, reason = choose_engine(engine, len(problem.candidate_ids), problem.n_anchors, store.dim or 0, store.config.is_lite)
    problem.device = device
    if ray:
        from .ray_select import select_hardneg

        def run(ask: int) -> Selection:
            return select_hardneg(store, problem, chosen, ask, np.random.default_rng(seed), modality, address=ray, workers=ray_workers)
    else:
        def run(ask: int) -> Selection:
            return chosen.select(problem, ask, np.random.default_rng(seed))
    selection = guarded_select(run, problem, budget, dedup_radius)
    selection.stats["engine_choice"] = {"engine": problem.engine, "requested": engine, "reason": reason}
    with problem.timed("write"):
        field_name = "uri" if side == "images" else "text"
        rows = {r["id"]: r.get(field_name, "") for r in store.get(side, list(selection.ids), ["id", field_name])} if store.has_field(side, field_name) else {}
        uris = [rows.get(i, "") or "" for i in selection.ids]
        written = None
        if out is not None:  # the file before the marks: a failed write leaves no recorded round behind
            s = selection
            written = write_table(out, {"rank": list(range(1, len(s) + 1)), "id": list(s.ids), "score": [float(x) for x in s.scores],
                                        "violations": [int(x) for x in s.violations], "reason": list(s.reasons), "uri": uris})
    return selection, uris, written, problem.timings

