"""Data sources: the records every reader yields, and the readers themselves.

A source is read into a ``Dataset`` (``records``): images (each with zero or more captions) and standalone captions.
Readers: ``manifests`` (Parquet, JSONL, CSV), ``coco_karpathy`` (COCO and Karpathy JSON), ``sources`` (detects the
format; image folders), ``images`` (opening local and remote images, or their bytes), ``shards`` (WebDataset tars and
Parquet files with image bytes, streamed). Generators: ``scenes`` (rendered scenes),
``synthetic`` (vectors). Files users exchange: ``annotator_files`` (annotation exports and imports) and
``vector_files`` (precomputed vectors for ``hnsel ingest``). Nothing here touches Milvus or a model.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "ImageRecord": "records", "TextRecord": "records", "Dataset": "records",
    "read_coco": "coco_karpathy", "read_karpathy": "coco_karpathy",
    "open_image": "images", "ImageReadError": "images", "IMAGE_EXTENSIONS": "images",
    "read_manifest": "manifests", "ShardSource": "shards", "open_shards": "shards",
    "load_source": "sources", "open_source": "sources", "detect_format": "sources", "read_folder": "sources",
    "apply_pool": "sources", "SOURCE_FORMATS": "sources",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    """Names resolve lazily (PEP 562): ``hnsel ingest`` reads vector files without loading the image readers."""
    if name not in _WHERE:
        raise AttributeError(f"module 'hnsel.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"hnsel.data.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
