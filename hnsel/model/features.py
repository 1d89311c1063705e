"""Backbone features for head training, computed once and cached on disk.

A feature is the raw output of the open_clip tower (``Encoder.image_features`` / ``text_features``, before
normalisation and before any projection head): exactly what an ``Encoder`` feeds its heads, so heads
trained on these features give the same vectors when ``hnsel embed --pretrained CHECKPOINT`` runs them.

The cache lives under ``cache_dir/<backbone key>/`` (default ``.hnsel-cache/features``). The backbone key
hashes the model name, its config and the backbone weights: checkpoints written by head training
record the backbone they were trained on, so every active-learning round shares one cache. Inside, an
image is keyed by its absolute path, modification time and size (an edited file is encoded again; a
remote URI by the URI), a caption by the SHA-1 of its text. New features go to a new shard file written
atomically, so an interrupted run keeps what it wrote and two runs never corrupt each other.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..data.images import ImageReadError, is_remote
from ..errors import InputError
from ..schema import DEFAULT_CACHE_DIR, ProgressFn
from .images import image_batches
from .runtime import accelerate

__all__ = ["FeatureCache", "backbone_id", "backbone_features", "image_key", "text_key", "cached_vectors", "encode_vectors"]



def image_key(uri: str) -> str:
    if is_remote(uri):
        return f"uri:{uri}"
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    try:
        st = os.stat(path)
    except OSError:
        raise ImageReadError(uri, "missing file") from None
    return f"file:{os.path.abspath(path)}:{st.st_mtime_ns}:{st.st_size}"


def text_key(text: str) -> str:
    return "text:" + hashlib.sha1(text.encode("utf-8")).hexdigest()


def backbone_id(encoder: Any) -> str:
    """Identity of the encoder's backbone (not its heads): model, config hash and weights."""
    info = encoder.model_info
    path = info.get("pretrained")
    if path and Path(str(path)).is_file():
        try:
            extra = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("extra") or {}
        except Exception:  # a plain state dict: its file hash is the identity
            extra = {}
        if extra.get("backbone"):  # written by head training: the backbone it left unchanged
            return str(extra["backbone"])
    return f"{info['model_name']}|{info.get('config_sha256')}|{info.get('weights')}"


