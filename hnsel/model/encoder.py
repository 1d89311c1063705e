"""OpenCLIP encoders: images and captions in, L2-normalised float32 rows out.

``load_encoder(model_name, pretrained, device)`` accepts

- ``model_name``: a built-in model (``effnet-lite0-minilm``, ``hnsel-small``: ``hnsel/configs``, ``model.builtin``),
  any ``open_clip.list_models()`` name, or the path of a JSON model config (it is registered with
  ``open_clip.add_model_config`` under the file's stem);
- ``pretrained``: an open_clip tag (``openai``, ``laion2b_s34b_b79k``...), ``none`` (random weights,
  seeded so that two loads give the same model), the path of a plain open_clip state-dict file, or
  the path of an hnsel checkpoint (written by ``save_checkpoint``; it carries its model config and
  optional projection heads, so ``model_name`` may then be omitted). A tower model (``hnsel`` section) has no
  open_clip tags: the default tag ``openai`` means ``none`` for it (its towers' own weights, untrained heads).

``Encoder.model_info`` identifies the embedding space (model, config hash, weights); the store
records it and ``same_model`` refuses to mix two spaces.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from ..errors import HnselError, InputError, ModelMismatchError
from ..schema import DEFAULT_MODEL_NAME, DEFAULT_PRETRAINED, DEVICES
from .builtin import OFFLINE_MODEL, builtin_config, builtin_name, is_tower_config, list_builtin_models, upgrade_config
from .heads import ProjectionHead, build_head
from .probabilistic import uncertainty
from . import towers

__all__ = [
    "Encoder",
    "load_encoder",
    "save_checkpoint",
    "resolve_device",
    "CHECKPOINT_FORMAT",
]

CHECKPOINT_FORMAT = "hnsel-checkpoint"
CHECKPOINT_VERSION = 1
_INIT_SEED = 0  # random ("none") weights are drawn from this seed: same model every load
_WRITTEN: dict[str, dict] = {}  # registered name -> its config as written (hnsel section, package: paths): what checkpoints keep


@dataclass
class Encoder:
    """An open_clip model (``model``), its eval ``preprocess`` and ``tokenizer``, and optional heads."""

    model: torch.nn.Module
    preprocess: Callable[[Any], torch.Tensor]
    tokenizer: Callable[[Sequence[str]], torch.Tensor]
    device: torch.device
    model_info: dict[str, Any]
    image_head: ProjectionHead | None = None
    text_head: ProjectionHead | None = None
    amp: bool = field(default=False)
    image_forward: Callable[[torch.Tensor], torch.Tensor] | None = None  # a faster exact image tower (model.runtime.accelerate)
    image_runtime: str | None = None  # what runs it: "onnx", "torch-channels-last"; None: model.encode_image

    @property
    def dim(self) -> int:
        return int(self.model_info["dim"])

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        """PIL images -> (n, dim) float32 unit rows."""
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        batch = torch.stack([self.preprocess(img.convert("RGB")) for img in images])
        return self.encode_image_tensors(batch)

    def encode_image_tensors(self, batch: torch.Tensor) -> np.ndarray:
        """Already preprocessed images (n, 3, H, W) -> (n, dim) float32 unit rows."""
        return self.image_batch(batch)[0]

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Captions -> (n, dim) float32 unit rows."""
        if len(texts) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self.text_batch(texts)[0]

    @property
    def probabilistic(self) -> bool:
        """True when both heads are Gaussian (a variance per sample: docs/ascmr.md)."""
        return all(h is not None and h.probabilistic for h in (self.image_head, self.text_head))

    def image_batch(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """Preprocessed images -> (unit rows, each sample's summed variance or None without probabilistic heads)."""
        return self._run(self.image_forward or self.model.encode_image, batch, self.image_head)

    def text_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """Captions -> (unit rows, each sample's summed variance or None without probabilistic heads)."""
        return self._run(self.model.encode_text, self.tokens(texts), self.text_head)

    def tokens(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids of ``texts``; columns that are padding in every row are dropped (a Hugging Face
        tower pools over its attention mask, so the features are the same and cost the captions' length)."""
        return towers.trim_tokens(self.model, self.tokenizer(list(texts)))

    def image_features(self, batch: torch.Tensor) -> torch.Tensor:
        """Raw tower features of preprocessed images: what the image head is trained on (float32, on cpu)."""
        return self._features(self.image_forward or self.model.encode_image, batch).cpu()

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """Raw tower features of captions: what the text head is trained on (float32, on cpu)."""
        return self._features(self.model.encode_text, self.tokens(texts)).cpu()

    def _features(self, fn: Callable, inputs: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=self.amp):
            return fn(inputs.to(self.device, non_blocking=True)).float()

    def project(self, modality: str, features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw tower features (``image_features`` / ``text_features``, e.g. read from the feature cache) -> what
        ``image_batch`` / ``text_batch`` return for the same inputs: only the heads run."""
        head = {"image": self.image_head, "text": self.text_head}[modality]
        features = torch.as_tensor(np.asarray(features, dtype=np.float32)).to(self.device)
        return self._project(features, head)

    def _run(self, fn: Callable, inputs: torch.Tensor, head: ProjectionHead | None) -> tuple[np.ndarray, np.ndarray | None]:
        return self._project(self._features(fn, inputs), head)

    def _project(self, features: torch.Tensor, head: ProjectionHead | None) -> tuple[np.ndarray, np.ndarray | None]:
        spread = None
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=self.amp):
            if head is not None and head.probabilistic:
                spread = uncertainty(head.log_variance(features).float()).double().cpu().numpy()
            if head is not None:
                features = head(features).float()
        features = torch.nn.functional.normalize(features, dim=-1)
        return features.cpu().numpy().astype(np.float32, copy=False), spread


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; ``cuda:N`` is the N-th CUDA device; an explicit device that is absent is an error."""
    index = device[5:] if isinstance(device, str) and device.startswith("cuda:") else None
    if device not in DEVICES and not (index and index.isascii() and index.isdigit()):
        raise HnselError(f"--device {device!r} is not one of {', '.join(DEVICES)} or cuda:N")
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    if (device.startswith("cuda") and not torch.cuda.is_available()) or (device == "mps" and not has_mps):
        raise HnselError(f"--device {device}: no {device} device on this machine; use --device auto or cpu")
    if index is not None and int(index) >= torch.cuda.device_count():
        raise HnselError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return torch.device(device)


# ---------------------------------------------------------------------------------------------
# checkpoints


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    model_name: str,
    *,
    model_config: Mapping[str, Any] | None = None,
    pretrained: str = "none",
    heads: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write an hnsel checkpoint atomically; ``heads`` values are ProjectionHeads or {spec, state_dict}.

    The model config is stored whenever it is known, so the checkpoint loads without ``--model-name``: the config as
    written (its ``hnsel`` section and ``package:`` paths kept, never this machine's resolved paths), so it loads anywhere.
    """
    import open_clip

    if model_config is None:
        model_config = _WRITTEN.get(model_name) or builtin_config(model_name) or open_clip.get_model_config(model_name)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_name": model_name,
        "model_config": dict(model_config) if model_config is not None else None,
        "pretrained": str(pretrained),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "heads": _heads_payload(heads),
        "extra": dict(extra or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _heads_payload(heads: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not heads:
        return None
    out: dict[str, Any] = {}
    for side, head in heads.items():
        if side not in ("image", "text"):
            raise ValueError(f"heads key {side!r}: use 'image' and/or 'text'")
        if head is None:
            continue
        if isinstance(head, ProjectionHead):
            head = {"spec": head.spec, "state_dict": head.state_dict()}
        out[side] = {"spec": dict(head["spec"]), "state_dict": {k: v.detach().cpu() for k, v in head["state_dict"].items()}}
    return out or None


def _read_hnsel_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint dict when ``path`` is an hnsel checkpoint, else None (plain weights)."""
    if path.suffix in (".safetensors", ".npz", ".npy"):
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip-format torch file: let open_clip try it as plain weights
        return None
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        if obj.get("version") != CHECKPOINT_VERSION:
            raise InputError(f"hnsel checkpoint version {obj.get('version')} is not supported (this hnsel reads {CHECKPOINT_VERSION})", path=path)
        return obj
    return None


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _json_sha256(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _tensors_sha256(state: Mapping[str, Any]) -> str:
    digest = hashlib.sha256()
    for side in sorted(state):
        digest.update(json.dumps(state[side]["spec"], sort_keys=True).encode())
        for key, value in sorted(state[side]["state_dict"].items()):
            digest.update(key.encode())
            digest.update(value.detach().cpu().float().numpy().tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# loading

def load_encoder(model_name: str | None = None, pretrained: str | None = DEFAULT_PRETRAINED, device: str = "auto") -> Encoder:
    """Build an Encoder; any problem with the model or weights is a one-line ``HnselError``.

    ``model_name`` None means the checkpoint's own model, or ``DEFAULT_MODEL_NAME`` for a tag.
    """
    pretrained = "none" if pretrained in (None, "", "none", "None") else str(pretrained)
    ckpt, weights_file, weights_id = None, None, f"tag:{pretrained}"
    if pretrained == "none":
        weights_id = f"random:{_INIT_SEED}"
    elif Path(pretrained).is_file():
        weights_file = Path(pretrained)
        ckpt = _read_hnsel_checkpoint(weights_file)
        weights_id = "sha256:" + _file_sha256(weights_file)
    elif os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
        raise InputError("checkpoint file not found; pass an existing file, an open_clip tag or 'none'", path=pretrained)
    name, config = _resolve_for(model_name, ckpt, weights_file)
    if pretrained == DEFAULT_PRETRAINED and is_tower_config(config):  # the default tag: a tower model's own weights
        pretrained, weights_id = "none", f"random:{_INIT_SEED}"
    torch_device = resolve_device(device)
    base_tag = str(ckpt.get("pretrained", "none")) if ckpt else pretrained
    section = towers.split_config(config, name)[1]
    model, preprocess = build_model(
        name, config, tag=None if weights_file else pretrained, weights_file=weights_file if ckpt is None else None,
        base_tag=base_tag, seed=_INIT_SEED, section=section,
    )
    if ckpt is not None:
        _load_state(model, ckpt["state_dict"], weights_file)
    feature_dims = _feature_dims(model, config)
    heads = ckpt.get("heads") if ckpt else None
    default_heads = towers.head_spec(section)
    if not heads and default_heads is not None:  # a tower model needs heads: untrained ones are seeded (the floor)
        heads = _random_heads(default_heads, feature_dims)
    image_head, text_head = _load_heads(heads, feature_dims, weights_file)
    dim = image_head.spec["dim_out"] if image_head else text_head.spec["dim_out"] if text_head else config["embed_dim"]
    import open_clip

    info = {
        "model_name": name,
        "pretrained": str(weights_file.resolve()) if weights_file else pretrained,  # absolute: the store's record loads from anywhere
        "dim": int(dim),
        "config_sha256": _json_sha256(config),
        "weights": weights_id,
        "heads_sha256": _tensors_sha256(heads) if heads else None,
        "feature_dims": list(feature_dims),
        "head_dim": default_heads["dim"] if default_heads else None,
        "base_pretrained": base_tag,
        "open_clip_version": open_clip.__version__,
    }
    model = model.to(torch_device).eval()
    heads = [h.to(torch_device).eval() if h is not None else None for h in (image_head, text_head)]
    tokenizer = open_clip.get_tokenizer(name)
    return Encoder(model, preprocess, tokenizer, torch_device, info, heads[0], heads[1], amp=torch_device.type == "cuda")


def _resolve_for(model_name: str | None, ckpt: dict | None, weights_file: Path | None) -> tuple[str, dict]:
    """The (registered name, config) to build, checking a checkpoint against ``--model-name``."""
    if ckpt is None:
        if model_name is None and weights_file is not None:
            raise HnselError(f"{weights_file} is a plain state dict that does not say its model: pass --model-name (an open_clip name or a JSON config)")
        return resolve_model_name(model_name or DEFAULT_MODEL_NAME)
    ck_name = str(ckpt["model_name"])
    ck_config = upgrade_config(ck_name, ckpt.get("model_config"))  # old checkpoints of a built-in model: its config again
    if model_name is None:
        if ck_config is None:
            return resolve_model_name(ck_name)
        return ck_name, register_config(ck_name, ck_config)
    name, config = resolve_model_name(model_name)
    if name != ck_name or (ck_config is not None and _json_sha256(dict(ck_config)) != _json_sha256(config)):
        raise ModelMismatchError(
            f"{weights_file}: checkpoint is for model {ck_name!r} but --model-name is {model_name!r}"
            " (or its config differs); omit --model-name to use the checkpoint's own model"
        )
    return name, config


def _load_state(model: torch.nn.Module, state_dict: Mapping[str, Any], path: Path | None) -> None:
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelMismatchError(f"{path}: weights do not fit the model ({first})") from None


def _load_heads(heads: Mapping[str, Any] | None, feature_dims: tuple[int, int], path: Path | None):
    """The (image, text) heads of a checkpoint, checked against the towers' feature widths."""
    if not heads:
        if feature_dims[0] != feature_dims[1]:
            raise InputError(f"the towers give {feature_dims[0]}-d image and {feature_dims[1]}-d text features: this model needs "
                             "projection heads (a checkpoint of hnsel train, or heads in the config's hnsel section)", path=path)
        return None, None
    built = {side: build_head(h["spec"], h["state_dict"]) for side, h in heads.items() if h is not None}
    image, text = built.get("image"), built.get("text")
    width = dict(zip(("image", "text"), feature_dims))
    dims = {h.spec["dim_out"] if h else width[side] for side, h in (("image", image), ("text", text))}
    bad_in = [s for s, h in built.items() if h.spec["dim_in"] != width[s]]
    if len(dims) != 1 or bad_in:
        raise InputError(f"projection heads do not fit the model (features {feature_dims}, heads {[h.spec for h in built.values()]})", path=path)
    return image, text


def _random_heads(spec: Mapping[str, Any], feature_dims: tuple[int, int]) -> dict:
    """Untrained heads for a tower model, drawn from ``_INIT_SEED`` (the same floor on every load)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_INIT_SEED)
        made = {side: ProjectionHead(spec["kind"], d, spec["dim"], spec["hidden"]) for side, d in zip(("image", "text"), feature_dims)}
    return {side: {"spec": h.spec, "state_dict": h.state_dict()} for side, h in made.items()}


def _feature_dims(model: torch.nn.Module, config: Mapping[str, Any]) -> tuple[int, int]:
    """Widths of the raw image and text features (the towers' own widths when they have no projection)."""
    embed_dim = int(config["embed_dim"])
    trunk = getattr(model.visual, "trunk", None)
    head = getattr(model.visual, "head", None)
    image = int(trunk.num_features) if trunk is not None and head is not None and len(head) == 0 else embed_dim
    return image, embed_dim


# ---------------------------------------------------------------------------------------------
# open_clip plumbing


def resolve_model_name(model_name: str) -> tuple[str, dict]:
    """An open_clip model name or a JSON config path -> (registered name, config dict)."""
    import open_clip

    builtin = builtin_name(model_name)
    if builtin is not None:
        return builtin, register_config(builtin, builtin_config(builtin), where=model_name)
    path = Path(model_name)
    if model_name.endswith(".json") or path.is_file():
        if not path.is_file():
            raise InputError("model config file not found", path=model_name)
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"not a readable JSON model config ({exc})", path=model_name) from None
        return path.stem, register_config(path.stem, config, where=model_name)
    config = open_clip.get_model_config(model_name)
    if config is None:
        raise HnselError(
            f"unknown model {model_name!r}: use a built-in model ({', '.join(list_builtin_models())}), an open_clip model name "
            "(see open_clip.list_models(), e.g. ViT-B-32) or the path of a JSON model config"
        )
    return model_name, config


def register_config(name: str, config: Mapping[str, Any], where: object = None) -> dict:
    """Make ``config`` known to open_clip under ``name`` (through ``open_clip.add_model_config``)."""
    import open_clip

    config = dict(config)
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in config]
    if missing:
        raise InputError(f"model config lacks {missing}; an open_clip config has embed_dim, vision_cfg and text_cfg", path=where or name)
    clip_config, _ = towers.split_config(config, where or name)  # local tower paths resolved, hnsel's section apart
    _WRITTEN[name] = copy.deepcopy(config)
    if open_clip.get_model_config(name) != clip_config:
        with tempfile.TemporaryDirectory(prefix="hnsel-model-") as tmp:
            file = Path(tmp) / f"{name}.json"
            file.write_text(json.dumps(clip_config), encoding="utf-8")
            open_clip.add_model_config(file)  # the registry keeps the parsed config after the file goes
    return config


def _first_words(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception, cut at a word boundary (never mid-word) when longer than ``limit``."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].strip() or type(exc).__name__
    if len(first) <= limit:
        return first
    return first[:limit].rsplit(" ", 1)[0].rstrip(" ,;:.") + " ..."


_DOWNLOAD_SIGNS = ("failed to download", "cannot find the requested files", "offline", "connection", "resolve", "unreachable",
                   "max retries", "name or service not known", "temporary failure")


def _is_download_failure(exc: BaseException) -> bool:
    """True when fetching pretrained weights failed for want of a network (or with the hub set offline)."""
    text = str(exc).lower()
    return any(sign in text for sign in _DOWNLOAD_SIGNS) or type(exc).__name__ in (
        "LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError", "HTTPError")


def _tag_overrides(name: str, tag: str) -> dict[str, Any]:
    """Preprocessing and QuickGELU settings a pretrained tag was trained with (no download)."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(name, tag) if tag and tag != "none" else {}
    out: dict[str, Any] = {"force_quick_gelu": bool(cfg.get("quick_gelu", False))} if cfg else {}
    for key, arg in (("mean", "image_mean"), ("std", "image_std"), ("interpolation", "image_interpolation"), ("resize_mode", "image_resize_mode")):
        if cfg.get(key) is not None:
            out[arg] = cfg[key]
    return out


def _quiet_transformers(config: Mapping[str, Any]) -> None:
    """A Hugging Face text tower prints a progress bar while it loads: hnsel shows its own progress."""
    if "hf_model_name" in (config.get("text_cfg") or {}):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def build_model(name: str, config: Mapping[str, Any], *, tag: str | None, weights_file: Path | None, base_tag: str, seed: int,
                section: Mapping[str, Any] | None = None):
    """open_clip model (fp32, cpu, eval) and its inference preprocess; errors become HnselError.

    ``section``: the config's ``hnsel`` section (``hnsel.model.towers``): local tower weights loaded from their file."""
    import open_clip

    section = section or {}

    if tag not in (None, "none") and not open_clip.get_pretrained_cfg(name, tag):
        tags = open_clip.list_pretrained_tags_by_model(name)
        known = ", ".join(tags[:6]) + (", ..." if len(tags) > 6 else "") if tags else "none for this model"
        raise HnselError(f"unknown pretrained tag {tag!r} for {name} (known: {known}); pass a tag, a local checkpoint path or 'none'")
    pretrained = str(weights_file) if weights_file else (None if tag in (None, "none") else tag)
    muted = logging.root.manager.disable
    logging.disable(logging.ERROR)  # open_clip logs on the root logger; its failures reach us as exceptions
    _quiet_transformers(config)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=pretrained, **(_tag_overrides(name, base_tag) | towers.preprocess_overrides(section)))
    except HnselError:
        raise
    except Exception as exc:  # download errors, bad files, offline hub: one line, never a traceback
        first = _first_words(exc)
        if weights_file is not None:
            raise InputError(f"cannot load these weights into {name} ({first}); check --model-name", path=weights_file) from None
        if _is_download_failure(exc):
            raise HnselError(
                f"cannot download the pretrained {tag!r} weights of {name} (no network, or HF_HUB_OFFLINE is set); offline, use the "
                f"built-in model --model-name {OFFLINE_MODEL} (no download), or pass --pretrained /path/to/checkpoint.pt"
            ) from None
        raise HnselError(
            f"cannot load pretrained {tag!r} for {name} ({first}); pass --pretrained /path/to/checkpoint.pt, or use the built-in "
            f"offline model --model-name {OFFLINE_MODEL}"
        ) from None
    finally:
        logging.disable(muted)
    if section.get("image_weights") and weights_file is None:
        towers.load_image_weights(model, section["image_weights"])
    return model.eval(), preprocess
