"""A finely-categorised synthetic embedding pool: coarse categories holding fine sub-categories.

Images of one fine category sit close together; captions sit near their image's fine category, offset
by a shared modality gap, as CLIP embeddings do. Paired images carry several captions. Used by the
demo before any model exists (``hnsel datasets vectors``, ``make demo-vectors``), by the tests, and by
``benchmarks/select_scale.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError

__all__ = ["SyntheticPool", "make_pool", "write_pool", "generate_vectors"]


@dataclass
class SyntheticPool:
    image_ids: np.ndarray
    image_vectors: np.ndarray
    image_pool: np.ndarray
    image_fine: np.ndarray
    text_ids: np.ndarray
    text_vectors: np.ndarray
    text_image_ids: np.ndarray


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def make_pool(n_paired: int = 200, n_unpaired: int = 2000, captions_per_image: int = 5, dim: int = 64, n_coarse: int = 10,
              fine_per_coarse: int = 10, seed: int = 0, fine_spread: float = 0.6, image_noise: float = 0.35,
              caption_noise: float = 0.45) -> SyntheticPool:
    rng = np.random.default_rng(seed)
    coarse = _unit(rng.normal(size=(n_coarse, dim)))
    fine = _unit(np.repeat(coarse, fine_per_coarse, axis=0) + fine_spread * _unit(rng.normal(size=(n_coarse * fine_per_coarse, dim))))
    gap = 0.5 * _unit(rng.normal(size=dim))
    n = n_paired + n_unpaired
    category = rng.integers(0, len(fine), size=n)
    images = _unit(fine[category] + image_noise * _unit(rng.normal(size=(n, dim))))
    width = len(str(n))
    image_ids = np.array([f"img{i:0{width}d}" for i in range(n)], dtype=object)
    pool = np.array(["paired"] * n_paired + ["unpaired"] * n_unpaired, dtype=object)
    owner = np.repeat(np.arange(n_paired), captions_per_image)
    texts = _unit(images[owner] + fine[category[owner]] + gap + caption_noise * _unit(rng.normal(size=(len(owner), dim))))
    text_ids = np.array([f"{image_ids[o]}_c{j}" for o, j in zip(owner, np.tile(np.arange(captions_per_image), n_paired))], dtype=object)
    return SyntheticPool(image_ids, images, pool, category, text_ids, texts, image_ids[owner])


def write_pool(pool: SyntheticPool, outdir: str | Path) -> tuple[Path, Path]:
    """Write ``images.parquet`` and ``texts.parquet`` in the ``hnsel ingest`` format."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    vec_type = pa.list_(pa.float32())
    images = pa.table({"id": pa.array(pool.image_ids.tolist()), "vector": pa.array(list(pool.image_vectors), type=vec_type),
                       "pool": pa.array(pool.image_pool.tolist()), "uri": pa.array([f"synthetic://fine{c}/{i}" for c, i in zip(pool.image_fine, pool.image_ids)])})
    texts = pa.table({"id": pa.array(pool.text_ids.tolist()), "vector": pa.array(list(pool.text_vectors), type=vec_type),
                      "pool": pa.array(["paired"] * len(pool.text_ids)), "image_id": pa.array(pool.text_image_ids.tolist())})
    pq.write_table(images, outdir / "images.parquet")
    pq.write_table(texts, outdir / "texts.parquet")
    return outdir / "images.parquet", outdir / "texts.parquet"


def generate_vectors(out_dir: str | Path, n_paired: int = 1000, n_unpaired: int = 20000, captions_per_image: int = 3, dim: int = 128,
                     seed: int = 0) -> dict:
    """``make_pool`` written for ``hnsel ingest`` (``images.parquet``, ``texts.parquet`` in ``out_dir``); a summary."""
    for name, value, least in (("--paired", n_paired, 1), ("--unpaired", n_unpaired, 1), ("--captions", captions_per_image, 1),
                               ("--dim", dim, 2), ("--seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise InputError(f"{name} must be an integer of at least {least}, got {value!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError("is a file; name a folder to write images.parquet and texts.parquet into", path=out)
    pool = make_pool(n_paired, n_unpaired, captions_per_image=captions_per_image, dim=dim, seed=seed)
    images, texts = write_pool(pool, out)
    return {"images": str(images), "texts": str(texts), "paired": n_paired, "unpaired": n_unpaired, "captions": len(pool.text_ids),
            "dim": dim, "seed": seed}


if __name__ == "__main__":  # python -m hnsel.data.synthetic OUTDIR [n_paired n_unpaired]
    import sys

    args = sys.argv[1:]
    sizes = [int(a) for a in args[1:3]]
    paths = write_pool(make_pool(*sizes, captions_per_image=3, dim=128) if sizes else make_pool(n_paired=1000, n_unpaired=20000, dim=128), args[0] if args else "demo")
    print(" ".join(str(p) for p in paths))
