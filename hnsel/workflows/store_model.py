"""The store's own model: what ``embed``, ``train`` and ``annotate import`` load when no model flag is given.

The store's ``model`` meta record names the model that made its vectors (``Encoder.model_info``): a built-in or open_clip
name and its weights (a tag, ``none``, or a checkpoint's absolute path). Reading it never creates a store: a Milvus
Lite file that does not exist yet has no record.
"""

from __future__ import annotations

from pathlib import Path

from ..config import HnselConfig
from ..schema import DEFAULT_PRETRAINED, MODEL_META_KEY

__all__ = ["store_model", "model_flags"]


def store_model(config: HnselConfig) -> dict | None:
    """The store's model record, or None (no store yet, or vectors ingested from files)."""
    from ..store import open_store

    if config.store.is_lite and not Path(config.store.uri).exists():
        return None
    with open_store(config.store) as store:
        return store.get_meta(MODEL_META_KEY)


def model_flags(config: HnselConfig, model_name: str | None, pretrained: str | None) -> tuple[str | None, str]:
    """(model name, weights) to load: the flags as given; with neither, the store's record, else the defaults.
    A ``--model-name`` without ``--pretrained`` takes the default tag (a tower model reads it as its own weights)."""
    if model_name is None and pretrained is None:
        record = store_model(config)
        if record and record.get("model_name"):
            return str(record["model_name"]), str(record.get("pretrained") or "none")
        return None, DEFAULT_PRETRAINED
    return model_name, DEFAULT_PRETRAINED if pretrained is None else pretrained
