"""What every strategy shares: the registry, the neighbour-search protocol, and ``Selection``.

A strategy never talks to Milvus or a model. It receives a ``SelectionProblem`` (arrays, a way to stream
the anchors, and a ``NeighborIndex``) and an ``np.random.Generator``; ``hnsel.store`` implements the
index on Milvus, and ``ExactIndex`` here implements it with numpy for tests and small pools.
"""

from __future__ import annotations

import dataclasses
import math
import time
import typing
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np

from ..errors import SelectionError

__all__ = [
    "NeighborIndex", "ExactIndex", "VectorSource", "ArrayVectors", "AnchorChunk", "SelectionProblem", "Selection", "Strategy",
    "register", "get_strategy", "list_strategies", "param", "params_of", "ParamSpec", "describe_params", "check_budget", "fill_random", "top_by_score", "positions", "sorter_for",
]


_END = object()  # the end of a stream in ``SelectionProblem.timed_iter``


class NeighborIndex(Protocol):
    """Nearest neighbours by cosine similarity among one side's vectors.

    ``search`` returns, for each query row, the ids (object array) and similarities (float32) of its
    ``limit`` most similar vectors in ``pool``, most similar first; an approximate index may return fewer.
    ``range_search`` returns those with ``similarity > radius`` whose ids are not in ``exclude`` (at most
    ``limit``, most similar first; fewer than ``limit`` means no more are left).
    """

    max_limit: int

    def search(self, vectors: np.ndarray, limit: int, pool: str) -> list[tuple[np.ndarray, np.ndarray]]: ...

    def range_search(self, vectors: np.ndarray, radius: Sequence[float], limit: int, pool: str,
                     exclude: Sequence[str] = ()) -> list[tuple[np.ndarray, np.ndarray]]: ...


class ExactIndex:
    """A brute-force ``NeighborIndex`` over in-memory unit vectors; the exact answer, O(query x pool) per call."""

    def __init__(self, pools: dict[str, tuple[Sequence[str], np.ndarray]], max_limit: int = 16384):
        self.pools = {name: (np.asarray(ids, dtype=object), np.asarray(vecs, dtype=np.float32)) for name, (ids, vecs) in pools.items()}
        self.max_limit = max_limit

    def _sims(self, vectors: np.ndarray, pool: str) -> tuple[np.ndarray, np.ndarray]:
        ids, vecs = self.pools[pool]
        return ids, np.asarray(vectors, dtype=np.float32) @ vecs.T

    def search(self, vectors, limit, pool):
        ids, sims = self._sims(vectors, pool)
        limit = min(limit, self.max_limit, len(ids))
        out = []
        for row in sims:
            order = np.lexsort((ids.astype(str), -row))[:limit] if len(ids) else np.array([], dtype=int)
            out.append((ids[order], row[order]))
        return out

    def range_search(self, vectors, radius, limit, pool, exclude=()):
        ids, sims = self._sims(vectors, pool)
        allowed = ~np.isin(ids.astype(str), np.asarray(list(exclude), dtype=str)) if len(exclude) else np.ones(len(ids), bool)
        out = []
        for row, lo in zip(sims, radius):
            keep = np.flatnonzero((row > lo) & allowed)
            order = keep[np.argsort(-row[keep], kind="stable")][: min(limit, self.max_limit)]
            out.append((ids[order], row[order]))
        return out

    def vectors(self, ids: Sequence[str], pool: str) -> np.ndarray:
        """The vectors of ``ids`` in ``pool``, in that order (a KeyError for an id not in the pool)."""
        pool_ids, vecs = self.pools[pool]
        where = {x: i for i, x in enumerate(pool_ids)}
        return vecs[[where[x] for x in ids]].reshape(len(ids), vecs.shape[1])


@dataclass(frozen=True)
class AnchorChunk:
    """Anchors of one chunk: paired captions (modality image) or paired images (modality text).

    ``positives[i]`` are the ids on the other side that anchor i describes or is described by; they are
    never negatives of anchor i.
    """

    ids: np.ndarray
    vectors: np.ndarray
    positives: tuple[frozenset[str], ...]
    uncertainty: np.ndarray | None = None  # per anchor: the summed variance of its Gaussian embedding (probabilistic heads only)


class VectorSource(Protocol):
    """Where a strategy reads vectors (cosine-normalised float32): the candidates by candidate index, the negatives'
    side (paired samples) by id, and each side streamed once in batches (memory one batch)."""

    def candidates(self, indices: Sequence[int]) -> np.ndarray: ...

    def paired(self, ids: Sequence[str]) -> np.ndarray: ...

    def candidate_batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...

    def paired_batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...


