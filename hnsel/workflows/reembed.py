"""``hnsel reembed --pretrained NEW.pt``: bring a store to a new model, keeping every round, annotation, pick and release.

Every stored image (from its ``uri``) and caption (from its ``text``) is embedded again with the new model into a pair
of new collections (``{name}__m<generation>``) that no search reads, each row keeping its pool, round, uri, image id
and text. Then one meta write switches both collections and the model record together (``Store.set_metas``), and
the old pair is dropped. The meta collection (round logs, picks, import journals) is never touched, so the ledger is
the same before and after.

A kill at any point leaves the old space intact and in use (``select`` works on it; two models' vectors never meet in
one collection). The ``reembed`` meta record names the new model and collections, so a rerun with the same model
resumes: ids already in the new collections are kept, the rest embedded. Before the switch a second pass brings the
new rows' fields up to date with anything written meanwhile (a round marked, a caption imported). Backbone features
come from the cache ``hnsel train`` wrote (``model.features``) where it holds them: only the heads run.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from ..config import HnselConfig
from ..errors import InputError, StoreError
from ..model.encoder import Encoder, load_encoder
from ..model.features import FeatureCache, backbone_id, encode_vectors
from ..schema import (
    DEFAULT_CACHE_DIR, KINDS, MATCH_META_KEY, MODEL_META_KEY, OPTIONAL_FLOAT_FIELDS, REEMBED_META_KEY, SCALAR_FIELDS, SPACE_META_KEY,
    ProgressFn, describe_model, same_model,
)
from ..store import Store, open_store
from ..store.leases import Lease, describe_owner, is_dead
from .repair import unfinished

__all__ = ["reembed", "ReembedReport", "describe_reembed"]

_INPUT = {"images": ("uri", "image"), "texts": ("text", "text")}  # kind -> (the field re-embedded from, modality)


@dataclass
class ReembedReport:
    model: dict
    previous: dict | None
    collections: dict[str, str] = field(default_factory=dict)  # kind -> the collection now in use
    images_embedded: int = 0
    texts_embedded: int = 0
    images_resumed: int = 0  # already in the new space (an interrupted run's work)
    texts_resumed: int = 0
    rows_updated: int = 0  # new rows whose fields changed in the old space while this ran
    image_features_cached: int = 0  # backbone features read from the cache (only the heads ran)
    text_features_cached: int = 0
    resumed: bool = False
    switched: bool = False
    dropped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    embed_seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def reembed(config: HnselConfig, *, pretrained: str, model_name: str | None = None, device: str = "auto", batch_size: int = 64,
            num_workers: int = 0, cache_dir: str | os.PathLike | None = DEFAULT_CACHE_DIR, encoder: Encoder | None = None,
            on_progress: ProgressFn | None = None) -> ReembedReport:
    """Re-embed every image and caption of the store with ``pretrained`` (and ``model_name``) and switch to it
    (see the module docstring); ``cache_dir=None`` reads and writes no feature cache."""
    encoder = encoder or load_encoder(model_name, pretrained, device)
    start = time.perf_counter()
    with open_store(config.store) as store:
        _check_store(store)
        report = ReembedReport(dict(encoder.model_info), store.get_meta(MODEL_META_KEY, strong=True))
        target = _target(store, encoder, report)
        if target is None:  # the store already holds this model's space
            report.collections = {kind: store.name(kind) for kind in KINDS}
            report.dropped = _drop_leftovers(store, keep=set(report.collections.values()))
            report.seconds = time.perf_counter() - start
            return report
        lease = Lease(store, REEMBED_META_KEY, target)
        lease.update()
        lease.start()
        try:
            new = store.view(target["collections"])
            new.ensure_collections(encoder.dim, uncertainty=encoder.probabilistic)
            cache = FeatureCache(cache_dir, backbone_id(encoder)) if cache_dir is not None else None
            for first in (True, False):  # the second pass catches what other processes wrote meanwhile
                for kind in ("texts", "images"):
                    _fill(store, new, kind, encoder, cache, report, first, batch_size, num_workers, on_progress)
            _switch(store, target, encoder, report)
        except BaseException:
            lease.stop()
            _mark_stopped(store, lease.record)  # a rerun (this process too) resumes it at once
            raise
        finally:
            lease.stop()
        report.dropped = _drop_leftovers(store, keep=set(report.collections.values()))
    report.seconds = time.perf_counter() - start
    return report


def _mark_stopped(store: Store, record: dict) -> None:
    try:
        store.set_meta(REEMBED_META_KEY, dict(record, owner=dict(record["owner"], heartbeat=0)))
    except Exception:  # the store is gone too: the heartbeat ages out (LEASE_S)
        pass


def _check_store(store: Store) -> None:
    """Collections to re-embed exist and are writable, every row has what it is embedded from, nothing else runs."""
    for kind in KINDS:
        if not store.has(kind):
            raise StoreError(f"collection {store.name(kind)} does not exist; embed images and captions first (hnsel embed)")
        if store.read_only(kind):
            raise StoreError(f"collection {store.name(kind)} is configured read_only in hnsel.toml; hnsel reembed rewrites it: "
                             "embed into another --namespace")
    busy = unfinished(store)
    if busy:
        raise StoreError(f"{busy[0]['message']}; hnsel reembed waits until no round or import is unfinished")
    held = store.get_meta(REEMBED_META_KEY, strong=True)
    if held and not is_dead(held):
        raise StoreError(f"another hnsel reembed ({describe_owner(held)}) is running on namespace {store.config.namespace!r}; "
                         "wait for it to finish")
    for kind, (source, _) in _INPUT.items():
        if not store.has_field(kind, source):
            raise InputError(f"collection {store.name(kind)} has no {source} field, so its rows cannot be re-embedded; "
                             "ingest vectors of the new model instead (hnsel ingest)")
        lacking = store.count(kind, store.where(kind, empty=source))
        if lacking:
            what = "images have no uri (ingested as vectors?)" if kind == "images" else "captions have no text (ingested as vectors?)"
            raise InputError(f"{lacking} {what}: they cannot be re-embedded, so nothing was changed; give them a {source} "
                             f"(hnsel embed a manifest with their ids) or ingest the new model's vectors (hnsel ingest)")


def _target(store: Store, encoder: Encoder, report: ReembedReport) -> dict | None:
    """The unfinished re-embed to resume (same model), or a new one; None when the store already holds this model."""
    held = store.get_meta(REEMBED_META_KEY, strong=True)
    if held and same_model(held.get("model") or {}, encoder.model_info):
        report.resumed = True
        return {k: v for k, v in held.items() if k != "owner"}
    if held:  # an abandoned re-embed to another model: its collections go
        for name in held.get("collections", {}).values():
            store.drop_collection(name)
        store.delete_meta([REEMBED_META_KEY])
    if report.previous is not None and same_model(report.previous, encoder.model_info):
        return None
    generation = int((store.get_meta(SPACE_META_KEY, strong=True) or {}).get("generation", 0)) + 1
    names = {kind: f"{store.config.collection_name(kind)}__m{generation}" for kind in KINDS}
    for name in names.values():  # a leftover of a run stopped before its record was written
        store.drop_collection(name)
    return {"model": dict(encoder.model_info), "collections": names, "generation": generation, "started": time.time()}


def _fields(store: Store, kind: str) -> list[str]:
    return [c for c in SCALAR_FIELDS[kind] if store.has_field(kind, c)]


def _fill(store: Store, new: Store, kind: str, encoder: Encoder, cache: FeatureCache | None, report: ReembedReport, first: bool,
          batch_size: int, num_workers: int, on_progress: ProgressFn | None) -> None:
    """One pass over ``kind``'s old rows: rows missing from the new collection are embedded, rows whose fields
    changed are rewritten with their new vector; rows the old collection no longer holds are deleted."""
    fields = _fields(store, kind)
    extra = [c for c in OPTIONAL_FLOAT_FIELDS if new.has_field(kind, c)]
    seen: set[str] = set()
    failures: list[tuple[str, str, str]] = []
    total = store.count(kind)
    page = max(8, min(4096, 8 * batch_size))  # rows written per step: a kill loses at most one page's work
    for batch in store.iter_rows(kind, "", ("id", *fields), batch_size=page):
        ids = [r["id"] for r in batch]
        seen.update(ids)
        held = {r["id"]: r for r in new.get(kind, ids, ["id", "vector", *fields, *extra])}
        missing = [r for r in batch if r["id"] not in held]
        changed = [dict(held[r["id"]], **r) for r in batch if r["id"] in held and any(held[r["id"]][c] != r[c] for c in fields)]
        if first:
            setattr(report, f"{kind}_resumed", getattr(report, f"{kind}_resumed") + len(batch) - len(missing))
        if changed:
            new.upsert(kind, {c: [r[c] for r in changed] for c in ("id", "vector", *fields, *extra)})
            report.rows_updated += len(changed) if not first else 0
        if missing:
            _embed_rows(new, kind, missing, fields, encoder, cache, report, failures, batch_size, num_workers)
        if on_progress is not None:
            on_progress(f"re-embedding {kind}" + ("" if first else " (catching up)"), len(seen), total)
    if failures:
        rid, uri, reason = failures[0]
        raise InputError(f"{len(failures)} {kind} could not be re-embedded (first: id {rid!r}, {uri}: {reason}); nothing was switched and "
                         "the old space is still in use: fix or restore those files, then run hnsel reembed again (it resumes)")
    stale = [i for b in new.iter_rows(kind, "", ("id",)) for i in (r["id"] for r in b) if i not in seen]
    new.delete(kind, stale)


def _embed_rows(new: Store, kind: str, rows: list[dict], fields: list[str], encoder: Encoder, cache: FeatureCache | None,
                report: ReembedReport, failures: list, batch_size: int, num_workers: int) -> None:
    source, modality = _INPUT[kind]
    started = time.perf_counter()
    done, vectors, spread, failed, cached = encode_vectors(encoder, modality, [r[source] for r in rows], cache=cache,
                                                           batch_size=batch_size, num_workers=num_workers)
    report.embed_seconds += time.perf_counter() - started
    failures.extend((rows[i]["id"], rows[i][source], reason) for i, reason in failed)
    if len(done) == 0:
        return
    kept = [rows[i] for i in done]
    data = {"id": [r["id"] for r in kept], "vector": vectors, **{c: [r[c] for r in kept] for c in fields}}
    if spread is not None:
        data["uncertainty"] = spread
    new.upsert(kind, data)
    setattr(report, f"{kind}_embedded", getattr(report, f"{kind}_embedded") + len(kept))
    setattr(report, f"{modality}_features_cached", getattr(report, f"{modality}_features_cached") + cached)


def _switch(store: Store, target: dict, encoder: Encoder, report: ReembedReport) -> None:
    """One upsert switches the collections and the model record together; then the re-embed record goes."""
    names = {store.config.collection_name(kind): name for kind, name in target["collections"].items()}
    records: dict[str, Any] = {SPACE_META_KEY: {"collections": names, "generation": target["generation"]},
                               MODEL_META_KEY: dict(encoder.model_info)}
    match = encoder.text_head.spec.get("match") if encoder.probabilistic else None
    if match is not None:
        records[MATCH_META_KEY] = match
    store.set_metas(records)
    if match is None:
        store.delete_meta([MATCH_META_KEY])
    store.delete_meta([REEMBED_META_KEY])
    store.forget_space()
    report.switched = True
    report.collections = dict(target["collections"])


def _drop_leftovers(store: Store, keep: set[str]) -> list[str]:
    """Drop the collections of earlier spaces (``{name}`` and ``{name}__mN`` not in use, nor being filled)."""
    held = store.get_meta(REEMBED_META_KEY, strong=True)
    keep = keep | set((held or {}).get("collections", {}).values())
    bases = {store.config.collection_name(kind) for kind in KINDS}
    dropped = []
    for name in store.list_collections():
        if name in keep or not any(name == b or re.fullmatch(re.escape(b) + r"__m\d+", name) for b in bases):
            continue
        store.drop_collection(name)
        dropped.append(name)
    return sorted(dropped)


def describe_reembed(record: dict | None) -> str | None:
    """One line for ``hnsel status`` about an unfinished re-embed, or None."""
    if not record:
        return None
    model = record.get("model") or {}
    state = "stopped" if is_dead(record) else f"running ({describe_owner(record)})"
    return (f"re-embed to {describe_model(model)} unfinished, {state}: the old space is in use; run hnsel reembed --pretrained "
            f"{model.get('pretrained')} again to finish")

