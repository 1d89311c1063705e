"""Every registered strategy: the contract (scikit-activeml style), and parameters declared once on the strategy."""

import numpy as np
import pytest
from conftest import clustered, exact_problem
from typer.testing import CliRunner

from hnsel.cli import app
from hnsel.errors import SelectionError
from hnsel.strategies import get_strategy, list_strategies
from hnsel.strategies.base import describe_params, params_of
from hnsel.strategies.hardneg import HardNegative


@pytest.mark.parametrize("name", list_strategies())
def test_strategy_contract(name):
    """Unique candidate ids, never a paired id, the same picks for the same seed, errors on a bad budget."""
    cand, paired, txt, owner = clustered(seed=7)
    problem = exact_problem(cand, paired, txt, owner)
    strategy = get_strategy(name)
    sel = strategy.select(problem, 30, np.random.default_rng(3))
    assert len(sel) == 30 and len(set(sel.ids)) == 30
    assert set(sel.ids) <= set(problem.candidate_ids) and not set(sel.ids) & set(problem.index.pools["paired"][0])
    assert len(sel.scores) == len(sel.reasons) == len(sel.violations) == 30
    assert sel.strategy == name and sel.params == describe_params(strategy)
    assert list(strategy.select(problem, 30, np.random.default_rng(3)).ids) == list(sel.ids)
    with pytest.raises(SelectionError, match="larger than the 150 candidates"):
        strategy.select(problem, 151, np.random.default_rng(0))
    with pytest.raises(SelectionError, match="at least 1"):
        strategy.select(problem, 0, np.random.default_rng(0))


@pytest.mark.parametrize("name", list_strategies())
def test_every_parameter_is_declared_with_help(name):
    for spec in params_of(name):
        assert spec.help.strip(), f"{name}: parameter {spec.name} has no help text"
        assert spec.type in (int, float, str) and spec.flag.startswith("--")


def test_bad_parameters_are_one_line_errors():
    with pytest.raises(SelectionError, match="unknown strategy"):
        get_strategy("nope")
    with pytest.raises(SelectionError, match="--weight"):
        get_strategy("hardneg", weight="sum")
    with pytest.raises(SelectionError, match="takes no parameter"):
        get_strategy("random", k=3)
    with pytest.raises(SelectionError, match="--lambda nan: use a finite number"):
        get_strategy("density", lam=float("nan"))


def test_composed_strategies_route_hardneg_parameters_to_their_component():
    auto = get_strategy("auto", k=3, weight="count", depth=16, ratio=1.5)
    assert auto.hardneg == HardNegative(k=3, weight="count", depth=16) and auto.ratio == 1.5
    density = get_strategy("density", k=2, window="semi", lam=0.5)
    assert density.hardneg == HardNegative(k=2, window="semi") and density.lam == 0.5
    params = describe_params(auto)
    assert params["k"] == 3 and params["depth"] == 16 and "hardneg" not in params
    assert [p.name for p in params_of("auto")].count("k") == 1  # a component's parameters appear once


def test_select_help_lists_every_declared_parameter_once():
    """The CLI's options come from the declarations: a new strategy's parameters need no CLI edit."""
    res = CliRunner().invoke(app, ["select", "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    assert res.exit_code == 0, res.output
    flags = {spec.flag for name in list_strategies() for spec in params_of(name)}
    for flag in flags:
        assert res.output.count(f" {flag} ") == 1, flag
    assert "--lambda" in flags and "--lam " not in res.output
