"""Configuration: frozen dataclasses, read from an optional ``hnsel.toml``.

Precedence, lowest first: built-in defaults, ``hnsel.toml``, environment (``HNSEL_MILVUS_URI``,
``HNSEL_MILVUS_TOKEN``, ``HNSEL_NAMESPACE``), then command-line flags (``with_overrides``).

Example ``hnsel.toml``::

    [store]
    uri = "http://milvus.internal:19530"
    token = "root:Milvus"
    namespace = "flickr"
    index_type = "HNSW"
    index_params = { M = 32, efConstruction = 200 }  # HNSW's default; FLAT needs none
    search_params = { ef = 256 }

    # Select read-only from collections hnsel did not create:
    [store.images]
    collection_name = "photos"
    id = "photo_id"
    vector = "clip_vec"
    pool = "split"
    paired = "labeled"        # the pool field's value of each pool (default: paired / unpaired)
    unpaired = "unlabeled"    # or a filter expression per pool: paired_filter = 'split in ["train", "val"]'
    read_only = true          # rounds are then kept in hnsel's own {namespace}_meta collection

    # hnsel annotate push|pull (flags, then LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY /
    # LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, then these):
    [label_studio]
    url = "http://localhost:8080"
    api_key = "..."
    document_root = "/data"   # Label Studio's LOCAL_FILES_DOCUMENT_ROOT
    url_prefix = ""           # or images served by a web server of yours: prefix + path under document_root
"""

from __future__ import annotations

import collections.abc
import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError

__all__ = ["CollectionConfig", "StoreConfig", "LabelStudioConfig", "HnselConfig", "load_config", "DEFAULT_CONFIG_PATH", "HNSW_BUILD_DEFAULTS", "redact_uri"]

DEFAULT_CONFIG_PATH = Path("hnsel.toml")
INDEX_TYPES = ("FLAT", "HNSW", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "DISKANN", "AUTOINDEX")


@dataclass(frozen=True)
class CollectionConfig:
    """Names of one collection and of its fields; map them to use a collection hnsel did not create."""

    collection_name: str = ""  # empty: "{namespace}_images" / "{namespace}_texts"
    id: str = "id"
    vector: str = "vector"
    pool: str = "pool"
    image_id: str = "image_id"
    uri: str = "uri"
    text: str = "text"
    round: str = "round"
    uncertainty: str = "uncertainty"
    read_only: bool = False
    # How the pool field's values name the pools: a value per pool, or a filter expression per pool (which wins;
    # a collection whose pools are filters cannot have its pools written, so annotations are refused there).
    paired: str = "paired"
    unpaired: str = "unpaired"
    paired_filter: str = ""
    unpaired_filter: str = ""

    def pool_value(self, pool: str) -> str:
        """The stored value of a canonical pool ("paired" / "unpaired")."""
        return self.paired if pool == "paired" else self.unpaired if pool == "unpaired" else pool

    def canonical_pool(self, value: str) -> str:
        """The canonical pool of a stored value (a value no pool maps to is returned as it is)."""
        return "paired" if value == self.paired else "unpaired" if value == self.unpaired else value

    def pool_filter_of(self, pool: str) -> str:
        return self.paired_filter if pool == "paired" else self.unpaired_filter if pool == "unpaired" else ""


# HNSW's build parameters when ``index_params`` is empty. At efConstruction 100 a clustered pool's graph left some images
# out of reach of their captions' searches (Jaccard 0.90-0.998 against the exact picks at 100k, varying per build);
# efConstruction 200 found every violator in every build tried (BENCHMARKS.md, "## Selection scale").
HNSW_BUILD_DEFAULTS = {"M": 32, "efConstruction": 200}


