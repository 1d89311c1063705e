"""The report page: ``templates/report.html`` rendered by Jinja2 with autoescaping (every value from the user's data,
ids, captions, uris, parameters, is escaped by the template), the picks, map and charts drawn in the browser from
the page's own JSON by ``static/report.js`` with plotly.js (copied beside the page from the ``plotly`` package).

One folder, no network: the page loads only its own ``static/`` scripts and ``thumbs/``, and its
Content-Security-Policy forbids every other source (no inline script, no connection, no remote image).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from ..strategies.base import params_of

__all__ = ["CSP", "CSP_WEBGL", "WEBGL_POINTS", "render_page", "to_json", "write_static", "STATIC_DIR"]

CSP = ("default-src 'none'; img-src 'self' file: data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
       "base-uri 'none'; form-action 'none'; connect-src 'none'")
# Past this many map points the map is drawn with WebGL (SVG grows slow): plotly's WebGL renderer (regl) compiles its
# drawing code with Function(), so such a page's script-src adds 'unsafe-eval'; still no remote source, no inline script.
WEBGL_POINTS = 5000
CSP_WEBGL = CSP.replace("script-src 'self'", "script-src 'self' 'unsafe-eval'")
STATIC_DIR = "static"
STATIC_FILES = ("report.js", "report.css")
PLOTLY_JS = "plotly.min.js"
COVERAGE = ("coverage", "coreset")
REASON_MEANING = {
    "score": "a hard negative: it scores above paired captions' thresholds, so the model would confuse it with their images",
    "hardneg": "a hard negative: it scores above paired captions' thresholds, so the model would confuse it with their images",
    "density": "a hard negative weighted by how typical it is of the pool (density)",
    "coverage": "picked to cover the pool: it lies far from every paired sample and every earlier pick (its score is that "
                "distance to the nearest centre), not because it violates a threshold",
    "coreset": "picked to cover the pool: it lies far from every paired sample and every earlier pick (its score is that "
               "distance to the nearest centre), not because it violates a threshold",
    "diverse": "picked for diversity among the candidates",
    "random": "a random pick (the baseline, or the budget left after the scored picks)",
    "fill": "fills the budget once no candidate has a score: drawn at random with the run's seed",
    "unknown": "the source recorded no reason",
}


def to_json(data: Any) -> str:
    """JSON safe inside a <script> element (no ``</script>``, no HTML specials) and without NaN."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("hnsel.report", "templates"), autoescape=True, undefined=jinja2.StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True)


def write_static(folder: Path) -> None:
    """The page's scripts and styles into ``folder/static``: report.js, report.css and plotly.min.js."""
    target = folder / STATIC_DIR
    target.mkdir(parents=True, exist_ok=True)
    for name in STATIC_FILES:
        with resources.as_file(resources.files("hnsel.report").joinpath("static", name)) as source:
            shutil.copyfile(source, target / name)
    from plotly.offline import get_plotlyjs  # the plotly.js bundled with the plotly package: no network

    (target / PLOTLY_JS).write_text(get_plotlyjs(), encoding="utf-8")


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(_value, v))
    if v is None:
        return "none"
    return str(v)


def _params(log: dict) -> list[dict]:
    """The round's parameters as rows: name, value, what it means (from the strategy's declaration), default."""
    params = log.get("params") or {}
    try:
        specs = {p.name: p for p in params_of(str(log.get("strategy")))}
    except KeyError:  # a strategy this install does not know
        specs = {}
    rows = []
    for name in sorted(params):
        spec = specs.get(name)
        default = None if spec is None or spec.default is None else _value(spec.default)
        rows.append({"name": name, "flag": spec.flag if spec else "", "value": _value(params[name]), "help": spec.help if spec else "",
                     "changed": default is not None and default != _value(params[name])})
    return rows


def _run_rows(picks, g: dict) -> list[tuple[str, str]]:
    log = picks.log or {}
    stats = log.get("stats", {})
    rows = [("source", picks.source), ("modality", picks.modality)]
    if log:
        rows += [("seed", _value(log.get("seed"))), ("recorded", str(log.get("created", ""))), ("picks sha256", str(log.get("picks_sha256", "")))]
    for key in ("candidates", "candidates_with_score", "picked_on_merit", "filled", "anchors", "deepened", "range_searched", "truncated", "thresholds"):
        if key in stats:
            rows.append((key.replace("_", " "), _value(stats[key])))
    counts = g["counts"]
    rows.append(("store now", f"images {counts['images']['paired']:,} paired / {counts['images']['unpaired']:,} unpaired; "
                              f"texts {counts['texts']['paired']:,} paired / {counts['texts']['unpaired']:,} unpaired"))
    by_reason: dict[str, int] = {}
    for r in picks.reasons:
        by_reason[r] = by_reason.get(r, 0) + 1
    rows.append(("picks by reason", ", ".join(f"{k} {v:,}" for k, v in sorted(by_reason.items()))))
    rows.append(("evidence", f"recomputed now from the stored vectors against {g['evidence'].anchors_seen:,} paired "
                             f"{'captions' if picks.modality == 'image' else 'images'}, Top-{g['k']} full-batch thresholds"))
    return rows


def _map_caption(m: dict) -> str:
    if not m:
        return "no vectors to map"
    layers = {layer["kind"]: layer for layer in m["layers"]}
    c = m["counts"]
    shown = "; ".join(f"{k} {len(layers[k]['ids']):,} of {layers[k]['total']:,}" for k in ("paired", "pool"))
    others = [layer for layer in m["layers"] if layer["kind"] == "round"]
    earlier = "".join(f"; {layer['name']}: {len(layer['ids']):,} of {layer['total']:,}" for layer in others)
    return (f"{m['describe']}. Seeded samples shown: {shown}; picks {c['picks']:,} of {c['picks']:,} "
            f"({c['fitted_picks']:,} in the fitted sample, the rest placed by the fitted layout){earlier}.")


def render_page(picks, g: dict, data: dict, sim: dict | None) -> str:
    """The whole index.html."""
    log = picks.log or {}
    decision = (log.get("stats") or {}).get("auto_decision")
    reasons = sorted(set(picks.reasons))
    if sim is not None:
        data = dict(data, sim={"curves": sim["curves"]})
    points = len(picks.ids) + sum(len(layer["ids"]) for layer in (g["map"] or {}).get("layers", []))
    data = dict(data, webgl=points > WEBGL_POINTS)
    return _environment().get_template("report.html").render(
        csp=CSP_WEBGL if data["webgl"] else CSP, title=f"hnsel report: {picks.source}", generated=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        n_picks=f"{len(picks.ids):,}", notes=picks.notes, strategy=log.get("strategy"), params=_params(log) if log else [],
        run=_run_rows(picks, g), auto=decision.get("reason") if isinstance(decision, dict) else None,
        meanings=[(r, REASON_MEANING.get(r, REASON_MEANING["unknown"])) for r in reasons],
        map_caption=_map_caption(g["map"]), rounds=g["rounds"], current=picks.round, sim=sim, unit="caption" if picks.modality == "image" else "image",
        round=picks.round, data_json=Markup(to_json(_finite(data))))


def _finite(x: Any) -> Any:
    """NaN and infinities (never valid JSON) as None, all the way down."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x
