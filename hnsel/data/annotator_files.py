"""Annotation files: writing what annotators need, reading what they send back. No store access here.

Formats: CSV and JSONL rows (image modality: ``image_id, caption`` with optional ``caption_id`` and
``vector``; text modality: ``text_id, image_id``), and Label Studio (tasks out, a JSON export back in).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import InputError
from ..tables import check_input_file, iter_jsonl, read_csv_rows, write_text_atomic

__all__ = ["EXPORT_FORMATS", "LABEL_CONFIGS", "Annotation", "read_annotations", "label_studio_annotations", "write_label_studio"]

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
    path = check_input_file(path, "annotation file")
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
    return modality, [a for number, row in rows for a in _row_annotations(path, number, row, modality)]


def _csv_rows(path: Path) -> Iterator[tuple[int, dict]]:
    # UTF-8 with or without a byte-order mark; cells escaped against spreadsheet formulas (``annotate export``) read back exactly
    return read_csv_rows(path, unescape=True)


def _row_annotations(path: Path, number: int, row: dict, modality: str) -> list[Annotation]:
    """A row's annotations: one, or one per caption when a JSON row gives a list of captions (never its text ``['a', 'b']``)."""
    caption = row.get("caption")
    if modality == "text" or caption is None or isinstance(caption, str):
        return [_row(path, number, row, modality)]
    if not isinstance(caption, list) or not caption or not all(isinstance(c, str) for c in caption):
        raise InputError(f"caption is {_shape(caption)}{' of other values than texts' if isinstance(caption, list) and caption else ''}; "
                         "give a text, or a non-empty list of texts for several captions", path=path, row=number)
    if len(caption) > 1 and (row.get("caption_id") or row.get("vector") not in (None, "")):
        raise InputError("a list of captions cannot share one caption_id or vector; give one row per caption", path=path, row=number)
    return [_row(path, number, dict(row, caption=c), modality) for c in caption]


_jsonl_rows = iter_jsonl


def _text(row: dict, key: str) -> str:
    """A caption: edge whitespace dropped (it is prose, not a key)."""
    value = row.get(key)
    return "" if value is None else str(value).strip()


def _id(row: dict, key: str) -> str:
    """An id exactly as written: ids are opaque, so ``cat`` and ``cat `` (or ``img000\\r``) stay two ids."""
    value = row.get(key)
    return "" if value is None else str(value)


def _row(path: Path, number: int, row: dict, modality: str) -> Annotation:
    where = f"{path}, row {number}"
    need = ("text_id", "image_id") if modality == "text" else ("image_id", "caption")
    missing = [k for k in need if k not in row]
    if missing:
        raise InputError(f"no {' or '.join(missing)} column; an annotation row needs {', '.join(need)}", path=path, row=number)
    if modality == "text":
        return Annotation(where, image_id=_id(row, "image_id"), text_id=_id(row, "text_id"))
    return Annotation(where, image_id=_id(row, "image_id"), caption=_text(row, "caption"), caption_id=_id(row, "caption_id"),
                      vector=_vector(row.get("vector"), path, number))


def _vector(value: Any, path: Path, number: int) -> tuple[float, ...] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:  # not JSON, or an integer of more digits than Python converts
            raise InputError("vector is not a JSON list of numbers", path=path, row=number) from None
    if not isinstance(value, list) or not value or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
        raise InputError("vector must be a non-empty list of numbers", path=path, row=number)
    try:
        return tuple(float(x) for x in value)
    except OverflowError:
        raise InputError("vector holds a number too large for a float", path=path, row=number) from None


def _label_studio(path: Path) -> tuple[str, list[Annotation]]:
    """Rows of a Label Studio JSON export file (see ``label_studio_annotations``)."""
    try:
        tasks = json.loads(path.read_bytes().decode("utf-8-sig"))
    except ValueError as exc:  # not JSON, not UTF-8, or an integer of more digits than Python converts (4,300)
        raise InputError(f"not a Label Studio JSON export ({_one_line(exc)}); export JSON from Label Studio, UTF-8", path=path) from None
    modality, out = label_studio_annotations(tasks, str(path))
    if not out:
        raise InputError("no annotations in this export (every task is unannotated or cancelled)", path=path)
    return modality, out


