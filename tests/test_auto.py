"""auto: the regime it measures on tiny layouts, the split it plans, and its decision through Milvus Lite and the CLI."""

import numpy as np
import pytest
from conftest import exact_problem, unit
from typer.testing import CliRunner

from hnsel import api
from hnsel.cli import app
from hnsel.config import HnselConfig, StoreConfig
from hnsel.errors import SelectionError
from hnsel.strategies import get_strategy
from hnsel.strategies.auto import concentration, coverage_gap, coverage_picks, plan_split, spread_floor
from hnsel.data.synthetic import make_pool, write_pool

REASONS = {"coverage", "hardneg", "random", "fill"}


def problem_from(cand, paired, txt, owner):
    return exact_problem(cand, paired, txt, owner, max_limit=64)


def layout(covered, seed=0, d=16, n_groups=8, per_group=10, paired_per_group=4):
    """Tight groups of candidates. covered: every group also holds paired images with captions (finely
    categorised); otherwise the paired images and their captions sit in two other groups (coverage-limited)."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(n_groups + 2, d)))
    cand = unit(np.repeat(centres[:n_groups], per_group, axis=0) + 0.12 * rng.normal(size=(n_groups * per_group, d)))
    paired_groups = np.arange(n_groups) if covered else np.array([n_groups, n_groups + 1])
    paired = unit(np.repeat(centres[paired_groups], paired_per_group, axis=0) + 0.12 * rng.normal(size=(len(paired_groups) * paired_per_group, d)))
    owner = np.repeat(np.arange(len(paired)), 2)
    txt = unit(paired[owner] + 0.1 * rng.normal(size=(len(owner), d)))
    return problem_from(cand, paired, txt, owner)


def test_coverage_gap_known_answer():
    # candidates 0, 1 are a close pair next to the paired image; 2, 3 a close pair at a right angle from it
    cand = unit(np.array([[1, 0.02, 0], [1, -0.02, 0], [0, 1, 0.02], [0, 1, -0.02]], dtype=np.float32))
    paired = unit(np.array([[1, 0, 0]], dtype=np.float32))
    problem = problem_from(cand, paired, np.zeros((0, 3), np.float32), [])
    gap = coverage_gap(problem, 4, 2.0, np.random.default_rng(0))
    assert gap["sampled"] == 4 and gap["uncovered"] == 0.5
    assert gap["median_distance_to_pool"] == pytest.approx(1 - cand[2] @ cand[3], abs=1e-4)


def test_plan_split_and_concentration_known_answers():
    assert plan_split(20, 1.0, 100, random_share=0.1, min_coverage=0.1, max_coverage=0.9, coverage_share=None) == {
        "coverage": 16, "hardneg": 2, "random": 2, "planned_coverage_share": 0.9, "moved_to_coverage": 0}
    assert plan_split(20, 0.0, 100, random_share=0.1, min_coverage=0.1, max_coverage=0.9, coverage_share=None)["coverage"] == 2
    assert plan_split(20, 0.05, 100, random_share=0.0, min_coverage=0.5, max_coverage=0.9, coverage_share=None)["coverage"] == 10
    assert plan_split(20, 0.7, 100, random_share=0.0, min_coverage=0.5, max_coverage=0.9, coverage_share=None)["coverage"] == 14
    assert plan_split(20, 0.0, 5, random_share=0.0, min_coverage=0.0, max_coverage=1.0, coverage_share=0.5) == {
        "coverage": 15, "hardneg": 5, "random": 0, "planned_coverage_share": 0.5, "moved_to_coverage": 5}
    c = concentration(np.array([0.0, 1.0, 3.0, -1.0]))
    assert c == {"candidates_with_score": 2, "score_gini": 0.25, "effective_hard_negatives": 1.6}
    assert concentration(np.zeros(3))["candidates_with_score"] == 0


def test_coverage_limited_layout_goes_to_coverage():
    problem = layout(covered=False)
    sel = get_strategy("auto").select(problem, 20, np.random.default_rng(0))
    d = sel.stats["auto_decision"]
    # no candidate beats any caption's paired negatives, so the two planned hard-negative picks move to coverage
    assert d["uncovered"] == 1.0 and d["candidates_with_score"] == 0 and d["moved_to_coverage"] == 2
    assert d["coverage_picks"] == 20 and d["random_picks"] == 0 and d["hardneg_picks"] == 0
    assert "coverage-limited" in d["reason"]
    cov = [int(i[1:]) // 10 for i, r in zip(sel.ids, sel.reasons) if r == "coverage"]
    assert len(set(cov[:8])) == 8  # k-center: the first eight coverage picks visit every unreached group


def siblings_layout(seed=0, d=16, n_groups=8, paired_per_group=4, near=2, far=8):
    """Finely categorised: each group's paired images have a couple of close unpaired siblings (the fine-grained hard
    negatives); the rest of the pool lies elsewhere. Violations concentrate on the siblings."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(n_groups, d)))
    paired = unit(np.repeat(centres, paired_per_group, axis=0) + 0.12 * rng.normal(size=(n_groups * paired_per_group, d)))
    sib = unit(paired[rng.choice(len(paired), n_groups * near, replace=False)] + 0.05 * rng.normal(size=(n_groups * near, d)))
    cand = np.concatenate([sib, unit(rng.normal(size=(n_groups * far, d)))])
    owner = np.repeat(np.arange(len(paired)), 2)
    return problem_from(cand, paired, unit(paired[owner] + 0.1 * rng.normal(size=(len(owner), d))), owner)


