"""How the report page holds up with many picks, in headless Chromium: page ready, a lasso of about 1,000 picks on
the map, and scrolling the grid to its end.

    python benchmarks/report_page.py --picks 10000 --out /tmp/report-bench [--layout pca|umap|auto]

Builds a synthetic store (``make_pool``: ``--paired`` paired images with 3 captions each, ``--picks`` + 2,000
unpaired images, a tiny PNG per image), records a hardneg round of ``--picks``, writes the report (timed), then in
Debian's chromium (WebGL through SwiftShader, as on a machine without a GPU):
- page ready: navigation start to the page's ``data-ready`` (JSON parsed, grid's first chunk drawn, map and charts plotted);
- lasso: a real pointer drag (48 moves, 16 ms each) of a rectangle-shaped lasso holding about 1,000 picks: the wall time of the whole
  drag (plotly redraws the lasso and selects on each move) and the page's handler (points to picks, filter, sort, first
  grid chunk);
- grid scroll: ``scrollBy(0, 300)`` per animation frame (18,000 px/s at 60 fps, a fast fling) down to the end of the grid (chunks appended on the way): the
  frame intervals (median, 95th percentile, frames over 50 ms) and the time to reach the last pick; then the same
  scrolling of a plain tall page and of the same tiles as script-free HTML, for what a frame costs on the machine at
  that moment and what the tiles alone cost.
Prints a Markdown row and writes ``benchmarks/results/report_page.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hnsel import api, load_config  # noqa: E402
from hnsel.data.synthetic import make_pool  # noqa: E402


def build_store(base: Path, picks: int, paired: int) -> tuple:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    pool = make_pool(n_paired=paired, n_unpaired=picks + 2000, captions_per_image=3, dim=64, n_coarse=12, fine_per_coarse=8, seed=0)
    (base / "img").mkdir(parents=True, exist_ok=True)
    uris = []
    for i, image_id in enumerate(pool.image_ids):
        path = base / "img" / f"{image_id}.png"
        Image.new("RGB", (32, 24), tuple(int(c) for c in np.random.default_rng(i).integers(0, 255, 3))).save(path)
        uris.append(str(path))
    vec = pa.list_(pa.float32())
    pq.write_table(pa.table({"id": pool.image_ids.tolist(), "vector": pa.array(list(pool.image_vectors), type=vec),
                             "pool": pool.image_pool.tolist(), "uri": uris}), base / "images.parquet")
    pq.write_table(pa.table({"id": pool.text_ids.tolist(), "vector": pa.array(list(pool.text_vectors), type=vec),
                             "pool": ["paired"] * len(pool.text_ids), "image_id": pool.text_image_ids.tolist(),
                             "text": [f"a caption of {t}" for t in pool.text_ids]}), base / "texts.parquet")
    config = load_config().with_overrides(uri=str(base / "hnsel.db"))
    api.ingest(config, images=base / "images.parquet", texts=base / "texts.parquet")
    api.select(config, budget=picks, strategy="hardneg", record=True)
    return config, pool


def browser(tmp: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--enable-unsafe-swiftshader", "--no-first-run", "--disable-background-networking",
                 "--window-size=1300,1800", f"--user-data-dir={tmp / 'profile'}"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))


def page_ready(driver, index: Path, timeout: float = 600) -> float:
    driver.get(index.resolve().as_uri())
    deadline = time.monotonic() + timeout
    while driver.execute_script("return document.body.dataset.ready") == "0":
        if time.monotonic() > deadline:
            raise TimeoutError("the page never became ready")
        time.sleep(0.1)
    assert driver.execute_script("return document.body.dataset.ready") == "1"
    return float(driver.execute_script("return window.hnselTimings.ready"))


def lasso(driver, picks: list[dict], target: int) -> dict:
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    driver.execute_script("document.getElementById('map').scrollIntoView()")
    px = np.asarray(driver.execute_script(
        "const gd = document.getElementById('map-plot'), xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;"
        "const r = gd.getBoundingClientRect();"
        "return arguments[0].map(p => [r.left + xa._offset + xa.l2p(p[0]), r.top + ya._offset + ya.l2p(p[1])]);",
        [p["xy"] for p in picks]))
    order = np.sort(px[:, 0])
    split = (order[target - 1] + order[target]) / 2
    x0, y0, y1 = px[:, 0].min() - 6, px[:, 1].min() - 6, px[:, 1].max() + 6
    corners = [(x0, y0), (split, y0), (split, y1), (x0, y1), (x0, y0 + 1)]
    actions = ActionBuilder(driver, duration=16)  # one pointer move per frame, not selenium's default 250 ms
    actions.pointer_action.move_to_location(int(x0), int(y0)).pointer_down()
    for a, b in zip(corners, corners[1:]):
        for t in range(1, 13):
            actions.pointer_action.move_to_location(int(a[0] + (b[0] - a[0]) * t / 12), int(a[1] + (b[1] - a[1]) * t / 12))
    actions.pointer_action.pointer_up()
    driver.execute_script("window.hnselTimings.selected = null")
    started = time.perf_counter()
    actions.perform()
    while not driver.execute_script("return window.hnselTimings.selected"):
        if time.perf_counter() - started > 120:
            break
        time.sleep(0.02)
    wall = time.perf_counter() - started
    got = driver.execute_script("return window.hnselTimings.selected")
    shown = int(driver.execute_script("return document.getElementById('picks').dataset.shown"))
    return {"aimed_at": int((px[:, 0] < split).sum()), "selected": got and got["picks"], "shown": shown, "moves": 4 * 12,
            "handler_ms": got and round(got["ms"], 1), "drag_s": round(wall, 2),
            "map": driver.execute_script("return document.getElementById('map-plot').dataset.type")}


SCROLL = """
const done = arguments[arguments.length - 1], grid = document.getElementById('grid'), gaps = [], t0 = performance.now();
let last = t0;
function step(now) {
  gaps.push(now - last); last = now;
  const end = grid.getBoundingClientRect().bottom <= window.innerHeight + 2 && grid.children.length >= Number(document.getElementById('picks').dataset.shown);
  if (end || now - t0 > 60000) { done({gaps: gaps, ms: now - t0, tiles: grid.children.length, end: end}); return; }
  window.scrollBy(0, 300);
  requestAnimationFrame(step);
}
requestAnimationFrame(step);
"""


BASELINE = """
const done = arguments[arguments.length - 1], gaps = [];
let last = performance.now();
function step(now) {
  gaps.push(now - last); last = now;
  if (gaps.length > 150) { done(gaps); return; }
  window.scrollBy(0, 300);
  requestAnimationFrame(step);
}
requestAnimationFrame(step);
"""


def baseline(driver) -> dict:
    """The same scrolling on a plain tall page in the same browser: what a frame costs on this machine right now."""
    driver.get("data:text/html,<body style='margin:0'><div style='height:200000px;background:linear-gradient(%23fff,%23888)'></div></body>")
    driver.set_script_timeout(100)
    gaps = np.asarray(driver.execute_async_script(BASELINE)[1:])
    return {"median_frame_ms": round(float(np.median(gaps)), 1), "p95_frame_ms": round(float(np.percentile(gaps, 95)), 1)}


def static_tiles(driver, out: Path, report: str, picks: list[dict], img: dict) -> dict:
    """The same tiles as plain HTML (no script, all 10,000 in the page), scrolled the same way: what the grid's content
    costs the browser without the report's incremental rendering."""
    tiles = "".join(f'<div class="tile"><img class="tthumb" loading="lazy" src="{report}/{img.get(p["id"], "")}"><div class="tbar">'
                    f'<span class="trank">#{p["r"]}</span></div></div>' for p in picks)
    page = out / "plain-tiles.html"
    page.write_text(f'<!doctype html><html><head><meta charset="utf-8"><link rel="stylesheet" href="{report}/static/report.css"></head>'
                    f'<body><main><div id="grid" class="grid">{tiles}</div></main></body></html>', encoding="utf-8")
    driver.get(page.resolve().as_uri())
    time.sleep(5)
    driver.execute_script("document.getElementById('grid').scrollIntoView()")
    driver.set_script_timeout(100)
    gaps = np.asarray(driver.execute_async_script(BASELINE)[1:])
    return {"median_frame_ms": round(float(np.median(gaps)), 1), "p95_frame_ms": round(float(np.percentile(gaps, 95)), 1)}


