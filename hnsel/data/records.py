"""The records every reader yields: images (each with zero or more captions), standalone captions, and a ``Dataset`` of both."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..schema import text_problem

__all__ = ["ImageRecord", "TextRecord", "Dataset", "record_problem"]


@dataclass(frozen=True)
class ImageRecord:
    """One image. ``captions[i]`` has id ``caption_ids[i]``; an image with captions is pairable.

    Readers of shards (``shards``) carry the image's bytes in ``data``; ``uri`` then says where they came from
    (``shard.tar#key.jpg``, ``file.parquet#row=12``) and is not opened."""

    id: str
    uri: str | None = None
    captions: tuple[str, ...] = ()
    caption_ids: tuple[str, ...] = ()
    split: str | None = None  # "train" / "val" / "test" for Karpathy-style sources
    pool: str | None = None  # "paired" / "unpaired" when the source says so
    data: bytes | None = field(default=None, repr=False, compare=False)  # the encoded image itself (shards), read instead of ``uri``


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
    format: str = ""  # the source's format (``sources.SOURCE_FORMATS``), set by ``load_source``

    def split(self, name: str | None) -> "Dataset":
        """The images of one split (all of them for ``None``); standalone texts are kept."""
        if name is None:
            return self
        return Dataset([r for r in self.images if r.split == name], list(self.texts), self.source, self.format)


def record_problem(record: ImageRecord) -> str | None:
    """Why a streamed record cannot be stored (an id, uri or caption longer than its Milvus field), else None."""
    for name, value in (("id", record.id), ("uri", record.uri or ""), *(("id", c) for c in record.caption_ids), *(("text", t) for t in record.captions)):
        problem = text_problem(name, value)
        if problem:
            return problem
    return None
