"""Data sources: the records every reader yields, and the readers themselves.

A source is read into a ``Dataset``: images (each with zero or more captions) and standalone captions.
Readers live in this package (manifests, COCO, Karpathy JSON, image folders) and so does the
``scenes`` generator; nothing here touches Milvus or a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "ImageRecord", "TextRecord", "Dataset",
    "load_source", "detect_format", "read_folder", "read_manifest", "read_coco", "read_karpathy", "apply_pool",
    "open_image", "ImageReadError", "IMAGE_EXTENSIONS", "SOURCE_FORMATS",
]


@dataclass(frozen=True)
class ImageRecord:
    """One image. ``captions[i]`` has id ``caption_ids[i]``; an image with captions is pairable."""

    id: str
    uri: str | None = None
    captions: tuple[str, ...] = ()
    caption_ids: tuple[str, ...] = ()
    split: str | None = None  # "train" / "val" / "test" for Karpathy-style sources
    pool: str | None = None  # "paired" / "unpaired" when the source says so


@dataclass(frozen=True)
class TextRecord:
    """A caption without an image of its own in the source (an unpaired text)."""

    id: str
    text: str
    image_id: str | None = None
    pool: str | None = None


@dataclass
class Dataset:
    images: list[ImageRecord] = field(default_factory=list)
    texts: list[TextRecord] = field(default_factory=list)
    source: str = ""

    def split(self, name: str | None) -> "Dataset":
        """The images of one split (all of them for ``None``); standalone texts are kept."""
        if name is None:
            return self
        return Dataset([r for r in self.images if r.split == name], list(self.texts), self.source)


# Readers import the record types above, so they come last.
from .annotations import read_coco, read_karpathy  # noqa: E402
from .images import IMAGE_EXTENSIONS, ImageReadError, open_image  # noqa: E402
from .manifest import read_manifest  # noqa: E402
from .sources import SOURCE_FORMATS, apply_pool, detect_format, load_source, read_folder  # noqa: E402
