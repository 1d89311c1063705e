"""The report map's points: seeded samples of the paired side and the unpaired pool, the picks, and the picks of
every other recorded round of the same modality, laid out in 2-D by ``layout.fit_layout``.

The layout is fitted on at most ``n`` paired samples, ``n`` pool samples and ``n`` picks; every other pick and
the other rounds' sampled picks are placed by the fitted layout, so each pick of the round has a point (the
lasso filters the cards by them). Nothing here writes to the store.
"""

from __future__ import annotations

import numpy as np

from ..store import Store
from ..workflows.rounds import round_picks
from .evidence import PairedState, sample_ids
from .layout import fit_layout

__all__ = ["map_data"]


def _vectors(store: Store, kind: str, ids: list[str]) -> tuple[list[str], np.ndarray]:
    rows = store.get(kind, ids, ["id", "vector"]) if ids else []
    if not rows:
        return [], np.zeros((0, 0), dtype=np.float32)
    return [r["id"] for r in rows], np.asarray([r["vector"] for r in rows], dtype=np.float32).reshape(len(rows), -1)


def _paired_sample(store: Store, state: PairedState, n: int, rng: np.random.Generator) -> tuple[list[str], np.ndarray, int]:
    if state.paired is not None:
        total = len(state.paired.ids)
        rows = np.sort(rng.choice(total, size=min(n, total), replace=False)) if total else np.zeros(0, dtype=np.int64)
        return [str(i) for i in state.paired.ids[rows]], np.asarray(state.paired.vectors[rows], dtype=np.float32), total
    ids, total = sample_ids(([r["id"] for r in b if r["id"] not in state.excluded]
                             for b in store.iter_rows(state.side, state.paired_filter, ("id",), 16384)), n, rng)
    return (*_vectors(store, state.side, ids), total)


def _pool_sample(store: Store, state: PairedState, n: int, rng: np.random.Generator) -> tuple[list[str], np.ndarray, int]:
    side, excluded = state.side, state.excluded
    ids, total = sample_ids(([r["id"] for r in b if r["id"] not in excluded]
                             for b in store.iter_rows(side, store.pool_filter(side, "unpaired"), ("id",), 16384)), n, rng)
    return (*_vectors(store, side, ids), total)


def _other_rounds(store: Store, side: str, rounds: list[dict], current: int | None, n: int, rng: np.random.Generator) -> list[dict]:
    """Per other finished round of this side: a seeded sample of at most ``n`` of its picks with their vectors."""
    out = []
    for r in rounds:
        if r["round"] == current or r.get("unfinished") or r.get("modality") != ("image" if side == "images" else "text"):
            continue
        kept = round_picks(store, r["round"])
        ids = list(kept["ids"]) if kept else [x["id"] for b in store.iter_rows(side, store.where(side, round=r["round"]), ("id",)) for x in b]
        chosen = sorted(ids[i] for i in rng.choice(len(ids), size=min(n, len(ids)), replace=False)) if ids else []
        got, vectors = _vectors(store, side, chosen)
        out.append({"round": int(r["round"]), "strategy": r.get("strategy"), "ids": got, "vectors": vectors, "total": len(ids)})
    return out


def _xy(coords: np.ndarray) -> tuple[list[float], list[float]]:
    c = np.round(np.asarray(coords, dtype=np.float64).reshape(len(coords), 2), 4)
    return c[:, 0].tolist(), c[:, 1].tolist()


def map_data(store: Store, state: PairedState, pick_vectors: np.ndarray, present: np.ndarray, n_picks: int, rounds: list[dict],
             current: int | None, n: int, layout: str, seed: int) -> dict:
    """The map's layers and each pick's point: ``{"layout", "layers": [...], "picks": [[x, y] or None per pick], "counts"}``."""
    rng = np.random.default_rng(seed)
    paired_ids, paired, paired_total = _paired_sample(store, state, n, rng)
    pool_ids, pool, pool_total = _pool_sample(store, state, n, rng)
    fitted = np.sort(rng.choice(len(present), size=min(n, len(present)), replace=False)) if len(present) else np.zeros(0, dtype=np.int64)
    others = _other_rounds(store, state.side, rounds, current, n, rng)
    parts = [p.reshape(len(p), -1) for p in (paired, pool, pick_vectors[fitted]) if len(p)]
    if not parts:
        return {}
    coords, fit = fit_layout(np.vstack(parts), layout, seed)
    a, b = len(paired), len(paired) + len(pool)
    pick_xy = np.zeros((len(present), 2))
    pick_xy[fitted] = coords[b:]
    rest = np.setdiff1d(np.arange(len(present)), fitted)
    if len(rest):
        pick_xy[rest] = fit.place(pick_vectors[rest])
    points: list = [None] * n_picks
    for row, i in enumerate(present):
        points[int(i)] = [round(float(pick_xy[row, 0]), 4), round(float(pick_xy[row, 1]), 4)]
    layers = [{"kind": "paired", "name": "paired", "ids": paired_ids, "total": paired_total},
              {"kind": "pool", "name": "pool (unpaired)", "ids": pool_ids, "total": pool_total}]
    layers[0]["x"], layers[0]["y"] = _xy(coords[:a])
    layers[1]["x"], layers[1]["y"] = _xy(coords[a:b])
    for o in others:
        x, y = _xy(fit.place(o["vectors"])) if len(o["ids"]) else ([], [])
        layers.append({"kind": "round", "name": f"round {o['round']} picks ({o['strategy']})", "round": o["round"], "ids": o["ids"],
                       "total": o["total"], "x": x, "y": y})
    return {"method": fit.method, "describe": fit.describe(), "trustworthiness": fit.trustworthiness, "explained": fit.explained,
            "layers": layers, "picks": points, "counts": {"picks": int(len(present)), "fitted_picks": int(len(fitted))}}
