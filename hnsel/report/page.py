"""The report page: static sections rendered here (escaped HTML and inline SVG), pick cards drawn by a little
JavaScript from the page's own JSON, a page of cards at a time. One file, no network: the CSS and script are
inlined from ``static/``, a Content-Security-Policy forbids every other source, thumbnails are relative files.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
from importlib import resources
from string import Template
from typing import Any

import numpy as np

__all__ = ["render_page", "histogram_svg", "rsum_svg", "to_json"]

CSP = ("default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
       "base-uri 'none'; form-action 'none'; connect-src 'none'")
PALETTE = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
REASON_COLOURS = {"hardneg": "#d62728", "score": "#d62728", "density": "#d62728", "coverage": "#2ca02c", "coreset": "#2ca02c",
                  "diverse": "#9467bd", "random": "#ff7f0e", "fill": "#7f7f7f", "unknown": "#444444"}


def _static(name: str) -> str:
    return resources.files("hnsel.report").joinpath("static", name).read_text(encoding="utf-8")


def to_json(data: Any) -> str:
    """JSON safe inside a <script> element (no ``</script>``, no HTML specials) and without NaN."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(rows: list[tuple[str, Any]], cls: str = "kv") -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="{cls}">{body}</table>'


def histogram_svg(values: list[float], colour: str, label: str, bins: int = 24, width: int = 300, height: int = 110) -> str:
    """Bars of a histogram of ``values`` with its range and largest count labelled."""
    v = np.asarray(values, dtype=np.float64)
    lo, hi = float(v.min()), float(v.max())
    counts, _ = np.histogram(v, bins=bins, range=(lo, hi if hi > lo else lo + 1e-9))
    top = max(int(counts.max()), 1)
    plot_h, bar_w = height - 44, (width - 10) / bins
    bars = "".join(f'<rect x="{5 + i * bar_w:.1f}" y="{22 + plot_h - c / top * plot_h:.1f}" width="{max(bar_w - 1, 1):.1f}" '
                   f'height="{c / top * plot_h:.1f}" fill="{colour}"><title>{c}</title></rect>' for i, c in enumerate(counts))
    return (f'<figure class="hist"><svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{_e(label)}">'
            f'{bars}<line x1="5" x2="{width - 5}" y1="{22 + plot_h}" y2="{22 + plot_h}" stroke="#888"/>'
            f'<text x="5" y="{height - 6}" class="ax">{lo:.4g}</text><text x="{width - 5}" y="{height - 6}" class="ax" text-anchor="end">{hi:.4g}</text>'
            f'<text x="{width - 5}" y="12" class="ax" text-anchor="end">tallest bar: {top}</text></svg>'
            f'<figcaption>{_e(label)}: {len(v)} picks</figcaption></figure>')


def rsum_svg(curves: dict[str, list[dict]], width: int = 640, height: int = 300) -> str:
    """R-sum (mean, band of one std over seeds) against paired images, one line per strategy."""
    points = [(r["paired"], r["rsum_mean"], r["rsum_std"]) for rows in curves.values() for r in rows]
    if not points:
        return "<p>the simulation holds no finished round yet</p>"
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] - p[2] for p in points), max(p[1] + p[2] for p in points)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    left, right, top_, bottom = 50, 160, 12, 34

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def sy(y: float) -> float:
        return top_ + (1 - (y - y0) / (y1 - y0)) * (height - top_ - bottom)

    parts = [f'<line x1="{left}" x2="{width - right}" y1="{height - bottom}" y2="{height - bottom}" stroke="#888"/>',
             f'<line x1="{left}" x2="{left}" y1="{top_}" y2="{height - bottom}" stroke="#888"/>',
             f'<text x="{left}" y="{height - 18}" class="ax">{x0:g}</text>',
             f'<text x="{width - right}" y="{height - 18}" class="ax" text-anchor="end">{x1:g}</text>',
             f'<text x="{(left + width - right) / 2}" y="{height - 4}" class="ax" text-anchor="middle">paired images</text>',
             f'<text x="{left - 4}" y="{sy(y0):.1f}" class="ax" text-anchor="end">{y0:.1f}</text>',
             f'<text x="{left - 4}" y="{sy(y1) + 8:.1f}" class="ax" text-anchor="end">{y1:.1f}</text>',
             f'<text x="12" y="{(height - bottom) / 2}" class="ax" transform="rotate(-90 12 {(height - bottom) / 2})" text-anchor="middle">R-sum</text>']
    for n, (label, rows) in enumerate(sorted(curves.items())):
        colour = PALETTE[n % len(PALETTE)]
        upper = [f"{sx(r['paired']):.1f},{sy(r['rsum_mean'] + r['rsum_std']):.1f}" for r in rows]
        lower = [f"{sx(r['paired']):.1f},{sy(r['rsum_mean'] - r['rsum_std']):.1f}" for r in reversed(rows)]
        line = [f"{sx(r['paired']):.1f},{sy(r['rsum_mean']):.1f}" for r in rows]
        parts.append(f'<polygon points="{" ".join(upper + lower)}" fill="{colour}" opacity="0.15"/>')
        parts.append(f'<polyline class="curve" data-strategy="{_e(label)}" points="{" ".join(line)}" fill="none" stroke="{colour}" stroke-width="2">'
                     f'<title>{_e(label)}</title></polyline>')
        parts.append(f'<text x="{width - right + 8}" y="{top_ + 14 + 16 * n}" class="ax" fill="{colour}">{_e(label)}</text>')
    return f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="R-sum curves">{"".join(parts)}</svg>'


