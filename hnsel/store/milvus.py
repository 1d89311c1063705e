"""Milvus only: the two collections hnsel reads and writes, on Milvus Lite (a file) or a server URI.

``{namespace}_images`` and ``{namespace}_texts`` hold one row per sample: ``id`` (the user's string id),
``vector`` (unit FLOAT_VECTOR, COSINE), ``pool`` (``paired`` / ``unpaired``), ``round`` (-1 until
selected), ``uri`` on images, ``image_id`` and ``text`` on texts. ``{namespace}_meta`` keeps small JSON
records (the embedding model, the round log). Field and collection names can be mapped in ``hnsel.toml``
to read a collection hnsel did not create (read-only).

After ``hnsel reembed`` the vectors live in new collections (``{namespace}_images__m1``, ...): the meta record ``space``
maps each configured name to the collection that holds the store's current embedding space, and ``Store.name``
follows it, so every reader and writer uses the new pair from the moment one meta write switches both.

Vocabulary follows pymilvus: ``collection_name``, ``data``, ``filter``, ``limit``, ``output_fields``, ``ids``.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from ..config import CollectionConfig, StoreConfig
from ..errors import ConfigError, ModelMismatchError, StoreError, StoreLockedError
from ..schema import (
    ID_MAX_LENGTH, KINDS, MODEL_META_KEY, OPTIONAL_FLOAT_FIELDS, SCALAR_FIELDS, SPACE_META_KEY, UNKNOWN_UNCERTAINTY, describe_model,
    same_model,
)
from .connection import GRPC_OPTIONS, IDEMPOTENT, is_dropped, until_connected

__all__ = ["Store", "open_store", "collection_schema", "MAX_TOPK", "quote", "in_filter"]

MAX_TOPK = 16384  # Milvus's cap on topk and nq
MAX_RESULTS_PER_REQUEST = 1_000_000  # nq x limit per search call, to keep responses well under 64 MB
_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"})
_IN_FILTER_CHARS = 256 * 1024  # one expression's literals; requests stay far under Milvus's limits


def quote(value: str) -> str:
    """``value`` as a Milvus expression string literal: the one place a user's string enters a filter.

    ``"`` and ``\\`` are escaped, newline, carriage return and tab written ``\\n``, ``\\r``, ``\\t``; every other
    character, non-ASCII and control characters included, stays raw. Milvus Lite refuses ``\\u``/``\\x``/octal
    escapes and the server refuses the surrogate pairs ``json.dumps`` writes for an emoji, so raw UTF-8 is the one
    form both backends read back exactly (tests/test_hostile.py proves it on both).
    """
    return '"' + str(value).translate(_ESCAPES) + '"'


def in_filter(field: str, values: Sequence[str]) -> str:
    """``field in ["a", "b"]`` with every value quoted by ``quote``."""
    return f"{field} in [{', '.join(quote(v) for v in values)}]"


def _id_chunks(ids: Sequence[str], limit: int = 1000) -> Iterator[list[str]]:
    """Ids in runs of at most ``limit`` and about ``_IN_FILTER_CHARS`` characters of literals."""
    chunk: list[str] = []
    size = 0
    for i in ids:
        if chunk and (len(chunk) >= limit or size + len(i) > _IN_FILTER_CHARS):
            yield chunk
            chunk, size = [], 0
        chunk.append(str(i))
        size += len(i) + 4
    if chunk:
        yield chunk


def _quiet_pymilvus() -> None:
    """Errors are raised to callers, not logged twice; the query iterator's mvccTs warning is noise."""
    names = [n for n in logging.root.manager.loggerDict if n.startswith(("pymilvus", "milvus_lite"))]
    for name in names + ["pymilvus", "milvus_lite", "grpc._server"]:  # Lite's in-process server logs unimplemented RPCs
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _connect(config: StoreConfig, dedicated: bool = False):
    """A client of ``config.uri``; ``dedicated``: a connection of its own, not the one pymilvus shares per address."""
    from pymilvus import MilvusClient

    _quiet_pymilvus()
    if config.is_lite:
        path = Path(config.uri)
        if path.suffix != ".db":
            raise ConfigError(f"--milvus-uri {config.uri!r}: a Milvus Lite file must end in .db, or give a server URI like http://localhost:19530")
        if not path.parent.exists():
            raise ConfigError(f"--milvus-uri {config.uri!r}: folder {path.parent} does not exist; create it first")
    try:
        # a Lite file starts a local server, which can take long on a loaded machine (seen: > 30 s while another job wrote
        # gigabytes to the same disk): wait up to the request timeout for it; a remote server gets 30 s at most. Refusals
        # meanwhile are retried, and the keepalive is one the server accepts (store/connection.py says why)
        return until_connected(lambda left: MilvusClient(uri=config.uri, token=config.token or "", timeout=left, grpc_options=dict(GRPC_OPTIONS),
                                                         dedicated=dedicated), config.timeout if config.is_lite else min(30.0, config.timeout))
    except Exception as exc:  # pymilvus raises several types for the same failures
        text = str(exc)
        if config.is_lite and ("Open local milvus failed" in text or "lock" in text.lower()):
            raise StoreLockedError(
                f"{config.uri} is already open in another process (Milvus Lite allows one process per file); stop it, or share the file "
                f"by serving it: `milvus-lite server --data-dir {config.uri} --port 19531` and pass --milvus-uri http://127.0.0.1:19531"
            ) from None
        text = _one_line(text.replace(config.uri, config.safe_uri))
        raise StoreError(f"cannot connect to Milvus at {config.safe_uri}: {text[:300]}; check the URI and token, and that the server is running") from None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _milvus_error(action: str, exc: Exception, config: StoreConfig | None = None) -> StoreError:
    message = getattr(exc, "message", None) or str(exc)
    where = f" at {config.safe_uri}" if config is not None else ""
    if any(sign in message for sign in ("DEADLINE_EXCEEDED", "Deadline Exceeded", "Retry timeout")):
        limit = f" within {config.timeout:g} s" if config is not None else ""
        return StoreError(f"Milvus{where} did not answer{limit} (while trying to {action}); check that the server is running and not paused "
                          "or overloaded, then run the command again (a larger [store] timeout in hnsel.toml allows slower requests)")
    if "UNAVAILABLE" in message or "Connection refused" in message:
        return StoreError(f"Milvus{where} is unreachable (while trying to {action}); check that the server is running and the URI, then run the command again")
    if config is not None:
        message = message.replace(config.uri, config.safe_uri)
    return StoreError(f"Milvus refused to {action}: {_one_line(message)[:300]}")


