"""Annotation files: writing what annotators need, reading what they send back. No store access here.

Formats: CSV and JSONL rows (image modality: ``image_id, caption`` with optional ``caption_id`` and
``vector``; text modality: ``text_id, image_id``), and Label Studio (tasks out, a JSON export back in).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .errors import InputError
from .tables import iter_jsonl, write_text_atomic

__all__ = ["EXPORT_FORMATS", "LABEL_CONFIGS", "Annotation", "read_annotations", "write_label_studio"]

EXPORT_FORMATS = {"csv": ".csv", "jsonl": ".jsonl", "label-studio": ".json"}

LABEL_CONFIGS = {
    # Write captions for a picked image (several per image are allowed).
    "image": """<View>
  <Header value="Describe the image in one sentence"/>
  <Image name="image" value="$image"/>
  <TextArea name="caption" toName="image" placeholder="A caption..." rows="2" editable="true" maxSubmissions="5" required="true"/>
</View>
""",
    # The mirror: find the image a picked caption describes and give its id.
    "text": """<View>
  <Header value="Find the image this caption describes and enter its id"/>
  <Text name="caption" value="$text"/>
  <TextArea name="image_id" toName="caption" placeholder="image id" rows="1" editable="true" maxSubmissions="1" required="true"/>
</View>
""",
}


@dataclass(frozen=True)
class Annotation:
    """One returned row: ``where`` names it in messages (``file, row 3`` / ``file, task 7``)."""

    where: str
    image_id: str
    caption: str = ""  # image modality
    caption_id: str = ""  # image modality, optional
    vector: tuple[float, ...] | None = None  # image modality, optional
    text_id: str = ""  # text modality


def write_label_studio(path: Path, tasks: list[dict], modality: str) -> tuple[Path, Path]:
    """The task list (JSON) and, beside it, the labeling config (``<stem>.label_config.xml``); both atomic."""
    config_path = path.with_name(path.stem + ".label_config.xml")
    write_text_atomic(path, json.dumps(tasks, indent=1))
    write_text_atomic(config_path, LABEL_CONFIGS[modality])
    return path, config_path



def read_annotations(path: str | os.PathLike) -> tuple[str, list[Annotation]]:
    """(modality, rows) of an annotation file; the modality follows from its columns (``text_id``: text)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("annotation file not found", path=path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = list(_csv_rows(path))
    elif suffix in (".jsonl", ".ndjson"):
        rows = list(_jsonl_rows(path))
    elif suffix == ".json":
        return _label_studio(path)
    else:
        raise InputError(f"unknown annotation file type {suffix!r}; use .csv, .jsonl, or a Label Studio .json export", path=path)
    if not rows:
        raise InputError("no rows; the file is empty", path=path)
    modality = "text" if "text_id" in rows[0][1] else "image"
    return modality, [_row(path, number, row, modality) for number, row in rows]


def _csv_rows(path: Path) -> Iterator[tuple[int, dict]]:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        for number, row in enumerate(reader, start=1):
            if None in row:
                raise InputError("more values than header columns", path=path, row=number)
            yield number, row


_jsonl_rows = iter_jsonl


def _text(row: dict, key: str) -> str:
    value = row.get(key)
    return "" if value is None else str(value).strip()


def _row(path: Path, number: int, row: dict, modality: str) -> Annotation:
    where = f"{path}, row {number}"
    need = ("text_id", "image_id") if modality == "text" else ("image_id", "caption")
    missing = [k for k in need if k not in row]
    if missing:
        raise InputError(f"no {' or '.join(missing)} column; an annotation row needs {', '.join(need)}", path=path, row=number)
    if modality == "text":
        return Annotation(where, image_id=_text(row, "image_id"), text_id=_text(row, "text_id"))
    return Annotation(where, image_id=_text(row, "image_id"), caption=_text(row, "caption"), caption_id=_text(row, "caption_id"),
                      vector=_vector(row.get("vector"), path, number))


def _vector(value: Any, path: Path, number: int) -> tuple[float, ...] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise InputError("vector is not a JSON list of numbers", path=path, row=number) from None
    if not isinstance(value, list) or not value or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
        raise InputError("vector must be a non-empty list of numbers", path=path, row=number)
    return tuple(float(x) for x in value)


def _label_studio(path: Path) -> tuple[str, list[Annotation]]:
    """Rows of a Label Studio JSON export: one per caption (image tasks) or per found image id (text tasks)."""
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"not a Label Studio JSON export ({exc})", path=path) from None
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise InputError("a Label Studio JSON export is a list of task objects", path=path)
    modality = "text" if any("text_id" in t.get("data", {}) for t in tasks) else "image"
    out = []
    for number, task in enumerate(tasks, start=1):
        data, where = task.get("data", {}), f"{path}, task {number}"
        key = "text_id" if modality == "text" else "image_id"
        if key not in data:
            raise InputError(f"task has no data.{key}; export the tasks hnsel wrote (hnsel annotate export --format label-studio)", path=path)
        for annotation in task.get("annotations", []):
            if annotation.get("was_cancelled"):
                continue
            for result in annotation.get("result", []):
                name = "image_id" if modality == "text" else "caption"
                if result.get("from_name") != name:
                    continue
                for text in (result.get("value") or {}).get("text") or [""]:
                    text = str(text).strip()
                    out.append(Annotation(where, image_id=text, text_id=str(data[key])) if modality == "text"
                               else Annotation(where, image_id=str(data[key]), caption=text))
    if not out:
        raise InputError("no annotations in this export (every task is unannotated or cancelled)", path=path)
    return modality, out
