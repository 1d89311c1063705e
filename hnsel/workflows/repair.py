"""Unfinished work a stopped process left behind: rounds still ``reserved``/``recording``, imports still ``importing``.

``unfinished`` lists them (``hnsel status`` and ``hnsel round list`` print it); ``repair_dead`` finishes or rolls
back those whose process stopped (the next recording ``hnsel select`` and ``hnsel annotate import`` run it);
``repair`` is ``hnsel round repair``. What each repair does is in ``rounds.repair_round`` and
``journal.repair_import``.
"""

from __future__ import annotations

from typing import Any

from ..config import HnselConfig
from ..schema import CLAIM_PREFIX
from ..store.leases import describe_owner, is_dead
from ..store import Store, open_store
from .journal import repair_import, unfinished_imports
from .rounds import repair_round, unfinished_rounds

__all__ = ["unfinished", "repair_dead", "repair"]


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
    return out


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
    store.delete_meta([k for k in claims if force or is_dead(store.get_meta(k))])
    return done


def repair(config: HnselConfig, force: bool = False) -> dict[str, list[str]]:
    """``hnsel round repair``: repair what stopped processes left; say what is left because its process still runs."""
    with open_store(config.store) as store:
        repaired = repair_dead(store, force)
        running = [u["message"] for u in unfinished(store) if not u["stopped"]]
        return {"repaired": repaired, "running": running}
