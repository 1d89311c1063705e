"""The decisions file the report's page downloads: ``{"round": N, "accepted": [ids], "rejected": [ids]}``.

``hnsel round release --round N --from FILE`` releases the rejected picks, ``hnsel annotate export --round N --from
FILE`` exports only the accepted ones. ``read_decisions`` checks the whole file before either writes anything: the
round matches, the lists hold strings, no id is both accepted and rejected, and every id is a pick of the round (its
kept picks, or for a round recorded before picks were kept, the samples still marked with it). Ids are compared
exactly as written: never stripped or case-folded.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..store import Store
from .rounds import round_picks

__all__ = ["Decisions", "read_decisions"]

KEYS = ("round", "accepted", "rejected")


@dataclass(frozen=True)
class Decisions:
    path: str
    round: int
    accepted: tuple[str, ...]
    rejected: tuple[str, ...]


def _load(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("no such decisions file; download it from the report's page (download decisions)", path=path) from None
    except IsADirectoryError:
        raise InputError("a folder, not a decisions file", path=path) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"not a decisions file: {type(exc).__name__}: {str(exc)[:120]}", path=path) from None
    if not isinstance(doc, dict) or any(k not in doc for k in KEYS):
        raise InputError('not a decisions file: expected {"round": N, "accepted": [ids], "rejected": [ids]} as the report downloads it', path=path)
    return doc


def _ids(doc: dict, key: str, path: Path) -> tuple[str, ...]:
    values = doc[key]
    if not isinstance(values, list):
        raise InputError(f'"{key}" must be a list of ids, not {type(values).__name__}', path=path)
    for n, value in enumerate(values):
        if not isinstance(value, str):
            raise InputError(f'"{key}" item {n + 1} is {json.dumps(value)[:40]}, not an id (a string)', path=path)
    return tuple(values)


def _round_ids(store: Store, number: int, kind: str) -> set[str]:
    kept = round_picks(store, number)
    if kept is not None:
        return set(kept["ids"])
    return {r["id"] for batch in store.iter_rows(kind, store.where(kind, round=number), ("id",)) for r in batch}


def read_decisions(store: Store, path: str | os.PathLike, number: int, kind: str) -> Decisions:
    """The decisions in ``path`` for round ``number`` (whose picks are in collection ``kind``), checked whole."""
    path = Path(path)
    doc = _load(path)
    got = doc["round"]
    if isinstance(got, bool) or not isinstance(got, int):
        raise InputError(f'"round" is {json.dumps(got)[:40]}, not a round number', path=path)
    if got != number:
        raise InputError(f"these are the decisions of round {got}, not round {number}: pass --round {got}, or the file of round {number}", path=path)
    accepted, rejected = _ids(doc, "accepted", path), _ids(doc, "rejected", path)
    both = sorted(set(accepted) & set(rejected))
    if both:
        raise InputError(f"id {both[0]!r} is both accepted and rejected ({len(both)} such ids); decide once per pick", path=path)
    picks = _round_ids(store, number, kind)
    for key, ids in (("accepted", accepted), ("rejected", rejected)):
        stray = [i for i in ids if i not in picks]
        if stray:
            raise InputError(f"{key} id {stray[0]!r} is not a pick of round {number} ({len(stray)} such ids); "
                             "use the file the report of this round downloaded", path=path)
    return Decisions(str(path), number, accepted, rejected)