class ArrayVectors:
    """A ``VectorSource`` over arrays in memory: ``candidates`` rows in ``candidate_ids`` order, the paired side by id."""

    def __init__(self, candidates: np.ndarray, paired_ids: Sequence[str], paired: np.ndarray):
        self._candidates = np.asarray(candidates, dtype=np.float32)
        self._paired_ids = np.asarray(paired_ids, dtype=object)
        self._paired = np.asarray(paired, dtype=np.float32).reshape(len(self._paired_ids), self._candidates.shape[-1])
        self._row = {x: i for i, x in enumerate(self._paired_ids)}

    @classmethod
    def from_index(cls, index: ExactIndex, candidate_ids: Sequence[str]) -> "ArrayVectors":
        """The vectors an ``ExactIndex`` holds, the candidates in ``candidate_ids`` order."""
        paired_ids, paired = index.pools.get("paired", (np.array([], dtype=object), np.zeros((0, 0), np.float32)))
        return cls(index.vectors(list(candidate_ids), "candidates"), paired_ids, paired)

    def candidates(self, indices: Sequence[int]) -> np.ndarray:
        return self._candidates[np.asarray(indices, dtype=np.int64)]

    def paired(self, ids: Sequence[str]) -> np.ndarray:
        return self._paired[[self._row[x] for x in ids]].reshape(len(ids), self._paired.shape[1])

    def candidate_batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(self._candidates), batch_size):
            indices = np.arange(start, min(start + batch_size, len(self._candidates)))
            yield indices, self._candidates[indices]

    def paired_batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(self._paired_ids), batch_size):
            yield self._paired_ids[start:start + batch_size], self._paired[start:start + batch_size]


@dataclass
class SelectionProblem:
    """Everything a strategy may read. ``anchors(chunk_size)`` streams the anchors again on each call; ``index``
    answers neighbour searches; ``vectors`` gives vectors (None: a problem that offers searches only)."""

    candidate_ids: np.ndarray
    index: NeighborIndex
    anchors: Callable[[int], Iterator[AnchorChunk]]
    n_anchors: int
    vectors: VectorSource | None = None
    on_progress: Callable[[str, int, int | None], None] | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    candidate_uncertainty: np.ndarray | None = None  # per candidate: the summed variance of its Gaussian embedding (probabilistic heads only)
    match: dict[str, float] | None = None  # calibrated match parameters {"scale", "shift"} of probabilistic heads (ascmr)
    engine: str = "milvus"  # how hard-negative scores are computed: "milvus" (neighbour searches) or "exact" (blockwise products)
    device: str | None = None  # where the exact engine runs: None or "auto" (CUDA when present, else CPU), "cpu", "cuda", "cuda:N"
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase (``timed``); reported, never part of the result

    def progress(self, task: str, completed: int, total: int | None) -> None:
        if self.on_progress is not None:
            self.on_progress(task, completed, total)

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Add the block's wall time to ``timings[phase]``. Phases timed on the calling thread add up to (at most) the
        selection's wall time; work on other threads is added under its own name with ``add_time``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add_time(phase, time.perf_counter() - start)

    def add_time(self, phase: str, seconds: float) -> None:
        self.timings[phase] = self.timings.get(phase, 0.0) + seconds

    def timed_iter(self, phase: str, items: typing.Iterable) -> Iterator:
        """``items`` as they come, the time spent producing each (not the caller's work between them) added to ``phase``."""
        stream = iter(items)
        while True:
            with self.timed(phase):
                item = next(stream, _END)
            if item is _END:
                return
            yield item

    def _source(self) -> VectorSource:
        if self.vectors is None:
            raise SelectionError("this strategy needs vectors, and this problem provides none")
        return self.vectors

    def vectors_of(self, indices: Sequence[int]) -> np.ndarray:
        """Candidate vectors by candidate indices."""
        return np.asarray(self._source().candidates(indices), dtype=np.float32)

    def paired_vectors(self, ids: Sequence[str]) -> np.ndarray:
        """The negatives' side (paired samples) by id."""
        return np.asarray(self._source().paired(ids), dtype=np.float32)

    def candidate_batches(self, batch_size: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every candidate once as (indices, vectors) batches; memory is one batch (streamed from the store when it can)."""
        return self._source().candidate_batches(batch_size)

    def paired_batches(self, batch_size: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]] | None:
        """The negatives' side once as (ids, vectors) batches; None when this problem has no vectors."""
        return None if self.vectors is None else self.vectors.paired_batches(batch_size)


@dataclass(frozen=True)
class Selection:
    """The picks, best first: ``ids``, their ``scores``, ``violations`` and why each was picked."""

    ids: np.ndarray
    scores: np.ndarray
    violations: np.ndarray
    reasons: np.ndarray
    strategy: str
    params: dict[str, Any]
    stats: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)


class Strategy(Protocol):
    name: str

    def select(self, problem: SelectionProblem, budget: int, rng: np.random.Generator) -> Selection: ...


_REGISTRY: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"strategy {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def list_strategies() -> list[str]:
    return sorted(_REGISTRY)