@dataclass(frozen=True)
class StoreConfig:
    uri: str = "./hnsel.db"
    token: str = ""
    namespace: str = "hnsel"
    index_type: str = "FLAT"
    index_params: Mapping[str, Any] = field(default_factory=dict)
    search_params: Mapping[str, Any] = field(default_factory=dict)
    images: CollectionConfig = field(default_factory=CollectionConfig)
    texts: CollectionConfig = field(default_factory=CollectionConfig)
    insert_batch_bytes: int = 16 * 1024 * 1024  # well under Milvus's 64 MB request cap
    timeout: float = 120.0  # seconds one Milvus request may take before the command stops with a one-line error

    @property
    def safe_uri(self) -> str:
        """The URI without credentials, for anything printed or recorded."""
        return redact_uri(self.uri)

    @property
    def build_params(self) -> dict[str, Any]:
        """The vector index's build parameters: ``index_params``, else hnsel's defaults for the index type (HNSW's)."""
        if self.index_params:
            return dict(self.index_params)
        return dict(HNSW_BUILD_DEFAULTS) if self.index_type.upper() == "HNSW" else {}

    @property
    def is_lite(self) -> bool:
        return not self.uri.startswith(("http://", "https://", "tcp://", "grpc://", "unix:"))

    def collection_name(self, kind: str) -> str:
        own = getattr(self, kind).collection_name
        return own or f"{self.namespace}_{kind}"


@dataclass(frozen=True)
class LabelStudioConfig:
    """``[label_studio]``: the server ``hnsel annotate push|pull`` talks to, and how it serves the images."""

    url: str = ""
    api_key: str = ""
    document_root: str = ""
    url_prefix: str = ""


@dataclass(frozen=True)
class HnselConfig:
    store: StoreConfig = field(default_factory=StoreConfig)
    seed: int = 0
    source: str = ""  # the file this came from, for messages
    label_studio: LabelStudioConfig = field(default_factory=LabelStudioConfig)

    def with_overrides(self, **store_overrides: Any) -> "HnselConfig":
        """Flags win over the file: ``None`` means the flag was not given."""
        given = {k: v for k, v in store_overrides.items() if v is not None}
        if not given:
            return self
        return dataclasses.replace(self, store=_store(dataclasses.asdict(self.store) | given, self.source))


def redact_uri(uri: str) -> str:
    """``uri`` with any ``user:password@`` removed: ``http://root:PASS@host:19530`` -> ``http://host:19530``."""
    scheme, sep, rest = str(uri).partition("://")
    if not sep:
        return str(uri)
    authority, slash, path = rest.partition("/")
    return f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}"


_SCALARS = (str, int, float, bool)
_WORDS = {str: "a string", int: "an integer", float: "a number", bool: "true or false", CollectionConfig: "a table"}


def _type_ok(want: Any, value: Any) -> bool:
    if want is bool:
        return isinstance(value, bool)
    if want is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if want is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if want is str:
        return isinstance(value, str)
    if want is CollectionConfig:
        return isinstance(value, (Mapping, CollectionConfig))
    origin = typing.get_origin(want)
    if origin is collections.abc.Mapping:  # index_params, search_params: a table of plain values
        return isinstance(value, Mapping) and all(isinstance(k, str) and isinstance(v, _SCALARS) for k, v in value.items())
    if origin in (list, tuple, collections.abc.Sequence):
        return isinstance(value, (list, tuple)) and all(isinstance(v, _SCALARS) for v in value)
    if origin in (typing.Union, getattr(types, "UnionType", None)):  # X | None
        return any(_type_ok(arm, value) if arm is not type(None) else value is None for arm in typing.get_args(want))
    raise TypeError(f"no config check for type {want!r}")  # a new field of a new type needs one


def check_types(cls: type, raw: Mapping[str, Any], where: str) -> None:
    """The one schema of hnsel.toml: every key a field of ``cls`` (a config dataclass), every value of that field's type
    (TOML's own types: ``read_only = "no"`` is a string, not false). A one-line ``ConfigError`` names the key."""
    hints = typing.get_type_hints(cls)
    unknown = set(raw) - set(hints)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known keys are {sorted(hints)}")
    for key, value in raw.items():
        want = hints[key]
        if not _type_ok(want, value):
            word = _WORDS.get(want, "a table of names to numbers or strings (e.g. { M = 32 })")
            raise ConfigError(f"{where}: {key} must be {word}, got {value!r} ({type(value).__name__}); fix it in the file")