class FeatureCache:
    """Vectors by string key, for one backbone, in append-only ``.npz`` shards under ``root``."""

    def __init__(self, cache_dir: str | os.PathLike, backbone: str):
        digest = hashlib.sha256(backbone.encode()).hexdigest()[:20]
        self.root = Path(cache_dir) / digest
        self.backbone = backbone
        self._index: dict[str, tuple[int, int]] | None = None
        self._shards: list[np.ndarray] = []

    def _load(self) -> dict[str, tuple[int, int]]:
        if self._index is None:
            self._index = {}
            for path in sorted(self.root.glob("shard-*.npz")):
                try:
                    with np.load(path, allow_pickle=False) as npz:
                        keys, vectors = npz["keys"], npz["vectors"]
                except (OSError, ValueError, KeyError):
                    continue  # a damaged shard is only a cache miss
                self._shards.append(vectors)
                shard = len(self._shards) - 1
                self._index.update((str(k), (shard, row)) for row, k in enumerate(keys))
        return self._index

    def get(self, keys: Sequence[str]) -> tuple[np.ndarray | None, np.ndarray]:
        """(vectors with zero rows where missing, or None if nothing is cached; bool mask of hits)."""
        index = self._load()
        hits = np.array([k in index for k in keys], dtype=bool)
        if not hits.any():
            return None, hits
        dim = self._shards[index[keys[int(np.argmax(hits))]][0]].shape[1]
        out = np.zeros((len(keys), dim), np.float32)
        for row in np.flatnonzero(hits):
            shard, pos = index[keys[row]]
            out[row] = self._shards[shard][pos]
        return out, hits

    def put(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        if len(keys) == 0:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        meta = self.root / "backbone.json"
        if not meta.exists():
            meta.write_text(json.dumps({"backbone": self.backbone}), encoding="utf-8")
        fd, tmp = tempfile.mkstemp(prefix=".shard-", suffix=".npz", dir=self.root)
        os.close(fd)
        np.savez(tmp, keys=np.asarray(list(keys), dtype=str), vectors=np.asarray(vectors, np.float32))
        os.replace(tmp, self.root / f"shard-{uuid.uuid4().hex}.npz")
        index = self._load()
        self._shards.append(np.asarray(vectors, np.float32))
        index.update((k, (len(self._shards) - 1, row)) for row, k in enumerate(keys))


def _encode_images(encoder: Any, uris: Sequence[str], batch_size: int, num_workers: int, on_progress: ProgressFn | None) -> np.ndarray:
    accelerate(encoder, num_workers)  # the same exact fast image tower as hnsel embed (model.runtime)
    out, done = [], 0
    for _, batch, failed in image_batches(uris, encoder.preprocess, batch_size, num_workers):
        if failed:
            index, reason = failed[0]
            raise InputError(f"cannot read image {uris[index]}: {reason}; fix or remove it from the paired set")
        out.append(encoder.image_features(batch).numpy())
        done += len(batch)
        if on_progress is not None:
            on_progress("backbone features: images", done, len(uris))
    return np.concatenate(out)


def _encode_texts(encoder: Any, texts: Sequence[str], batch_size: int, on_progress: ProgressFn | None) -> np.ndarray:
    out = []
    for start in range(0, len(texts), batch_size):
        out.append(encoder.text_features(texts[start:start + batch_size]).numpy())
        if on_progress is not None:
            on_progress("backbone features: captions", min(start + batch_size, len(texts)), len(texts))
    return np.concatenate(out)


def _cached(cache: FeatureCache | None, keys: list[str], compute: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, int]:
    """Vectors for ``keys``: cached ones read, the others computed (by row indices) and cached."""
    if not keys:
        return np.zeros((0, 0), np.float32), 0
    found, hits = cache.get(keys) if cache is not None else (None, np.zeros(len(keys), bool))
    missing = np.flatnonzero(~hits)
    if len(missing) == 0:
        return found, 0
    new = compute(missing)
    if cache is not None:
        cache.put([keys[i] for i in missing], new)
    out = found if found is not None else np.zeros((len(keys), new.shape[1]), np.float32)
    out[missing] = new
    return out, len(missing)


def backbone_features(
    encoder: Any,
    image_uris: Sequence[str],
    texts: Sequence[str],
    *,
    cache_dir: str | os.PathLike | None = DEFAULT_CACHE_DIR,
    batch_size: int = 64,
    num_workers: int = 0,
    on_progress: ProgressFn | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """(image features, text features, {"computed_images", "computed_texts"}); ``cache_dir=None``: no cache."""
    cache = FeatureCache(cache_dir, backbone_id(encoder)) if cache_dir is not None else None
    image_keys = [image_key(u) for u in image_uris]
    text_keys = [text_key(t) for t in texts]
    images, n_img = _cached(cache, image_keys, lambda rows: _encode_images(
        encoder, [image_uris[i] for i in rows], batch_size, num_workers, on_progress))
    captions, n_txt = _cached(cache, text_keys, lambda rows: _encode_texts(
        encoder, [texts[i] for i in rows], batch_size, on_progress))
    return images, captions, {"computed_images": n_img, "computed_texts": n_txt}


# ---------------------------------------------------------------------------------------------
# final vectors through the heads, with the backbone's part read from the cache where it is held
# (``hnsel embed`` and ``hnsel reembed`` of a checkpoint whose towers are frozen: only the heads run)


def _keys(modality: str, inputs: Sequence[str]) -> tuple[list[str | None], list[tuple[int, str]]]:
    """Cache keys of image uris or captions; an image file that is gone has no key (it is a failure)."""
    if modality == "text":
        return [text_key(t) for t in inputs], []
    keys: list[str | None] = []
    failed = []
    for i, uri in enumerate(inputs):
        try:
            keys.append(image_key(uri) if uri else None)
        except ImageReadError as exc:
            keys.append(None)
            failed.append((i, exc.reason))
        if not uri:
            failed.append((i, "no uri stored"))
    return keys, failed


def _project(encoder: Any, modality: str, features: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray | None]:
    parts = [encoder.project(modality, features[s:s + batch_size]) for s in range(0, len(features), max(1, batch_size))]
    spread = None if any(u is None for _, u in parts) else np.concatenate([u for _, u in parts])
    return np.concatenate([v for v, _ in parts]), spread


def cached_vectors(encoder: Any, cache: FeatureCache, modality: str, inputs: Sequence[str],
                   batch_size: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(indices of ``inputs`` whose backbone features the cache holds, their final vectors, their variances or None)."""
    keys, _ = _keys(modality, inputs)
    rows = [i for i, k in enumerate(keys) if k is not None]
    found, hits = cache.get([keys[i] for i in rows]) if rows else (None, np.zeros(0, bool))
    if found is None or not hits.any():
        return np.zeros(0, np.int64), np.zeros((0, encoder.dim), np.float32), None
    vectors, spread = _project(encoder, modality, found[hits], batch_size)
    return np.asarray(rows, np.int64)[hits], vectors, spread


def encode_vectors(encoder: Any, modality: str, inputs: Sequence[str], *, cache: FeatureCache | None, batch_size: int = 64,
                   num_workers: int = 0, on_progress: ProgressFn | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list, int]:
    """Final vectors of image uris or captions: (indices done, vectors, variances or None, [(index, reason)] not read,
    how many came from the cache). Features the cache lacks go through the tower and into the cache."""
    keys, failed = _keys(modality, inputs)
    rows = [i for i, k in enumerate(keys) if k is not None]
    found, hits = cache.get([keys[i] for i in rows]) if cache is not None and rows else (None, np.zeros(len(rows), bool))
    missing = [rows[j] for j in np.flatnonzero(~hits)]
    done, features = [rows[j] for j in np.flatnonzero(hits)], [found[hits]] if found is not None and hits.any() else []
    label = "re-embedding images" if modality == "image" else "re-embedding captions"
    if modality == "image":
        for indices, batch, bad in image_batches([inputs[i] for i in missing], encoder.preprocess, batch_size, num_workers):
            failed.extend((missing[i], reason) for i, reason in bad)
            if batch is not None:
                features.append(encoder.image_features(batch).numpy())
                done.extend(missing[i] for i in indices)
                if cache is not None:
                    cache.put([keys[missing[i]] for i in indices], features[-1])
            if on_progress is not None:
                on_progress(label, len(done) + len(failed), len(inputs))
    else:
        for start in range(0, len(missing), batch_size):
            part = missing[start:start + batch_size]
            features.append(encoder.text_features([inputs[i] for i in part]).numpy())
            done.extend(part)
            if cache is not None:
                cache.put([keys[i] for i in part], features[-1])
            if on_progress is not None:
                on_progress(label, len(done), len(inputs))
    if not done:
        return np.zeros(0, np.int64), np.zeros((0, encoder.dim), np.float32), None, failed, 0
    vectors, spread = _project(encoder, modality, np.concatenate(features), batch_size)
    return np.asarray(done, np.int64), vectors, spread, failed, int(hits.sum())
