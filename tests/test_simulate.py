"""``hnsel simulate``: a tiny two-strategy, two-round simulation through the API and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _embed_helpers import write_tiny_config
from hnsel.cli import app
from hnsel.config import HnselConfig
from hnsel.data.scenes import generate_scenes
from hnsel.errors import ConfigError, SelectionError
from hnsel.workflows.simulate import TIME_KEYS, parse_strategy, simulate

ROUNDS, BUDGET = 2, 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("sim")
    generate_scenes(base / "scenes", n=50, seed=0, image_size=64, captions=2, per_category=5, val=0.0, test=0.2)
    return base, str(base / "scenes" / "dataset_scenes.json"), str(write_tiny_config(base))


def _run(setup, out: str, **changes):
    base, source, model = setup
    kwargs = dict(out=base / out, strategies=["hardneg", "random"], seeds=[3], init=0.25, rounds=ROUNDS, budget=BUDGET,
                  model_name=model, pretrained="none", epochs=1, batch_size=8, cache_dir=base / "cache", device="cpu") | changes
    return simulate(HnselConfig(), source, **kwargs)


def _without_times(doc: dict) -> list[dict]:
    return [dict(run, rounds=[{k: v for k, v in e.items() if k not in TIME_KEYS} for e in run["rounds"]]) for run in doc["runs"]]


@pytest.fixture(scope="module")
def first(setup):
    report = _run(setup, "a")
    return report, json.loads(Path(report.results).read_text())


def test_results_schema_budget_growth_and_no_repeated_pick(first):
    report, doc = first
    assert doc["settings"]["pool"] == 40 and doc["settings"]["test"] == 10 and doc["settings"]["n_init"] == 10
    assert {(r["strategy"], r["seed"]) for r in doc["runs"]} == {("hardneg", 3), ("random", 3)}
    for run in doc["runs"]:
        assert [e["round"] for e in run["rounds"]] == list(range(ROUNDS + 1))
        assert [e["paired"] for e in run["rounds"]] == [10 + BUDGET * r for r in range(ROUNDS + 1)]
        seen = list(run["init_ids"])
        for e in run["rounds"]:
            assert set(e["metrics"]) == {"i2t", "t2i", "rsum"} and set(e["metrics"]["i2t"]) == {"r1", "r5", "r10"}
            assert all(e[k] >= 0 for k in TIME_KEYS)
            assert len(e["picks"]) == (BUDGET if e["round"] < ROUNDS else 0)
            seen += e["picks"]
        assert len(seen) == len(set(seen)) == 10 + BUDGET * ROUNDS
    # every strategy starts from the same paired set and the same round-0 model
    a, b = doc["runs"]
    assert a["init_ids"] == b["init_ids"] and a["rounds"][0]["metrics"] == b["rounds"][0]["metrics"]
    assert Path(report.table).read_text().count("| hardneg |") == 1
    assert Path(report.plot).stat().st_size > 0


def test_same_seed_reproduces_and_an_interrupted_run_resumes(setup, first):
    _, doc = first
    again = _run(setup, "b")
    assert _without_times(json.loads(Path(again.results).read_text())) == _without_times(doc)
    # interrupt: drop the last finished round of the hardneg run, then run again into the same folder
    path = Path(again.results)
    cut = json.loads(path.read_text())
    cut["runs"][0]["rounds"].pop()
    path.write_text(json.dumps(cut))
    resumed = _run(setup, "b")
    assert resumed.resumed_rounds == 2 * (ROUNDS + 1) - 1
    assert _without_times(json.loads(path.read_text())) == _without_times(doc)


def test_other_seed_differs_and_changed_settings_are_refused(setup, first):
    _, doc = first
    other = json.loads(Path(_run(setup, "c", strategies=["random"], seeds=[4], rounds=1).results).read_text())
    assert other["runs"][0]["init_ids"] != doc["runs"][0]["init_ids"]
    with pytest.raises(ConfigError, match="other settings .*budget"):
        _run(setup, "a", budget=BUDGET + 1)
    with pytest.raises(ConfigError, match="exceeds the 40 pool images"):
        _run(setup, "d", budget=20)


def test_strategy_specs_parse_and_bad_ones_fail_before_work():
    spec = parse_strategy("hardneg:k=5,weight=count")
    assert (spec.name, spec.params) == ("hardneg", {"k": 5, "weight": "count"})
    with pytest.raises(SelectionError, match="unknown strategy"):
        parse_strategy("nosuch")
    with pytest.raises(ConfigError, match="key=value"):
        parse_strategy("hardneg:k")


def test_cli_resumes_with_json_and_refuses_a_bad_strategy_in_one_line(setup, first):
    base, source, model = setup
    common = [source, "--out", str(base / "a"), "--seeds", "3", "--init", "0.25", "--rounds", str(ROUNDS), "--budget", str(BUDGET),
              "--model-name", model, "--epochs", "1", "--train-batch", "8", "--cache-dir", str(base / "cache"), "--device", "cpu"]
    result = CliRunner().invoke(app, ["simulate", *common, "--strategies", "hardneg random", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["resumed_rounds"] == 2 * (ROUNDS + 1)
    assert [r["rsum"] for r in summary["final"]] == [r["rounds"][-1]["metrics"]["rsum"] for r in first[1]["runs"]]
    bad = CliRunner().invoke(app, ["simulate", *common, "--strategies", "hardneg:depth", "--json"])
    assert bad.exit_code == 1 and "key=value" in bad.output and len(bad.output.strip().splitlines()) == 1


def test_markdown_table_percent_of_full_supervision():
    from hnsel.workflows.simulate import markdown_table

    summary = {"random": [{"paired": 10, "rsum_mean": 50.0, "rsum_std": 1.0, "select_seconds": 0.5, "train_seconds": 1.0},
                          {"paired": 20, "rsum_mean": 80.0, "rsum_std": 2.0, "select_seconds": 0.0, "train_seconds": 1.0}]}
    text = markdown_table({"test": 5, "pool": 100, "budget": 10}, summary, ceiling=200.0)
    assert "| random | 50.0 ± 1.0 | 80.0 ± 2.0 | 0.5 | 1.0 |" in text
    assert "R-sum 200.0" in text and "| random | 25.0 % | 40.0 % |" in text
    assert "Percent of full supervision" not in markdown_table({"test": 5, "pool": 100, "budget": 10}, summary)
