"""``build_report``: gather the picks, their evidence, the run and the rounds, then write the static page.

The report is built in a temporary folder beside ``out`` and renamed into place at the end, so a failure
leaves nothing (and a previous report stays whole until the new one replaces it). The store is only read.
A report folder carries a marker (``MARKER``) listing what the report wrote; ``out`` is replaced only when it is
empty or holds exactly such a report, so a user's folder is never removed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import HnselConfig
from ..errors import InputError, StoreError
from ..schema import KINDS, ProgressFn
from ..store import Store, open_store
from ..tables import FULL_DISK, check_input_file, write_failed
from ..workflows.rounds import list_rounds
from .evidence import hardneg_evidence, nearest_paired, paired_state
from .layout import LAYOUTS
from .mapdata import map_data
from .page import render_page, write_static
from .picks import Picks, latest_round, load_round, load_selection
from .thumbs import make_thumbnails

__all__ = ["build_report", "ReportResult", "MARKER"]

MARKER = ".hnsel-report"  # in every report folder: JSON {"hnsel_report": 1, "entries": [names the report wrote]}


@dataclass
class ReportResult:
    out: Path
    index: Path
    picks: int
    source: str
    thumbnails: int
    unreadable: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"out": str(self.out), "index": str(self.index), "picks": self.picks, "source": self.source, "thumbnails": self.thumbnails,
                "unreadable": self.unreadable, "seconds": round(self.seconds, 3), "notes": self.notes}


def _check_out(given: str | os.PathLike) -> Path:
    """The absolute ``--out`` folder, refused unless it is new, empty, or a report this command wrote (``_foreign``)."""
    out = Path(os.path.abspath(given))  # '.' and '..' become real names; a link stays a link
    here = Path(os.getcwd())
    if out == here or out in here.parents or out.resolve() == here.resolve() or out.resolve() in here.resolve().parents:
        raise InputError("--out is the current folder or one above it; name a new folder for the report, such as report", path=given)
    if out.exists() and not out.is_dir():
        raise InputError("--out must be a folder; this is a file", path=given)
    if not out.parent.is_dir():
        raise InputError(f"folder {out.parent} does not exist; create it first", path=given)
    stranger = _foreign(out)
    if stranger is not None:
        raise InputError(f"--out holds {stranger!r}, which hnsel report did not write (its {MARKER} file does not list it); it replaces "
                         "only a folder holding its own report and nothing else: choose a new or empty folder (or move your files out)", path=given)
    return out


def _foreign(out: Path) -> str | None:
    """The first entry of ``out`` that a report did not write (per its ``MARKER``), or None when there is none."""
    if not out.is_dir():
        return None
    names = sorted(os.listdir(out))
    if not names:
        return None
    try:
        marker = json.loads((out / MARKER).read_text(encoding="utf-8"))
        wrote = set(marker["entries"]) | {MARKER} if marker.get("hnsel_report") == 1 else set()
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        wrote = set()
    return next((name for name in names if name not in wrote), None)


def _write_marker(tmp: Path) -> None:
    entries = sorted(os.listdir(tmp))
    (tmp / MARKER).write_text(json.dumps({"hnsel_report": 1, "entries": entries}) + "\n", encoding="utf-8")


def _read_simulation(folder: Path | None) -> dict | None:
    if folder is None:
        return None
    path = Path(folder) / "results.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        runs, settings = doc["runs"], doc.get("settings", {})
        if not isinstance(runs, list) or not isinstance(settings, dict):
            raise TypeError("runs must be a list and settings an object")
        from ..workflows.simulate import summarise  # imports torch: only when a simulation is asked for

        curves = summarise(runs)
        _check_curves(curves)
    except FileNotFoundError:
        raise InputError("no results.json here: pass the --out folder of `hnsel simulate`", path=folder) from None
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:  # any shape summarise cannot read
        raise InputError(f"not a hnsel simulate results file ({type(exc).__name__}: {' '.join(str(exc).split())[:120]}); "
                         "pass the --out folder of `hnsel simulate`", path=path) from None
    return {"settings": settings, "curves": curves, "path": str(path)}


def _check_curves(curves: dict) -> None:
    """What the page draws must be names and finite numbers (a hand-edited results.json may hold anything)."""
    for label, rows in curves.items():
        if not isinstance(label, str):
            raise TypeError(f"strategy {label!r} is not a name")
        for row in rows:
            if not all(type(row[k]) in (int, float) and math.isfinite(row[k]) for k in ("paired", "rsum_mean", "rsum_std")):
                raise TypeError(f"{label}, round {row['round']}: paired and rsum must be finite numbers")


def _pick_rows(store: Store, picks: Picks) -> dict[str, dict]:
    kind = picks.kind
    wanted = ["id", "vector", "pool"] + [c for c in ("round", "uri" if kind == "images" else "text") if store.has_field(kind, c)]
    return {r["id"]: r for r in store.get(kind, picks.ids, wanted)}


def _labels(store: Store, images: set, texts: set) -> tuple[dict[str, str], dict[str, dict]]:
    """(image id -> uri, text id -> {text, image_id}) for the samples the page shows."""
    uris = {r["id"]: r.get("uri") or "" for r in store.get("images", sorted(images), ["id", "uri"] if store.has_field("images", "uri") else ["id"])}
    fields = ["id"] + [c for c in ("text", "image_id") if store.has_field("texts", c)]
    texts_ = {r["id"]: r for r in store.get("texts", sorted(texts), fields)}
    return uris, texts_


def _status(row: dict | None, round_: int | None) -> str:
    if row is None:
        return "not in the store"
    if row.get("pool") == "paired":
        return "annotated"
    r = row.get("round")
    if r is None or r == -1:
        return "released" if round_ is not None else "candidate"
    return "pending" if r == round_ else f"selected in round {r}"


def _gather(store: Store, picks: Picks, top: int, map_points: int, seed: int, on_progress: ProgressFn | None, layout: str = "auto") -> dict:
    rows = _pick_rows(store, picks)
    present = np.array([i for i, x in enumerate(picks.ids) if x in rows], dtype=np.int64)
    if len(present) < len(picks.ids):
        picks.notes.append(f"{len(picks.ids) - len(present)} picks are no longer in the store: shown without evidence")
    vectors = np.asarray([rows[picks.ids[i]]["vector"] for i in present], dtype=np.float32).reshape(len(present), -1)
    params = (picks.log or {}).get("params", {})
    k, paired_mb = int(params.get("k", 1) or 1), float(params.get("paired_mb", 1024))
    if params.get("batch") == "mini":
        picks.notes.append("this round used mini-batch thresholds; the evidence shows full-batch thresholds, which are never lower, "
                           "so every violation shown is also a mini-batch violation")
    state = paired_state(store, picks.modality, picks.ids, picks.round, paired_mb)
    if state.paired is None:
        picks.notes.append(f"the paired side is larger than --paired-mb {paired_mb:g}: thresholds come from Milvus searches (exact on FLAT)")
    evidence = hardneg_evidence(state, vectors, k=k, top=top, on_progress=on_progress)
    if on_progress:
        on_progress("nearest paired samples and map", 0, 2)
    nearest = nearest_paired(state, vectors)
    if on_progress:
        on_progress("nearest paired samples and map", 1, 2)
    rounds = list_rounds(store)
    layout_ = map_data(store, state, vectors, present, len(picks.ids), rounds, picks.round, map_points, layout, seed)
    if on_progress:
        on_progress("nearest paired samples and map", 2, 2)
    return {"rows": rows, "present": present, "evidence": evidence, "nearest": nearest, "map": layout_, "k": k,
            "rounds": rounds, "side": state.side, "anchor_kind": state.anchor_kind,
            "counts": {kind: {pool: store.count(kind, store.pool_filter(kind, pool)) for pool in ("paired", "unpaired")} for kind in KINDS}}


def _page_data(picks: Picks, g: dict) -> tuple[dict, set, set]:
    """The page's JSON: one compact record per pick; plus the image and text ids it shows.

    A record: ``r`` rank, ``id``, ``s`` recorded score, ``v`` recorded violations, ``why`` reason, ``st`` status now, ``xy`` its map point;
    when the pick is in the store, ``nv``/``sur`` its violations and summed surplus recomputed, ``near`` [nearest paired
    id, cosine distance], ``ev`` [[anchor id, similarity, threshold, id that sets the threshold, anchor's own sample]].
    """
    image_side = g["side"] == "images"
    images, texts = set(), set()
    side_set, anchor_set = (images, texts) if image_side else (texts, images)
    out = []
    at = {int(i): n for n, i in enumerate(g["present"])}
    points = g["map"].get("picks") or [None] * len(picks.ids)
    for i, pick_id in enumerate(picks.ids):
        row = g["rows"].get(pick_id)
        score = picks.scores[i]
        rec: dict[str, Any] = {"r": i + 1, "id": pick_id, "s": score if score is not None and math.isfinite(score) else None,
                               "v": picks.violations[i], "why": picks.reasons[i],
                               "st": _status(row, picks.round)}
        side_set.add(pick_id)
        if points[i] is not None:
            rec["xy"] = points[i]
        if i in at:
            n = at[i]
            rec["nv"] = int(g["evidence"].violations[n])
            rec["sur"] = round(float(g["evidence"].surplus[n]), 6)
            near_id, dist = g["nearest"][n]
            if near_id is not None:
                rec["near"] = [near_id, round(dist, 6)]
                side_set.add(near_id)
            ev = []
            for e in g["evidence"].anchors[n]:
                ev.append([e["anchor"], round(e["sim"], 6), round(e["xi"], 6), e["setter"], e["positive"]])
                anchor_set.add(e["anchor"])
                if e["setter"] is not None:
                    side_set.add(e["setter"])
                if e["positive"] is not None:
                    side_set.add(e["positive"])
            rec["ev"] = ev
        out.append(rec)
    return {"picks": out}, images, texts


def build_report(config: HnselConfig, *, round: int | None = None, selection: str | os.PathLike | None = None,
                 out: str | os.PathLike = "report", simulation: str | os.PathLike | None = None, top: int = 3,
                 map_points: int = 2000, seed: int | None = None, on_progress: ProgressFn | None = None,
                 layout: str = "auto") -> ReportResult:
    """Write ``out/index.html``, ``out/static/`` and ``out/thumbs/`` for a recorded round (default: the latest) or a
    selection file. ``layout``: the map's 2-D layout, ``auto`` (UMAP where umap-learn is installed), ``umap`` or ``pca``."""
    started = time.perf_counter()
    if round is not None and selection is not None:
        raise InputError("pass --round N or --selection FILE, not both")
    if top < 1 or map_points < 1:
        raise InputError("--evidence and --map-points must be at least 1")
    if layout not in LAYOUTS:
        raise InputError(f"--layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    given, out = out, _check_out(out)
    if selection is not None and not Path(selection).exists():
        raise InputError("no such selection file", path=selection)
    if selection is not None:
        check_input_file(selection, "selection file")  # a folder, a FIFO or a device says what it is
    sim = _read_simulation(Path(simulation) if simulation is not None else None)
    if config.store.is_lite and not Path(config.store.uri).exists():
        raise StoreError(f"no Milvus Lite store at {config.store.uri}; pass the --milvus-uri the selection was made in")
    seed = config.seed if seed is None else seed
    try:  # made first: an unwritable folder fails before any work
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:
        raise InputError(f"cannot write into {out.parent}: {exc.strerror}", path=given) from None
    try:
        with open_store(config.store) as store:
            picks = load_selection(store, selection) if selection is not None else load_round(store, latest_round(store) if round is None else round)
            g = _gather(store, picks, top, map_points, seed, on_progress, layout)
            data, images, texts = _page_data(picks, g)
            if picks.modality == "text":  # the map's hover shows each caption
                texts |= {i for layer in g["map"].get("layers", []) for i in layer["ids"]}
            uris, text_rows = _labels(store, images, texts)
        thumbs = make_thumbnails(uris, tmp, previous=out if out.is_dir() else None, on_progress=on_progress)
        data["img"] = {i: t.get("src") or {"error": t["error"]} for i, t in thumbs.items()}
        data["txt"] = {i: r.get("text", "") for i, r in text_rows.items()}
        data["uri"] = uris
        data["map"] = {k: v for k, v in g["map"].items() if k != "picks"}  # each pick's point is in its record
        data["modality"] = picks.modality
        data["strategy"] = (picks.log or {}).get("strategy")
        data["round"] = picks.round
        data["key"] = _storage_key(config, picks)
        write_static(tmp)
        (tmp / "index.html").write_text(render_page(picks, g, data, sim), encoding="utf-8")
        _write_marker(tmp)
        _replace(tmp, out, given)
    except OSError as exc:  # a full disk is one line naming --out; the older report (if any) stays as it was
        if exc.errno not in FULL_DISK:
            raise
        raise write_failed(given, exc) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    unreadable = sum(1 for t in thumbs.values() if "error" in t)
    return ReportResult(out, out / "index.html", len(picks.ids), picks.source, len(thumbs) - unreadable, unreadable,
                        time.perf_counter() - started, list(picks.notes))


def _storage_key(config: HnselConfig, picks: Picks) -> str:
    """The browser's local-storage key of this round's decisions: one per store, namespace and round (its picks' hash,
    so a round number used again after a roll-back starts with no decisions)."""
    where = hashlib.sha256(f"{config.store.safe_uri}\0{config.store.namespace}".encode("utf-8")).hexdigest()[:12]
    return f"hnsel-decisions:{where}:{picks.round}:{(picks.log or {}).get('picks_sha256', '')[:12]}"


def _replace(tmp: Path, out: Path, given: Any) -> None:
    """Rename the finished report into place; an older report (checked again: nothing else may have arrived in it since)
    is moved aside first and removed after."""
    stranger = _foreign(out)
    if stranger is not None:
        raise InputError(f"--out now holds {stranger!r}, which hnsel report did not write; nothing was replaced", path=given)
    old = moved = None
    try:
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / "report")
            moved = old / "report"
        os.replace(tmp, out)
    except OSError:
        if moved is not None:
            os.replace(moved, out)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