def test_spread_floor_known_answers():
    assert spread_floor(None, 0.6, 0.9) == 0.0 and spread_floor(0.5, 0.6, 0.9) == 0.0 and spread_floor(1.2, 0.6, 0.9) == 1.0
    assert spread_floor(0.75, 0.6, 0.9) == pytest.approx(0.5)
    assert plan_split(20, 0.0, 100, random_share=0.0, min_coverage=0.5, max_coverage=0.9, coverage_share=None, floor=1.0)["coverage"] == 20
    assert plan_split(20, 0.0, 100, random_share=0.0, min_coverage=0.5, max_coverage=0.9, coverage_share=None, floor=0.3)["coverage"] == 10


def test_diffuse_hardness_goes_to_coverage():
    # every group of candidates holds paired images: each candidate is as close to the captions as the paired negatives,
    # so nearly every candidate violates some caption (more than independent chance draws give): no distinct hard set
    d = get_strategy("auto").select(layout(covered=True), 20, np.random.default_rng(0)).stats["auto_decision"]
    assert d["violator_spread"] > 0.9 and d["spread_floor"] == 1.0
    assert d["coverage_picks"] == 20 and d["hardneg_picks"] == 0 and "Hardness is diffuse" in d["reason"]
    d = get_strategy("auto", spread_high=5.0, spread_low=4.0).select(layout(covered=True), 20, np.random.default_rng(0)).stats["auto_decision"]
    assert d["hardneg_picks"] == 10  # with the floor out of reach, the old hedge


def test_finely_categorised_layout_hedges_at_the_floor_or_goes_to_hard_negatives():
    problem = siblings_layout()
    d = get_strategy("auto").select(problem, 20, np.random.default_rng(0)).stats["auto_decision"]
    assert d["violator_spread"] < 0.6 and d["spread_floor"] == 0.0
    assert d["uncovered"] <= 0.1 and d["hardneg_picks"] == 10 and d["coverage_picks"] == 10 and d["random_picks"] == 0
    assert "No clear coverage gap" in d["reason"] and "50% coverage floor" in d["reason"]
    sel = get_strategy("auto", min_coverage=0.1, random_share=0.1).select(problem, 20, np.random.default_rng(0))
    d = sel.stats["auto_decision"]
    assert d["hardneg_picks"] == 16 and d["coverage_picks"] == 2 and d["random_picks"] == 2 and d["fill_picks"] == 0
    hard = [i for i, r in zip(sel.ids, sel.reasons) if r == "hardneg"]
    scores = dict(zip(sel.ids, sel.scores))
    assert all(scores[i] > 0 for i in hard)  # hard-negative picks are violators, never fill


def test_picks_unique_unpaired_deterministic_and_reasoned():
    problem = layout(covered=True, seed=3)
    auto = get_strategy("auto", random_share=0.2)
    sel = auto.select(problem, 30, np.random.default_rng(5))
    assert len(set(sel.ids)) == 30 and set(sel.ids) <= set(problem.candidate_ids)
    assert set(sel.reasons) <= REASONS and list(sel.reasons).count("random") == 6
    assert list(auto.select(problem, 30, np.random.default_rng(5)).ids) == list(sel.ids)
    assert any(list(auto.select(problem, 30, np.random.default_rng(s)).ids) != list(sel.ids) for s in range(6, 9))
    with pytest.raises(SelectionError, match="larger than the 80 candidates"):
        auto.select(problem, 81, np.random.default_rng(0))
    with pytest.raises(SelectionError, match="at least 1"):
        auto.select(problem, 0, np.random.default_rng(0))


