"""Active-learning rounds: the round log, recording a selection, listing and releasing rounds.

A recorded selection gives every picked sample its round number (the ``round`` field of its row, -1 until
selected), so the candidates filter (``unpaired and round == -1``) never offers it again until it is
annotated (it becomes paired) or released (``round`` back to -1). The strategy, its parameters, the seed,
the resolved store config and a hash of the picks are kept in the store's meta collection, one record per
round (key ``round/0003``); the ids themselves are not copied there, they carry the round in the collection.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
from typing import Any, Sequence

from .config import HnselConfig
from .errors import SelectionError, StoreError
from .store import Store, open_store

__all__ = ["ROUND_PREFIX", "KIND_OF", "round_key", "picks_hash", "next_round", "round_log", "record_round", "list_rounds",
           "release", "show_round", "recordable", "PICKS_PREFIX", "record_picks", "round_picks"]

ROUND_PREFIX = "round/"
KIND_OF = {"image": "images", "text": "texts"}  # modality -> the collection its candidates live in
PICKS_PREFIX = "picks/"  # picks/0003/00000...: a round's picks in order, with score, violations and reason (hnsel report)
PICKS_RECORD_CHARS = 60_000  # under Milvus's 65535-character VARCHAR


def round_key(number: int) -> str:
    return f"{ROUND_PREFIX}{number:04d}"


def picks_hash(ids: Sequence[str]) -> str:
    """sha256 of the picks in pick order: two runs picked the same if and only if (practically) the hashes match."""
    return hashlib.sha256("\n".join(map(str, ids)).encode("utf-8")).hexdigest()


def next_round(store: Store) -> int:
    numbers = [int(k[len(ROUND_PREFIX):]) for k in store.meta_keys(ROUND_PREFIX) if k[len(ROUND_PREFIX):].isdigit()]
    return max(numbers, default=0) + 1


def round_log(store: Store, number: int) -> dict:
    log = store.get_meta(round_key(number))
    if log is None:
        known = [int(k[len(ROUND_PREFIX):]) for k in store.meta_keys(ROUND_PREFIX)]
        raise SelectionError(f"round {number} is not in the round log of namespace {store.config.namespace!r}; "
                             f"known rounds: {', '.join(map(str, known)) or 'none (run hnsel select first)'}")
    return log


def recordable(store: Store, modality: str) -> str | None:
    """None when a selection of ``modality`` can be recorded, else why not (one line)."""
    kind = KIND_OF[modality]
    if store.read_only(kind):
        return f"collection {store.name(kind)} is read_only in hnsel.toml: the round was not recorded (its picks may be offered again)"
    if not store.has_field(kind, "round"):
        return f"collection {store.name(kind)} has no round field: the round was not recorded"
    return None


def _resolved_config(config: HnselConfig) -> dict:
    store = dataclasses.asdict(config.store)
    store.pop("token", None)  # never write a credential into the store
    return {"seed": config.seed, "source": config.source, "store": store}


def record_round(store: Store, config: HnselConfig, selection: Any, modality: str, seed: int, budget: int) -> int:
    """Write the round's log, then mark its picks. The log is written first with ``state=recording``, so an
    interrupted recording is visible (``hnsel status``) and its picks can be released."""
    why = recordable(store, modality)
    if why:
        raise StoreError(why)
    number = next_round(store)
    log = {
        "round": number, "modality": modality, "kind": KIND_OF[modality], "strategy": selection.strategy,
        "params": dict(selection.params), "seed": int(seed), "budget": int(budget), "size": int(len(selection)),
        "candidates": int(selection.stats.get("candidates", 0)), "picks_sha256": picks_hash(selection.ids),
        "first_ids": [str(x) for x in selection.ids[:5]], "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": _resolved_config(config), "stats": _small(selection.stats), "state": "recording", "released": 0,
    }
    store.set_meta(round_key(number), log)
    record_picks(store, number, selection)
    store.set_round(KIND_OF[modality], [str(x) for x in selection.ids], number)
    store.set_meta(round_key(number), dict(log, state="recorded"))
    return number


def _small(stats: dict) -> dict:
    """Scalars, and flat dicts of scalars (``auto_decision``)."""
    scalar = (int, float, str, bool, type(None))
    return {k: v for k, v in stats.items() if isinstance(v, scalar) or (isinstance(v, dict) and all(isinstance(x, scalar) for x in v.values()))}


def record_picks(store: Store, number: int, selection: Any) -> int:
    """Keep the round's picks in pick order with score, violations and reason: meta records ``picks/NNNN/00000``...
    of at most ``PICKS_RECORD_CHARS`` each (the collection rows carry only the round number). Returns how many."""
    columns: dict[str, list] = {"ids": [], "scores": [], "violations": [], "reasons": []}
    size, part = 0, 0
    for i in range(len(selection.ids)):
        row = (str(selection.ids[i]), float(selection.scores[i]), int(selection.violations[i]), str(selection.reasons[i]))
        cost = len(json.dumps(row))
        if size + cost > PICKS_RECORD_CHARS and columns["ids"]:
            store.set_meta(f"{PICKS_PREFIX}{number:04d}/{part:05d}", columns)
            columns, size, part = {k: [] for k in columns}, 0, part + 1
        for key, value in zip(columns, row):
            columns[key].append(value)
        size += cost
    store.set_meta(f"{PICKS_PREFIX}{number:04d}/{part:05d}", columns)
    return part + 1


def round_picks(store: Store, number: int) -> dict[str, list] | None:
    """The picks ``record_picks`` kept for round ``number`` (ids, scores, violations, reasons), None for older rounds."""
    out: dict[str, list] = {"ids": [], "scores": [], "violations": [], "reasons": []}
    part = 0
    while (columns := store.get_meta(f"{PICKS_PREFIX}{number:04d}/{part:05d}")) is not None:
        for key, values in out.items():
            values.extend(columns[key])
        part += 1
    return out if part else None


def _counts(store: Store, kind: str, number: int) -> dict[str, int]:
    f = store.fields(kind)
    return {pool: store.count(kind, f'{f.round} == {int(number)} and {f.pool} == "{pool}"') for pool in ("paired", "unpaired")}


def list_rounds(store: Store) -> list[dict]:
    """One summary per logged round: size, strategy, annotated (now paired), pending (still unpaired), released."""
    out = []
    for key in store.meta_keys(ROUND_PREFIX):
        log = store.get_meta(key)
        kind = log.get("kind", KIND_OF.get(log.get("modality", "image"), "images"))
        counts = _counts(store, kind, log["round"]) if store.has(kind) and store.has_field(kind, "round") else {"paired": 0, "unpaired": 0}
        out.append({"round": log["round"], "modality": log.get("modality"), "strategy": log.get("strategy"), "params": log.get("params", {}),
                    "seed": log.get("seed"), "size": log.get("size"), "annotated": counts["paired"], "pending": counts["unpaired"],
                    "released": log.get("released", 0), "state": log.get("state"), "created": log.get("created")})
    return out


def show_round(config: HnselConfig, number: int) -> dict:
    with open_store(config.store) as store:
        log = round_log(store, number)
        counts = _counts(store, log["kind"], number)
        return dict(log, annotated=counts["paired"], pending=counts["unpaired"])


def release(config: HnselConfig, number: int) -> dict:
    """Give round ``number``'s still unannotated samples back to the pool (round -1); annotated ones stay."""
    with open_store(config.store) as store:
        log = round_log(store, number)
        kind = log["kind"]
        why = recordable(store, log["modality"])
        if why:
            raise StoreError(why.replace("the round was not recorded", "nothing can be released"))
        f = store.fields(kind)
        expr = f'{f.round} == {int(number)} and {f.pool} == "unpaired"'
        ids = [row["id"] for batch in store.iter_rows(kind, expr, ("id",)) for row in batch]
        released = store.set_round(kind, ids, -1)
        store.set_meta(round_key(number), dict(log, released=int(log.get("released", 0)) + released,
                                               state="released" if released or log.get("state") == "released" else log.get("state")))
        return {"round": number, "released": released, "annotated": _counts(store, kind, number)["paired"]}
