"""Data sources: the records every reader yields, and the readers themselves.

A source is read into a ``Dataset`` (``records``): images (each with zero or more captions) and standalone captions.
Readers: ``manifests`` (Parquet, JSONL, CSV), ``coco_karpathy`` (COCO and Karpathy JSON), ``sources`` (detects the
format; image folders), ``images`` (opening local and remote images, or their bytes), ``shards`` (WebDataset tars and
Parquet files with image bytes, streamed). Generators: ``scenes`` (rendered scenes),
``synthetic`` (vectors). Files users exchange: ``annotator_files`` (annotation exports and imports) and
``vector_files`` (precomputed vectors for ``hnsel ingest``). Nothing here touches Milvus or a model.
"""

from __future__ import annotations

from .records import Dataset, ImageRecord, TextRecord
from .coco_karpathy import read_coco, read_karpathy
from .images import IMAGE_EXTENSIONS, ImageReadError, open_image
from .manifests import read_manifest
from .shards import ShardSource, open_shards
from .sources import SOURCE_FORMATS, apply_pool, detect_format, load_source, open_source, read_folder

__all__ = [
    "ImageRecord", "TextRecord", "Dataset",
    "load_source", "open_source", "open_shards", "ShardSource", "detect_format", "read_folder", "read_manifest", "read_coco", "read_karpathy", "apply_pool",
    "open_image", "ImageReadError", "IMAGE_EXTENSIONS", "SOURCE_FORMATS",
]