class Store:
    """One connection and the hnsel collections behind it. Use ``open_store(config)`` as a context manager."""

    def __init__(self, config: StoreConfig):
        self.config = config
        self.client = _connect(config)
        self._loaded: set[str] = set()
        self._fields: dict[str, set[str]] = {}
        self._synced = False
        self._space: dict[str, str] | None = None  # configured collection name -> the collection in use (``space`` record)

    def rpc(self, action: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """``self.client.<method>(...)`` with the configured timeout; any failure becomes one ``StoreError`` line. An
        idempotent request that meets a dropped connection is sent once more on a fresh one."""
        try:
            return getattr(self.client, method)(*args, timeout=self.config.timeout, **kwargs)
        except Exception as exc:  # pymilvus and grpc raise many types for the same failures
            if method not in IDEMPOTENT or not is_dropped(exc):
                raise _milvus_error(action, exc, self.config) from None
        self._reconnect(action)
        try:
            return getattr(self.client, method)(*args, timeout=self.config.timeout, **kwargs)
        except Exception as exc:
            raise _milvus_error(action, exc, self.config) from None

    def _reconnect(self, action: str) -> None:
        """A connection of the store's own: pymilvus shares one per address, and after a failed recovery of its own it
        would hand the broken one back."""
        self.close()
        try:
            self.client = _connect(self.config, dedicated=True)
        except StoreError as exc:
            raise StoreError(f"{exc} (the connection dropped while trying to {action})") from None

    def sync(self) -> None:
        """Make the next read Strong again: it then sees every write made so far, by any process."""
        self._synced = False

    def _consistency(self, strong: bool = False) -> str:
        """Strong for this connection's first read (it waits for every earlier write, from any process), then
        Session: it still sees this client's own writes and skips the ~200 ms Strong wait on each request."""
        if self._synced and not strong:
            return "Session"
        self._synced = True
        return "Strong"

    # --- naming -------------------------------------------------------------------------------
    def name(self, kind: str) -> str:
        if kind not in KINDS:
            return f"{self.config.namespace}_{kind}"
        base = self.config.collection_name(kind)
        return self.space().get(base, base)

    def space(self) -> dict[str, str]:
        """Configured collection name -> the collection holding the current embedding space (read once per Store)."""
        if self._space is None:
            self._space = {}
            if self.has("meta"):  # a Strong read that leaves the next data read Strong too (``_consistency``)
                rows = self.rpc("read the meta collection", "query", self._load("meta"), filter=in_filter("id", [SPACE_META_KEY]),
                                output_fields=["value"], consistency_level="Strong")
                self._space = dict((json.loads(rows[0]["value"]) if rows else {}).get("collections") or {})
        return self._space

    def view(self, names: Mapping[str, str]) -> "Store":
        """The same connection with ``names`` (kind -> collection) in place of the current collections: ``hnsel reembed``
        writes a new space into collections no reader uses until the switch."""
        other = copy.copy(self)
        other._space = {self.config.collection_name(k): v for k, v in names.items()}
        other._loaded, other._fields = set(), {}
        return other

    def forget_space(self) -> None:
        """Read the ``space`` record again at the next name look-up (after a switch)."""
        self._space, self._loaded, self._fields = None, set(), {}

    def drop_collection(self, collection_name: str) -> None:
        if self.rpc(f"look up collection {collection_name}", "has_collection", collection_name):
            self.rpc(f"drop collection {collection_name}", "drop_collection", collection_name)
        self._loaded.discard(collection_name)

    def list_collections(self) -> list[str]:
        return list(self.rpc("list collections", "list_collections"))

    def fields(self, kind: str) -> CollectionConfig:
        return getattr(self.config, kind)

    def pool_filter(self, kind: str, pool: str, unselected: bool = False) -> str:
        """The filter of one pool; ``unselected``: only samples no round has picked (by their round field, or for
        rounds kept in the meta collection, by the picks kept there: ``pools.picked_in_meta``)."""
        if unselected and self.rounds_in_meta(kind):
            from .pools import picked_in_meta

            return self.excluding(kind, self.where(kind, pool=pool), picked_in_meta(self, kind))
        return self.where(kind, pool=pool, round=-1 if unselected and self.has_field(kind, "round") else None)

    def rounds_in_meta(self, kind: str) -> bool:
        """Whether ``kind``'s rounds are kept in the meta collection: a read_only collection, or one without a round field."""
        return self.read_only(kind) or (self.has(kind) and not self.has_field(kind, "round"))

    def _pool_term(self, kind: str, pool: str) -> str:
        """One pool as ``hnsel.toml`` maps it: its filter expression, else the pool field equal to its value."""
        f = self.fields(kind)
        expr = f.pool_filter_of(pool)
        return f"({expr})" if expr else f"{f.pool} == {quote(f.pool_value(pool))}"

    def where(self, kind: str, *, pool: str | None = None, round: int | None = None, min_round: int | None = None,
              below_round: int | None = None, image_ids: Sequence[str] | None = None, uris: Sequence[str] | None = None,
              empty: str | None = None) -> str:
        """A filter expression of ``kind``'s rows: every condition given must hold (``""``: all rows). The only
        place hnsel writes a filter; strings enter through ``quote``, numbers as ints."""
        f = self.fields(kind)
        terms = []
        if pool is not None:
            terms.append(self._pool_term(kind, pool))
        if round is not None:
            terms.append(f"{f.round} == {int(round)}")
        if min_round is not None:
            terms.append(f"{f.round} >= {int(min_round)}")
        if below_round is not None:
            terms.append(f"{f.round} < {int(below_round)}")
        if image_ids is not None:
            terms.append(in_filter(f.image_id, list(image_ids)))
        if uris is not None:
            terms.append(in_filter(f.uri, list(uris)))
        if empty is not None:  # a VARCHAR field (canonical name) that holds the empty string: an image without uri
            terms.append(f"{getattr(f, empty)} == {quote('')}")
        return " and ".join(terms)

    def excluding(self, kind: str, filter: str, ids: Sequence[str]) -> str:
        """``filter`` without the rows whose id is in ``ids``."""
        if not len(ids):
            return filter
        return f"({filter}) and not ({in_filter(self.fields(kind).id, list(ids))})"

    def check_model(self, model_info: dict) -> None:
        """Refuse to mix embedding spaces: the store's model record must describe ``model_info``'s model."""
        held = self.get_meta(MODEL_META_KEY)
        where = f"namespace {self.config.namespace!r} at {self.config.safe_uri}"
        if held is not None and not same_model(held, model_info):
            raise ModelMismatchError(
                f"{where} holds vectors of {describe_model(held)}, but this run uses {describe_model(model_info)}; "
                "mixing embedding spaces would corrupt every search: use a new --namespace for this model, or embed with the store's model"
            )
        if held is None and (self.count("images") or self.count("texts")):
            raise ModelMismatchError(
                f"{where} holds vectors with no model record (ingested from files?), and this run uses {describe_model(model_info)}; "
                "use a new --namespace for model-embedded data"
            )
        dim = self.dim
        if dim is not None and dim != model_info["dim"]:
            raise ModelMismatchError(f"{where} holds {dim}-dimensional vectors, {describe_model(model_info)} makes {model_info['dim']}; use a new --namespace")

    # --- lifecycle ----------------------------------------------------------------------------
    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # closing a dead connection is not the user's problem
            pass

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def has(self, kind: str) -> bool:
        return bool(self.rpc(f"look up collection {self.name(kind)}", "has_collection", self.name(kind)))

    def _describe(self, kind: str) -> dict:
        return self.rpc(f"describe collection {self.name(kind)}", "describe_collection", self.name(kind))

    def has_field(self, kind: str, canonical: str) -> bool:
        if kind not in self._fields:
            self._fields[kind] = {f["name"] for f in self._describe(kind)["fields"]} if self.has(kind) else set()
        return getattr(self.fields(kind), canonical) in self._fields[kind]

    @property
    def dim(self) -> int | None:
        for kind in KINDS:
            if self.has(kind):
                vector = self.fields(kind).vector
                for f in self._describe(kind)["fields"]:
                    if f["name"] == vector:
                        return int(f["params"]["dim"])
        return None

    def _load(self, kind: str) -> str:
        name = self.name(kind)
        if name not in self._loaded:
            self.rpc(f"load collection {name}", "load_collection", name)
            self._loaded.add(name)
        return name

    def read_only(self, kind: str) -> bool:
        return self.fields(kind).read_only

    # --- schema -------------------------------------------------------------------------------
    def ensure_collections(self, dim: int, uncertainty: bool = False) -> None:
        """Create the image, text and meta collections when absent; refuse a different dimension. ``uncertainty``: new
        collections get the FLOAT ``uncertainty`` field (models with probabilistic heads write it)."""
        held = self.dim
        if held is not None and held != dim:
            raise StoreError(f"the store holds {held}-dimensional vectors, these are {dim}-dimensional; use another --namespace or the same model")
        missing = [kind for kind in KINDS if not self.has(kind)]
        for kind in missing:  # all checked before the first is created
            if self.read_only(kind):
                raise StoreError(f"collection {self.name(kind)} does not exist and is configured read_only; create it or fix hnsel.toml")
        for kind in missing:
            self._create(kind, dim, uncertainty)
        self._ensure_meta()

    def _index_params(self, field: str, index_type: str, params: Mapping[str, Any]):
        index_params = self.client.prepare_index_params()
        index_params.add_index(field_name=field, index_type=index_type, metric_type="COSINE", params={"params": dict(params)} if params else {})
        return index_params

    def _create(self, kind: str, dim: int, uncertainty: bool = False) -> None:
        f = self.fields(kind)
        index = self._index_params(f.vector, self.config.index_type, self.config.build_params)
        schema = collection_schema(f, kind, dim, OPTIONAL_FLOAT_FIELDS if uncertainty else ())
        self.rpc(f"create collection {self.name(kind)}", "create_collection", self.name(kind), schema=schema,
                 index_params=index, consistency_level="Strong")
        self._fields.pop(kind, None)

    def _ensure_meta(self) -> None:
        from pymilvus import DataType, MilvusClient

        name = self.name("meta")
        if self.has("meta"):
            return
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=128)
        schema.add_field("value", DataType.VARCHAR, max_length=65535)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=2)  # Milvus requires a vector field
        self.rpc(f"create collection {name}", "create_collection", name, schema=schema, index_params=self._index_params("vector", "FLAT", {}),
                 consistency_level="Strong")

    # --- meta records -------------------------------------------------------------------------
    def get_meta(self, key: str, strong: bool = False) -> Any:
        """The JSON record ``key`` (None when absent); ``strong`` also sees other processes' latest writes."""
        if not self.has("meta"):
            return None
        rows = self.rpc("read the meta collection", "query", self._load("meta"), filter=in_filter("id", [key]), output_fields=["value"],
                        consistency_level=self._consistency(strong))
        return json.loads(rows[0]["value"]) if rows else None

    def set_meta(self, key: str, value: Any) -> None:
        self._ensure_meta()
        text = json.dumps(_finite(value), sort_keys=True, allow_nan=False)
        if len(text) > 65535:
            raise StoreError(f"meta record {key!r} is {len(text)} characters; Milvus VARCHAR holds 65535")
        self.rpc(f"write meta record {key}", "upsert", self.name("meta"), [{"id": key, "value": text, "vector": [1.0, 0.0]}])

    def set_metas(self, records: Mapping[str, Any]) -> None:
        """Several JSON records in one upsert request: they change together (``hnsel reembed``'s switch)."""
        self._ensure_meta()
        rows = []
        for key, value in records.items():
            text = json.dumps(_finite(value), sort_keys=True, allow_nan=False)
            if len(text) > 65535:
                raise StoreError(f"meta record {key!r} is {len(text)} characters; Milvus VARCHAR holds 65535")
            rows.append({"id": key, "value": text, "vector": [1.0, 0.0]})
        self.rpc(f"write meta records {', '.join(records)}", "upsert", self.name("meta"), rows)

    def delete_meta(self, keys: Sequence[str]) -> None:
        if keys and self.has("meta"):
            for chunk in _id_chunks(keys):
                self.rpc("delete meta records", "delete", self.name("meta"), filter=in_filter("id", chunk))

    def meta_keys(self, prefix: str = "", strong: bool = False) -> list[str]:
        if not self.has("meta"):
            return []
        rows = self.rpc("list the meta collection", "query", self._load("meta"), filter='id != ""', output_fields=["id"],
                        consistency_level=self._consistency(strong))
        return sorted(r["id"] for r in rows if r["id"].startswith(prefix))

    # --- writes -------------------------------------------------------------------------------
    def upsert(self, kind: str, data: Mapping[str, Any]) -> int:
        """Insert or replace rows given as columns (canonical names); batched under the request cap.

        A field the columns leave out, or give as None for a row, keeps the row's stored value: re-ingesting never
        forgets a selection, a uri or a caption, and pairing an image keeps its stored variance; a new row gets the
        default (round -1: unselected; uncertainty unknown; ``""``). Reading the kept values and writing the rows hold
        the row lock (``leases.row_lock``), so a round marking the same rows meanwhile is never undone.
        """
        if self.read_only(kind):
            raise StoreError(f"collection {self.name(kind)} is configured read_only in hnsel.toml; hnsel will not write to it")
        ids = [str(x) for x in data["id"]]
        if not ids:
            return 0
        vectors = np.asarray(data["vector"], dtype=np.float32)
        columns = {c: list(data[c]) for c in (*SCALAR_FIELDS[kind], *OPTIONAL_FLOAT_FIELDS) if c in data and self.has_field(kind, c)}
        kept = [c for c in (*SCALAR_FIELDS[kind], *OPTIONAL_FLOAT_FIELDS)
                if self.has_field(kind, c) and (c not in columns or any(v is None for v in columns[c]))]
        from .leases import holds_row_lock, row_lock

        if not kept or (not holds_row_lock(self) and not self.get(kind, ids, ["id"])):
            # every field given, or new rows only (no round can mark a row that is not stored yet): no read, no lock
            return self._write(kind, ids, vectors, _kept_columns(columns, kept, ids, {}))
        with row_lock(self):  # read again under the lock, Strong: the rows as every other process left them
            held = self.get(kind, ids, ["id", *kept], strong=True)
            return self._write(kind, ids, vectors, _kept_columns(columns, kept, ids, {r["id"]: r for r in held}))

    def _write(self, kind: str, ids: list[str], vectors: np.ndarray, columns: dict[str, list]) -> int:
        f = self.fields(kind)
        if "pool" in columns:
            columns["pool"] = self._stored_pools(kind, columns["pool"])
        row_bytes = vectors.shape[1] * 4 + sum(len(i) for i in ids) // len(ids) + 256
        step = max(1, self.config.insert_batch_bytes // row_bytes)
        for start in range(0, len(ids), step):
            rows = [{f.id: ids[i], f.vector: vectors[i].tolist(), **{getattr(f, c): v[i] for c, v in columns.items()}}
                    for i in range(start, min(start + step, len(ids)))]
            self.rpc(f"write {len(rows)} rows to {self.name(kind)}", "upsert", self.name(kind), rows)
        return len(ids)

    def delete(self, kind: str, ids: Sequence[str]) -> None:
        for chunk in _id_chunks(list(ids)):
            self.rpc(f"delete rows of {self.name(kind)}", "delete", self.name(kind), filter=in_filter(self.fields(kind).id, chunk))

    def update(self, kind: str, ids: Sequence[str], values: Mapping[str, Any]) -> int:
        """Set canonical fields (``{"round": 3}``, ``{"pool": "paired"}``) on the rows ``ids``; returns how many exist.
        Rewrites whole rows: Milvus has no partial update."""
        if self.read_only(kind):
            raise StoreError(f"collection {self.name(kind)} is configured read_only in hnsel.toml; hnsel will not write to it")
        if not len(ids):
            return 0
        from .leases import row_lock

        f = self.fields(kind)
        if "pool" in values:
            values = dict(values, pool=self._stored_pools(kind, [values["pool"]])[0])
        wanted = [getattr(f, c) for c in (*SCALAR_FIELDS[kind], *OPTIONAL_FLOAT_FIELDS) if self.has_field(kind, c)]
        changed = 0
        with row_lock(self):  # no other process rewrites these rows between the read and the write (a concurrent ingest)
            for start in range(0, len(ids), 1000):
                rows = self.get(kind, ids[start:start + 1000], [f.id, f.vector, *wanted], canonical=False, strong=True)
                for row in rows:
                    row.update({getattr(f, c): v for c, v in values.items()})
                if rows:
                    self.rpc(f"write {len(rows)} rows to {self.name(kind)}", "upsert", self.name(kind), rows)
                changed += len(rows)
        return changed

    def _stored_pools(self, kind: str, pools: Sequence[str]) -> list[str]:
        """Canonical pools as the collection stores them (``hnsel.toml``'s values); pools given by filters cannot be written."""
        f = self.fields(kind)
        if f.paired_filter or f.unpaired_filter:
            raise StoreError(f"collection {self.name(kind)}: its pools are filter expressions in hnsel.toml, so hnsel cannot write a "
                             "sample's pool; map pool values (paired = \"...\", unpaired = \"...\") or set read_only")
        return [f.pool_value(p) for p in pools]

    def _canonical_rows(self, kind: str, rows: list[dict]) -> list[dict]:
        """Rows (canonical names) with the pool field's values read back as "paired" / "unpaired"."""
        f = self.fields(kind)
        if (f.paired, f.unpaired) == ("paired", "unpaired") or not rows or "pool" not in rows[0]:
            return rows
        for row in rows:
            row["pool"] = f.canonical_pool(row["pool"])
        return rows

    def set_round(self, kind: str, ids: Sequence[str], round_: int) -> int:
        """Mark samples with a round number (-1 releases them)."""
        return self.update(kind, ids, {"round": int(round_)})

    # --- reads --------------------------------------------------------------------------------
    def get(self, kind: str, ids: Sequence[str], output_fields: Sequence[str], canonical: bool = True, strong: bool = False) -> list[dict]:
        """Rows by id (missing ids are absent); ``output_fields`` in canonical names unless ``canonical=False``;
        ``strong``: as every process left them (a read-modify-write under the row lock)."""
        if not ids or not self.has(kind):
            return []
        f = self.fields(kind)
        names = [getattr(f, c) for c in output_fields] if canonical else list(output_fields)
        out: list[dict] = []
        for chunk in _id_chunks(ids):  # a query by quoted ids: pymilvus's get() pastes ids into the filter unescaped
            out.extend(self.rpc(f"read ids from {self.name(kind)}", "query", self._load(kind), filter=in_filter(f.id, chunk),
                                output_fields=names, consistency_level=self._consistency(strong)))
        if canonical:
            rename = {getattr(f, c): c for c in output_fields}
            out = self._canonical_rows(kind, [{rename.get(k, k): v for k, v in row.items()} for row in out])
        return out

    def get_rounds(self, kind: str, ids: Sequence[str]) -> dict[str, int]:
        if not self.has(kind) or not self.has_field(kind, "round"):
            return {}
        return {r["id"]: int(r["round"]) for r in self.get(kind, ids, ["id", "round"])}

    def existing_ids(self, kind: str, ids: Sequence[str]) -> set[str]:
        return {r["id"] for r in self.get(kind, ids, ["id"])}

    def count(self, kind: str, filter: str = "") -> int:
        if not self.has(kind):
            return 0
        f = self.fields(kind)
        rows = self.rpc(f"count rows of {self.name(kind)}", "query", self._load(kind), filter=filter or f'{f.id} != ""',
                        output_fields=["count(*)"], consistency_level=self._consistency())
        return int(rows[0]["count(*)"])

    def iter_rows(self, kind: str, filter: str = "", output_fields: Sequence[str] = ("id",), batch_size: int = 4096) -> Iterator[list[dict]]:
        """Stream rows (canonical field names) in batches; memory is one batch.

        Pages by primary key (``id > "last"``; in iterator mode a query returns the lowest ids first, on Lite too),
        with the last id quoted by ``quote``: pymilvus's query_iterator pastes it into its filter unescaped, so an
        id holding a quote broke every read of the collection.
        """
        if not self.has(kind):
            return
        f = self.fields(kind)
        names = [getattr(f, c) for c in output_fields]
        rename = dict(zip(names, output_fields))
        limit, last = max(1, min(int(batch_size), MAX_TOPK)), None
        while True:
            page = f"{f.id} > {quote(last)}" if last is not None else f'{f.id} != ""'
            rows = self.rpc(f"read {self.name(kind)}", "query", self._load(kind), filter=f"({filter}) and {page}" if filter else page,
                            output_fields=list(dict.fromkeys([*names, f.id])), limit=limit, consistency_level=self._consistency(),
                            iterator="True", reduce_stop_for_best="True")  # iterator mode: the lowest ids, as pymilvus's iterator asks
            if not rows:
                return
            rows.sort(key=lambda row: row[f.id])
            last = rows[-1][f.id]
            yield self._canonical_rows(kind, [{rename[k]: v for k, v in row.items() if k in rename} for row in rows])
            # A short page is not the end: in iterator mode a server returns fewer than ``limit`` rows when a page
            # spans segments (at 1M rows it stopped the listing at 138,000 of 1,000,000); only an empty page is.

    def search(self, kind: str, vectors: np.ndarray, limit: int, filter: str, *,
               radius: Sequence[float] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Top-``limit`` by cosine similarity per query row: (ids, similarities), most similar first.

        With ``radius`` (one per row), a range search keeps ``similarity > radius``.
        """
        vectors = np.asarray(vectors, dtype=np.float32)
        limit = int(min(limit, MAX_TOPK))
        per_call = max(1, min(MAX_TOPK, MAX_RESULTS_PER_REQUEST // limit, (16 << 20) // (4 * vectors.shape[1])))
        if radius is not None:
            per_call = 1  # each row has its own radius
        out: list[tuple[np.ndarray, np.ndarray]] = []
        for start in range(0, len(vectors), per_call):
            params = dict(self.config.search_params)
            if self.config.index_type.upper() == "HNSW":
                params["ef"] = max(int(params.get("ef", 0)), limit)
            if radius is not None:
                params.update(radius=float(radius[start]), range_filter=1.0 + 1e-6)
            out.extend(self._search_call(kind, vectors[start:start + per_call], limit, filter, params))
        return out

    def _search_call(self, kind: str, vectors: np.ndarray, limit: int, filter: str, params: dict):
        f = self.fields(kind)
        result = self.rpc(f"search {self.name(kind)}", "search", self._load(kind), data=vectors.tolist(), limit=limit, filter=filter,
                          anns_field=f.vector, output_fields=[f.id], search_params={"metric_type": "COSINE", "params": params},
                          consistency_level=self._consistency())
        return [(np.asarray(list(hits.ids), dtype=object), np.asarray(list(hits.distances), dtype=np.float32)) for hits in result]


def _kept_columns(columns: dict[str, list], kept: Sequence[str], ids: Sequence[str], held: dict[str, dict]) -> dict[str, list]:
    """``columns`` with each ``kept`` field filled where it is absent or None: the stored value, else the default."""
    out = dict(columns)
    for c in kept:
        default = -1 if c == "round" else UNKNOWN_UNCERTAINTY if c in OPTIONAL_FLOAT_FIELDS else ""
        given = columns.get(c) or [None] * len(ids)
        out[c] = [v if v is not None else held.get(i, {}).get(c, default) for i, v in zip(ids, given)]
    for c in OPTIONAL_FLOAT_FIELDS:
        if c in out:
            out[c] = [float(x) for x in out[c]]
    return out


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None, so it is JSON (``json.dumps(allow_nan=False)`` accepts it)."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def collection_schema(fields: CollectionConfig, kind: str, dim: int, optional: Sequence[str] = ()):
    """The pymilvus schema of a collection hnsel creates (the store's and the BulkWriter files'): the VARCHAR
    primary key, the FLOAT_VECTOR, ``schema.SCALAR_FIELDS`` and the ``optional`` FLOAT fields, under the names
    ``fields`` maps them to."""
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field(fields.id, DataType.VARCHAR, is_primary=True, max_length=ID_MAX_LENGTH)
    schema.add_field(fields.vector, DataType.FLOAT_VECTOR, dim=dim)
    for canonical, max_length in SCALAR_FIELDS[kind].items():
        if max_length is None:
            schema.add_field(getattr(fields, canonical), DataType.INT64)
        else:
            schema.add_field(getattr(fields, canonical), DataType.VARCHAR, max_length=max_length)
    for canonical in optional:
        schema.add_field(getattr(fields, canonical), DataType.FLOAT)
    return schema


def open_store(config: StoreConfig) -> Store:
    """Connect to the Milvus Lite file or server that ``config.uri`` names."""
    return Store(config)
