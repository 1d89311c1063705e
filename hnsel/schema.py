"""The facts every layer shares, defined once: collection kinds, modalities, pools, field names and lengths,
meta-record keys, and the progress callback's type. Importing this module imports nothing heavy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Optional

__all__ = [
    "KINDS", "MODALITIES", "KIND_OF", "POOLS", "ID_MAX_LENGTH", "SCALAR_FIELDS", "OPTIONAL_FLOAT_FIELDS", "UNKNOWN_UNCERTAINTY",
    "FIELD_MAX_BYTES", "ProgressFn",
    "MODEL_META_KEY", "MATCH_META_KEY", "SPACE_META_KEY", "REEMBED_META_KEY", "ROUND_PREFIX", "PICKS_PREFIX", "IMPORT_PREFIX", "INGEST_PREFIX", "CLAIM_PREFIX",
    "MODEL_IDENTITY_KEYS", "same_model", "describe_model", "text_problem",
    "DEFAULT_MODEL_NAME", "DEFAULT_PRETRAINED", "DEVICES", "DEFAULT_CACHE_DIR",
]

KINDS = ("images", "texts")  # the two collections: one row per image, one per caption
MODALITIES = ("image", "text")  # what a selection picks: unpaired images or unpaired captions
KIND_OF = {"image": "images", "text": "texts"}  # modality -> the collection its candidates live in
POOLS = ("paired", "unpaired")  # a sample's pool: paired (has its counterpart) or unpaired (a candidate)

ID_MAX_LENGTH = 512  # the VARCHAR primary key, in UTF-8 bytes
# Canonical scalar field -> VARCHAR max length in bytes (None: INT64), per collection; ``id`` and ``vector`` come first.
SCALAR_FIELDS = {
    "images": {"pool": 16, "uri": 4096, "round": None},
    "texts": {"pool": 16, "image_id": ID_MAX_LENGTH, "text": 65535, "round": None},
}
# Optional FLOAT fields, created only when asked for (``Store.ensure_collections(dim, uncertainty=True)``): the summed
# variance of a sample's Gaussian embedding, written by models with probabilistic heads (docs/ascmr.md); -1 = unknown.
OPTIONAL_FLOAT_FIELDS = ("uncertainty",)
UNKNOWN_UNCERTAINTY = -1.0
# VARCHAR limits by canonical field: a server counts UTF-8 bytes (Lite counts characters), so bytes are checked.
FIELD_MAX_BYTES = {"id": ID_MAX_LENGTH, **{name: n for kind in KINDS for name, n in SCALAR_FIELDS[kind].items() if n is not None}}

# Keys of the meta collection's records.
MODEL_META_KEY = "model"  # the model that embedded the store's vectors (an ``Encoder.model_info`` record)
MODEL_IDENTITY_KEYS = ("model_name", "config_sha256", "weights", "heads_sha256", "dim")  # equal keys: the same embedding space
MATCH_META_KEY = "match"  # probabilistic heads' calibrated match parameters {"scale", "shift"} (docs/ascmr.md)
SPACE_META_KEY = "space"  # {"collections": {configured name: collection in use}, "generation"}: switched by ``hnsel reembed``
REEMBED_META_KEY = "reembed"  # an unfinished ``hnsel reembed``: its target model and the collections it fills
ROUND_PREFIX = "round/"  # round/0003: a round's log
PICKS_PREFIX = "picks/"  # picks/0003/00000...: a round's picks in order, with score, violations and reason
IMPORT_PREFIX = "import/"  # an annotation import's journal
INGEST_PREFIX = "ingest/"  # an ingest's journal (``hnsel ingest`` still writing)
CLAIM_PREFIX = "claim/"  # a process's claim on a round number or an import

ProgressFn = Callable[[str, int, Optional[int]], None]  # (task, completed, total or None)

# Model defaults the CLI shows without importing torch.
DEFAULT_MODEL_NAME = "ViT-B-32"
DEFAULT_PRETRAINED = "openai"
DEVICES = ("auto", "cpu", "cuda", "mps")  # auto: cuda, then mps, then cpu
DEFAULT_CACHE_DIR = Path(".hnsel-cache") / "features"  # backbone features shared by train, evaluate and simulate


def same_model(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """True when two ``model_info`` records describe the same embedding space."""
    return all(a.get(k) == b.get(k) for k in MODEL_IDENTITY_KEYS)


def describe_model(info: Mapping[str, Any]) -> str:
    """One line for messages: ``ViT-B-32 / openai (dim 512)``."""
    heads = " + heads" if info.get("heads_sha256") else ""
    return f"{info.get('model_name')} / {info.get('pretrained')}{heads} (dim {info.get('dim')})"


def text_problem(field: str, value: str) -> str | None:
    """Why ``value`` cannot be stored in the VARCHAR ``field`` (canonical name), or None when it can."""
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return f"{field} is not valid Unicode (it holds a lone surrogate); fix the file's encoding"
    limit = FIELD_MAX_BYTES[field]
    if size > limit:
        return f"{field} is {size} bytes of UTF-8 (Milvus stores at most {limit}); shorten it"
    return None