def param(default: Any = dataclasses.MISSING, help: str = "", *, flag: str | None = None, factory: Callable[[], Any] | None = None) -> Any:
    """A strategy parameter, declared once on its dataclass: ``help`` and ``flag`` (default ``--name-with-dashes``)
    become the ``hnsel select`` option; a ``factory`` field holding another strategy makes it a component whose own
    parameters ``get_strategy`` routes to it (``auto`` and ``density`` take a ``hardneg``)."""
    metadata = {"help": help, "flag": flag}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class ParamSpec:
    """One declared parameter: its ``name``, Python ``type`` (int, float or str), ``default``, ``help``, CLI ``flag``,
    and ``owner`` (the strategy that declares it; a component's parameters name the component)."""

    name: str
    type: type
    default: Any
    help: str
    flag: str
    owner: str


def _components(cls: type) -> dict[str, type]:
    """Fields of ``cls`` that hold another registered strategy: field name -> that strategy's class."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if isinstance(hints[f.name], type) and hints[f.name] in _REGISTRY.values()}


def _scalar(tp: Any) -> type:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def params_of(name: str) -> list[ParamSpec]:
    """The parameters strategy ``name`` takes: its own, then its components' (by the component's name)."""
    cls = _REGISTRY[name]
    hints = typing.get_type_hints(cls)
    components = _components(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.name in components:
            out.extend(p for p in params_of(components[f.name].name) if p.name not in {q.name for q in out})
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        out.append(ParamSpec(f.name, _scalar(hints[f.name]), default, f.metadata.get("help", ""),
                             f.metadata.get("flag") or "--" + f.name.replace("_", "-"), name))
    return out


def get_strategy(name: str, **params: Any) -> Strategy:
    """Build a registered strategy; a parameter it does not declare itself goes to the component that does.
    Unknown names and parameters, and non-finite numbers, are one-line errors."""
    if name not in _REGISTRY:
        raise SelectionError(f"unknown strategy {name!r}; choose one of {', '.join(list_strategies())}")
    known = {p.name: p for p in params_of(name)}
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise SelectionError(f"strategy {name!r} takes no parameter(s) {unknown}; it takes {sorted(known)}")
    for key, value in params.items():  # inf or NaN would give NaN scores and duplicate picks, and no valid JSON
        if isinstance(value, float) and not math.isfinite(value):
            raise SelectionError(f"{known[key].flag} {value}: use a finite number")
    return _build(_REGISTRY[name], params)


def _build(cls: type, params: dict[str, Any]) -> Any:
    own = {f.name for f in dataclasses.fields(cls)}
    components = _components(cls)
    kwargs = {k: v for k, v in params.items() if k in own and k not in components}
    for field_name, comp in components.items():
        routed = {k: v for k, v in params.items() if k not in own and k in {p.name for p in params_of(comp.name)}}
        kwargs[field_name] = _build(comp, routed)
    return cls(**kwargs)


def describe_params(strategy: Any) -> dict[str, Any]:
    """A strategy's parameters as plain values, components' flattened in (what ``Selection.params`` records)."""
    out = {}
    for f in dataclasses.fields(strategy):
        value = getattr(strategy, f.name)
        if dataclasses.is_dataclass(value) and type(value) in _REGISTRY.values():
            out.update({k: v for k, v in describe_params(value).items() if k not in out})
        else:
            out[f.name] = value
    return out


def check_budget(budget: int, n_candidates: int) -> None:
    if budget < 1:
        raise SelectionError(f"--budget must be at least 1, got {budget}")
    if n_candidates == 0:
        raise SelectionError("no candidates: the unpaired pool is empty (or every sample is already selected); ingest or embed unpaired samples first")
    if budget > n_candidates:
        raise SelectionError(f"--budget {budget} is larger than the {n_candidates} candidates; ask for at most {n_candidates}")


def top_by_score(ids: np.ndarray, scores: np.ndarray, budget: int) -> np.ndarray:
    """Indices of the ``budget`` best candidates with score > 0, by (score descending, id ascending)."""
    positive = np.flatnonzero(scores > 0)
    order = np.lexsort((ids[positive].astype(str), -scores[positive]))
    return positive[order[:budget]]


def fill_random(n: int, taken: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` indices drawn uniformly without replacement from ``range(n)`` minus ``taken``."""
    if count <= 0:
        return np.array([], dtype=np.int64)
    mask = np.ones(n, dtype=bool)
    mask[taken] = False
    rest = np.flatnonzero(mask)
    return rng.choice(rest, size=count, replace=False) if count < len(rest) else rest


def sorter_for(candidate_ids: np.ndarray) -> np.ndarray | None:
    """None when the ids are sorted (as the store gives them), else the argsort ``positions`` needs."""
    return None if bool(np.all(candidate_ids[:-1] <= candidate_ids[1:])) else np.argsort(candidate_ids)


def positions(candidate_ids: np.ndarray, ids: np.ndarray, sorter: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Candidate indices of ``ids``: (indices, mask of the ``ids`` that are candidates), by binary search,
    so no id -> index table is held."""
    if len(ids) == 0 or len(candidate_ids) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(len(ids), dtype=bool)
    pos = np.minimum(np.searchsorted(candidate_ids, ids, sorter=sorter), len(candidate_ids) - 1)
    pos = pos if sorter is None else sorter[pos]
    found = np.asarray(candidate_ids[pos] == ids, dtype=bool)
    return pos[found].astype(np.int64), found
