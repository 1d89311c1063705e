"""Which picks a report shows: a recorded round (``--round N``) or a selection file (``--selection FILE``).

A round gives its picks in pick order with score, violations and reason (``workflows.rounds.round_picks``) and
its log (strategy, parameters, seed, ``auto``'s decision). A selection file (what ``hnsel select --out`` wrote)
gives the same columns; when its ids hash to a recorded round's ``picks_sha256``, that round's log is used too.
Nothing here writes to the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError, SelectionError
from ..store import Store
from ..tables import check_input_file, iter_jsonl, open_parquet, read_csv_rows
from ..schema import KIND_OF, ROUND_PREFIX
from ..workflows.rounds import picks_hash, round_log, round_picks

__all__ = ["Picks", "load_round", "load_selection", "latest_round"]


@dataclass
class Picks:
    """The picks in order. ``scores``/``violations`` hold None where the source did not record them."""

    ids: list[str]
    scores: list[float | None]
    violations: list[int | None]
    reasons: list[str]
    modality: str
    source: str
    round: int | None = None
    log: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return KIND_OF[self.modality]


def latest_round(store: Store) -> int:
    numbers = [int(k[len(ROUND_PREFIX):]) for k in store.meta_keys(ROUND_PREFIX) if k[len(ROUND_PREFIX):].isdigit()]
    if not numbers:
        raise SelectionError(f"no rounds recorded in namespace {store.config.namespace!r}: run `hnsel select` first, or pass --selection FILE")
    return max(numbers)


def load_round(store: Store, number: int) -> Picks:
    """Round ``number``'s picks and log; a round recorded before picks were kept lists its ids in id order."""
    log = round_log(store, number)
    modality = log.get("modality", "image")
    kept = round_picks(store, number)
    notes = []
    if kept is None:
        kind = KIND_OF[modality]
        ids = sorted(r["id"] for batch in store.iter_rows(kind, store.where(kind, round=number), ("id",)) for r in batch)
        kept = {"ids": ids, "scores": [None] * len(ids), "violations": [None] * len(ids), "reasons": ["unknown"] * len(ids)}
        notes.append(f"round {number} was recorded before hnsel kept each pick's rank, score and reason: its {len(ids)} samples still "
                     "marked with the round are listed in id order")
    return Picks(list(kept["ids"]), list(kept["scores"]), list(kept["violations"]), list(kept["reasons"]), modality,
                 f"round {number}", number, log, notes)


def _rows(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix == ".csv":  # what `select --out` wrote for people: cells escaped against formulas, read back exactly
        return [row for _, row in read_csv_rows(path, unescape=True)]
    if suffix in (".jsonl", ".ndjson"):
        return [row for _, row in iter_jsonl(path)]
    if suffix in (".parquet", ".pq"):
        parquet = open_parquet(path)
        try:
            return parquet.read().to_pylist()
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise InputError(f"cannot read Parquet ({str(exc)[:200]})", path=path) from None
    raise InputError(f"unknown selection type {suffix!r}; use the .csv, .jsonl or .parquet that `hnsel select --out` wrote", path=path)


def _number(value: Any, cast, path: Path, row: int, name: str):
    if value is None or value == "":
        return None
    try:
        return cast(float(value)) if cast is int else cast(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} {value!r} is not a number", path=path, row=row) from None


def load_selection(store: Store, path: str | Path) -> Picks:
    """Picks from a selection file; its round's log when the ids match a recorded round."""
    if not Path(path).exists():
        raise InputError("no such selection file", path=path)
    path = check_input_file(path, "selection file")  # a folder, a FIFO or a device says what it is
    rows = _rows(path)
    if not rows:
        raise InputError("the selection file holds no picks", path=path)
    if "id" not in rows[0]:
        raise InputError(f"no id column (columns: {', '.join(rows[0])}); expected what `hnsel select --out` writes", path=path)
    if "rank" in rows[0]:
        ranks = [_number(r.get("rank"), float, path, i + 2, "rank") for i, r in enumerate(rows)]
        rows = [r for _, _, r in sorted(zip([x if x is not None else float("inf") for x in ranks], range(len(rows)), rows))]
    rows, repeated = _first_of_each_id(rows)
    ids = [str(r["id"]) for r in rows]
    scores = [_number(r.get("score"), float, path, i + 2, "score") for i, r in enumerate(rows)]
    violations = [_number(r.get("violations"), int, path, i + 2, "violations") for i, r in enumerate(rows)]
    reasons = [str(r.get("reason") or "unknown") for r in rows]
    log = _matching_round(store, ids)
    modality = log.get("modality", "image") if log else _modality_of(store, ids, path)
    notes = [] if log else [f"{path.name} matches no recorded round: strategy, parameters and seed are unknown, evidence uses k = 1"]
    if repeated:
        notes.insert(0, f"{path.name} lists {len(repeated)} id(s) more than once (first: {repeated[0]!r}): each is shown once, at its best rank")
    return Picks(ids, scores, violations, reasons, modality, str(path), log["round"] if log else None, log, notes)


def _first_of_each_id(rows: list[dict]) -> tuple[list[dict], list[str]]:
    """The rows with each id's first (best-ranked) row only, and the ids that appeared again, in order."""
    seen: set[str] = set()
    kept, repeated = [], []
    for row in rows:
        key = str(row["id"])
        if key in seen:
            repeated.append(key)
        else:
            seen.add(key)
            kept.append(row)
    return kept, repeated


def _matching_round(store: Store, ids: list[str]) -> dict | None:
    digest = picks_hash(ids)
    for key in reversed(store.meta_keys(ROUND_PREFIX)):
        log = store.get_meta(key)
        if log and log.get("picks_sha256") == digest:
            return log
    return None


def _modality_of(store: Store, ids: list[str], path: Path) -> str:
    probe = ids[:100]
    if store.existing_ids("images", probe):
        return "image"
    if store.existing_ids("texts", probe):
        return "text"
    raise InputError(f"none of its first {len(probe)} ids is in the store (namespace {store.config.namespace!r}); "
                     "pass the --milvus-uri and --namespace the selection was made from", path=path)
