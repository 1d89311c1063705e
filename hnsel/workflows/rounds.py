"""Active-learning rounds: the round log, recording a selection, listing and releasing rounds.

A recorded selection gives every picked sample its round number (the ``round`` field of its row, -1 until
selected), so the candidates filter (``unpaired and round == -1``) never offers it again until it is
annotated (it becomes paired) or released (``round`` back to -1). The strategy, its parameters, the seed,
the resolved store config and a hash of the picks are kept in the store's meta collection, one record per
round (key ``round/0003``), and the picks in order in ``picks/0003/*`` records.

Recording is safe against a second ``hnsel select`` at the same moment and against a kill at any point.
``reserve_round`` claims the next number atomically (``leases.claim_number``) before the selection runs, with
the log in state ``reserved`` and a heartbeat, then waits until every earlier round is finished; so selections
that record are serialised: each one's candidates are read (Strong) after the earlier rounds' picks are marked,
and two rounds never share a number, a log or a pick. ``record_round`` then keeps the picks (``picks/``), sets
the state ``recording``, marks the rows, and sets ``recorded``. A round left ``reserved`` or ``recording`` by a
process that stopped is finished from its kept picks (when they are complete) or rolled back by ``repair_round``,
which ``hnsel round repair`` and the next recording ``hnsel select`` run.

A collection hnsel must not write (``read_only``) or one without a round field keeps its rounds in the meta
collection alone (``Store.rounds_in_meta``): the log and the picks are kept as for any round, no row is marked, and
the candidate filter leaves out the picks of every round not released (``store.pools``). Releasing such a round gives
all its picks back (annotations cannot be imported into a read_only collection).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import time
from typing import Any, Callable, Sequence

from ..config import HnselConfig, redact_uri
from ..errors import SelectionError, StoreError
from ..store.leases import Lease, claim_number, describe_owner, is_dead
from ..store import Store, open_store
from ..schema import KIND_OF, PICKS_PREFIX, POOLS, ROUND_PREFIX

__all__ = ["ROUND_PREFIX", "KIND_OF", "round_key", "picks_hash", "next_round", "round_log", "record_round", "list_rounds",
           "release", "show_round", "recordable", "PICKS_PREFIX", "record_picks", "round_picks", "reserve_round", "abandon_round",
           "repair_round", "unfinished_rounds", "UNFINISHED", "restore_marks"]

PICKS_RECORD_CHARS = 60_000  # under Milvus's 65535-character VARCHAR
UNFINISHED = ("reserved", "recording")  # states of a round whose recording has not ended (yet, or ever: repair_round)
WAIT_POLL_S = 0.5


def round_key(number: int) -> str:
    return f"{ROUND_PREFIX}{number:04d}"


def picks_hash(ids: Sequence[str]) -> str:
    """sha256 of the picks in pick order: two runs picked the same if and only if (practically) the hashes match."""
    return hashlib.sha256("\n".join(map(str, ids)).encode("utf-8")).hexdigest()


def _numbers(store: Store, strong: bool = False) -> list[int]:
    return [int(k[len(ROUND_PREFIX):]) for k in store.meta_keys(ROUND_PREFIX, strong=strong) if k[len(ROUND_PREFIX):].isdigit()]


def next_round(store: Store, strong: bool = False) -> int:
    return max(_numbers(store, strong), default=0) + 1


def round_log(store: Store, number: int) -> dict:
    log = store.get_meta(round_key(number))
    if log is None:
        known = [int(k[len(ROUND_PREFIX):]) for k in store.meta_keys(ROUND_PREFIX)]
        raise SelectionError(f"round {number} is not in the round log of namespace {store.config.namespace!r}; "
                             f"known rounds: {', '.join(map(str, known)) or 'none (run hnsel select first)'}")
    return log


def recordable(store: Store, modality: str) -> str | None:
    """None when a selection of ``modality`` can be recorded, else why not (one line). Every selection can be now: a
    collection that cannot carry round marks has its rounds kept in the meta collection (module docstring)."""
    return None


def _resolved_config(config: HnselConfig) -> dict:
    store = dataclasses.asdict(config.store)
    store.pop("token", None)  # never write a credential into the store
    store["uri"] = config.store.safe_uri  # nor the user:password a URI may carry
    return {"seed": config.seed, "source": config.source, "store": store}


def reserve_round(store: Store, config: HnselConfig, modality: str, seed: int, budget: int, strategy: str, params: dict,
                  on_wait: Callable[[str], None] | None = None) -> Lease:
    """Claim the next round number for a selection about to run, then wait until every earlier round is finished
    (finishing or rolling back one whose process stopped). Returns the held lease on the round log."""
    why = recordable(store, modality)
    if why:
        raise StoreError(why)
    log = {"modality": modality, "kind": KIND_OF[modality], "strategy": strategy, "params": dict(params), "seed": int(seed),
           "budget": int(budget), "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "config": _resolved_config(config), "state": "reserved", "released": 0}
    held: list[Lease] = []

    def write(number: int) -> None:
        held.append(Lease(store, round_key(number), dict(log, round=number)))
        held[0].update()

    claim_number(store, lambda: next_round(store, strong=True), round_key, write)
    lease = held[0].start()
    try:
        _wait_for_earlier(store, lease.record["round"], on_wait)
    except BaseException:
        abandon_round(store, lease)
        raise
    store.sync()  # the selection's first read is Strong: it sees every earlier round's marks
    return lease


def _wait_for_earlier(store: Store, number: int, on_wait: Callable[[str], None] | None) -> None:
    said: set[int] = set()
    finished: set[int] = set()  # a round never becomes unfinished again: read once
    while True:
        busy = []
        for earlier in [n for n in _numbers(store, strong=True) if n < number and n not in finished]:
            log = store.get_meta(round_key(earlier))  # after the Strong listing, a Session read sees as much
            if log is None or log.get("state") not in UNFINISHED:
                finished.add(earlier)
                continue
            if is_dead(log):
                repair_round(store, log)
            else:
                busy.append(earlier)
                if on_wait is not None and earlier not in said:
                    on_wait(f"waiting for round {earlier} ({describe_owner(log)}) to finish recording")
                    said.add(earlier)
        if not busy:
            return
        time.sleep(WAIT_POLL_S)


def record_round(store: Store, lease: Lease, selection: Any) -> int:
    """Keep the picks, then mark them in the collection. The state says how far it got: ``recording`` means the
    picks are kept whole, so ``repair_round`` can finish the marking; ``recorded`` means done."""
    number, kind = lease.record["round"], lease.record["kind"]
    record_picks(store, number, selection)
    lease.update(strategy=selection.strategy, params=dict(selection.params), size=int(len(selection)),
                 candidates=int(selection.stats.get("candidates", 0)), picks_sha256=picks_hash(selection.ids),
                 first_ids=[str(x) for x in selection.ids[:5]], stats=_small(selection.stats), state="recording")
    if not store.rounds_in_meta(kind):
        store.set_round(kind, [str(x) for x in selection.ids], number)
    lease.stop()
    lease.update(state="recorded")
    return number


def abandon_round(store: Store, lease: Lease) -> None:
    """Undo a reservation whose selection failed or was interrupted: no pick stays marked, no log stays behind.
    A failure here leaves the round to ``repair_round`` (its heartbeat stops with this process)."""
    lease.stop()
    try:
        _roll_back(store, lease.record)
    except StoreError:
        pass


def _roll_back(store: Store, log: dict) -> int:
    number, kind = int(log["round"]), log["kind"]
    if store.rounds_in_meta(kind):
        released = len((round_picks(store, number) or {"ids": []})["ids"])
    else:
        ids = [r["id"] for batch in store.iter_rows(kind, store.where(kind, round=number), ("id",)) for r in batch] if store.has(kind) else []
        released = store.set_round(kind, ids, -1)
    store.delete_meta([k for k in store.meta_keys(f"{PICKS_PREFIX}{number:04d}/", strong=True)])
    store.delete_meta([round_key(number)])
    return released


def repair_round(store: Store, log: dict) -> str:
    """Finish or roll back a round a stopped process left ``reserved`` or ``recording``; says what it did (one line).

    ``recording`` with its picks kept whole (count and sha256 match the log): the picks not yet marked are
    marked and the round is ``recorded``. Anything less (``reserved``, or picks cut short) is rolled back:
    rows marked with the round go back to the pool and the log is removed, so the number can be selected again.
    """
    number = int(log["round"])
    picks = round_picks(store, number) if log.get("state") == "recording" else None
    whole = picks is not None and len(picks["ids"]) == log.get("size") and picks_hash(picks["ids"]) == log.get("picks_sha256")
    if not whole:
        released = _roll_back(store, log)
        return (f"round {number} was left {log.get('state')} by {describe_owner(log)}, which stopped: rolled back "
                f"({released} marked samples returned to the pool); run hnsel select again")
    kind = log["kind"]
    todo = []
    if not store.rounds_in_meta(kind):
        rounds = store.get_rounds(kind, picks["ids"])
        todo = [i for i in picks["ids"] if rounds.get(i) == -1]
        store.set_round(kind, todo, number)
    store.set_meta(round_key(number), dict(log, state="recorded"))
    return (f"round {number} was left recording by {describe_owner(log)}, which stopped: finished "
            f"({len(todo)} of its {len(picks['ids'])} picks marked now)")


def restore_marks(store: Store, log: dict | None) -> tuple[bool, str] | None:
    """None when a finished round's rows carry every mark its log counts (size less released); else (done, one line): the
    picks whose rows lost the mark (round -1; a write undid it) marked again, when the kept picks are whole and the
    round released nothing; otherwise why they cannot be told from released ones."""
    if not log or log.get("state") in UNFINISHED or not log.get("size"):
        return None
    number, kind = int(log["round"]), log["kind"]
    if not store.has(kind) or not store.has_field(kind, "round"):
        return None
    expected = int(log["size"]) - int(log.get("released") or 0)
    carried = store.count(kind, store.where(kind, round=number))
    if carried >= expected:
        return None
    picks = round_picks(store, number)
    if picks is None or log.get("released") or picks_hash(picks["ids"]) != log.get("picks_sha256"):
        return False, (f"round {number}: its log says {expected} samples, its rows carry {carried}, and the lost marks cannot be told from "
                       f"released ones; release the round (hnsel round release --round {number}) and select again")
    rounds = store.get_rounds(kind, picks["ids"])
    lost = [i for i in picks["ids"] if rounds.get(i) == -1]
    if not lost:  # the unmarked picks were picked again by later rounds meanwhile: nothing left to restore
        return None
    store.set_round(kind, lost, number)
    return True, f"round {number}: its log says {expected} samples but its rows carried {carried} (a write undid the marks): {len(lost)} marked again"


def unfinished_rounds(store: Store) -> list[dict]:
    """Logs of rounds still ``reserved`` or ``recording``, each with ``dead`` (True when its process stopped)."""
    logs = [store.get_meta(k) for k in store.meta_keys(ROUND_PREFIX, strong=True) if k[len(ROUND_PREFIX):].isdigit()]
    return [dict(log, dead=is_dead(log)) for log in logs if log and log.get("state") in UNFINISHED]


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


def _counts(store: Store, kind: str, number: int, log: dict | None = None) -> dict[str, int]:
    """Annotated (paired) and pending (unpaired) picks of a round; kept in meta: nothing annotated, pending unless released."""
    if store.rounds_in_meta(kind):
        pending = 0 if log is None or log.get("state") == "released" else int(log.get("size") or 0)
        return {"paired": 0, "unpaired": pending}
    return {pool: store.count(kind, store.where(kind, round=number, pool=pool)) for pool in POOLS}


def list_rounds(store: Store) -> list[dict]:
    """One summary per logged round: size, strategy, annotated (now paired), pending (still unpaired), released."""
    out = []
    for key in store.meta_keys(ROUND_PREFIX):
        log = store.get_meta(key)
        kind = log.get("kind", KIND_OF.get(log.get("modality", "image"), "images"))
        counts = _counts(store, kind, log["round"], log) if store.has(kind) else {"paired": 0, "unpaired": 0}
        unfinished = log.get("state") in UNFINISHED
        out.append({"round": log["round"], "modality": log.get("modality"), "strategy": log.get("strategy"), "params": log.get("params", {}),
                    "seed": log.get("seed"), "size": log.get("size"), "annotated": counts["paired"], "pending": counts["unpaired"],
                    "released": log.get("released", 0), "state": log.get("state"), "created": log.get("created"),
                    "unfinished": unfinished, "stopped": unfinished and is_dead(log)})
    return out


def show_round(config: HnselConfig, number: int) -> dict:
    with open_store(config.store) as store:
        log = round_log(store, number)
        counts = _counts(store, log["kind"], number, log)
        config_ = dict(log.get("config") or {})
        if isinstance(config_.get("store"), dict) and "uri" in config_["store"]:  # logs written before URIs were recorded without userinfo
            config_["store"] = dict(config_["store"], uri=redact_uri(config_["store"]["uri"]))
        return dict(log, config=config_, annotated=counts["paired"], pending=counts["unpaired"])


def release(config: HnselConfig, number: int, decisions: str | os.PathLike | None = None) -> dict:
    """Give round ``number``'s still unannotated samples back to the pool (round -1); annotated ones stay.
    With ``decisions`` (the report's file, ``workflows.decisions``), only its rejected picks are released."""
    with open_store(config.store) as store:
        log = round_log(store, number)
        kind = log["kind"]
        if log.get("state") in UNFINISHED:
            raise StoreError(f"round {number} is still {log['state']} ({describe_owner(log)}); wait for it, or run `hnsel round repair` "
                             "if that process stopped, then release")
        if store.rounds_in_meta(kind):  # no marks to clear: the round stops excluding its picks
            if decisions is not None:
                raise StoreError(f"round {number} is kept in hnsel's meta collection (a read_only collection): it is released whole; "
                                 "drop --from, or export only the accepted with hnsel annotate export --from")
            released = int(log.get("size") or 0) if log.get("state") != "released" else 0
            store.set_meta(round_key(number), dict(log, released=int(log.get("released", 0)) + released, state="released"))
            return {"round": number, "released": released, "annotated": 0}
        only = None
        if decisions is not None:
            from .decisions import read_decisions  # it reads the round's picks from here

            only = set(read_decisions(store, decisions, number, kind).rejected)
        expr = store.where(kind, round=number, pool="unpaired")
        ids = [row["id"] for batch in store.iter_rows(kind, expr, ("id",)) for row in batch if only is None or row["id"] in only]
        released = store.set_round(kind, ids, -1)
        store.set_meta(round_key(number), dict(log, released=int(log.get("released", 0)) + released,
                                               state="released" if released or log.get("state") == "released" else log.get("state")))
        return {"round": number, "released": released, "annotated": _counts(store, kind, number)["paired"]}
