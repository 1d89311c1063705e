"""``hnsel report``: evidence recomputed exactly, thumbnails made once, bad input refused, and the page checked in
a real headless Chromium (Debian's chromium + chromium-driver, installed by `make setup`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from hnsel import api, load_config
from hnsel.cli import app
from hnsel.report import thumbs as thumbs_module
from hnsel.report.evidence import hardneg_evidence, nearest_paired, paired_state
from hnsel.store import open_store
from hnsel.strategies import AnchorChunk, ExactIndex
from hnsel.strategies.thresholds import PairedSide, full_threshold_setters, kth_threshold
from hnsel.data.synthetic import make_pool

runner = CliRunner()
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
N_PAIRED, N_UNPAIRED, BUDGET = 15, 180, 130


def make_store(base: Path, uri: str, namespace: str = "hnsel", budget: int = BUDGET) -> dict:
    """A synthetic pool with a real PNG per image (one missing, one corrupt), a hardneg round recorded, its CSV."""
    pool = make_pool(n_paired=N_PAIRED, n_unpaired=N_UNPAIRED, captions_per_image=2, dim=16, n_coarse=2, fine_per_coarse=3, seed=1)
    (base / "img").mkdir(parents=True, exist_ok=True)
    uris = []
    for i, image_id in enumerate(pool.image_ids):
        rgb = np.random.default_rng(i).integers(0, 255, size=3)
        path = base / "img" / f"{image_id}.png"
        Image.new("RGB", (64, 48), tuple(int(c) for c in rgb)).save(path)
        uris.append(str(path))
    uris[N_PAIRED + 1] = str(base / "img" / "missing.png")
    (base / "img" / "corrupt.png").write_bytes(b"not a png")
    uris[N_PAIRED + 2] = str(base / "img" / "corrupt.png")
    vec = pa.list_(pa.float32())
    pq.write_table(pa.table({"id": pool.image_ids.tolist(), "vector": pa.array(list(pool.image_vectors), type=vec),
                             "pool": pool.image_pool.tolist(), "uri": uris}), base / "images.parquet")
    pq.write_table(pa.table({"id": pool.text_ids.tolist(), "vector": pa.array(list(pool.text_vectors), type=vec), "pool": ["paired"] * len(pool.text_ids),
                             "image_id": pool.text_image_ids.tolist(), "text": [f"caption <{t}> & co" for t in pool.text_ids]}), base / "texts.parquet")
    config = load_config().with_overrides(uri=uri, namespace=namespace)
    api.ingest(config, images=base / "images.parquet", texts=base / "texts.parquet")
    result = api.select(config, budget=budget, strategy="hardneg", record=True, out=base / "selection.csv")
    return {"config": config, "pool": pool, "result": result, "uri": uri, "base": base}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("report-store")
    return make_store(base, str(base / "hnsel.db"))


def dense_reference(pool, pick_ids: list[str], top: int = 3) -> dict:
    """Violations, surplus and top-``top`` (caption, sim, xi, setter image) per pick, by dense numpy algebra."""
    paired = pool.image_pool == "paired"
    p_ids, p_vecs = pool.image_ids[paired], pool.image_vectors[paired]
    row = {x: i for i, x in enumerate(pool.image_ids)}
    picks = pool.image_vectors[[row[x] for x in pick_ids]]
    t_sims = pool.text_vectors @ p_vecs.T
    own = pool.text_image_ids[:, None] == p_ids[None, :]
    xi = np.where(own, -np.inf, t_sims).max(axis=1)
    setter = p_ids[np.where(own, -np.inf, t_sims).argmax(axis=1)]
    sims = (picks @ pool.text_vectors.T).astype(np.float64)
    viol = sims > xi[None, :]
    out = {"violations": viol.sum(1), "surplus": np.where(viol, sims - xi, 0).sum(1), "top": []}
    for r in range(len(pick_ids)):
        order = [j for j in np.argsort(-(sims[r] - xi)) if viol[r, j]][:top]
        out["top"].append([(pool.text_ids[j], sims[r, j], xi[j], setter[j]) for j in order])
    return out


def test_threshold_setters_are_the_negatives_at_the_threshold():
    rng = np.random.default_rng(0)
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    paired_ids = np.array([f"p{i}" for i in range(6)], dtype=object)
    paired = unit(rng.normal(size=(6, 8)))
    anchors = unit(rng.normal(size=(5, 8)))
    positives = (frozenset({"p0"}), frozenset({"p1", "p2"}), frozenset(), frozenset({"p0", "p1", "p2", "p3", "p4"}), frozenset(set(paired_ids)))
    chunk = AnchorChunk(np.array([f"a{i}" for i in range(5)], dtype=object), anchors, positives)
    side = PairedSide(paired_ids, paired)
    index = ExactIndex({"paired": (paired_ids, paired), "candidates": (paired_ids[:0], paired[:0])})
    for k in (1, 2, 3):
        xi, setters = side.threshold_setters(chunk, k)
        np.testing.assert_array_equal(xi, side.thresholds(chunk, k))
        xi_s, setters_s = full_threshold_setters(chunk, index, k)
        for j in range(5):
            negatives = [i for i in range(6) if paired_ids[i] not in positives[j]]
            expected = kth_threshold(anchors[j] @ paired[negatives].T, k)
            if not negatives:
                assert np.isnan(xi[j]) and setters[j] is None and setters_s[j] is None
                continue
            assert xi[j] == pytest.approx(expected, abs=1e-6) and xi_s[j] == pytest.approx(expected, abs=1e-6)
            for s in (setters[j], setters_s[j]):
                assert s not in positives[j]
                assert float(anchors[j] @ paired[list(paired_ids).index(s)]) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("paired_mb", [1024, 0], ids=["in-memory", "milvus-search"])
def test_evidence_matches_the_dense_reference(store_uri, namespace, tmp_path, paired_mb):
    s = make_store(tmp_path, store_uri, namespace, budget=40)
    ids = [str(x) for x in s["result"].selection.ids]
    ref = dense_reference(s["pool"], ids)
    with open_store(s["config"].store) as st:
        state = paired_state(st, "image", ids, 1, paired_mb)
        assert (state.paired is None) == (paired_mb == 0)
        vectors = np.asarray([r["vector"] for r in st.get("images", ids, ["id", "vector"])], dtype=np.float32)
        order = {r["id"]: i for i, r in enumerate(st.get("images", ids, ["id"]))}
        vectors = vectors[[order[x] for x in ids]]
        ev = hardneg_evidence(state, vectors, k=1, top=3, chunk_size=7)
        near = nearest_paired(state, vectors)
    np.testing.assert_array_equal(ev.violations, ref["violations"])
    np.testing.assert_allclose(ev.surplus, ref["surplus"], atol=1e-5)
    np.testing.assert_allclose(ev.surplus[:5], s["result"].selection.scores[:5], atol=1e-5)  # the selection's own Surplus scores
    assert ev.anchors_seen == 2 * N_PAIRED
    for got, want in zip(ev.anchors, ref["top"]):
        assert [e["anchor"] for e in got] == [w[0] for w in want]
        assert [e["setter"] for e in got] == [w[3] for w in want]
        np.testing.assert_allclose([e["sim"] for e in got], [w[1] for w in want], atol=1e-5)
        np.testing.assert_allclose([e["xi"] for e in got], [w[2] for w in want], atol=1e-5)
        assert all(e["positive"] == e["anchor"].rsplit("_c", 1)[0] for e in got)
    pool = s["pool"]
    paired = pool.image_pool == "paired"
    sims = vectors @ pool.image_vectors[paired].T
    assert [n[0] for n in near] == list(pool.image_ids[paired][sims.argmax(1)])
    np.testing.assert_allclose([n[1] for n in near], 1 - sims.max(1), atol=1e-5)
    if paired_mb:  # the whole report on this backend too (Lite file or server)
        calls = []
        done = api.report(s["config"], out=tmp_path / "r", on_progress=lambda *a: calls.append(a), layout="pca")
        assert done.picks == 40 and done.source == "round 1" and (tmp_path / "r" / "index.html").is_file()
        assert ("evidence: paired anchors", 2 * N_PAIRED, 2 * N_PAIRED) in calls and calls[-1][0] == "thumbnails"


def _browser():
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        why = "Debian's chromium and chromium-driver are not installed (`make setup` installs them)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {why}", pytrace=False)
        pytest.skip(why)
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1300,1800"):
        options.add_argument(flag)
    return webdriver, options, Service(CHROMEDRIVER)


def test_report_bad_input_is_one_line_and_writes_nothing(store, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    cases = [
        (["--round", "99"], "round 99 is not in the round log"),
        (["--selection", str(tmp_path / "nope.csv")], "no such selection file"),
        (["--out", str(blocker / "report")], "does not exist"),
        (["--out", str(blocker)], "--out must be a folder"),
        (["--round", "1", "--selection", str(store["base"] / "selection.csv")], "not both"),
        (["--simulation", str(tmp_path)], "no results.json"),
        (["--layout", "tsne"], "--layout 'tsne': use one of auto, umap, pca"),
    ]
    for args, message in cases:
        before = sorted(p.name for p in tmp_path.iterdir())
        full = ["report", "--milvus-uri", store["uri"], *(["--out", str(tmp_path / "report")] if "--out" not in args else []), *args]
        res = runner.invoke(app, full)
        assert res.exit_code == 1, (args, res.output)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, res.stderr)
        assert sorted(p.name for p in tmp_path.iterdir()) == before, args
    res = runner.invoke(app, ["report", "--milvus-uri", str(tmp_path / "none.db"), "--out", str(tmp_path / "report")])
    assert res.exit_code == 1 and "no Milvus Lite store" in res.stderr and not (tmp_path / "none.db").exists()


def test_report_into_an_unwritable_folder_is_one_line(store, tmp_path, monkeypatch):
    import hnsel.report.build as build

    def denied(**kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(build.tempfile, "mkdtemp", denied)  # root ignores file modes, so refuse the way the OS would
    res = runner.invoke(app, ["report", "--milvus-uri", store["uri"], "--out", str(tmp_path / "report")])
    assert res.exit_code == 1 and res.stderr.strip().count("\n") == 0
    assert f"cannot write into {tmp_path}: Permission denied" in res.stderr and list(tmp_path.iterdir()) == []


def test_selection_file_report_finds_its_round_reuses_thumbnails_and_leaves_the_store(store, tmp_path, monkeypatch):
    before = api.status(store["config"], rounds=True)
    out = tmp_path / "r"
    res = runner.invoke(app, ["report", "--milvus-uri", store["uri"], "--selection", str(store["base"] / "selection.csv"), "--out", str(out), "--json",
                              "--layout", "pca"])
    assert res.exit_code == 0, res.output
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "strategy: <b>hardneg</b>" in page and "matches no recorded round" not in page  # the file's ids hash to round 1
    made = sorted(p.name for p in (out / "thumbs").iterdir())
    assert len(made) == json.loads(res.stdout)["thumbnails"] > 0

    def refuse(uri):
        raise AssertionError(f"decoded {uri} again")

    monkeypatch.setattr(thumbs_module, "open_image", refuse)
    (out / "stale.txt").write_text("left by the old report")  # an entry its marker lists: the report's own, so replaced
    marker = json.loads((out / ".hnsel-report").read_text())
    (out / ".hnsel-report").write_text(json.dumps(dict(marker, entries=marker["entries"] + ["stale.txt"])))
    res = runner.invoke(app, ["report", "--milvus-uri", store["uri"], "--round", "1", "--out", str(out), "--json", "--layout", "pca"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (out / "thumbs").iterdir()) == made  # copied from the previous report, none decoded
    assert not (out / "stale.txt").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert api.status(store["config"], rounds=True) == before


def test_remote_uris_simulation_curves_and_unmatched_files(store, tmp_path):
    fsspec = pytest.importorskip("fsspec")
    image = tmp_path / "remote.png"
    Image.new("RGB", (30, 20), (200, 10, 10)).save(image)
    with fsspec.open("memory://hnsel-report/remote.png", "wb") as fh:
        fh.write(image.read_bytes())
    made = thumbs_module.make_thumbnails({"a": "memory://hnsel-report/remote.png", "b": "memory://hnsel-report/gone.png"}, tmp_path / "t")
    assert "src" in made["a"] and (tmp_path / "t" / made["a"]["src"]).is_file() and "missing" in made["b"]["error"]

    results = {"settings": {"pool": 100, "budget": 10, "rounds": 1}, "runs": [
        {"strategy": label, "seed": seed, "rounds": [
            {"round": n, "paired": 10 + 10 * n, "metrics": {"rsum": 100 + n * (5 if label == "auto" else 3) + seed, "i2t": {"r1": 1}, "t2i": {"r1": 1}},
             "select_seconds": 0.1, "train_seconds": 1.0} for n in range(2)]}
        for label in ("auto", "random") for seed in (0, 1)]}
    (tmp_path / "sim").mkdir()
    (tmp_path / "sim" / "results.json").write_text(json.dumps(results))
    picked = tmp_path / "picked.jsonl"
    picked.write_text("".join(json.dumps({"id": x}) + "\n" for x in ("img016", "img017", "img020")))
    out = tmp_path / "r"
    res = runner.invoke(app, ["report", "--milvus-uri", store["uri"], "--selection", str(picked), "--simulation", str(tmp_path / "sim"),
                              "--out", str(out), "--map-points", "10", "--layout", "pca"])
    assert res.exit_code == 0, res.output
    page = (out / "index.html").read_text(encoding="utf-8")
    assert f"Seeded samples shown: paired 10 of {N_PAIRED}; pool 10 of {N_UNPAIRED - 3}; picks 3 of 3 (3 in the fitted sample" in page
    assert "PCA fitted on 23 sampled points; trustworthiness" in page
    assert "matches no recorded round" in page and "matches no recorded round" in res.stdout
    data = json.loads(page.split('<script type="application/json" id="report-data">')[1].split("</script>")[0])
    assert [p["id"] for p in data["picks"]] == ["img016", "img017", "img020"] and all(p["why"] == "unknown" for p in data["picks"])
    assert data["img"]["img016"]["error"] == "missing file"
    assert sorted(data["sim"]["curves"]) == ["auto", "random"] and [r["paired"] for r in data["sim"]["curves"]["auto"]] == [10, 20]
    assert all(len(p["xy"]) == 2 for p in data["picks"])


def test_text_modality_report_mirrors_the_evidence(tmp_path):
    pool = make_pool(n_paired=10, n_unpaired=5, captions_per_image=2, dim=16, n_coarse=2, fine_per_coarse=2, seed=3)
    rng = np.random.default_rng(4)
    extra = pool.text_vectors[rng.integers(0, len(pool.text_ids), 25)] + 0.4 * rng.normal(size=(25, 16))
    extra = (extra / np.linalg.norm(extra, axis=1, keepdims=True)).astype(np.float32)
    extra_ids = [f"u{i:02d}" for i in range(25)]
    vec = pa.list_(pa.float32())
    pq.write_table(pa.table({"id": pool.image_ids.tolist(), "vector": pa.array(list(pool.image_vectors), type=vec), "pool": pool.image_pool.tolist()}),
                   tmp_path / "images.parquet")
    pq.write_table(pa.table({"id": pool.text_ids.tolist() + extra_ids, "vector": pa.array(list(pool.text_vectors) + list(extra), type=vec),
                             "pool": ["paired"] * len(pool.text_ids) + ["unpaired"] * 25,
                             "image_id": pool.text_image_ids.tolist() + [""] * 25,
                             "text": [f"text of {t}" for t in list(pool.text_ids) + extra_ids]}), tmp_path / "texts.parquet")
    config = load_config().with_overrides(uri=str(tmp_path / "h.db"))
    api.ingest(config, images=tmp_path / "images.parquet", texts=tmp_path / "texts.parquet")
    result = api.select(config, budget=6, strategy="hardneg", modality="text", record=True)
    out = tmp_path / "r"
    res = runner.invoke(app, ["report", "--milvus-uri", config.store.uri, "--out", str(out), "--evidence", "2", "--layout", "pca"])
    assert res.exit_code == 0, res.output
    page = (out / "index.html").read_text(encoding="utf-8")
    data = json.loads(page.split('<script type="application/json" id="report-data">')[1].split("</script>")[0])
    assert data["modality"] == "text" and [p["id"] for p in data["picks"]] == list(result.selection.ids)

    paired = pool.image_pool == "paired"
    p_ids, p_vecs = pool.image_ids[paired], pool.image_vectors[paired]
    own = pool.text_image_ids[None, :] == p_ids[:, None]  # anchors (paired images) x paired captions
    neg = np.where(own, -np.inf, p_vecs @ pool.text_vectors.T)
    xi, setter = neg.max(axis=1), pool.text_ids[neg.argmax(axis=1)]
    for p in data["picks"]:
        sims = (extra[extra_ids.index(p["id"])] @ p_vecs.T).astype(np.float64)
        viol = np.flatnonzero(sims > xi)
        assert p["nv"] == len(viol) and p["v"] == len(viol)
        best = viol[np.argsort(-(sims[viol] - xi[viol]))][:2]
        assert [e[0] for e in p["ev"]] == list(p_ids[best]) and [e[3] for e in p["ev"]] == list(setter[best])
        np.testing.assert_allclose([e[1] for e in p["ev"]], sims[best], atol=1e-5)
        assert data["txt"][p["id"]] == f"text of {p['id']}"
        assert all(data["txt"][e[3]] == f"text of {e[3]}" for e in p["ev"])
        assert all(data["img"][e[0]] == {"error": "no uri stored for this image"} for e in p["ev"])


def test_evidence_of_an_annotated_round_is_the_one_its_selection_saw(tmp_path):
    """Annotating a round makes its picks paired and adds their captions; the report of that round leaves them out."""
    s = make_store(tmp_path, str(tmp_path / "h.db"), budget=8)

    def evidence() -> list:
        out = tmp_path / "r"
        res = runner.invoke(app, ["report", "--milvus-uri", s["uri"], "--round", "1", "--out", str(out), "--layout", "pca"])
        assert res.exit_code == 0, res.output
        page = (out / "index.html").read_text(encoding="utf-8")
        data = json.loads(page.split('<script type="application/json" id="report-data">')[1].split("</script>")[0])
        return [(p["id"], p["nv"], p["ev"], p.get("near")) for p in data["picks"]], [p["st"] for p in data["picks"]]

    before, states = evidence()
    assert set(states) == {"pending"} and any(nv for _, nv, _, _ in before)
    with open_store(s["config"].store) as st:
        rows = {r["id"]: r["vector"] for r in st.get("images", [b[0] for b in before], ["id", "vector"])}
    annotations = tmp_path / "annotations.jsonl"
    annotations.write_text("".join(json.dumps({"image_id": i, "caption": f"new caption of {i}", "vector": rows[i]}) + "\n" for i in rows))
    api.import_annotations(s["config"], annotations)
    assert api.status(s["config"])["images"]["paired"] == N_PAIRED + 8
    after, states = evidence()
    assert set(states) == {"annotated"}
    assert after == before


def test_a_round_recorded_without_its_picks_is_listed_in_id_order(tmp_path):
    s = make_store(tmp_path, str(tmp_path / "h.db"), budget=5)
    with open_store(s["config"].store) as st:
        st.client.delete(st.name("meta"), ids=["picks/0001/00000"])  # as a round recorded before hnsel kept its picks
    res = runner.invoke(app, ["report", "--milvus-uri", s["uri"], "--out", str(tmp_path / "r"), "--layout", "pca"])
    assert res.exit_code == 0, res.output
    assert "was recorded before hnsel kept each pick's rank, score and reason" in res.stdout
    page = (tmp_path / "r" / "index.html").read_text(encoding="utf-8")
    data = json.loads(page.split('<script type="application/json" id="report-data">')[1].split("</script>")[0])
    assert [p["id"] for p in data["picks"]] == sorted(str(x) for x in s["result"].selection.ids)
    assert {p["why"] for p in data["picks"]} == {"unknown"} and all(p["s"] is None and "ev" in p for p in data["picks"])
