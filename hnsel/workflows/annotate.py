"""Annotation export and import for a recorded round.

``export_round`` writes what annotators need (ids, uris; for the text modality the captions) as CSV, JSONL
or Label Studio tasks with a labeling config. ``import_annotations`` reads the result back, all or nothing:
every row is checked (known id, selected in a round, non-empty caption, vectors of the store's model)
before anything is written, and a re-import of the same file writes nothing.

Image modality: each caption becomes a paired text (id ``caption_id`` or ``derive_caption_id``'s
``{image_id}#{sha1(caption)[:16]}``, so several captions per image are kept and the same caption is never stored
twice; for an image id too long for that, a prefix of it and a SHA-256 of both) and its image becomes
paired. Text modality: each picked caption names the image it describes; both become paired.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.annotator_files import EXPORT_FORMATS, Annotation, read_annotations, write_label_studio
from ..data.label_studio import DEFAULT_DOCUMENT_ROOT, ImageUrls
from ..config import HnselConfig
from ..errors import InputError, ModelMismatchError, StoreError
from ..store import Store, open_store
from ..store.leases import row_lock
from ..data.vector_files import unit_rows
from ..tables import write_table
from ..schema import ID_MAX_LENGTH, KIND_OF, MODEL_META_KEY, text_problem
from .journal import begin_import, end_import
from .decisions import read_decisions
from .rounds import round_log, round_picks

__all__ = ["export_round", "ExportReport", "import_annotations", "import_rows", "ImportReport", "round_samples", "label_studio_tasks",
           "image_urls", "derive_caption_id"]



@dataclass
class ExportReport:
    round: int
    modality: str
    format: str
    rows: int
    files: list[str]
    notes: list[str] = field(default_factory=list)  # what the receiving tool needs (Label Studio's local-files settings)


def export_round(config: HnselConfig, number: int, format: str = "csv", out: str | os.PathLike | None = None,
                 include_annotated: bool = False, *, document_root: str | None = None, url_prefix: str | None = None,
                 decisions: str | os.PathLike | None = None) -> ExportReport:
    """Write round ``number``'s samples still waiting for annotation (all of them with ``include_annotated``); with
    ``decisions`` (the report's file, ``workflows.decisions``) only its accepted picks.

    Label Studio tasks name each image by a URL it can serve (``ImageUrls``): local files under ``document_root``
    (default ``config.label_studio``'s, else ``/``) through its local-files storage, or ``url_prefix``.
    """
    if format not in EXPORT_FORMATS:
        raise InputError(f"--format {format!r}: use one of {', '.join(EXPORT_FORMATS)}")
    path = Path(out) if out is not None else Path(f"round-{number:04d}{EXPORT_FORMATS[format]}")
    if path.suffix.lower() != EXPORT_FORMATS[format]:
        raise InputError(f"--format {format} writes a {EXPORT_FORMATS[format]} file; name it so or pick the matching --format", path=path)
    modality, rows = round_samples(config, number, include_annotated)
    if decisions is not None:
        with open_store(config.store) as store:
            only = set(read_decisions(store, decisions, number, round_log(store, number)["kind"]).accepted)
        rows = [r for r in rows if r["id"] in only]
    notes: list[str] = []
    if format == "label-studio":
        urls = image_urls(config, document_root, url_prefix)
        files = [str(p) for p in write_label_studio(path, label_studio_tasks(number, modality, rows, urls), modality)]
        if urls.folders:
            notes.append(f"Label Studio shows these images when it runs with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and "
                         f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={urls.document_root}, and the project has a Local Files storage "
                         f"(not synced) for {', '.join(urls.storage_paths())}; hnsel annotate push sets this up for you")
    elif modality == "image":
        files = [str(write_table(path, {"round": [number] * len(rows), "image_id": [r["id"] for r in rows],
                                        "uri": [r.get("uri", "") for r in rows], "caption": [""] * len(rows)}))]
    else:
        files = [str(write_table(path, {"round": [number] * len(rows), "text_id": [r["id"] for r in rows],
                                        "text": [r.get("text", "") for r in rows], "image_id": [""] * len(rows)}))]
    return ExportReport(number, modality, format, len(rows), files, notes)


def round_samples(config: HnselConfig, number: int, include_annotated: bool = False) -> tuple[str, list[dict]]:
    """(modality, rows sorted by id with ``id`` and ``uri`` or ``text``) of round ``number``'s samples awaiting annotation."""
    with open_store(config.store) as store:
        log = round_log(store, number)
        modality, kind = log["modality"], log["kind"]
        extra = ("uri",) if kind == "images" else ("text",)
        extra = tuple(c for c in extra if store.has_field(kind, c))
        if store.rounds_in_meta(kind):  # a read_only collection's round: its picks are kept in the meta collection
            picked = (round_picks(store, number) or {"ids": []})["ids"]
            f = store.fields(kind)
            by_pool = not include_annotated and store.has_field(kind, "pool") and not (f.paired_filter or f.unpaired_filter)
            rows = sorted((r for r in store.get(kind, picked, ("id", *(("pool",) if by_pool else ()), *extra))
                           if not by_pool or r["pool"] == "unpaired"), key=lambda r: r["id"])
        else:
            expr = store.where(kind, round=number, pool=None if include_annotated else "unpaired")
            rows = sorted((r for batch in store.iter_rows(kind, expr, ("id", *extra)) for r in batch), key=lambda r: r["id"])
    return modality, rows


def image_urls(config: HnselConfig, document_root: str | None = None, url_prefix: str | None = None) -> ImageUrls:
    """The uri -> URL mapping of Label Studio tasks: the arguments, then ``config.label_studio`` (hnsel.toml, or
    ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``, the variable Label Studio itself reads), then Label Studio's default ``/``."""
    settings = config.label_studio
    root = document_root or settings.document_root or DEFAULT_DOCUMENT_ROOT
    return ImageUrls(document_root=os.path.abspath(root), url_prefix=url_prefix or settings.url_prefix)


def label_studio_tasks(number: int, modality: str, rows: list[dict], urls: ImageUrls) -> list[dict]:
    """One task per sample: ``data`` holds the id (a string, read back by import) and the image URL or caption."""
    if modality == "image":
        return [{"data": {"image": urls(r["id"], r.get("uri", "")), "image_id": r["id"], "round": number}} for r in rows]
    return [{"data": {"text": r.get("text", ""), "text_id": r["id"], "round": number}} for r in rows]


@dataclass
class ImportReport:
    path: str
    modality: str
    rows: int
    texts_written: int = 0
    texts_unchanged: int = 0
    images_paired: int = 0
    images_already_paired: int = 0
    rounds: dict[int, int] = field(default_factory=dict)  # round -> rows from it
    repaired: list[str] = field(default_factory=list)  # unfinished work of stopped processes finished or rolled back first

    def summary(self) -> dict[str, Any]:
        return dict(self.__dict__, rounds={str(k): v for k, v in sorted(self.rounds.items())})


def import_annotations(config: HnselConfig, path: str | os.PathLike, *, encoder: Any = None, model_name: str | None = None,
                       pretrained: str | None = None, device: str = "auto") -> ImportReport:
    """Validate every row of ``path`` against the store, embed captions, then write (see the module docstring).

    ``encoder`` embeds the captions (it must match the store's ``model`` record); without one, the model the store's
    record names is loaded (``model_name``/``pretrained`` override the record's), and rows giving a ``vector`` need none.
    """
    modality, rows = read_annotations(path)
    return import_rows(config, str(path), modality, rows, encoder=encoder, model_name=model_name, pretrained=pretrained, device=device)


def import_rows(config: HnselConfig, source: str, modality: str, rows: list[Annotation], *, encoder: Any = None,
                model_name: str | None = None, pretrained: str | None = None, device: str = "auto") -> ImportReport:
    """``import_annotations`` of rows already read (``source`` names where they came from: a file, a Label Studio project)."""
    from .repair import repair_dead

    def load_encoder(record: dict) -> Any:
        from ..model.encoder import load_encoder as load

        return load(model_name or record.get("model_name"), pretrained or record.get("pretrained"), device)

    report = ImportReport(source, modality, len(rows))
    with open_store(config.store) as store:
        for kind in KIND_OF.values():
            if not store.has(kind):
                raise StoreError(f"collection {store.name(kind)} does not exist; nothing was ever selected from this store")
            if store.read_only(kind):
                raise StoreError(f"collection {store.name(kind)} is read_only in hnsel.toml; annotations cannot be imported into it")
        report.repaired = repair_dead(store)
        if not rows:
            return report
        if modality == "image":
            texts, images = _plan_captions(store, rows, report, encoder, load_encoder)
        else:
            texts, images = _plan_matches(store, rows, report)
        lease = begin_import(store, source, modality, texts, images) if texts or images else None
        try:
            with row_lock(store):  # the images as stored now (an ingest may have rewritten them since they were read), then paired
                if texts:
                    store.upsert("texts", _columns(texts, ("id", "vector", "pool", "image_id", "text", "round", "uncertainty")))
                fresh = store.get("images", [i["id"] for i in images], ["id", "vector", "pool", "uri", "round"], strong=True) if images else []
                if fresh:
                    store.upsert("images", _columns([dict(i, pool="paired") for i in fresh], ("id", "vector", "pool", "uri", "round")))
        except BaseException:
            if lease is not None:
                lease.stop()  # the journal stays for repair_import; without heartbeats it reads as stopped
            raise
        if lease is not None:
            end_import(store, lease)
        report.texts_written, report.images_paired = len(texts), len(images)
    return report


def _columns(rows: list[dict], names: tuple[str, ...]) -> dict[str, list]:
    """Rows as columns; a name no row holds is left out (the store keeps or defaults it)."""
    return {n: [r.get(n, "") for r in rows] for n in names if any(n in r for r in rows)}


def _selected_images(store: Store, rows: list[Annotation], report: ImportReport) -> dict[str, dict]:
    """The images the rows name, each checked to exist and to carry a round."""
    ids = sorted({a.image_id for a in rows if a.image_id})
    found = {r["id"]: r for r in store.get("images", ids, ["id", "vector", "pool", "uri", "round"])}
    for a in rows:
        image = found.get(a.image_id)
        if not a.image_id:
            raise InputError(f"{a.where}: empty image_id; every row names the image it annotates")
        if image is None:
            raise InputError(f"{a.where}: image {a.image_id!r} is not in the store (namespace {store.config.namespace!r}); fix the id")
        if int(image.get("round", -1)) < 1:
            raise InputError(f"{a.where}: image {a.image_id!r} was not selected in any round (or was released); "
                             "import annotations only for selected images (hnsel round list)")
        report.rounds[int(image["round"])] = report.rounds.get(int(image["round"]), 0) + 1
    return found


def derive_caption_id(image_id: str, caption: str) -> str:
    """The id of a caption given without one: ``{image_id}#{sha1(caption)[:16]}``; when that would pass the id limit
    (an image id near 512 bytes), ``{image_id's first bytes}#{sha256(image_id, caption)}``, which always fits. The same
    (image, caption) always gives the same id, so a re-import writes nothing; the two forms never collide (16 against 64
    hex digits after the last ``#``)."""
    short = f"{image_id}#{hashlib.sha1(caption.encode('utf-8')).hexdigest()[:16]}"
    if len(short.encode("utf-8")) <= ID_MAX_LENGTH:
        return short
    digest = hashlib.sha256(image_id.encode("utf-8") + b"\0" + caption.encode("utf-8")).hexdigest()
    head = image_id.encode("utf-8")[:ID_MAX_LENGTH - len(digest) - 1].decode("utf-8", "ignore")  # whole characters only
    return f"{head}#{digest}"


def _caption_rows(rows: list[Annotation]) -> dict[str, Annotation]:
    """Caption id -> row; identical duplicates collapse, an id reused for another caption is refused."""
    out: dict[str, Annotation] = {}
    for a in rows:
        if not a.caption:
            raise InputError(f"{a.where}: empty caption for image {a.image_id!r}; write the caption or drop the row")
        problem = text_problem("text", a.caption)
        if problem:
            raise InputError(f"{a.where}: caption {problem.partition(' ')[2]}")
        cid = a.caption_id or derive_caption_id(a.image_id, a.caption)
        problem = text_problem("id", cid)
        if problem:
            raise InputError(f"{a.where}: caption id {problem.partition(' ')[2]}")
        held = out.get(cid)
        if held is not None and (held.caption, held.image_id) != (a.caption, a.image_id):
            raise InputError(f"{a.where}: caption id {cid!r} is also used by {held.where} for another caption; give each caption its own id")
        out.setdefault(cid, a)
    return out


def _caption_vectors(store: Store, captions: dict[str, Annotation], new: list[str], encoder: Any,
                     load_encoder) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Vectors of the ``new`` captions: as given (every row's checked: dimension, non-zero) or embedded with the store's
    model; with them, each embedded caption's summed variance when the model is probabilistic (else none)."""
    given = [a for a in captions.values() if a.vector is not None]
    if given and len(given) != len(captions):
        first = next(a for a in captions.values() if a.vector is None)
        raise InputError(f"{first.where}: no vector, while other rows give one; give a vector on every row or on none")
    dim = store.dim
    if given:
        out = {}
        for cid, a in captions.items():
            unit, bad = unit_rows(np.asarray([a.vector], dtype=np.float64)) if len(a.vector) == dim else (None, (0, "wrong dimension"))
            if bad is not None:
                raise InputError(f"{a.where}: vector has {len(a.vector)} values ({bad[1]}); the store holds non-zero finite {dim}-dimensional "
                                 "vectors of its model; compute the vectors with that model")
            out[cid] = unit[0]
        return {cid: out[cid] for cid in new}, {}
    if not new:
        return {}, {}
    vectors, spread = _embed(store, [captions[cid].caption for cid in new], encoder, load_encoder)
    return dict(zip(new, vectors)), ({} if spread is None else dict(zip(new, spread)))


def _embed(store: Store, texts: list[str], encoder: Any, load_encoder) -> tuple[np.ndarray, np.ndarray | None]:
    held = store.get_meta(MODEL_META_KEY)
    if held is None:
        raise ModelMismatchError(f"namespace {store.config.namespace!r} has no model record (its vectors were ingested from files), so captions "
                                 "cannot be embedded here; give each row a vector column computed with the store's model")
    if encoder is None:
        encoder = load_encoder(held)
    store.check_model(encoder.model_info)
    parts = [encoder.text_batch(texts[s:s + 64]) for s in range(0, len(texts), 64)]
    spread = None if any(u is None for _, u in parts) else np.concatenate([u for _, u in parts])
    return np.concatenate([v for v, _ in parts]), spread


def _plan_captions(store: Store, rows: list[Annotation], report: ImportReport, encoder: Any, load_encoder) -> tuple[list[dict], list[dict]]:
    images = _selected_images(store, rows, report)
    captions = _caption_rows(rows)
    existing = {r["id"]: r for r in store.get("texts", list(captions), ["id", "pool", "image_id", "text"])}
    new = {}
    for cid, a in captions.items():
        held = existing.get(cid)
        if held is None:
            new[cid] = a
        elif (held["image_id"], held["text"], held["pool"]) != (a.image_id, a.caption, "paired"):
            raise InputError(f"{a.where}: caption id {cid!r} already holds another text in the store; give this caption a new id")
    report.texts_unchanged = len(captions) - len(new)
    vectors, spread = _caption_vectors(store, captions, list(new), encoder, load_encoder)
    texts = [{"id": cid, "vector": vectors[cid], "pool": "paired", "image_id": a.image_id, "text": a.caption, "round": -1,
              **({"uncertainty": spread[cid]} if cid in spread else {})} for cid, a in new.items()]
    return texts, _to_pair(images, {a.image_id for a in rows}, report)


def _to_pair(images: dict[str, dict], named: set[str], report: ImportReport) -> list[dict]:
    """Image rows to rewrite as paired (those named and not yet paired)."""
    out = [dict(images[i], pool="paired") for i in sorted(named) if images[i]["pool"] != "paired"]
    report.images_already_paired = len(named) - len(out)
    return out


def _plan_matches(store: Store, rows: list[Annotation], report: ImportReport) -> tuple[list[dict], list[dict]]:
    """Text modality: each picked caption (``text_id``) names the image it describes (``image_id``)."""
    ids = sorted({a.text_id for a in rows})
    held = {r["id"]: r for r in store.get("texts", ids, ["id", "vector", "pool", "image_id", "text", "round"])}
    images = {r["id"]: r for r in store.get("images", sorted({a.image_id for a in rows}), ["id", "vector", "pool", "uri", "round"])}
    chosen: dict[str, Annotation] = {}
    for a in rows:
        text = held.get(a.text_id)
        if text is None:
            raise InputError(f"{a.where}: caption {a.text_id!r} is not in the store; fix the text_id")
        if int(text.get("round", -1)) < 1:
            raise InputError(f"{a.where}: caption {a.text_id!r} was not selected in any round (or was released)")
        if not a.image_id or a.image_id not in images:
            raise InputError(f"{a.where}: image {a.image_id!r} is not in the store; embed or ingest the image first, then import")
        other = chosen.get(a.text_id)
        if (other and other.image_id != a.image_id) or (text["pool"] == "paired" and text["image_id"] != a.image_id):
            raise InputError(f"{a.where}: caption {a.text_id!r} is matched to two images; a caption describes one image")
        chosen[a.text_id] = a
        report.rounds[int(text["round"])] = report.rounds.get(int(text["round"]), 0) + 1
    texts = [dict(held[t], pool="paired", image_id=a.image_id) for t, a in chosen.items() if held[t]["pool"] != "paired"]
    report.texts_unchanged = len(chosen) - len(texts)
    return texts, _to_pair(images, {a.image_id for a in rows}, report)
