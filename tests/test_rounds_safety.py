"""Rounds and imports that cannot be lost, doubled or shared: concurrent selects on one server namespace, and
processes killed (SIGKILL) at each point of recording a round or importing annotations, then repaired.

The kills run on Milvus Lite (a kill there is the same as on a server: what was written stays, the rest is not);
what a second process sees on a server is covered by the concurrent tests, which read the same records Strong.
"""

import json
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from typer.testing import CliRunner

from hnsel import api
from hnsel.cli import app
from hnsel.config import HnselConfig, StoreConfig
from hnsel.store.leases import claim_number
from hnsel.store import open_store
from hnsel.data.synthetic import make_pool, write_pool
from hnsel.workflows.rounds import round_picks

runner = CliRunner()


@pytest.fixture(scope="module")
def pool_files(tmp_path_factory):
    pool = make_pool(n_paired=10, n_unpaired=60, captions_per_image=2, dim=8, n_coarse=2, fine_per_coarse=3, seed=5)
    return write_pool(pool, tmp_path_factory.mktemp("pool"))


def loaded(uri, namespace, pool_files):
    config = HnselConfig(store=StoreConfig(uri=uri, namespace=namespace))
    api.ingest(config, images=pool_files[0], texts=pool_files[1])
    return config


def flags(config):
    return ["--milvus-uri", config.store.uri, "--namespace", config.store.namespace]


def marks(config):
    """round -> ids carrying it, and the paired texts' (id, image_id) pairs."""
    with open_store(config.store) as store:
        out: dict[int, set] = {}
        for batch in store.iter_rows("images", "", ("id", "round")):
            for r in batch:
                out.setdefault(r["round"], set()).add(r["id"])
        texts = sorted((r["id"], r["image_id"]) for b in store.iter_rows("texts", store.pool_filter("texts", "paired"), ("id", "image_id")) for r in b)
        return out, texts


# --- two processes at once ------------------------------------------------------------------------
# `hnsel select --budget 20 --strategy S --seed N --json`, through the workflow the command calls (hnsel.cli imports
# torch: 3 s more per process)
SELECT = textwrap.dedent("""
    import json, sys
    from hnsel.config import HnselConfig, StoreConfig
    from hnsel.workflows.select import select

    uri, namespace, strategy, seed = sys.argv[1:5]
    result = select(HnselConfig(store=StoreConfig(uri=uri, namespace=namespace)), budget=20, strategy=strategy, seed=int(seed), record=True)
    print(json.dumps(result.summary(), default=str))
""")

