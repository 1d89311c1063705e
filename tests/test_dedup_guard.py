"""The near-duplicate guard: whatever the strategy, no pick within the radius of a paired sample or of another pick."""

import numpy as np
import pytest
from conftest import clustered, exact_problem, unit

from hnsel import api
from hnsel.config import HnselConfig, StoreConfig
from hnsel.data.synthetic import make_pool, write_pool
from hnsel.errors import SelectionError
from hnsel.strategies import get_strategy, list_strategies
from hnsel.strategies.guard import guarded_select
from hnsel.workflows.simulate import parse_strategy

RADIUS = 0.01


def with_duplicates(seed=7):
    """``clustered`` plus near-copies: of 15 candidates (two of each) and of every paired image."""
    cand, paired, txt, owner = clustered(seed=seed)
    rng = np.random.default_rng(seed)
    copies = unit(np.concatenate([np.repeat(cand[:15], 2, axis=0), paired]) + 1e-3 * rng.normal(size=(30 + len(paired), cand.shape[1])))
    return np.concatenate([cand, copies]).astype(np.float32), paired, txt, owner


def too_close(vectors, paired, radius):
    near_paired = (1 - vectors @ paired.T).min(axis=1) <= radius
    pair = 1 - vectors @ vectors.T
    np.fill_diagonal(pair, np.inf)
    return int(near_paired.sum()), int((pair <= radius).sum() // 2)


@pytest.mark.parametrize("name", list_strategies())
def test_every_strategy_honours_the_guard(name):
    cand, paired, txt, owner = with_duplicates()
    problem = exact_problem(cand, paired, txt, owner, max_limit=64)
    strategy = get_strategy(name)

    def run(ask):
        return strategy.select(problem, ask, np.random.default_rng(3))

    plain = run(40)
    rows = [int(i[1:]) for i in plain.ids]
    sel = guarded_select(run, problem, 40, RADIUS)
    assert len(sel) == 40 and len(set(sel.ids)) == 40
    assert too_close(cand[[int(i[1:]) for i in sel.ids]], paired, RADIUS) == (0, 0)
    assert sel.stats["dedup"]["radius"] == RADIUS
    # what it keeps is the strategy's own answer (asked for more) minus the near-duplicates, in the strategy's order
    asked = run(sel.stats["dedup"]["asked"])
    assert set(sel.ids) <= set(asked.ids) and list(sel.ids) == [i for i in asked.ids if i in set(sel.ids)]
    assert guarded_select(run, problem, 40, 0.0).ids.tolist() == plain.ids.tolist()  # 0: off
    if too_close(cand[rows], paired, RADIUS) != (0, 0):  # where the strategy alone picked a near-duplicate, the guard dropped it
        dropped = sel.stats["dedup"]["dropped_near_paired"] + sel.stats["dedup"]["dropped_near_pick"]
        assert dropped > 0 and list(sel.ids) != list(plain.ids)


def test_guard_refills_from_a_larger_ask_and_refuses_what_cannot_be():
    cand, paired, _, _ = with_duplicates()
    problem = exact_problem(cand, paired, max_limit=64)
    strategy = get_strategy("coreset")
    asks = []

    def run(ask):
        asks.append(ask)
        return strategy.select(problem, ask, np.random.default_rng(0))

    everything = len(cand)
    with pytest.raises(SelectionError, match="lower --dedup-radius"):
        guarded_select(run, problem, 100, 1.5)  # almost every candidate is within 1.5 of a paired image
    assert asks[0] == 100 and asks[-1] == everything and asks == sorted(asks)


def test_simulate_entries_take_the_radius():
    spec = parse_strategy("herding:dedup_radius=0.02,neighbours=8")
    assert spec.params == {"dedup_radius": 0.02, "neighbours": 8}
    with pytest.raises(SelectionError, match="--dedup-radius"):
        parse_strategy("coreset:dedup_radius=3")
    with pytest.raises(SelectionError, match="takes no parameter"):
        parse_strategy("coreset:radius=0.1")


def test_select_through_milvus_lite_honours_the_guard(tmp_path):
    pool = make_pool(n_paired=20, n_unpaired=150, captions_per_image=3, dim=16, n_coarse=3, fine_per_coarse=3, seed=5)
    images, texts = write_pool(pool, tmp_path / "pool")
    config = HnselConfig(store=StoreConfig(uri=str(tmp_path / "hnsel.db"), namespace="t_guard"))
    api.ingest(config, images=images, texts=texts)
    vec = dict(zip(pool.image_ids, pool.image_vectors))
    paired = pool.image_vectors[pool.image_pool == "paired"]
    plain = api.select(config, budget=30, strategy="random", seed=1, record=False).selection
    unpaired = pool.image_vectors[pool.image_pool != "paired"]
    radius = float(np.quantile((1 - unpaired @ paired.T).min(axis=1), 0.3))  # 30 % of the candidates are that close to a paired image
    assert too_close(np.array([vec[i] for i in plain.ids]), paired, radius)[0] > 0  # unguarded random picks come that close
    with pytest.raises(SelectionError, match="--dedup-radius"):
        api.select(config, budget=5, strategy="random", dedup_radius=-0.1, record=False)
    sel = api.select(config, budget=30, strategy="random", seed=1, dedup_radius=radius, record=False).selection
    assert too_close(np.array([vec[i] for i in sel.ids]), paired, radius) == (0, 0) and len(set(sel.ids)) == 30