def _run_section(picks, g: dict) -> str:
    log = picks.log or {}
    stats = log.get("stats", {})
    rows: list[tuple[str, Any]] = [("source", _e(picks.source)), ("modality", _e(picks.modality))]
    if log:
        rows += [("strategy", f"<b>{_e(log.get('strategy'))}</b>"), ("parameters", f"<code>{_e(json.dumps(log.get('params', {}), sort_keys=True))}</code>"),
                 ("seed", _e(log.get("seed"))), ("recorded", _e(log.get("created", ""))), ("picks sha256", f"<code>{_e(log.get('picks_sha256', ''))}</code>")]
    else:
        rows.append(("strategy", "unknown: the selection file matches no recorded round"))
    for key in ("candidates", "candidates_with_score", "picked_on_merit", "filled", "anchors", "deepened", "range_searched", "truncated", "thresholds"):
        if key in stats:
            rows.append((key.replace("_", " "), _e(stats[key])))
    counts = g["counts"]
    rows.append(("store now", _e(f"images {counts['images']['paired']:,} paired / {counts['images']['unpaired']:,} unpaired; "
                                 f"texts {counts['texts']['paired']:,} paired / {counts['texts']['unpaired']:,} unpaired")))
    by_reason: dict[str, int] = {}
    for r in picks.reasons:
        by_reason[r] = by_reason.get(r, 0) + 1
    rows.append(("picks by reason", _e(", ".join(f"{k} {v:,}" for k, v in sorted(by_reason.items())))))
    rows.append(("evidence", _e(f"recomputed now from the stored vectors against {g['evidence'].anchors_seen:,} paired "
                                f"{'captions' if picks.modality == 'image' else 'images'}, Top-{g['k']} full-batch thresholds")))
    decision = stats.get("auto_decision")
    auto = ""
    if isinstance(decision, dict) and decision.get("reason"):
        auto = f'<p class="decision" id="auto-decision"><b>auto</b>: {_e(decision["reason"])}</p>'
    return auto + _table(rows)


def _histograms(picks) -> str:
    groups: dict[str, list[float]] = {}
    for s, r in zip(picks.scores, picks.reasons):
        if s is not None and math.isfinite(s):
            groups.setdefault(r, []).append(float(s))
    if not groups:
        return "<p>no scores recorded</p>"
    meaning = {"coverage": "distance to the nearest centre", "coreset": "distance to the nearest centre"}
    return "".join(histogram_svg(v, REASON_COLOURS.get(r, "#444"), f"{r} score" + (f" ({meaning[r]})" if r in meaning else ""))
                   for r, v in sorted(groups.items()))


def _rounds_section(rounds: list[dict], current: int | None) -> str:
    if not rounds:
        return "<p>no rounds recorded in this namespace</p>"
    head = "".join(f"<th>{h}</th>" for h in ("round", "modality", "strategy", "size", "annotated", "pending", "released", "seed", "recorded"))
    body = "".join(
        f'<tr{" class=current" if r["round"] == current else ""}>' + "".join(
            f"<td>{_e(r.get(k) if r.get(k) is not None else '')}</td>"
            for k in ("round", "modality", "strategy", "size", "annotated", "pending", "released", "seed", "created")) + "</tr>"
        for r in rounds)
    return f'<table class="rounds" id="rounds"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _map_caption(m: dict) -> str:
    if not m:
        return "no vectors to map"
    t, s = m["totals"], m["shown"]
    sampled = any(s[k] < t[k] for k in t)
    part = "; ".join(f"{k} {s[k]:,} of {t[k]:,}" for k in ("paired", "pool", "picks"))
    ev = ", ".join(f"{x:.0%}" for x in m.get("explained", []))
    return (f"PCA of the vectors (components explain {ev} of the sampled variance). "
            + (f"Seeded samples shown: {part}." if sampled else f"All shown: {part}."))


def _simulation_section(sim: dict | None) -> str:
    if sim is None:
        return ""
    s = sim["settings"]
    what = f"pool {s.get('pool', '?')}, budget {s.get('budget', '?')} per round, {s.get('rounds', '?')} rounds"
    return (f'<section id="simulation"><h2>Simulation</h2><p>{_e(sim["path"])}: {_e(what)}; mean R-sum over seeds, band one standard deviation.</p>'
            f'{rsum_svg(sim["curves"])}</section>')


def render_page(picks, g: dict, data: dict, sim: dict | None) -> str:
    """The whole index.html."""
    title = f"hnsel report: {picks.source}"
    notes = "".join(f"<li>{_e(n)}</li>" for n in picks.notes)
    page = Template(_static("report.html"))
    return page.substitute(
        csp=_e(CSP), title=_e(title), css=_static("report.css"), js=_static("report.js"), data=to_json(data),
        generated=_e(_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")), n_picks=f"{len(picks.ids):,}",
        notes=f'<ul class="notes">{notes}</ul>' if notes else "", run=_run_section(picks, g), histograms=_histograms(picks),
        map_caption=_e(_map_caption(g["map"])), rounds=_rounds_section(g["rounds"], picks.round), simulation=_simulation_section(sim),
        unit="caption" if picks.modality == "image" else "image")