@pytest.mark.server
def test_claims_never_share_a_number(milvus_server, namespace):
    """Four threads, each with its own connection, claim at once: four distinct numbers, every record intact."""
    config = StoreConfig(uri=milvus_server, namespace=namespace)
    with open_store(config) as store:
        store.set_meta("created", True)  # the meta collection, created once before the race
    won, start = [], threading.Barrier(4)

    def claim(worker: int) -> None:
        with open_store(config) as store:
            def highest() -> int:
                return max([int(k.split("/")[1]) for k in store.meta_keys("slot/", strong=True)], default=0) + 1

            start.wait()
            won.append(claim_number(store, highest, lambda n: f"slot/{n:04d}", lambda n: store.set_meta(f"slot/{n:04d}", {"worker": worker})))

    threads = [threading.Thread(target=claim, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(won) == list(range(1, 5))
    with open_store(config) as store:
        workers = [store.get_meta(f"slot/{n:04d}", strong=True)["worker"] for n in range(1, 5)]
        assert sorted(workers) == list(range(4)) and store.meta_keys("claim/", strong=True) == []


@pytest.mark.server
def test_two_selects_at_once_get_distinct_rounds_and_disjoint_picks(milvus_server, namespace, pool_files):
    config = loaded(milvus_server, namespace, pool_files)
    procs = [subprocess.Popen([sys.executable, "-c", SELECT, config.store.uri, config.store.namespace, strategy, str(seed)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed, strategy in ((1, "random"), (2, "coreset"))]
    results = [p.communicate(timeout=900) for p in procs]  # generous: two processes on busy cores
    assert [p.returncode for p in procs] == [0, 0], [r[1] for r in results]
    summaries = [json.loads(out) for out, _ in results]
    assert sorted(s["round"] for s in summaries) == [1, 2]
    picks = {s["round"]: {p["id"] for p in s["picks"]} for s in summaries}
    assert len(picks[1]) == len(picks[2]) == 20 and not picks[1] & picks[2]
    held, _ = marks(config)
    assert held[1] == picks[1] and held[2] == picks[2]  # each round's rows carry exactly its picks
    for s in summaries:
        log = api.show_round(config, s["round"])
        assert log["state"] == "recorded" and log["strategy"] == s["strategy"] and log["size"] == 20 and log["pending"] == 20
        with open_store(config.store) as store:
            assert round_picks(store, s["round"])["ids"] == [p["id"] for p in s["picks"]]


# --- killed at each point, then repaired ------------------------------------------------------------
CHILD = textwrap.dedent("""
    import os, signal, sys
    from hnsel.config import HnselConfig, StoreConfig
    from hnsel.workflows.annotate import import_annotations  # not hnsel.api: that imports torch, 2.5 s per child
    from hnsel.store.milvus import Store
    import hnsel.workflows.select as workflows_select

    uri, namespace, point, path = sys.argv[1:5]
    config = HnselConfig(store=StoreConfig(uri=uri, namespace=namespace))
    set_round, upsert, build_problem = Store.set_round, Store.upsert, workflows_select.build_problem

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if point == "select-selecting":  # the round is reserved, the strategy is running
        workflows_select.build_problem = lambda *a, **k: die()
    if point == "select-marking":  # half of the picks marked
        Store.set_round = lambda self, kind, ids, number: (set_round(self, kind, ids[:len(ids) // 2], number), die())
    if point == "import-between":  # captions written, their images not yet paired
        Store.upsert = lambda self, kind, data: die() if kind == "images" else upsert(self, kind, data)
    if point == "import-captions":  # half of the captions written
        Store.upsert = lambda self, kind, data: (upsert(self, kind, {k: list(v)[:len(v) // 2] for k, v in data.items()}), die())
    if point.startswith("select"):
        workflows_select.select(config, budget=10, strategy="random", seed=1, record=True)
    else:
        import_annotations(config, path)
    print("not killed")
""")


def killed_at(config, point, path=""):
    if config.store.is_lite:  # this process's embedded Lite server holds the file until released
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(config.store.uri)
    res = subprocess.run([sys.executable, "-c", CHILD, config.store.uri, config.store.namespace, point, str(path)], capture_output=True, text=True)
    assert res.returncode == -9, res.stdout + res.stderr


def cli(*args):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.stdout


def test_killed_select_and_import_are_listed_then_repaired(lite_uri, namespace, pool_files, tmp_path):
    """Killed with half its picks marked, then killed between an import's captions and its images: each is listed as
    stopped, ``hnsel round repair`` finishes it, and nothing is lost or doubled."""
    config = loaded(lite_uri, namespace, pool_files)
    killed_at(config, "select-marking")
    listed = cli("round", "list", *flags(config))
    assert "round 1 is recording by process" in listed and "stopped: run `hnsel round repair`" in listed
    assert "finished (5 of its 10 picks marked now)" in cli("round", "repair", *flags(config))
    held, texts_before = marks(config)
    with open_store(config.store) as store:
        kept = round_picks(store, 1)["ids"]
    assert len(set(kept)) == 10 and held[1] == set(kept)
    assert api.show_round(config, 1)["state"] == "recorded"

    path, picked = annotated(config, tmp_path)  # round 2, disjoint from round 1
    assert not picked & held[1]
    killed_at(config, "import-between", path)
    assert f"import of {path}" in cli("status", *flags(config))
    assert "finished (3 captions and 3 images paired)" in cli("round", "repair", *flags(config))
    assert "nothing to repair" in cli("round", "repair", *flags(config))
    _, texts = marks(config)
    assert len(texts) == len(texts_before) + 3 and {i for _, i in texts} >= picked
    with open_store(config.store) as store:
        assert {r["pool"] for r in store.get("images", sorted(picked), ["id", "pool"])} == {"paired"}
    again = json.loads(cli("annotate", "import", *flags(config), path, "--json"))
    assert (again["texts_written"], again["images_paired"], again["texts_unchanged"]) == (0, 0, 3)  # nothing doubled


def test_select_killed_while_selecting_is_rolled_back_by_the_next_select(lite_uri, namespace, pool_files):
    config = loaded(lite_uri, namespace, pool_files)
    killed_at(config, "select-selecting")
    assert "round 1 is reserved by process" in cli("status", *flags(config))
    summary = json.loads(cli("select", *flags(config), "--budget", 5, "--strategy", "random", "--json"))
    assert summary["round"] == 1 and "rolled back (0 marked samples returned to the pool)" in summary["repaired"][0]
    held, _ = marks(config)
    assert held[1] == {p["id"] for p in summary["picks"]} and len(held[1]) == 5


def annotated(config, tmp_path, n=3):
    picked = api.select(config, budget=n, strategy="random", seed=4, record=True).selection.ids
    path = tmp_path / "captions.csv"
    rows = [f'{i},"a caption of {i}","{json.dumps(np.random.default_rng(k).normal(size=8).tolist())}"' for k, i in enumerate(picked)]
    path.write_text("image_id,caption,vector\n" + "\n".join(rows) + "\n")
    return path, set(picked)


def test_import_killed_while_writing_captions_is_rolled_back_by_the_next_import(lite_uri, namespace, pool_files, tmp_path):
    config = loaded(lite_uri, namespace, pool_files)
    path, picked = annotated(config, tmp_path)
    _, texts_before = marks(config)
    killed_at(config, "import-captions", path)
    report = api.import_annotations(config, path)
    assert "rolled back (1 of its 3 captions removed)" in report.repaired[0]
    assert (report.texts_written, report.images_paired) == (3, 3)
    _, texts = marks(config)
    assert len(texts) == len(texts_before) + 3
    with open_store(config.store) as store:
        assert store.meta_keys("import/") == []
