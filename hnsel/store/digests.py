"""Content digests of stored images: ``{namespace}_digests``, one row per file content (sha256 of the file's bytes)
with the id of the image stored from it, so ``hnsel embed`` can refuse the same photo under a second id.

A collection of its own rather than a field of the images collection: collections created before it, and collections
hnsel did not create, keep their schema; and rather than meta records: listing the meta collection stays small.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from ..schema import ID_MAX_LENGTH
from .milvus import Store, in_filter

__all__ = ["DIGESTS", "digest_owners", "record_digests"]

DIGESTS = "digests"  # Store.name(DIGESTS) == "{namespace}_digests"
DIGEST_LENGTH = 64  # sha256 in hex


def digest_owners(store: Store, digests: Sequence[str]) -> dict[str, str]:
    """digest -> id of the image already stored from a file with that content (digests never recorded are absent)."""
    if not digests or not store.has(DIGESTS):
        return {}
    name, out, wanted = store.name(DIGESTS), {}, sorted(set(digests))
    store.rpc(f"load collection {name}", "load_collection", name)
    for start in range(0, len(wanted), 1000):  # 1000 digests of 64 characters: a small expression
        rows = store.rpc(f"read {name}", "query", name, filter=in_filter("id", wanted[start:start + 1000]), output_fields=["id", "image_id"],
                         consistency_level="Strong")
        out.update({r["id"]: r["image_id"] for r in rows})
    return out


def record_digests(store: Store, owners: Mapping[str, str]) -> int:
    """Keep digest -> image id for images now stored; a digest already recorded keeps its first owner. Returns how many were new."""
    held = digest_owners(store, list(owners))
    new = [(d, i) for d, i in owners.items() if d not in held]
    if not new:
        return 0
    _ensure(store)
    for start in range(0, len(new), 2000):
        rows = [{"id": d, "image_id": i, "vector": [1.0, 0.0]} for d, i in new[start:start + 2000]]
        store.rpc(f"write {len(rows)} rows to {store.name(DIGESTS)}", "upsert", store.name(DIGESTS), rows)
    return len(new)


def _ensure(store: Store) -> None:
    from pymilvus import DataType, MilvusClient

    if store.has(DIGESTS):
        return
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=DIGEST_LENGTH)
    schema.add_field("image_id", DataType.VARCHAR, max_length=ID_MAX_LENGTH)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=2)  # Milvus requires a vector field
    index = store.client.prepare_index_params()
    index.add_index(field_name="vector", index_type="FLAT", metric_type="COSINE")
    store.rpc(f"create collection {store.name(DIGESTS)}", "create_collection", store.name(DIGESTS), schema=schema, index_params=index,
              consistency_level="Strong")
