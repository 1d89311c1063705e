"""Workflows over the store: ``ingest`` precomputed vectors, ``select`` samples, report ``status``.

Called through ``hnsel.api``; each takes an ``HnselConfig`` and plain values, returns a result object.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .config import HnselConfig
from .errors import InputError, SelectionError
from .store import KINDS, MilvusIndex, Store, in_filter, open_store
from .strategies import AnchorChunk, Selection, SelectionProblem, get_strategy
from .tables import check_table_path, write_table
from .vectors import FileSummary, VectorFile, normalised_batches, validate_file
from .workflows_repair import repair_dead, unfinished
from .workflows_rounds import KIND_OF, abandon_round, list_rounds, record_round, recordable, reserve_round

__all__ = ["ingest", "IngestReport", "select", "SelectResult", "status", "build_problem", "MODALITIES"]

MODALITIES = ("image", "text")
ProgressFn = Callable[[str, int, "int | None"], None]


@dataclass
class IngestReport:
    images: int = 0
    texts: int = 0
    dim: int | None = None


def _check_paired_texts(store: Store, texts: VectorFile, summary: FileSummary, images: FileSummary | None) -> None:
    """Every paired text names a paired image: in this ingest's images file, or already paired in the store."""
    pending = {i: row for i, row in summary.image_ids.items() if images is None or i not in images.paired_ids}
    if images is not None:
        for image_id, row in pending.items():
            if image_id in images.unpaired_ids:
                raise InputError(f"paired text names image {image_id!r}, which the images file makes unpaired", path=texts.path, row=row)
    ids = sorted(pending)
    found = {r["id"]: r["pool"] for r in store.get("images", ids, ["id", "pool"])}
    for image_id in ids:
        if found.get(image_id) != "paired":
            state = "not in the store" if image_id not in found else "unpaired in the store"
            raise InputError(f"paired text names image {image_id!r}, which is {state}; ingest it as a paired image first (or in the same call)",
                             path=texts.path, row=pending[image_id])


def _check_unpairing(store: Store, images: VectorFile, summary: FileSummary, texts: FileSummary | None) -> None:
    """An image made unpaired must not keep paired captions in the store (unless they are re-ingested too)."""
    ids = sorted(summary.unpaired_ids)
    f = store.fields("texts")
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        expr = f'{store.pool_filter("texts", "paired")} and {in_filter(f.image_id, chunk)}'
        for batch in store.iter_rows("texts", expr, ("id", "image_id")):
            for row in batch:
                if texts is None or row["id"] not in texts.paired_ids | texts.unpaired_ids:
                    raise InputError(f"image {row['image_id']!r} would become unpaired but paired text {row['id']!r} in the store describes it; "
                                     "re-ingest that text too or keep the image paired", path=images.path)


def ingest(config: HnselConfig, images: str | Path | None = None, texts: str | Path | None = None,
           on_progress: ProgressFn | None = None) -> IngestReport:
    """Validate both files completely, then upsert them (images first). A bad file writes nothing."""
    if images is None and texts is None:
        raise InputError("nothing to ingest: pass --images FILE and/or --texts FILE")
    files = {kind: VectorFile(Path(p), kind) for kind, p in (("images", images), ("texts", texts)) if p is not None}
    with open_store(config.store) as store:
        for kind in files:  # a read_only collection is refused before anything is written, not between the two files
            if store.read_only(kind):
                raise InputError(f"collection {store.name(kind)} is configured read_only in hnsel.toml; nothing was ingested "
                                 f"(drop --{kind} or the read_only flag)", path=files[kind].path)
        dim = store.dim
        summaries: dict[str, FileSummary] = {}
        for kind, vf in files.items():
            summaries[kind] = validate_file(vf, dim)
            dim = summaries[kind].dim
        if "texts" in files:
            _check_paired_texts(store, files["texts"], summaries["texts"], summaries.get("images"))
        if "images" in files and store.has("texts"):
            _check_unpairing(store, files["images"], summaries["images"], summaries.get("texts"))
        store.ensure_collections(dim)
        report = IngestReport(dim=dim)
        for kind, vf in files.items():
            written = 0
            for data in normalised_batches(vf):
                written += store.upsert(kind, data)
                if on_progress:
                    on_progress(f"ingest {kind}", written, summaries[kind].rows)
            setattr(report, kind, written)
        return report


