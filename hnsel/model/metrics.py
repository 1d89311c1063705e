"""Recall@K for image-text retrieval on arrays (the standard Flickr30K / COCO protocol).

- image-to-text: an image query is a hit at K when *any* of its captions is among the K captions
  most similar to it; its rank is that of its best-ranked caption.
- text-to-image: a caption query is a hit at K when its own image is among the K most similar images.
- R-sum is the sum of the six recalls (R@1, R@5, R@10 in both directions), each in percent.

Ties count against the model: a negative scored exactly as high as the best positive ranks above it, so
a collapsed model (all vectors equal) scores 0, not 100. The work is done in chunks of query rows
holding at most ``max_chunk_elements`` similarities at once (32 MB of float32 by default), so a
5k-image, 25k-caption test set fits in a few hundred MB.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import InputError

__all__ = ["evaluate_recall", "image_to_text_ranks", "text_to_image_ranks", "recall_at"]

DEFAULT_CHUNK_ELEMENTS = 8 * 1024 * 1024


def _validate(image_vecs: np.ndarray, text_vecs: np.ndarray, text_image_index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    images = np.asarray(image_vecs, dtype=np.float32)
    texts = np.asarray(text_vecs, dtype=np.float32)
    index = np.asarray(text_image_index)
    if images.ndim != 2 or texts.ndim != 2 or images.shape[1] != texts.shape[1]:
        raise InputError(f"image vectors {images.shape} and text vectors {texts.shape} must be 2-D with the same dimension")
    if len(images) == 0 or len(texts) == 0:
        raise InputError(f"nothing to evaluate: {len(images)} images, {len(texts)} captions; the test split needs paired images")
    if index.shape != (len(texts),) or not np.issubdtype(index.dtype, np.integer):
        raise InputError(f"text_image_index must hold one integer image index per caption ({len(texts)}), got shape {index.shape}")
    if index.min() < 0 or index.max() >= len(images):
        raise InputError(f"text_image_index holds {int(index.min())}..{int(index.max())}, outside 0..{len(images) - 1}")
    return images, texts, index.astype(np.int64)


def image_to_text_ranks(image_vecs, text_vecs, text_image_index, *, max_chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> np.ndarray:
    """0-based rank of each image's best-ranked own caption among all captions."""
    images, texts, index = _validate(image_vecs, text_vecs, text_image_index)
    counts = np.bincount(index, minlength=len(images))
    if (counts == 0).any():
        first = int(np.flatnonzero(counts == 0)[0])
        raise InputError(f"image index {first} has no caption ({int((counts == 0).sum())} such); evaluate paired images only")
    ranks = np.empty(len(images), dtype=np.int64)
    step = max(1, max_chunk_elements // len(texts))
    for start in range(0, len(images), step):
        rows = np.arange(start, min(start + step, len(images)))
        sim = images[rows] @ texts.T
        pos = index[None, :] == rows[:, None]
        best = np.where(pos, sim, -np.inf).max(axis=1)
        ranks[rows] = ((sim >= best[:, None]) & ~pos).sum(axis=1)
    return ranks


def text_to_image_ranks(image_vecs, text_vecs, text_image_index, *, max_chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> np.ndarray:
    """0-based rank of each caption's own image among all images."""
    images, texts, index = _validate(image_vecs, text_vecs, text_image_index)
    ranks = np.empty(len(texts), dtype=np.int64)
    step = max(1, max_chunk_elements // len(images))
    for start in range(0, len(texts), step):
        rows = np.arange(start, min(start + step, len(texts)))
        sim = texts[rows] @ images.T
        own = sim[np.arange(len(rows)), index[rows]]
        ranks[rows] = (sim >= own[:, None]).sum(axis=1) - 1  # the own image is counted once
    return ranks


def recall_at(ranks: np.ndarray, k: int) -> float:
    """Percent of queries whose rank is below ``k``."""
    return float(100.0 * np.mean(np.asarray(ranks) < k))


def evaluate_recall(
    image_vecs,
    text_vecs,
    text_image_index,
    *,
    ks: Sequence[int] = (1, 5, 10),
    max_chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> dict:
    """``{"i2t": {"r1", "r5", "r10"}, "t2i": {...}, "rsum"}``, recalls in percent.

    ``image_vecs`` (n_img, d) and ``text_vecs`` (n_txt, d) are compared by dot product (pass unit rows
    for cosine); ``text_image_index[j]`` is the row of caption j's image. Every image needs a caption.
    """
    i2t = image_to_text_ranks(image_vecs, text_vecs, text_image_index, max_chunk_elements=max_chunk_elements)
    t2i = text_to_image_ranks(image_vecs, text_vecs, text_image_index, max_chunk_elements=max_chunk_elements)
    out = {
        "i2t": {f"r{k}": recall_at(i2t, k) for k in ks},
        "t2i": {f"r{k}": recall_at(t2i, k) for k in ks},
    }
    out["rsum"] = float(sum(v for d in ("i2t", "t2i") for v in out[d].values()))
    return out
