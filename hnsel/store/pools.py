"""Pools of collections hnsel did not create, and rounds kept beside them.

``hnsel.toml`` maps each pool to the pool field's value (``paired = "labeled"``) or to a filter expression
(``paired_filter``; ``CollectionConfig``). A mapping that matches no row would make a collection look empty
(0 paired, 0 unpaired) with no word why: ``pool_mismatch`` says what the field holds instead.

A collection hnsel must not write (``read_only``), or one without a ``round`` field, cannot carry round marks: its
rounds are kept in hnsel's own ``{namespace}_meta`` collection (the round log and its picks, as for any round) and
``picked_in_meta`` lists the picks of every round not released, which the candidate filter leaves out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..schema import PICKS_PREFIX, POOLS, ROUND_PREFIX

if TYPE_CHECKING:
    from .milvus import Store

__all__ = ["picked_in_meta", "pool_mismatch", "SAMPLE_ROWS"]

SAMPLE_ROWS = 1000  # rows read to say which pool values a collection holds


def picked_in_meta(store: "Store", kind: str) -> list[str]:
    """Ids picked by the rounds of ``kind`` kept in the meta collection and not released (in round order)."""
    ids: list[str] = []
    for key in store.meta_keys(ROUND_PREFIX):
        number = key[len(ROUND_PREFIX):]
        log = store.get_meta(key) if number.isdigit() else None
        if not log or log.get("kind") != kind or log.get("state") == "released":
            continue
        part = 0
        while (columns := store.get_meta(f"{PICKS_PREFIX}{int(number):04d}/{part:05d}")) is not None:
            ids.extend(columns["ids"])
            part += 1
    return ids


def _mapping(store: "Store", kind: str, pool: str) -> str:
    f = store.fields(kind)
    expr = f.pool_filter_of(pool)
    return f"{pool}_filter = {expr!r}" if expr else f"{pool} = {f.pool_value(pool)!r}"


def pool_mismatch(store: "Store", kind: str) -> str | None:
    """One line when a pool's mapping matches no row of ``kind``'s collection while some rows are in neither pool (with
    the pool values seen), else None. An empty pool beside a full one (no paired images yet) is no mismatch."""
    if not store.has(kind):
        return None
    total = store.count(kind)
    counts = {pool: store.count(kind, store.where(kind, pool=pool)) for pool in POOLS}
    empty = [pool for pool in POOLS if not counts[pool]]
    outside = total - sum(counts.values())
    if not total or not empty or outside <= 0:
        return None
    f, name = store.fields(kind), store.name(kind)
    what = " and ".join(f"{_mapping(store, kind, pool)} ({pool})" for pool in empty)
    fix = (f"map the pools under [store.{kind}] in hnsel.toml: paired = \"VALUE\", unpaired = \"VALUE\", or paired_filter / "
           "unpaired_filter expressions")
    head = f"collection {name}: {total:,} rows, {outside:,} in no pool; {what} match{'es' if len(empty) == 1 else ''} none"
    if not store.has_field(kind, "pool"):
        return f"{head}: it has no pool field {f.pool!r}; name the field with pool = \"FIELD\" and {fix}"
    rows = store.rpc(f"read {name}", "query", name, filter="", output_fields=[f.pool], limit=SAMPLE_ROWS)
    values = sorted({str(r.get(f.pool)) for r in rows})
    sample = "" if total <= SAMPLE_ROWS else f" (in {SAMPLE_ROWS:,} rows read)"
    return f"{head}; pool values seen{sample}: {', '.join(values) or 'none'}; {fix}"