# --- select -------------------------------------------------------------------------------------
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

    def summary(self) -> dict[str, Any]:
        s = self.selection
        return {
            "strategy": s.strategy, "params": s.params, "modality": self.modality, "seed": self.seed, "budget": len(s),
            "seconds": round(self.seconds, 3), "out": str(self.out) if self.out else None, "stats": s.stats,
            "round": self.round, "note": self.note, "repaired": self.repaired,
            "picks": [{"rank": i + 1, "id": s.ids[i], "score": float(s.scores[i]), "violations": int(s.violations[i]),
                       "reason": s.reasons[i], "uri": self.uris[i]} for i in range(len(s))],
        }


def _kinds(modality: str) -> tuple[str, str]:
    """(candidate and negative side kind, anchor kind) for a modality."""
    if modality not in MODALITIES:
        raise SelectionError(f"--modality {modality!r}: use image or text")
    return ("images", "texts") if modality == "image" else ("texts", "images")


def _candidate_ids(store: Store, kind: str) -> np.ndarray:
    ids = [row["id"] for batch in store.iter_rows(kind, store.pool_filter(kind, "unpaired", unselected=True), ("id",), 16384) for row in batch]
    return np.array(sorted(ids), dtype=object)


def _anchor_stream(store: Store, modality: str) -> Callable[[int], Iterator[AnchorChunk]]:
    side, anchor_kind = _kinds(modality)
    captions_of: dict[str, set[str]] = {}
    if modality == "text":
        for batch in store.iter_rows("texts", store.pool_filter("texts", "paired"), ("id", "image_id")):
            for row in batch:
                captions_of.setdefault(row["image_id"], set()).add(row["id"])

    def positives(row: dict) -> frozenset[str]:
        return frozenset([row["image_id"]]) if modality == "image" else frozenset(captions_of.get(row["id"], ()))

    fields = ("id", "vector", "image_id") if modality == "image" else ("id", "vector")

    def anchors(chunk_size: int) -> Iterator[AnchorChunk]:
        for batch in store.iter_rows(anchor_kind, store.pool_filter(anchor_kind, "paired"), fields, chunk_size):
            for start in range(0, len(batch), chunk_size):
                rows = batch[start:start + chunk_size]
                yield AnchorChunk(np.array([r["id"] for r in rows], dtype=object), np.asarray([r["vector"] for r in rows], dtype=np.float32),
                                  tuple(positives(r) for r in rows))

    return anchors


def _require_collections(store: Store) -> None:
    for kind in KINDS:
        if not store.has(kind):
            raise SelectionError(f"collection {store.name(kind)} does not exist: the store is empty; run `hnsel ingest` or `hnsel embed` first")


