"""Small JPEG thumbnails of the images a report shows, each made once.

A thumbnail's file name is a hash of (id, uri), so regenerating a report into the same folder copies the
thumbnails it already has instead of decoding the images again. Images are opened with
``hnsel.data.images.open_image`` (local paths, ``file://`` and any fsspec URL); one that cannot be read gets
no file, and the page shows a placeholder with the reason.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional

from PIL import Image

from ..data.images import open_image

__all__ = ["THUMB_DIR", "thumb_name", "make_thumbnails"]

THUMB_DIR = "thumbs"
THUMB_SIZE = 160  # pixels on the longer side
WORKERS = 4  # image decoding and remote reads overlap; the cores are few


def thumb_name(id_: str, uri: str) -> str:
    return hashlib.sha1(f"{id_}\0{uri}".encode("utf-8")).hexdigest()[:20] + ".jpg"


def _make_one(uri: str, target: Path, previous: Path | None) -> str | None:
    """Write one thumbnail (or copy the previous report's); the reason it failed, or None."""
    if previous is not None and previous.is_file():
        shutil.copyfile(previous, target)
        return None
    if not uri:
        return "no uri stored for this image"
    try:
        image = open_image(uri)
        image.thumbnail((THUMB_SIZE, THUMB_SIZE), Image.Resampling.LANCZOS)
        image.save(target, "JPEG", quality=82)
        return None
    except Exception as exc:  # a bad image is a placeholder, never a failed report
        return getattr(exc, "reason", None) or f"{type(exc).__name__}: {str(exc)[:160]}"


def make_thumbnails(images: dict[str, str], folder: Path, previous: Path | None = None,
                    on_progress: Optional[Callable[[str, int, Optional[int]], None]] = None) -> dict[str, dict]:
    """Thumbnails of ``images`` (id -> uri) into ``folder/thumbs``; per id ``{"src": relative path}`` or ``{"error": why}``."""
    target_dir = folder / THUMB_DIR
    target_dir.mkdir(parents=True, exist_ok=True)
    old_dir = previous / THUMB_DIR if previous is not None and (previous / THUMB_DIR).is_dir() else None
    items = sorted(images.items())
    out: dict[str, dict] = {}

    def work(item: tuple[str, str]) -> tuple[str, str, str | None]:
        id_, uri = item
        name = thumb_name(id_, uri)
        return id_, name, _make_one(uri, target_dir / name, old_dir / name if old_dir else None)

    with ThreadPoolExecutor(max_workers=min(WORKERS, os.cpu_count() or 1) or 1) as pool:
        for done, (id_, name, error) in enumerate(pool.map(work, items), start=1):
            out[id_] = {"error": error} if error else {"src": f"{THUMB_DIR}/{name}"}
            if on_progress is not None and (done % 25 == 0 or done == len(items)):
                on_progress("thumbnails", done, len(items))
    return out
