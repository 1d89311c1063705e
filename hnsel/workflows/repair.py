"""Unfinished work a stopped process left behind: rounds still ``reserved``/``recording``, imports still ``importing``,
ingests still ``ingesting``; and rounds whose rows lost their marks (``lost_marks``, ``rounds.restore_marks``).

``unfinished`` lists them (``hnsel status`` and ``hnsel round list`` print it); ``repair_dead`` finishes or rolls
back those whose process stopped (the next recording ``hnsel select`` and ``hnsel annotate import`` run it);
``repair`` is ``hnsel round repair``. What each repair does is in ``rounds.repair_round`` and
``journal.repair_import``.
"""

from __future__ import annotations

from typing import Any

from ..config import HnselConfig
from ..errors import StoreError
from ..schema import CLAIM_PREFIX, ROUND_PREFIX
from ..store.leases import ROWS_CLAIM_PREFIX, describe_owner, is_dead
from ..store import Store, open_store
from .journal import repair_import, unfinished_imports, unfinished_ingests
from .rounds import repair_round, restore_marks, unfinished_rounds

__all__ = ["unfinished", "repair_dead", "repair", "lost_marks", "refuse_partial_ingest"]


def unfinished(store: Store) -> list[dict[str, Any]]:
    """One entry per unfinished round or import: what, state, holder, whether it stopped, and a one-line message."""
    out = []
    for log in unfinished_rounds(store):
        state = "stopped: run `hnsel round repair`" if log["dead"] else "still running"
        out.append({"what": f"round {log['round']}", "state": log["state"], "holder": describe_owner(log), "stopped": log["dead"],
                    "message": f"round {log['round']} is {log['state']} by {describe_owner(log)} ({state})"})
    for key, record in unfinished_imports(store):
        state = "stopped: run `hnsel round repair`" if record["dead"] else "still running"
        out.append({"what": f"import of {record.get('path')}", "state": "importing", "holder": describe_owner(record), "stopped": record["dead"],
                    "message": f"import of {record.get('path')} ({key}) is unfinished by {describe_owner(record)} ({state})"})
    for key, record in unfinished_ingests(store):
        files = ", ".join((record.get("files") or {}).values())
        state = "stopped: run `hnsel round repair`, or the same `hnsel ingest` again" if record["dead"] else "still running"
        out.append({"what": f"ingest of {files}", "state": "ingesting", "holder": describe_owner(record), "stopped": record["dead"],
                    "message": f"ingest of {files} ({key}) is unfinished by {describe_owner(record)}: the store holds part of it ({state})"})
    return out


def lost_marks(rounds: list[dict]) -> list[dict]:
    """Entries like ``unfinished``'s for rounds (``rounds.list_rounds`` summaries) whose rows carry fewer marks than
    their log says: a write undid them (``hnsel round repair`` restores them)."""
    out = []
    for r in rounds:
        expected = int(r.get("size") or 0) - int(r.get("released") or 0)
        carried = int(r["annotated"]) + int(r["pending"])
        if not r["unfinished"] and carried < expected:
            out.append({"what": f"round {r['round']}", "state": "marks lost", "holder": "", "stopped": True,
                        "message": f"round {r['round']}: its log says {expected} samples, its rows carry {carried} "
                                   "(a write undid the marks: run `hnsel round repair`)"})
    return out


def refuse_partial_ingest(store: Store) -> None:
    """A store an ingest is still writing, or one a stopped ingest left half written, is no store to select from."""
    for key, record in unfinished_ingests(store):
        files = ", ".join((record.get("files") or {}).values())
        if record["dead"]:
            raise StoreError(f"the store holds part of an ingest of {files} ({describe_owner(record)} stopped before the end); "
                             "run `hnsel round repair` (it finishes it from the files) or the same `hnsel ingest` again, then select")
        raise StoreError(f"an ingest of {files} ({describe_owner(record)}) is still writing to the store; select once it has finished")


def repair_dead(store: Store, force: bool = False) -> list[str]:
    """Finish or roll back every unfinished round and import whose process stopped (all of them with ``force``);
    drop claims such processes left. Returns one line per repair."""
    done = []
    for log in unfinished_rounds(store):
        if force or log["dead"]:
            done.append(repair_round(store, log))
    for key, record in unfinished_imports(store):
        if force or record["dead"]:
            done.append(repair_import(store, key, record))
    claims = store.meta_keys(CLAIM_PREFIX, strong=True)
    # a row-lock claim is never forced: its holder beats while it lives, so a stopped one reads as dead within LEASE_S
    store.delete_meta([k for k in claims if (force and not k.startswith(ROWS_CLAIM_PREFIX)) or is_dead(store.get_meta(k))])
    return done


def repair(config: HnselConfig, force: bool = False) -> dict[str, list[str]]:
    """``hnsel round repair``: repair what stopped processes left (ingests too: ``ingest.finish_ingest``), restore marks a
    write undid (``rounds.restore_marks``); say what is left because its process still runs, or because it cannot be done."""
    from .ingest import finish_ingest  # ingest imports this module

    with open_store(config.store) as store:
        repaired, left = repair_dead(store, force), []
        for key, record in unfinished_ingests(store):
            if force or record["dead"]:
                done, line = finish_ingest(store, key, record, force)
                (repaired if done else left).append(line)
        for key in store.meta_keys(ROUND_PREFIX, strong=True):
            restored = restore_marks(store, store.get_meta(key)) if key[len(ROUND_PREFIX):].isdigit() else None
            if restored:
                (repaired if restored[0] else left).append(restored[1])
        running = [u["message"] for u in unfinished(store) if not u["stopped"]]
        return {"repaired": repaired, "running": running, "left": left}
