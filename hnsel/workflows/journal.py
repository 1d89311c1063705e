"""The journals: what an ``hnsel annotate import`` or an ``hnsel ingest`` was writing, so a stopped one is seen,
and finished or undone.

``begin_import`` holds an ``import/<id>`` lease and writes the plan (text ids with their image, image ids) before any
row; ``end_import`` drops it once every row is written. ``unfinished_imports`` lists imports still ``importing``;
``repair_import`` finishes or rolls back one whose process stopped (``repair.repair_dead`` calls it).

``begin_ingest`` holds an ``ingest/<id>`` lease naming the files (path, size, modification time) before the first row;
``end_ingest`` drops it after the last, with the records of stopped ingests of the same files (this run wrote what they
meant to). ``unfinished_ingests`` lists them: ``hnsel status`` shows them, ``hnsel select`` refuses a store holding one,
``hnsel round repair`` finishes one from its unchanged files (``ingest.finish_ingest``).
"""

from __future__ import annotations

import json
import os
import uuid

from ..schema import IMPORT_PREFIX, INGEST_PREFIX
from ..store import Store
from ..store.leases import Lease, describe_owner, is_dead

__all__ = ["begin_import", "end_import", "unfinished_imports", "repair_import", "begin_ingest", "end_ingest", "unfinished_ingests",
           "file_stamp"]

JOURNAL_PIECE_CHARS = 30_000  # json.dumps of a piece at most doubles it: under the meta record's 65535


def begin_import(store: Store, path: str | os.PathLike, modality: str, texts: list[dict], images: list[dict]) -> Lease:
    """The held ``import/<id>`` record (state ``importing``), then the plan (text ids with their image, image ids) in
    ``import/<id>/NNNNN`` records; all go once every row is written. A missing piece means no row was written yet."""
    key = f"{IMPORT_PREFIX}{uuid.uuid4().hex[:16]}"
    plan = json.dumps({"texts": [[t["id"], t["image_id"]] for t in texts], "images": [i["id"] for i in images]})  # ASCII: escapes, no raw UTF-8
    pieces = [plan[i:i + JOURNAL_PIECE_CHARS] for i in range(0, len(plan), JOURNAL_PIECE_CHARS)]
    lease = Lease(store, key, {"state": "importing", "path": str(path), "modality": modality, "pieces": len(pieces),
                               "texts": len(texts), "images": len(images)})
    lease.update()
    for number, piece in enumerate(pieces):
        store.set_meta(f"{key}/{number:05d}", piece)
    return lease.start()


def end_import(store: Store, lease: Lease) -> None:
    lease.stop()
    store.delete_meta([lease.key])
    store.delete_meta([f"{lease.key}/{n:05d}" for n in range(lease.record["pieces"])])


def unfinished_imports(store: Store) -> list[tuple[str, dict]]:
    """(key, record with ``dead``) of each import still ``importing``."""
    keys = [k for k in store.meta_keys(IMPORT_PREFIX, strong=True) if "/" not in k[len(IMPORT_PREFIX):]]
    records = [(k, store.get_meta(k)) for k in keys]  # after the Strong listing, Session reads see as much
    return [(k, dict(r, dead=is_dead(r))) for k, r in records if r]


def repair_import(store: Store, key: str, record: dict) -> str:
    """Finish or undo an import a stopped process left ``importing``; says what it did (one line).

    Text modality, or image modality with every new caption stored: finished (captions and images made paired).
    Image modality with captions missing (their vectors are gone with the process): the captions it stored are
    deleted, so nothing is half paired; import the file again.
    """
    pieces = [store.get_meta(f"{key}/{n:05d}") for n in range(int(record.get("pieces", 0)))]
    where = f"import of {record.get('path')} by {describe_owner(record)}, which stopped,"
    if any(p is None for p in pieces):
        store.delete_meta([key] + [f"{key}/{n:05d}" for n in range(len(pieces))])
        return f"{where} had not written anything yet: dropped its record; import the file again"
    plan = json.loads("".join(pieces))
    text_ids = [t for t, _ in plan["texts"]]
    present = {r["id"]: r for r in store.get("texts", text_ids, ["id", "pool", "image_id"])}
    if record.get("modality") == "image" and len(present) < len(text_ids):
        store.delete("texts", list(present))
        outcome = f"rolled back ({len(present)} of its {len(text_ids)} captions removed); import the file again"
    else:
        for text_id, image_id in plan["texts"]:
            if (present.get(text_id) or {}).get("pool") != "paired" or present[text_id].get("image_id") != image_id:
                store.update("texts", [text_id], {"pool": "paired", "image_id": image_id})
        store.update("images", plan["images"], {"pool": "paired"})
        outcome = f"finished ({len(text_ids)} captions and {len(plan['images'])} images paired)"
    store.delete_meta([key] + [f"{key}/{n:05d}" for n in range(len(pieces))])
    return f"{where} {outcome}"


def file_stamp(path: str | os.PathLike) -> list[int]:
    """[size, modification time in ns] of a file: what tells whether a stopped ingest's file is still the one it read."""
    st = os.stat(path)
    return [int(st.st_size), int(st.st_mtime_ns)]


def begin_ingest(store: Store, files: dict[str, str], rows: dict[str, int], model_name: str | None = None) -> Lease:
    """The held ``ingest/<id>`` record (state ``ingesting``): ``files`` (kind -> absolute path) with their stamps and
    row counts, written before the first row."""
    record = {"state": "ingesting", "files": dict(files), "stamps": {k: file_stamp(p) for k, p in files.items()}, "rows": dict(rows),
              "model_name": model_name}
    lease = Lease(store, f"{INGEST_PREFIX}{uuid.uuid4().hex[:16]}", record)
    lease.update()
    return lease.start()


def end_ingest(store: Store, lease: Lease) -> list[str]:
    """Every row is written: drop the record, and those of stopped ingests of the same files (returns their keys)."""
    lease.stop()
    files = set(lease.record["files"].items())
    done = [k for k, r in unfinished_ingests(store) if k != lease.key and r["dead"] and set((r.get("files") or {}).items()) <= files]
    store.delete_meta([lease.key, *done])
    return done


def unfinished_ingests(store: Store) -> list[tuple[str, dict]]:
    """(key, record with ``dead``) of each ingest still ``ingesting``."""
    records = [(k, store.get_meta(k)) for k in store.meta_keys(INGEST_PREFIX, strong=True)]  # Session reads after the Strong listing
    return [(k, dict(r, dead=is_dead(r))) for k, r in records if r]
