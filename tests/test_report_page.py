"""The report as a place to work, in a real headless Chromium (Debian's chromium + chromium-driver): the plotly map's
hover and lasso, the grid, sorting and search, coverage picks explained, accept/reject downloaded and fed to the CLI,
hostile ids rendered as text, and nothing fetched from outside the report's folder."""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hnsel import api
from hnsel.cli import app
from hnsel.store import open_store
from hnsel.strategies.base import params_of
from test_report import _browser, dense_reference, make_store

runner = CliRunner()
WAIT_S = 90  # generous: the machine is shared


@pytest.fixture(scope="module")
def rounds(tmp_path_factory) -> dict:
    """Round 1: hardneg, 100 picks; round 2: coreset, 30 of the 80 left (coverage picks, round 1 an earlier layer)."""
    base = tmp_path_factory.mktemp("report-page")
    s = make_store(base, str(base / "hnsel.db"), budget=100)
    s["second"] = api.select(s["config"], budget=30, strategy="coreset", record=True)
    return s


def _report(s: dict, out: Path, *args: str) -> dict:
    res = runner.invoke(app, ["report", "--milvus-uri", s["uri"], "--out", str(out), "--layout", "pca", "--json", *args])
    assert res.exit_code == 0, (res.output, res.exc_info and traceback.format_exception(*res.exc_info))
    page = (out / "index.html").read_text(encoding="utf-8")
    return json.loads(page.split('<script type="application/json" id="report-data">')[1].split("</script>")[0])


@pytest.fixture
def chrome(tmp_path):
    webdriver, options, service = _browser()
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=service)
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()