def build_problem(store: Store, modality: str, on_progress: ProgressFn | None = None, max_limit: int | None = None) -> SelectionProblem:
    """The strategies' view of the store for one modality: candidates, anchors, and a Milvus-backed index."""
    side, anchor_kind = _kinds(modality)
    _require_collections(store)
    index = MilvusIndex(store, side, store.pool_filter(side, "paired"), store.pool_filter(side, "unpaired", unselected=True))
    if max_limit is not None:
        index.max_limit = max_limit

    def paired_vectors(ids: Sequence[str]) -> np.ndarray:
        rows = {r["id"]: r["vector"] for r in store.get(side, list(ids), ["id", "vector"])}
        return np.asarray([rows[i] for i in ids], dtype=np.float32)

    def candidate_vectors(indices: Sequence[int]) -> np.ndarray:
        return paired_vectors([problem.candidate_ids[i] for i in indices])

    def candidate_stream(batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Candidates' vectors straight from a query iterator: no lookups by id, memory one batch."""
        from .strategies.coreset import positions, sorter_for

        sorter = sorter_for(problem.candidate_ids)
        for batch in store.iter_rows(side, index.filters["candidates"], ("id", "vector"), batch_size):
            ids = np.array([r["id"] for r in batch], dtype=object)
            indices, known = positions(problem.candidate_ids, ids, sorter)
            yield indices, np.asarray([r["vector"] for r, k in zip(batch, known) if k], dtype=np.float32).reshape(len(indices), -1)

    def paired_stream(batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for batch in store.iter_rows(side, index.filters["paired"], ("id", "vector"), batch_size):
            yield np.array([r["id"] for r in batch], dtype=object), np.asarray([r["vector"] for r in batch], dtype=np.float32).reshape(len(batch), -1)

    problem = SelectionProblem(candidate_ids=_candidate_ids(store, side), index=index, anchors=_anchor_stream(store, modality),
                               n_anchors=store.count(anchor_kind, store.pool_filter(anchor_kind, "paired")),
                               candidate_vectors=candidate_vectors, paired_vectors=paired_vectors, on_progress=on_progress,
                               candidate_stream=candidate_stream, paired_stream=paired_stream)
    return problem


def select(config: HnselConfig, budget: int, strategy: str = "auto", params: dict[str, Any] | None = None, modality: str = "image",
           seed: int | None = None, out: str | Path | None = None, on_progress: ProgressFn | None = None,
           max_limit: int | None = None, record: bool = False) -> SelectResult:
    """Pick ``budget`` candidates with a registered strategy; optionally write them to ``out``.

    ``record``: keep the picks as the next round (``workflows_rounds``) so later selections skip them; on a
    read_only collection nothing is written and ``SelectResult.note`` says so. A recording selection first
    finishes or rolls back what stopped processes left unfinished (``SelectResult.repaired``), then claims its
    round number and waits for earlier rounds still recording, so concurrent selections never share picks.
    """
    seed = config.seed if seed is None else seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SelectionError(f"--seed {seed}: use an integer of 0 or more")
    chosen = get_strategy(strategy, **(params or {}))
    _kinds(modality)
    if budget < 1:
        raise SelectionError(f"--budget must be at least 1, got {budget}")
    if out is not None:
        check_table_path(out)  # a bad extension or a missing folder is refused before any work (and before a round is recorded)
    started = time.perf_counter()
    with open_store(config.store) as store:
        lease, note, repaired = None, None, []
        if record:
            note = recordable(store, modality) if store.has(KIND_OF[modality]) else None
            if note is None:
                _require_collections(store)  # an empty store is refused before anything is written
                repaired = repair_dead(store)
                lease = reserve_round(store, config, modality, seed, budget, strategy, params or {}, _waiting(on_progress))
        try:
            selection, uris, written = _select_and_write(store, chosen, modality, budget, seed, out, on_progress, max_limit)
            number = record_round(store, lease, selection) if lease is not None else None
        except BaseException:
            if lease is not None:
                abandon_round(store, lease)
            raise
    return SelectResult(selection, uris, modality, seed, time.perf_counter() - started, out=written, round=number, note=note, repaired=repaired)


def _waiting(on_progress: ProgressFn | None) -> Callable[[str], None] | None:
    return None if on_progress is None else (lambda message: on_progress(message, 0, None))


def _select_and_write(store: Store, chosen: Any, modality: str, budget: int, seed: int, out: str | Path | None,
                      on_progress: ProgressFn | None, max_limit: int | None) -> tuple[Selection, list[str], Path | None]:
    side, _ = _kinds(modality)
    problem = build_problem(store, modality, on_progress, max_limit)
    selection = chosen.select(problem, budget, np.random.default_rng(seed))
    field_name = "uri" if side == "images" else "text"
    rows = {r["id"]: r.get(field_name, "") for r in store.get(side, list(selection.ids), ["id", field_name])} if store.has_field(side, field_name) else {}
    uris = [rows.get(i, "") or "" for i in selection.ids]
    written = None
    if out is not None:  # the file before the marks: a failed write leaves no recorded round behind
        s = selection
        written = write_table(out, {"rank": list(range(1, len(s) + 1)), "id": list(s.ids), "score": [float(x) for x in s.scores],
                                    "violations": [int(x) for x in s.violations], "reason": list(s.reasons), "uri": uris})
    return selection, uris, written


def status(config: HnselConfig, rounds: bool = False) -> dict[str, Any]:
    """Counts per collection and pool, the vector dimension, and how many samples carry a round;
    with ``rounds``, also one summary per logged round (``workflows_rounds.list_rounds``)."""
    with open_store(config.store) as store:
        out: dict[str, Any] = {}
        selected = 0
        for kind in KINDS:
            out[kind] = {pool: store.count(kind, store.pool_filter(kind, pool)) for pool in ("paired", "unpaired")}
            if store.has(kind) and store.has_field(kind, "round"):
                selected += store.count(kind, f"{store.fields(kind).round} >= 0")
        out["dim"] = store.dim
        out["selected"] = selected
        if rounds:
            out["rounds"] = list_rounds(store)
            out["unfinished"] = unfinished(store)
        return out