def test_short_hardneg_supply_moves_to_coverage_and_no_paired_data():
    problem = layout(covered=True)
    sel = get_strategy("auto", coverage_share=0.0, random_share=0.0).select(problem, 80, np.random.default_rng(0))
    d = sel.stats["auto_decision"]
    assert d["hardneg_picks"] == d["candidates_with_score"] < 80 and d["moved_to_coverage"] == 80 - d["hardneg_picks"]
    assert d["fill_picks"] == 0 and len(set(sel.ids)) == 80
    rng = np.random.default_rng(1)
    bare = problem_from(unit(rng.normal(size=(12, 4))), np.zeros((0, 4), np.float32), np.zeros((0, 4), np.float32), [])
    sel = get_strategy("auto").select(bare, 5, np.random.default_rng(0))
    assert list(sel.reasons) == ["coverage"] * 5 and "No paired captions" in sel.stats["auto_decision"]["reason"]


def test_parameters_from_strings_and_errors():
    auto = get_strategy("auto", coverage_share="0.5", ratio="3", sample="100")
    assert auto.coverage_share == 0.5 and auto.ratio == 3.0 and auto.sample == 100
    assert get_strategy("auto", coverage_share="none").coverage_share is None
    for bad in ({"coverage_share": 1.5}, {"random_share": 1.0}, {"min_coverage": 0.6, "max_coverage": 0.5}, {"ratio": 0.5}, {"lam": -1}):
        with pytest.raises(SelectionError, match="auto"):
            get_strategy("auto", **bad)


def test_auto_through_milvus_lite_and_cli(tmp_path):
    images, texts = write_pool(make_pool(n_paired=30, n_unpaired=150, captions_per_image=2, dim=16, n_coarse=3, fine_per_coarse=3), tmp_path)
    db = str(tmp_path / "hnsel.db")
    config = HnselConfig(store=StoreConfig(uri=db))
    api.ingest(config, images=images, texts=texts)
    summary = api.select(config, budget=12, strategy="auto", params={"random_share": 0.25}, record=False).summary()
    d = summary["stats"]["auto_decision"]
    assert summary["strategy"] == "auto" and d["sampled"] == 150 and 0.0 <= d["uncovered"] <= 1.0
    assert d["coverage_picks"] + d["hardneg_picks"] + d["random_picks"] + d["fill_picks"] == 12 and d["random_picks"] == 3
    assert [p["reason"] for p in summary["picks"]].count("random") == 3 and isinstance(d["reason"], str)
    res = CliRunner().invoke(app, ["select", "--milvus-uri", db, "--budget", "12", "--strategy", "auto", "--no-record"])
    assert res.exit_code == 0, res.output
    assert "auto: coverage" in res.output and "hard negatives" in res.output


def test_coverage_picks_are_coreset_and_avoid_extra_centres():
    problem = layout(covered=False, seed=4)
    coreset = get_strategy("coreset").select(problem, 10, np.random.default_rng(0))
    picks, radii, _ = coverage_picks(problem, 10, np.zeros(0, dtype=np.int64), np.random.default_rng(0))
    assert list(problem.candidate_ids[picks]) == list(coreset.ids) and np.allclose(radii, coreset.scores)
    first_group = np.arange(10)  # candidates of group 0 held as centres: no coverage pick goes there
    picks, _, _ = coverage_picks(problem, 7, first_group, np.random.default_rng(0))
    assert not set(picks) & set(first_group) and len({int(p) // 10 for p in picks}) == 7


def test_hardneg_parameters_reach_the_hard_negative_part():
    problem = layout(covered=True)
    base = get_strategy("auto", coverage_share=0.0).select(problem, 10, np.random.default_rng(0))
    counted = get_strategy("auto", coverage_share=0.0, k=3, weight="count").select(problem, 10, np.random.default_rng(0))
    assert set(base.reasons) == {"hardneg"} and list(counted.ids) != list(base.ids)
    assert all(float(x).is_integer() for x in counted.scores)  # counting weights: whole numbers
    with pytest.raises(SelectionError, match="--weight 'sum'"):
        get_strategy("auto", weight="sum")


def test_a_partial_spread_floor_is_named_in_the_reason():
    # spread_low/high put the diffuse layout's spread inside the ramp: the floor (above the 50 % hedge) decides the split
    problem = layout(covered=True)
    spread = get_strategy("auto").select(problem, 20, np.random.default_rng(0)).stats["auto_decision"]["violator_spread"]
    d = get_strategy("auto", spread_low=spread - 0.3, spread_high=spread + 0.1).select(problem, 20, np.random.default_rng(0)).stats["auto_decision"]
    assert d["spread_floor"] == pytest.approx(0.75, abs=1e-3) and d["coverage_picks"] == 15
    assert "Hardness is diffuse" in d["reason"]
