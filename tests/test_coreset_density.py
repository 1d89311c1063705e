"""coreset and density: known answers on tiny arrays, dense references, and the contract over every strategy."""

import numpy as np
import pytest
from conftest import clustered, exact_problem, unit

from hnsel.errors import SelectionError
from hnsel.strategies import get_strategy
from hnsel.strategies.base import positions, sorter_for
from hnsel.strategies.density import density_greedy, normalise


def problem_from(cand, paired, txt=None, owner=None, max_limit=8):
    return exact_problem(cand, paired, txt, owner, max_limit)


def dense_k_center(cand, paired, budget):
    dist = (1 - cand @ paired.T).min(axis=1)
    picks = []
    for _ in range(budget):
        c = int(np.argmax(dist))
        picks.append(c)
        dist = np.minimum(dist, 1 - cand @ cand[c])
        dist[picks] = -1
    return picks


@pytest.mark.parametrize("max_limit,cache_mb", [(4, 0), (64, 0), (4096, 0), (4, 256)])
def test_coreset_equals_dense_k_center_greedy(max_limit, cache_mb):
    cand, paired, _, _ = clustered()
    problem = problem_from(cand, paired, max_limit=max_limit)
    sel = get_strategy("coreset", batch_size=32, cache_mb=cache_mb).select(problem, 20, np.random.default_rng(0))
    assert list(sel.ids) == [f"u{i:03d}" for i in dense_k_center(cand, paired, 20)]
    assert np.all(np.diff(sel.scores) <= 1e-6)  # k-center radii only shrink
    updates = (sel.stats["in_memory_updates"], sel.stats["range_updates"] > 0, sel.stats["streamed_updates"] > 0)
    assert updates == {(4, 0): (0, True, True), (64, 0): (0, True, True), (4096, 0): (0, True, False), (4, 256): (19, False, False)}[max_limit, cache_mb]


@pytest.mark.parametrize("max_limit,cache_mb", [(4, 0), (4096, 0), (4, 256)])
def test_k_center_with_extra_centres_equals_dense(max_limit, cache_mb):
    from hnsel.strategies.coreset import k_center_greedy

    cand, paired, _, _ = clustered()
    extra = np.array([3, 40, 95, 120])
    picks, _, _ = k_center_greedy(problem_from(cand, paired, max_limit=max_limit), 15, np.random.default_rng(0), batch_size=32,
                                  cache_mb=cache_mb, centres=extra)
    expected = dense_k_center(np.delete(cand, extra, axis=0), np.concatenate([paired, cand[extra]]), 15)
    kept = np.delete(np.arange(len(cand)), extra)
    assert list(picks) == list(kept[expected]) and not set(picks) & set(extra)


def test_coreset_known_answer_and_empty_paired_set():
    cand = unit(np.array([[1, 0], [0.9, 0.1], [0, 1], [-1, 0.05]], dtype=np.float32))
    paired = unit(np.array([[1, 0.01]], dtype=np.float32))
    sel = get_strategy("coreset").select(problem_from(cand, paired), 2, np.random.default_rng(0))
    assert list(sel.ids) == ["u003", "u002"]  # the opposite point first, then the orthogonal one
    empty = problem_from(cand, np.zeros((0, 2), np.float32))
    picks = [tuple(get_strategy("coreset").select(empty, 2, np.random.default_rng(s)).ids) for s in range(6)]
    assert len(set(picks)) > 1 and picks[0] == tuple(get_strategy("coreset").select(empty, 2, np.random.default_rng(0)).ids)


def test_positions_sorted_and_unsorted():
    ids = np.array(["a", "c", "e"], dtype=object)
    idx, found = positions(ids, np.array(["e", "b", "a"], dtype=object), sorter_for(ids))
    assert list(idx) == [2, 0] and list(found) == [True, False, True]
    shuffled = np.array(["e", "a", "c"], dtype=object)
    idx, found = positions(shuffled, np.array(["c", "z"], dtype=object), sorter_for(shuffled))
    assert list(idx) == [2] and list(found) == [True, False]


def test_normalise_and_density_greedy_known_answer():
    assert list(normalise(np.array([2.0, 4.0, 3.0]))) == [0.0, 1.0, 0.5]
    assert list(normalise(np.array([1.0, 1.0]))) == [0.0, 0.0]
    u = np.array([1.0, 0.9, 0.5])
    vectors = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    picks, gains, stats = density_greedy(u, vectors, 2, lam=2.0)
    assert list(picks) == [0, 2] and list(gains) == [1.0, 0.5]  # the duplicate of the first pick costs 2 x 1
    assert stats["mean_pairwise_similarity"] == 0.0 and stats["objective"] == 1.5
    picks, _, stats = density_greedy(u, vectors, 2, lam=0.0)
    assert list(picks) == [0, 1] and stats["mean_pairwise_similarity"] == 1.0


def test_density_spreads_hardneg_picks():
    cand, paired, txt, owner = clustered()
    problem = problem_from(cand, paired, txt, owner)
    plain = get_strategy("density", lam=0.0).select(problem, 15, np.random.default_rng(0))
    hard = get_strategy("hardneg").select(problem, 15, np.random.default_rng(0))
    merit = [i for i, r in zip(hard.ids, hard.reasons) if r == "score"]
    assert list(plain.ids[:len(merit)]) == merit  # lambda 0 is the normalised hardneg ranking
    spread = get_strategy("density", lam=20.0).select(problem, 15, np.random.default_rng(0))
    assert spread.stats["mean_pairwise_similarity"] < plain.stats["mean_pairwise_similarity"] - 0.1
    in_big = lambda sel: sum(int(i[1:]) < 90 for i in sel.ids)  # noqa: E731
    assert in_big(spread) < in_big(plain)
    coreset_based = get_strategy("density", base="coreset").select(problem, 5, np.random.default_rng(0))
    assert len(set(coreset_based.ids)) == 5


def test_density_bad_parameters():
    with pytest.raises(SelectionError, match="--base"):
        get_strategy("density", base="magic")
    with pytest.raises(SelectionError, match="--lambda"):
        get_strategy("density", lam=-1.0)
    cand, paired, _, _ = clustered()
    with pytest.raises(SelectionError, match="no paired data"):
        get_strategy("density").select(problem_from(cand, paired), 5, np.random.default_rng(0))