def _collection(raw: Mapping[str, Any], where: str) -> CollectionConfig:
    if isinstance(raw, CollectionConfig):
        return raw
    check_types(CollectionConfig, raw, where)
    for key in ("paired", "unpaired"):
        if key in raw and not raw[key]:
            raise ConfigError(f"{where}: {key} = \"\": give the pool field's value of the {key} pool")
    if raw.get("paired", "paired") == raw.get("unpaired", "unpaired"):
        raise ConfigError(f"{where}: paired and unpaired both map to {raw.get('paired')!r}; give each pool its own value")
    return CollectionConfig(**raw)


def _store(raw: Mapping[str, Any], source: str) -> StoreConfig:
    raw = dict(raw)
    check_types(StoreConfig, raw, f"{source or 'config'} [store]")
    for kind in ("images", "texts"):
        if kind in raw:
            raw[kind] = _collection(raw[kind], f"{source or 'config'} [store.{kind}]")
    index_type = str(raw.get("index_type", "FLAT")).upper()
    if index_type not in INDEX_TYPES:
        raise ConfigError(f"{source or 'config'}: index_type {index_type!r} is not one of {', '.join(INDEX_TYPES)}")
    raw["index_type"] = index_type
    if raw.get("insert_batch_bytes", 1) < 1:
        raise ConfigError(f"{source or 'config'} [store]: insert_batch_bytes must be at least 1, got {raw['insert_batch_bytes']!r}")
    timeout = raw.get("timeout", 120.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < float("inf"):
        raise ConfigError(f"{source or 'config'} [store]: timeout must be a positive number of seconds, got {timeout!r}")
    namespace = str(raw.get("namespace", "hnsel"))
    if not namespace.replace("_", "").isalnum() or namespace[0].isdigit():
        raise ConfigError(f"namespace {namespace!r}: use letters, digits and underscores, not starting with a digit")
    return StoreConfig(**raw)


def load_config(path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> HnselConfig:
    """Read ``path`` (default ``./hnsel.toml`` when it exists), then apply the environment."""
    env = os.environ if env is None else env
    explicit = path is not None
    path = Path(path) if explicit else DEFAULT_CONFIG_PATH
    raw: dict[str, Any] = {}
    if path.exists():
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc}); fix the file or pass --config") from None
    elif explicit:
        raise ConfigError(f"{path}: config file not found")
    source = str(path) if path.exists() else ""
    unknown = set(raw) - {"store", "seed", "label_studio"}
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {sorted(unknown)}; hnsel reads [store], [label_studio] and seed")
    if not isinstance(raw.get("store", {}), dict):
        raise ConfigError(f"{path}: store must be a table ([store] with uri = ...), got {raw['store']!r}; fix it in the file")
    store_raw = dict(raw.get("store", {}))
    for key, var in (("uri", "HNSEL_MILVUS_URI"), ("token", "HNSEL_MILVUS_TOKEN"), ("namespace", "HNSEL_NAMESPACE")):
        if env.get(var):
            store_raw[key] = env[var]
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"{path}: seed must be an integer of 0 or more, got {seed!r}")
    return HnselConfig(store=_store(store_raw, source), seed=seed, source=source, label_studio=_label_studio(raw.get("label_studio", {}), path, env))


LABEL_STUDIO_ENV = {"url": "LABEL_STUDIO_URL", "api_key": "LABEL_STUDIO_API_KEY", "document_root": "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"}


def _label_studio(raw: Any, path: Path, env: Mapping[str, str]) -> LabelStudioConfig:
    known = [f.name for f in dataclasses.fields(LabelStudioConfig)]
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: [label_studio] must be a table with {', '.join(known)}")
    check_types(LabelStudioConfig, raw, f"{path} [label_studio]")  # the one schema of hnsel.toml
    return LabelStudioConfig(**(dict(raw) | {key: env[var] for key, var in LABEL_STUDIO_ENV.items() if env.get(var)}))