def scroll(driver) -> dict:
    driver.execute_script("document.getElementById('lasso-clear').click(); document.getElementById('grid').scrollIntoView()")
    driver.set_script_timeout(100)
    got = driver.execute_async_script(SCROLL)
    gaps = np.asarray(got["gaps"][1:])
    return {"frames": len(gaps), "median_frame_ms": round(float(np.median(gaps)), 1), "p95_frame_ms": round(float(np.percentile(gaps, 95)), 1),
            "frames_over_50ms": int((gaps > 50).sum()), "to_the_end_s": round(got["ms"] / 1000, 2) if got["end"] else None,
            "tiles": got["tiles"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--picks", type=int, default=10000)
    parser.add_argument("--paired", type=int, default=500)
    parser.add_argument("--lasso", type=int, default=1000)
    parser.add_argument("--layout", default="pca")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--reuse", action="store_true", help="Use the store and report already in --out.")
    parser.add_argument("--report", default="report", help="The report folder under --out to open.")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    stored = built = None
    if not args.reuse:
        started = time.perf_counter()
        config, _ = build_store(args.out, args.picks, args.paired)
        stored = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        api.report(config, out=args.out / args.report, layout=args.layout)
        built = round(time.perf_counter() - started, 1)
        print(f"store {stored} s, report {built} s", flush=True)
    page = (args.out / args.report / "index.html").read_text(encoding="utf-8")
    data = json.loads(page.split('<script type="application/json" id="report-data">')[1].split("</script>")[0])
    picks = data["picks"]
    driver = browser(args.out)
    try:
        ready = page_ready(driver, args.out / args.report / "index.html")
        print(f"page ready {ready:.0f} ms", flush=True)
        selected = lasso(driver, picks, args.lasso)
        print(f"lasso {selected}", flush=True)
        scrolled = scroll(driver)
        scrolled["plain_page"] = baseline(driver)
        scrolled["plain_tiles"] = static_tiles(driver, args.out, args.report, picks, data["img"])
    finally:
        driver.quit()
    row = {"picks": len(picks), "layout": args.layout, "report": args.report, "store_s": stored, "report_s": built, "page_ready_ms": round(ready),
           "lasso": selected, "scroll": scrolled, "index_html_mb": round(len(page.encode()) / 1e6, 2), "load_before": round(load, 2),
           "load_after": round(os.getloadavg()[0], 2)}
    print(json.dumps(row, indent=1))
    results = ROOT / "benchmarks" / "results" / "report_page.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(results.read_text()) if results.exists() else []
    results.write_text(json.dumps(runs + [row], indent=1) + "\n")
    print(f"| {row['picks']:,} | {args.layout} | {built} | {row['index_html_mb']} | {row['page_ready_ms']:,} | "
          f"{selected['map']} | {selected['selected']} | {selected['handler_ms']} | {selected['drag_s']} | "
          f"{scrolled['median_frame_ms']} / {scrolled['p95_frame_ms']} | {scrolled['frames_over_50ms']} of {scrolled['frames']} | "
          f"{scrolled['to_the_end_s']} | {scrolled['plain_page']['median_frame_ms']} | {scrolled['plain_tiles']['median_frame_ms']} | {row['load_before']} / {row['load_after']} |")


if __name__ == "__main__":
    main()
