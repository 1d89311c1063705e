"""Caption annotation files: COCO ``captions_*.json`` and Karpathy-split ``dataset_*.json``.

COCO: image id = ``images[].id``, caption id = ``annotations[].id``, uri = ``images_dir / file_name``.
Karpathy: image id = ``cocoid`` when present (COCO) or the file name's stem (Flickr), caption id =
``sentid``, uri = ``images_dir / filepath / filename`` (``filepath`` when the entry has one), split kept.
``images_dir`` defaults to the JSON file's folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import InputError
from .records import Dataset, ImageRecord

__all__ = ["read_json", "read_coco", "read_karpathy", "json_kind"]


def read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON (line {exc.lineno}: {exc.msg})", path=path) from None
    except ValueError as exc:  # not UTF-8, or an integer of more digits than Python converts (4,300)
        raise InputError(f"not usable JSON ({' '.join(str(exc).split())[:200]})", path=path) from None


def json_kind(doc: Any) -> str | None:
    """``coco``, ``karpathy`` or None for a parsed JSON document."""
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        return None
    if "annotations" in doc:
        return "coco"
    first = doc["images"][0] if doc["images"] else {}
    if isinstance(first, dict) and "sentences" in first:
        return "karpathy"
    return None


def _base(path: Path, images_dir: str | os.PathLike | None) -> Path:
    return Path(os.path.abspath(images_dir if images_dir is not None else path.parent))


def read_coco(path: str | os.PathLike, images_dir: str | os.PathLike | None = None, doc: Any = None) -> Dataset:
    path = Path(path)
    doc = read_json(path) if doc is None else doc
    if json_kind(doc) != "coco":
        raise InputError("not a COCO captions file (needs 'images' and 'annotations' lists)", path=path)
    base = _base(path, images_dir)
    captions: dict[str, list[tuple[str, str]]] = {}
    seen: set[str] = set()
    for n, ann in enumerate(doc["annotations"], start=1):
        try:
            image_id, text_id, caption = str(ann["image_id"]), str(ann["id"]), str(ann["caption"]).strip()
        except (KeyError, TypeError):
            raise InputError("annotation lacks image_id, id or caption", path=path, row=n) from None
        if text_id in seen:
            raise InputError(f"annotation id {text_id!r} appears twice", path=path, row=n)
        seen.add(text_id)
        captions.setdefault(image_id, []).append((text_id, caption))
    images, ids = [], set()
    for n, img in enumerate(doc["images"], start=1):
        try:
            image_id, file_name = str(img["id"]), str(img["file_name"])
        except (KeyError, TypeError):
            raise InputError("image entry lacks id or file_name", path=path, row=n) from None
        if image_id in ids:
            raise InputError(f"image id {image_id!r} appears twice", path=path, row=n)
        ids.add(image_id)
        caps = captions.pop(image_id, [])
        images.append(ImageRecord(image_id, str(base / file_name), tuple(c for _, c in caps), tuple(i for i, _ in caps)))
    if captions:
        orphan = next(iter(captions))
        raise InputError(f"{len(captions)} image id(s) have captions but no image entry (first: {orphan!r})", path=path)
    return Dataset(images, [], str(path))


def read_karpathy(path: str | os.PathLike, images_dir: str | os.PathLike | None = None, doc: Any = None) -> Dataset:
    path = Path(path)
    doc = read_json(path) if doc is None else doc
    if json_kind(doc) != "karpathy" and not (isinstance(doc, dict) and doc.get("images") == []):
        raise InputError("not a Karpathy-split file (needs 'images' entries with 'filename' and 'sentences')", path=path)
    base = _base(path, images_dir)
    images, ids, text_ids = [], set(), set()
    for n, img in enumerate(doc["images"], start=1):
        try:
            filename, sentences = str(img["filename"]), img["sentences"]
        except (KeyError, TypeError):
            raise InputError("image entry lacks filename or sentences", path=path, row=n) from None
        image_id = str(img["cocoid"]) if "cocoid" in img else Path(filename).stem
        if image_id in ids:
            raise InputError(f"image id {image_id!r} appears twice", path=path, row=n)
        ids.add(image_id)
        caps, cap_ids = [], []
        for k, sentence in enumerate(sentences):
            text_id = str(sentence.get("sentid", f"{image_id}#{k}"))
            if text_id in text_ids:
                raise InputError(f"sentid {text_id!r} appears twice", path=path, row=n)
            text_ids.add(text_id)
            caps.append(str(sentence.get("raw") or " ".join(sentence.get("tokens", []))).strip())
            cap_ids.append(text_id)
        uri = base / img.get("filepath", "") / filename
        images.append(ImageRecord(image_id, str(uri), tuple(caps), tuple(cap_ids), img.get("split")))
    return Dataset(images, [], str(path))