def label_studio_annotations(tasks: Any, source: str) -> tuple[str, list[Annotation]]:
    """Rows of Label Studio's JSON export shape: one per caption (image tasks) or per found image id (text tasks).

    Only the shapes Label Studio writes are read: a list of task objects with a ``data`` object holding the id hnsel
    wrote (a string) and an ``annotations`` list of objects, each with a ``result`` list whose text areas hold
    ``value.text`` as a list of strings (or one string). Anything else is refused naming the task, never guessed at.
    ``source`` names the file or project in messages; a task with no annotation gives no row.
    """
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise InputError(f"{source}: a Label Studio JSON export is a list of task objects")
    for number, task in enumerate(tasks, start=1):
        if not isinstance(task.get("data"), dict):
            raise InputError(f"{source}: task {number}: data is {_shape(task.get('data'))}, not an object; export the tasks hnsel wrote "
                             "(hnsel annotate export --format label-studio)")
    modality = "text" if any("text_id" in t["data"] for t in tasks) else "image"
    key, name = ("text_id", "image_id") if modality == "text" else ("image_id", "caption")
    out = []
    for number, task in enumerate(tasks, start=1):
        if key not in task["data"]:
            raise InputError(f"{source}, task {number} has no data.{key}; export the tasks hnsel wrote (hnsel annotate export --format label-studio)")
        where = f"{source}, task {number}" + (f" (Label Studio id {task['id']})" if isinstance(task.get("id"), int) else "")
        sample = _task_id(task["data"], key, where)
        for text in _task_texts(task, name, where):
            out.append(Annotation(where, image_id=text, text_id=sample) if modality == "text" else Annotation(where, image_id=sample, caption=text.strip()))
    return modality, out


def _task_id(data: dict, key: str, where: str) -> str:
    """``data[key]`` as written by hnsel: a non-empty string, taken as it is (an id is never converted or trimmed)."""
    value = data[key]
    if not isinstance(value, str) or not value:
        shown = "an empty string" if value == "" else _shape(value) + ("" if value is None or isinstance(value, (dict, list)) else f" ({value!r})")
        raise InputError(f"{where}: data.{key} is {shown}, not an id; ids are non-empty strings: put the id hnsel exported "
                         "back in the task, as a JSON string")
    return value


def _task_texts(task: dict, name: str, where: str) -> list[str]:
    """The texts of ``name`` text areas in a task's annotations that were not cancelled, as typed (an image id is
    never stripped; the caller strips captions)."""
    def refuse(what: str, value: Any) -> InputError:
        return InputError(f"{where}: {what} is {_shape(value)}; expected the Label Studio export shape (annotations: a list of "
                          "objects, result: a list, value.text: a list of strings); re-export the JSON from Label Studio")

    annotations = task.get("annotations", [])
    if not isinstance(annotations, list):
        raise refuse("annotations", annotations)
    texts: list[str] = []
    for annotation in annotations:
        if not isinstance(annotation, dict):
            raise refuse("an annotation", annotation)
        if annotation.get("was_cancelled"):
            continue
        results = annotation.get("result", [])
        if not isinstance(results, list):
            raise refuse("result", results)
        for result in results:
            if not isinstance(result, dict):
                raise refuse("a result", result)
            if result.get("from_name") != name:
                continue
            value = result.get("value")
            if not isinstance(value, dict):
                raise refuse("value", value)
            given = value.get("text")
            given = [given] if isinstance(given, str) else given  # one string is one text
            if not isinstance(given, list) or not all(isinstance(t, str) for t in given):
                raise refuse("value.text", given)
            texts.extend(given or [""])
    return texts


def _shape(value: Any) -> str:
    return {type(None): "null", str: "a string", list: "a list", dict: "an object", bool: "a boolean"}.get(type(value), "a number")


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:200]