def _open(driver, index: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(index.resolve().as_uri())
    WebDriverWait(driver, WAIT_S).until(lambda d: d.find_element("tag name", "body").get_attribute("data-ready") != "0")
    assert driver.find_element("tag name", "body").get_attribute("data-ready") == "1"


def _tiles(driver) -> list[str]:
    return driver.execute_script("return [...document.querySelectorAll('#grid .tile')].map(t => t.dataset.id)")


def _pixels(driver, picks: list[dict]) -> np.ndarray:
    """Viewport pixel position of each pick's point on the map (plotly's own axis conversion)."""
    xy = driver.execute_script(
        "const gd = document.getElementById('map-plot'), xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;"
        "const r = gd.getBoundingClientRect();"
        "return arguments[0].map(p => [r.left + xa._offset + xa.l2p(p[0]), r.top + ya._offset + ya.l2p(p[1])]);",
        [p["xy"] for p in picks])
    return np.asarray(xy, dtype=np.float64)


def _move(driver, points: list[tuple[float, float]], drag: bool = False) -> None:
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    actions = ActionBuilder(driver)
    actions.pointer_action.move_to_location(int(points[0][0]), int(points[0][1]))
    if drag:
        actions.pointer_action.pointer_down()
    for x, y in points[1:]:
        actions.pointer_action.move_to_location(int(round(x)), int(round(y)))
    if drag:
        actions.pointer_action.pointer_up()
    actions.perform()


def test_map_hover_lasso_grid_sort_search_and_no_network(rounds, tmp_path, chrome):
    from selenium.webdriver.support.ui import Select, WebDriverWait

    data = _report(rounds, tmp_path / "r", "--round", "1")
    picks = data["picks"]
    assert "unsafe-eval" not in (tmp_path / "r" / "index.html").read_text(encoding="utf-8")  # a small map: SVG, the strict CSP
    _open(chrome, tmp_path / "r" / "index.html")
    assert _tiles(chrome) == [p["id"] for p in picks]  # the grid is the default for image picks, in rank order
    rows = chrome.execute_script("return new Set([...document.querySelectorAll('#grid .tile')].slice(0, 100).map(t => t.offsetTop)).size")
    assert rows <= 10  # at 1,300 px, 200 picks fill about two screens
    chrome.execute_script("document.getElementById('map').scrollIntoView()")
    px = _pixels(chrome, picks)

    # hover: the most isolated pick's point shows its thumbnail and its most violated caption
    others = np.asarray(chrome.execute_script(
        "const gd = document.getElementById('map-plot');"
        "return gd.calcdata.flatMap(c => c.map(p => [p.x, p.y]));"), dtype=np.float64)
    others = others[np.isfinite(others).all(axis=1)]
    other_px = _pixels(chrome, [{"xy": [float(v) for v in o]} for o in others])
    gaps = np.linalg.norm(px[:, None, :] - other_px[None, :, :], axis=2)
    gaps[gaps < 0.5] = np.inf  # the pick itself
    target = int(np.argmax(gaps.min(axis=1)))
    p = picks[target]
    _move(chrome, [(px[target][0] + 60, px[target][1] + 60), tuple(px[target])])
    WebDriverWait(chrome, WAIT_S).until(lambda d: d.find_element("id", "hover-box").get_attribute("data-id") == p["id"])
    box = chrome.find_element("id", "hover-box")
    assert box.is_displayed()
    assert box.find_element("css selector", "img.hthumb").get_attribute("src").endswith(data["img"][p["id"]])
    assert f"violates: {data['txt'][p['ev'][0][0]]}" in box.text

    # lasso: a rectangle-shaped lasso over the picks left of a gap between points; the grid is filtered to exactly them
    order = np.sort(px[:, 0])
    middle = slice(len(order) // 4, 3 * len(order) // 4)
    at = int(np.argmax(np.diff(order)[middle])) + len(order) // 4
    split = (order[at] + order[at + 1]) / 2
    inside = [q["id"] for q, x in zip(picks, px[:, 0]) if x < split]
    assert 0 < len(inside) < len(picks)
    x0, y0, y1 = px[:, 0].min() - 8, px[:, 1].min() - 8, px[:, 1].max() + 8
    corners = [(x0, y0), (split, y0), (split, y1), (x0, y1), (x0, y0 + 1)]
    path = [tuple(np.add(a, np.multiply(np.subtract(b, a), t / 12))) for a, b in zip(corners, corners[1:]) for t in range(12)]
    _move(chrome, path + [corners[-1]], drag=True)
    WebDriverWait(chrome, WAIT_S).until(lambda d: d.find_element("id", "picks").get_attribute("data-shown") == str(len(inside)))
    assert sorted(_tiles(chrome)) == sorted(inside)
    assert f"map selection: {len(inside)} picks" in chrome.find_element("id", "lasso-info").text
    chrome.find_element("id", "reject-shown").click()  # a decision for the whole lasso selection, kept per round
    assert chrome.find_element("id", "decision-info").text == f"0 accepted, {len(inside)} rejected of {len(picks)}"
    kept = chrome.execute_script("return JSON.parse(localStorage.getItem(JSON.parse(document.getElementById('report-data').textContent).key))")
    assert sorted(i for i, v in kept if v == "r") == sorted(inside) and len(kept) == len(inside)
    chrome.find_element("id", "clear-shown").click()
    assert chrome.find_element("id", "decision-info").text == f"0 accepted, 0 rejected of {len(picks)}"
    chrome.find_element("id", "lasso-clear").click()
    assert len(_tiles(chrome)) == len(picks)

    # sort by score (highest first, ties by rank) and by violations; search captions and ids
    Select(chrome.find_element("id", "sort")).select_by_value("score")
    assert _tiles(chrome) == [q["id"] for q in sorted(picks, key=lambda q: (-q["s"], q["r"]))]
    Select(chrome.find_element("id", "sort")).select_by_value("violations")
    assert _tiles(chrome) == [q["id"] for q in sorted(picks, key=lambda q: (-q["nv"], q["r"]))]
    anchor = picks[5]["ev"][0][0]
    query = data["txt"][anchor][:-3]  # "caption <img..._c1" of one violated caption
    chrome.find_element("id", "search").send_keys(query)

    def hay(q: dict) -> str:
        return "\n".join([q["id"], data["txt"].get(q["id"], "")] + [x for e in q["ev"] for x in (e[0], data["txt"].get(e[0], ""))]).lower()

    expected = [q["id"] for q in sorted(picks, key=lambda q: (-q["nv"], q["r"])) if query.lower() in hay(q)]
    assert picks[5]["id"] in expected and _tiles(chrome) == expected

    # a tile opens the pick's evidence: the card with its most violated captions (the dense reference's)
    chrome.find_element("css selector", "#grid .tile").click()
    detail = chrome.find_element("id", "detail")
    assert detail.is_displayed() and detail.get_attribute("data-id") == expected[0]
    ref = dense_reference(rounds["pool"], [expected[0]])
    assert [e.get_attribute("data-anchor") for e in detail.find_elements("css selector", "tr.ev")] == [w[0] for w in ref["top"][0]]

    # no network: every URL is a local file, nothing fetched from elsewhere, and the CSP blocks a remote image on purpose
    urls = chrome.execute_script("return [...document.querySelectorAll('[src],[href]')].map(e => e.src || e.href)")
    assert urls and all(u.startswith("file://") for u in urls), [u for u in urls if not u.startswith("file://")]
    fetched = chrome.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert [u for u in fetched if not u.startswith("file://")] == []
    scripts = chrome.execute_script("return typeof Plotly === 'object' ? [...document.scripts].map(s => s.src) : null")
    assert [u.rsplit("/", 2)[-2:] for u in scripts if u] == [["static", "plotly.min.js"], ["static", "report.js"]]
    assert [e for e in chrome.get_log("browser") if "Content Security Policy" in e.get("message", "")] == []
    blocked = chrome.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "document.addEventListener('securitypolicyviolation', e => done(e.blockedURI));"
        "const img = new Image(); img.src = 'http://127.0.0.1:9/probe.png'; document.body.appendChild(img);"
        "setTimeout(() => done(null), 3000);")
    assert blocked == "http://127.0.0.1:9/probe.png"


def test_coverage_picks_are_explained_and_earlier_rounds_are_a_layer(rounds, tmp_path, chrome):
    data = _report(rounds, tmp_path / "r", "--round", "2")
    assert {p["why"] for p in data["picks"]} == {"coreset"}
    assert [layer["kind"] for layer in data["map"]["layers"]] == ["paired", "pool", "round"] and data["map"]["layers"][2]["round"] == 1
    _open(chrome, tmp_path / "r" / "index.html")
    assert "cover the pool" in chrome.find_element("id", "reasons").text
    params = chrome.find_element("id", "params").text
    rows = [r.split(" ")[0] for r in params.splitlines()[1:]]
    flags = {p.name: p.flag for p in params_of("coreset")}  # each parameter by its own flag (batch_size: --candidate-batch)
    assert rows == [flags[name] for name in sorted(rounds["second"].selection.params)]
    legend = chrome.execute_script("return document.getElementById('map-plot').data.map(t => [t.name, t.visible])")
    assert legend[2][0].startswith("round 1 picks (hardneg)") and legend[2][1] == "legendonly"
    chrome.find_element("id", "view-cards").click()
    cards = chrome.find_elements("css selector", "#cards .card")
    assert len(cards) == 30
    for card, p in zip(cards, data["picks"]):
        head = card.find_element("css selector", ".head").text
        facts = card.find_element("css selector", ".facts").text
        assert "covers the pool" in facts and "distance to the nearest centre" in facts
        assert ("violations" in head) == (p["nv"] > 0) and ("also a hard negative" in facts) == (p["nv"] > 0)


def _download(chrome) -> dict:
    chrome.find_element("id", "download").click()
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        done = [f for f in chrome.downloads.iterdir() if f.suffix == ".json"]
        if done:
            time.sleep(0.2)
            return {"path": done[0], "doc": json.loads(done[0].read_text(encoding="utf-8"))}
        time.sleep(0.2)
    raise AssertionError(f"no download in {chrome.downloads}: {list(chrome.downloads.iterdir())}")


def test_accept_reject_download_and_the_cli_takes_the_file(rounds, tmp_path, chrome):
    s = rounds
    data = _report(s, tmp_path / "r", "--round", "2")
    ids = [p["id"] for p in data["picks"]]
    _open(chrome, tmp_path / "r" / "index.html")
    tiles = chrome.find_elements("css selector", "#grid .tile")
    for tile in tiles[:3]:
        tile.find_element("css selector", ".dec-a").click()
    for tile in tiles[3:5]:
        tile.find_element("css selector", ".dec-r").click()
    assert chrome.find_element("id", "detail").is_displayed() is False  # the buttons do not open the evidence
    _open(chrome, tmp_path / "r" / "index.html")  # kept in local storage across a reload
    assert "3 accepted, 2 rejected of 30" in chrome.find_element("id", "decision-info").text
    got = _download(chrome)
    assert got["path"].name == "round-0002-decisions.json"
    assert got["doc"] == {"round": 2, "accepted": ids[:3], "rejected": ids[3:5]}

    uri = ["--milvus-uri", s["uri"]]
    exported = tmp_path / "accepted.csv"
    res = runner.invoke(app, ["annotate", "export", "--round", "2", "--from", str(got["path"]), "--out", str(exported), *uri])
    assert res.exit_code == 0, res.output
    assert sorted(line.split(",")[1] for line in exported.read_text().splitlines()[1:]) == sorted(ids[:3])
    res = runner.invoke(app, ["round", "release", "--round", "2", "--from", str(got["path"]), *uri, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["released"] == 2
    with open_store(s["config"].store) as store:
        marks = store.get_rounds("images", ids)
    assert {i for i, r in marks.items() if r == -1} == set(ids[3:5]) and all(marks[i] == 2 for i in ids[5:])


def test_bad_decisions_files_are_one_line_and_change_nothing(rounds, tmp_path):
    s = rounds
    ids = [str(x) for x in s["second"].selection.ids]
    cases = [
        ("not json {", "not a decisions file: JSONDecodeError"),
        (json.dumps({"round": 2, "accepted": []}), 'expected {"round": N, "accepted": [ids], "rejected": [ids]}'),
        (json.dumps({"round": 1, "accepted": [], "rejected": []}), "these are the decisions of round 1, not round 2: pass --round 1"),
        (json.dumps({"round": 2, "accepted": [ids[0]], "rejected": [ids[0]]}), f"id {ids[0]!r} is both accepted and rejected"),
        (json.dumps({"round": 2, "accepted": [ids[0] + " "], "rejected": []}), f"accepted id {ids[0] + ' '!r} is not a pick of round 2"),
        (json.dumps({"round": 2, "accepted": [], "rejected": [str(s["result"].selection.ids[0])]}), "is not a pick of round 2"),
        (json.dumps({"round": 2, "accepted": [7], "rejected": []}), '"accepted" item 1 is 7, not an id'),
    ]
    with open_store(s["config"].store) as store:
        before = store.get_rounds("images", ids)
    for n, (text, message) in enumerate(cases):
        path = tmp_path / f"d{n}.json"
        path.write_text(text)
        for command in (["round", "release", "--round", "2"], ["annotate", "export", "--round", "2", "--out", str(tmp_path / "x.csv")]):
            res = runner.invoke(app, [*command, "--from", str(path), "--milvus-uri", s["uri"]])
            lines = res.stderr.strip().splitlines()
            assert res.exit_code == 1 and len(lines) == 1 and message in lines[0] and str(path) in lines[0], (command, res.stderr)
            assert not (tmp_path / "x.csv").exists()
    res = runner.invoke(app, ["round", "release", "3", "--round", "2", "--milvus-uri", s["uri"]])
    assert res.exit_code == 2 and "round 3 and --round 2 disagree" in res.stderr  # a usage error (docs/cli.md)
    with open_store(s["config"].store) as store:
        assert store.get_rounds("images", ids) == before


HOSTILE = ["<script>window.__pwned = 1</script>", '"><img src=x onerror="window.__pwned = 1">', "javascript:window.__pwned = 1", "a & b 'c'"]


def test_hostile_ids_captions_and_file_names_render_as_text(tmp_path, chrome):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hnsel import load_config
    from hnsel.data.synthetic import make_pool

    pool = make_pool(n_paired=6, n_unpaired=6, captions_per_image=1, dim=8, n_coarse=2, fine_per_coarse=2, seed=5)
    image_ids = [str(x) for x in pool.image_ids]
    unpaired = [i for i, p in enumerate(pool.image_pool) if p == "unpaired"]
    for k, i in enumerate(unpaired[:len(HOSTILE)]):
        image_ids[i] = HOSTILE[k]
    vec = pa.list_(pa.float32())
    pq.write_table(pa.table({"id": image_ids, "vector": pa.array(list(pool.image_vectors), type=vec), "pool": pool.image_pool.tolist(),
                             "uri": ["javascript:window.__pwned=1"] * len(image_ids)}), tmp_path / "images.parquet")
    pq.write_table(pa.table({"id": pool.text_ids.tolist(), "vector": pa.array(list(pool.text_vectors), type=vec), "pool": ["paired"] * len(pool.text_ids),
                             "image_id": pool.text_image_ids.tolist(), "text": ['<img src=x onerror="window.__pwned = 1">'] * len(pool.text_ids)}),
                   tmp_path / "texts.parquet")
    config = load_config().with_overrides(uri=str(tmp_path / "h.db"))
    api.ingest(config, images=tmp_path / "images.parquet", texts=tmp_path / "texts.parquet")
    selection = tmp_path / '"><img src=x onerror="window.__pwned = 1">.csv'
    api.select(config, budget=6, strategy="hardneg", record=True, out=selection)
    data = _report({"uri": config.store.uri}, tmp_path / "r", "--selection", str(selection))
    page = (tmp_path / "r" / "index.html").read_text(encoding="utf-8")
    assert "<script>window" not in page and "<img src=x" not in page and "&#34;&gt;&lt;img src=x" in page
    _open(chrome, tmp_path / "r" / "index.html")
    assert sorted(_tiles(chrome)) == sorted(p["id"] for p in data["picks"]) and set(HOSTILE) <= set(_tiles(chrome))
    assert chrome.find_element("tag name", "h1").text == f"hnsel report: {selection}"
    chrome.find_element("id", "view-cards").click()
    assert set(HOSTILE) <= {e.text for e in chrome.find_elements("css selector", "#cards .pid")}
    assert chrome.execute_script("return window.__pwned") is None
    assert chrome.execute_script("return document.querySelectorAll('img[src=\"x\"], [onerror], script:not([src]):not([type])').length") == 0
    assert chrome.execute_script("return [...document.querySelectorAll('[href]')].filter(e => e.href.startsWith('javascript')).length") == 0


def test_the_csp_allows_eval_only_for_a_webgl_map():
    """plotly's WebGL renderer needs 'unsafe-eval'; a page gets it only past WEBGL_POINTS map points, never a remote source."""
    from types import SimpleNamespace

    from hnsel.report.page import CSP, CSP_WEBGL, WEBGL_POINTS, render_page
    from hnsel.report.picks import Picks

    def page(n: int) -> str:
        picks = Picks([f"i{k}" for k in range(n)], [0.5] * n, [1] * n, ["score"] * n, "image", "round 1", 1, {"strategy": "hardneg", "params": {}})
        layers = [{"kind": "paired", "name": "paired", "ids": ["p0"], "total": 1, "x": [0.0], "y": [0.0]},
                  {"kind": "pool", "name": "pool", "ids": [], "total": 0, "x": [], "y": []}]
        g = {"counts": {"images": {"paired": 1, "unpaired": n}, "texts": {"paired": 1, "unpaired": 0}}, "k": 1, "rounds": [],
             "evidence": SimpleNamespace(anchors_seen=1), "map": {"layers": layers, "counts": {"picks": n, "fitted_picks": n}, "describe": "PCA"}}
        return render_page(picks, g, {"picks": []}, None)

    assert "'unsafe-eval'" in CSP_WEBGL and "'unsafe-eval'" not in CSP and CSP_WEBGL.replace(" 'unsafe-eval'", "") == CSP
    strict, webgl = page(WEBGL_POINTS - 1), page(WEBGL_POINTS)  # one paired point besides the picks
    assert f'content="{CSP}"'.replace("'", "&#39;") in strict and '"webgl":false' in strict
    assert f'content="{CSP_WEBGL}"'.replace("'", "&#39;") in webgl and '"webgl":true' in webgl
    for text in (CSP, CSP_WEBGL):
        sources = " ".join(part for part in text.split(";"))
        assert "http" not in sources and "*" not in sources and "'unsafe-inline'" not in text.split("script-src")[1].split(";")[0]
