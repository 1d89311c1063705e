"""What ``hnsel embed`` adds for a user's own files: the same photo under a second id, and captions for images
already stored unpaired.

Duplicates: every local image of a source is hashed (sha256 of the file's bytes) before anything is written. A
file whose content is stored under another id (``store.digests``), or listed twice in the source under two ids, is
refused in one line naming both ids, unless ``allow`` (``--allow-duplicates``) embeds it anyway and lists it.
After the run the digests of the images now stored are recorded. URLs are not downloaded twice to be hashed and
shards are checked by id only.

Pairing: a manifest that captions images a folder embedding stored unpaired (the same ids: a manifest without an id
column names an image by its path relative to the images folder, as the folder reader does) embeds those captions
and moves the images to the paired pool, captions first, so a paired image always has its captions stored.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..data.images import is_remote
from ..data.records import Dataset, ImageRecord
from ..errors import InputError
from ..store import Store
from ..store.digests import digest_owners, record_digests

__all__ = ["file_digest", "image_digests", "check_duplicates", "record_stored_digests", "pair_stored"]

HASH_CHUNK = 1 << 20


def file_digest(uri: str | None) -> str | None:
    """sha256 (hex) of a local file's bytes; None for a URL or a file that cannot be read (embed lists it as a failure)."""
    if not uri or is_remote(uri):
        return None
    digest = hashlib.sha256()
    try:
        with open(uri.removeprefix("file://"), "rb") as handle:
            while block := handle.read(HASH_CHUNK):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def image_digests(images: list[ImageRecord], workers: int = 4) -> dict[str, str]:
    """image id -> digest for every local, readable image (hashing releases the GIL: a few threads read in parallel)."""
    with ThreadPoolExecutor(max(1, min(workers, os.cpu_count() or 1))) as pool:
        found = pool.map(lambda r: file_digest(r.uri) if r.data is None else hashlib.sha256(r.data).hexdigest(), images)
        return {r.id: d for r, d in zip(images, found) if d is not None}


def check_duplicates(store: Store | None, dataset: Dataset, allow: bool = False) -> tuple[dict[str, str], list[dict]]:
    """(image id -> digest, duplicates): each duplicate ``{"id", "uri", "same_as", "stored"}``. Without ``allow`` the
    first one is an ``InputError`` naming both ids. ``store`` None (bulk files): only the source itself is checked.
    Images stored before digests were kept are found by their uri (the same file path under another id)."""
    digests = image_digests(dataset.images)
    first: dict[str, str] = {}
    duplicates = []
    owners = digest_owners(store, list(set(digests.values()))) if store is not None else {}
    uris = {r.id: r.uri or "" for r in dataset.images}
    by_uri = _stored_by_uri(store, [u for u in uris.values() if u]) if store is not None else {}
    for record in dataset.images:
        rid, digest = record.id, digests.get(record.id)
        owner, stored = owners.get(digest) if digest else None, True
        if owner is None or owner == rid:
            owner = by_uri.get(uris[rid])
        if owner is None or owner == rid:
            owner, stored = (first.setdefault(digest, rid) if digest else rid), False
        if owner != rid:
            duplicates.append({"id": rid, "uri": uris[rid], "same_as": owner, "stored": stored})
    if duplicates and not allow:
        d = duplicates[0]
        where = "already stored under id" if d["stored"] else "also listed in this source under id"
        more = f" ({len(duplicates)} such images)" if len(duplicates) > 1 else ""
        raise InputError(f"image {d['id']!r} ({d['uri']}) is the same file as image {d['same_as']!r}, {where} {d['same_as']!r}{more}; "
                         "nothing was embedded: give it the same id (a manifest without --id-column names an image by its path relative "
                         "to --images-dir, as a folder does), or pass --allow-duplicates to store it twice", path=dataset.source or None)
    return digests, duplicates


def _stored_by_uri(store: Store, uris: list[str]) -> dict[str, str]:
    """uri -> id of a stored image with that uri (local paths are stored absolute, as the readers resolve them)."""
    if not store.has("images") or not store.has_field("images", "uri"):
        return {}
    out: dict[str, str] = {}
    for start in range(0, len(uris), 500):
        for batch in store.iter_rows("images", store.where("images", uris=uris[start:start + 500]), ("id", "uri")):
            for row in batch:
                out.setdefault(row["uri"], row["id"])
    return out


def record_stored_digests(store: Store, digests: dict[str, str]) -> int:
    """Record the digests of the images of ``digests`` that are now stored (failed images are not)."""
    ids = list(digests)
    stored = set()
    for start in range(0, len(ids), 4096):
        stored |= store.existing_ids("images", ids[start:start + 4096])
    return record_digests(store, {digests[i]: i for i in ids if i in stored})


def pair_stored(store: Store, dataset: Dataset, encoder: Any, batch_size: int) -> tuple[int, int]:
    """Captions for images stored unpaired that ``dataset`` pairs: captions written, then the images moved to paired.
    Returns (images paired, captions written)."""
    paired = {r.id: r for r in dataset.images if r.pool == "paired" and r.captions}
    ids = list(paired)
    todo: list[ImageRecord] = []
    for start in range(0, len(ids), 4096):
        rows = store.get("images", ids[start:start + 4096], ["id", "pool"])
        todo.extend(paired[r["id"]] for r in rows if r["pool"] == "unpaired")
    captions = [(r.id, cid, text) for r in todo for cid, text in zip(r.caption_ids, r.captions)]
    for start in range(0, len(captions), batch_size):
        part = captions[start:start + batch_size]
        vectors, spread = encoder.text_batch([c[2] for c in part])
        data = {"id": [c[1] for c in part], "vector": vectors, "pool": ["paired"] * len(part), "image_id": [c[0] for c in part],
                "text": [c[2] for c in part], **({} if spread is None else {"uncertainty": spread})}
        store.upsert("texts", data)
    if todo:
        store.update("images", [r.id for r in todo], {"pool": "paired"})
    return len(todo), len(captions)
