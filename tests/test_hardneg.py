"""Known answers for the pure hard-negative pieces, and the streamed computation against dense algebra."""

import zlib

import numpy as np
import pytest
from conftest import unit

from hnsel.strategies import AnchorChunk, ArrayVectors, ExactIndex, SelectionProblem, get_strategy
from hnsel.strategies.dense import dense_hardneg_scores
from hnsel.strategies.hardneg import hardneg_scores, rank_with_fill
from hnsel.strategies.thresholds import kth_threshold, minibatch_thresholds


def make_problem(seed=1, d=16, n_paired=30, n_cand=120, n_text=90, max_limit=8, modality="image"):
    rng = np.random.default_rng(seed)
    img = unit(rng.normal(size=(n_paired, d)))
    cand = unit(rng.normal(size=(n_cand, d)))
    img_ids = np.array([f"p{i:02d}" for i in range(n_paired)], dtype=object)
    cand_ids = np.array([f"u{i:03d}" for i in range(n_cand)], dtype=object)
    owner = rng.integers(0, n_paired, n_text)
    txt = unit(img[owner] + 0.8 * rng.normal(size=(n_text, d)))
    pos = [frozenset([img_ids[o]]) for o in owner]
    index = ExactIndex({"paired": (img_ids, img), "candidates": (cand_ids, cand)}, max_limit=max_limit)

    def anchors(chunk_size):
        for s in range(0, n_text, chunk_size):
            yield AnchorChunk(np.array([f"t{i}" for i in range(s, min(n_text, s + chunk_size))], dtype=object), txt[s:s + chunk_size], tuple(pos[s:s + chunk_size]))

    problem = SelectionProblem(cand_ids, index, anchors, n_text, vectors=ArrayVectors.from_index(index, cand_ids))
    return problem, dict(img=img, img_ids=img_ids, cand=cand, txt=txt, pos=pos)


def test_kth_threshold_known_answers():
    assert kth_threshold(np.array([0.1, 0.9, 0.5]), 1) == pytest.approx(0.9)
    assert kth_threshold(np.array([0.1, 0.9, 0.5]), 2) == pytest.approx(0.5)
    assert kth_threshold(np.array([0.1, 0.9]), 5) == pytest.approx(0.1)  # fewer than k: the smallest
    assert np.isnan(kth_threshold(np.array([]), 1))


def test_two_anchor_known_answer():
    # 2-d: caption t0 describes p0; p1 is its only negative at s = 0.6; candidates at s = 0.8, 0.6 and 0.0.
    p = np.array([[1.0, 0.0], [0.6, 0.8]], np.float32)
    c = np.array([[0.8, 0.6], [0.6, -0.8], [0.0, 1.0]], np.float32)
    t = np.array([[1.0, 0.0]], np.float32)
    index = ExactIndex({"paired": (["p0", "p1"], p), "candidates": (["a", "b", "c"], c)})
    anchors = lambda n: iter([AnchorChunk(np.array(["t0"], dtype=object), t, (frozenset(["p0"]),))])
    problem = SelectionProblem(np.array(["a", "b", "c"], dtype=object), index, anchors, 1, vectors=ArrayVectors.from_index(index, ["a", "b", "c"]))
    scores, counts, _ = hardneg_scores(problem, k=1, weight="surplus")
    assert scores == pytest.approx([0.2, 0.0, 0.0], abs=1e-6)  # only a (0.8) beats xi = 0.6; b ties and does not count
    assert counts.tolist() == [1, 0, 0]


@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("weight", ["surplus", "count"])
def test_streamed_equals_dense_with_deepening_and_range_pages(k, weight):
    problem, a = make_problem(max_limit=8)
    scores, counts, stats = hardneg_scores(problem, k=k, weight=weight, depth=2, chunk_size=7)
    ref_scores, ref_counts = dense_hardneg_scores(a["txt"], a["pos"], a["img_ids"], a["img"], a["cand"], k=k, weight=weight)
    assert np.abs(scores - ref_scores).max() < 1e-5
    assert (counts == ref_counts).all()
    assert stats["deepened"] > 0 and stats["range_searched"] > 0  # the small limit forced both paths
    assert stats["truncated"] == 0


def test_minibatch_thresholds_match_direct_computation():
    problem, a = make_problem()
    order = np.random.default_rng(3).permutation(len(a["pos"]))
    lookup = dict(zip(a["img_ids"], a["img"]))
    xi = minibatch_thresholds(a["txt"], a["pos"], order, 16, 2, lambda ids: np.asarray([lookup[i] for i in ids]))
    for start in range(0, len(order), 16):
        batch = order[start:start + 16]
        for j in batch:
            negs = sorted({next(iter(a["pos"][o])) for o in batch if o != j} - a["pos"][j])
            sims = np.sort([float(a["txt"][j] @ lookup[n]) for n in negs])[::-1]
            expected = sims[1] if len(sims) >= 2 else (sims[-1] if len(sims) else np.nan)
            assert xi[j] == pytest.approx(expected, abs=1e-6, nan_ok=True)


def test_minibatch_strategy_is_dense_with_minibatch_thresholds():
    problem, a = make_problem()
    sel = get_strategy("hardneg", batch="mini", batch_size=16).select(problem, 10, np.random.default_rng(7))
    order = np.random.default_rng(7).permutation(len(a["pos"]))  # the strategy's first draw is the shuffle
    lookup = dict(zip(a["img_ids"], a["img"]))
    xi = minibatch_thresholds(a["txt"], a["pos"], order, 16, 1, lambda ids: np.asarray([lookup[i] for i in ids]))
    ref, _ = dense_hardneg_scores(a["txt"], a["pos"], a["img_ids"], a["img"], a["cand"], thresholds=xi)
    expected = np.lexsort((problem.candidate_ids.astype(str), -ref))[:10]
    assert list(sel.ids) == list(problem.candidate_ids[expected])


def test_mini_threshold_is_lower_than_full():
    problem, a = make_problem()
    full, _, _ = hardneg_scores(problem, k=1, batch="full")
    mini, _, _ = hardneg_scores(problem, k=1, batch="mini", batch_size=8, rng=np.random.default_rng(0))
    assert mini.sum() > full.sum()  # fewer negatives per anchor: a lower threshold, more violations


def test_rank_with_fill_orders_by_score_then_id_and_fills_seeded():
    ids = np.array(["d", "c", "b", "a", "e"], dtype=object)
    scores = np.array([0.5, 0.5, 0.0, 0.9, 0.0])
    sel = rank_with_fill(ids, scores, np.array([1, 1, 0, 2, 0]), 4, np.random.default_rng(0), "hardneg", {}, {})
    assert list(sel.ids[:3]) == ["a", "c", "d"]
    assert list(sel.reasons) == ["score", "score", "score", "fill"]
    assert sel.ids[3] in {"b", "e"}
    again = rank_with_fill(ids, scores, np.array([1, 1, 0, 2, 0]), 4, np.random.default_rng(0), "hardneg", {}, {})
    assert list(again.ids) == list(sel.ids)


class _WrongPairedIndex(ExactIndex):
    """An index whose filtered search among paired samples misses the best ones, as HNSW can at scale."""

    def search(self, vectors, limit, pool):
        hits = super().search(vectors, limit + 3, pool)
        return [(ids[3:], sims[3:]) for ids, sims in hits] if pool == "paired" else hits


@pytest.mark.parametrize("k", [1, 2, 40])
def test_in_memory_thresholds_are_exact_whatever_the_index(k):
    problem, a = make_problem(n_paired=30)
    problem.index = _WrongPairedIndex(problem.index.pools, max_limit=8)
    # With the paired side streamed into memory the wrong paired search is never used ...
    problem.paired_stream = lambda b: ((a["img_ids"][s:s + b], a["img"][s:s + b]) for s in range(0, 30, b))
    scores, counts, stats = hardneg_scores(problem, k=k, depth=2, chunk_size=7)
    ref_scores, ref_counts = dense_hardneg_scores(a["txt"], a["pos"], a["img_ids"], a["img"], a["cand"], k=k)
    assert stats["thresholds"] == "exact in memory"
    assert np.abs(scores - ref_scores).max() < 1e-5 and (counts == ref_counts).all()
    # ... and with paired_mb=0 it is, and the thresholds (so the scores) come out wrong.
    wrong, _, stats = hardneg_scores(problem, k=k, depth=2, chunk_size=7, paired_mb=0)
    assert stats["thresholds"] == "index search"
    assert np.abs(wrong - ref_scores).max() > 1e-3


def test_in_memory_thresholds_drop_every_positive_and_handle_few_negatives():
    # Anchor t0 describes p0 and p1 (text modality: an image with two captions); p2 is the only negative.
    from hnsel.strategies.thresholds import PairedSide

    side = PairedSide(np.array(["p0", "p1", "p2"], dtype=object), np.array([[1, 0], [0.8, 0.6], [0, 1]], np.float32))
    chunk = AnchorChunk(np.array(["a", "b"], dtype=object), np.array([[1, 0], [0, 1]], np.float32),
                        (frozenset(["p0", "p1"]), frozenset(["p0", "p1", "p2"])))
    xi = side.thresholds(chunk, k=3, block_floats=3)  # block of one row: the chunking path
    assert xi[0] == pytest.approx(0.0)  # fewer than k negatives: the smallest among them (only p2, s = 0)
    assert np.isnan(xi[1])  # no negatives at all


def test_semi_window_known_answer():
    # t0 describes p0 at s = 0.9; its only negative p1 sits at 0.5. Candidates at 0.95 (closer than the true match:
    # a likely false negative), 0.7 (semi-hard) and 0.3 (not a violator).
    def at(s):
        return [s, float(np.sqrt(1 - s * s))]

    p = np.array([at(0.9), [0.5, -float(np.sqrt(0.75))]], np.float32)
    c = np.array([at(0.95), [0.7, -float(np.sqrt(0.51))], at(0.3)], np.float32)
    t = np.array([[1.0, 0.0]], np.float32)
    index = ExactIndex({"paired": (["p0", "p1"], p), "candidates": (["a", "b", "c"], c)})
    anchors = lambda n: iter([AnchorChunk(np.array(["t0"], dtype=object), t, (frozenset(["p0"]),))])
    problem = SelectionProblem(np.array(["a", "b", "c"], dtype=object), index, anchors, 1, vectors=ArrayVectors.from_index(index, ["a", "b", "c"]))
    hard, hard_counts, _ = hardneg_scores(problem, window="hard")
    semi, semi_counts, stats = hardneg_scores(problem, window="semi")
    assert hard == pytest.approx([0.45, 0.2, 0.0], abs=1e-5) and hard_counts.tolist() == [1, 1, 0]
    assert semi == pytest.approx([0.0, 0.2, 0.0], abs=1e-5) and semi_counts.tolist() == [0, 1, 0]
    assert stats["above_positive"] == 1


def test_semi_window_equals_dense_with_deepening():
    problem, a = make_problem(max_limit=8)
    scores, counts, _ = hardneg_scores(problem, window="semi", depth=2, chunk_size=7)
    pos_sim = np.array([float(a["txt"][j] @ a["img"][list(a["img_ids"]).index(next(iter(a["pos"][j])))]) for j in range(len(a["txt"]))])
    neg = a["txt"] @ a["img"].T
    xi = np.array([max(s for i, s in enumerate(neg[j]) if a["img_ids"][i] not in a["pos"][j]) for j in range(len(a["txt"]))])
    sims = (a["txt"] @ a["cand"].T).astype(np.float64)
    viol = (sims > xi[:, None]) & (sims < pos_sim[:, None])
    np.testing.assert_array_equal(counts, viol.sum(0))
    np.testing.assert_allclose(scores, (viol * (sims - xi[:, None])).sum(0), atol=1e-4)
    assert viol.sum() > 0 and ((sims > xi[:, None]) & ~viol).sum() > 0  # the window removed some violators, kept others


def test_violation_excess_is_one_for_an_exchangeable_pool():
    # candidates drawn like the paired images: violations match k * M / (n + 1) per anchor, on average over anchors
    problem, _ = make_problem(seed=3, d=8, n_paired=40, n_cand=400, n_text=400, max_limit=16384)
    _, counts, stats = hardneg_scores(problem, k=2)
    assert stats["expected_violations"] == pytest.approx(400 * 2 * 400 / 40, rel=1e-6)
    assert 0.8 < stats["violation_excess"] < 1.25, stats
    assert stats["violations"] == counts.sum()


class _LossyIndex(ExactIndex):
    """A candidate search that misses a fifth of the hits, fixed per (query, id) pair, as an approximate index (HNSW,
    IVF) misses neighbours."""

    def search(self, vectors, limit, pool):
        hits = super().search(vectors, limit, pool)
        if pool != "candidates":
            return hits
        keep = [np.array([zlib.crc32(f"{x}/{v[0]:.6f}".encode()) % 5 != 0 for x in ids], dtype=bool) for v, (ids, _) in zip(vectors, hits)]
        return [(ids[k], sims[k]) for (ids, sims), k in zip(hits, keep)]


@pytest.mark.parametrize("window", ["hard", "semi"])
def test_exact_rerank_restores_the_dense_scores_of_the_shortlist(window):
    problem, a = make_problem(max_limit=16384)
    problem.index = _LossyIndex(problem.index.pools, max_limit=16384)
    upper = None
    if window == "semi":
        upper = np.array([float(a["txt"][j] @ a["img"][list(a["img_ids"]).index(next(iter(a["pos"][j])))]) for j in range(len(a["txt"]))])
    ref, ref_counts = dense_hardneg_scores(a["txt"], a["pos"], a["img_ids"], a["img"], a["cand"], upper=upper)
    lossy, _, stats = hardneg_scores(problem, window=window)
    assert (lossy <= ref + 1e-5).all() and (lossy < ref - 1e-3).sum() > 10  # search scores are lower bounds, and miss a lot
    assert stats["reranked"] == 0
    scores, counts, stats = hardneg_scores(problem, window=window, rerank=25)
    short = np.lexsort((problem.candidate_ids.astype(str), -lossy))[:25]
    rest = np.setdiff1d(np.arange(len(lossy)), short)
    np.testing.assert_allclose(scores[short], ref[short], atol=1e-5)  # the shortlist is exact ...
    np.testing.assert_array_equal(counts[short], ref_counts[short])
    np.testing.assert_array_equal(scores[rest], lossy[rest])  # ... and nothing else moves
    assert stats["reranked"] == 25 and stats["rerank_raised"] > 0 and 0 < stats["rerank_found"] < 1


def test_rerank_makes_an_approximate_index_pick_the_dense_answer():
    problem, a = make_problem(max_limit=16384)
    problem.index = _LossyIndex(problem.index.pools, max_limit=16384)
    ref, _ = dense_hardneg_scores(a["txt"], a["pos"], a["img_ids"], a["img"], a["cand"])
    expected = list(problem.candidate_ids[np.lexsort((problem.candidate_ids.astype(str), -ref))[:10]])
    off = get_strategy("hardneg", rerank=0).select(problem, 10, np.random.default_rng(0))
    on = get_strategy("hardneg", rerank=5).select(problem, 10, np.random.default_rng(0))
    assert list(off.ids) != expected  # the lossy index alone picks wrong ...
    assert list(on.ids) == expected  # ... the exact re-rank of 5 x budget picks the dense answer, in order
    assert on.stats["reranked"] == 50 and on.params["rerank"] == 5
    with pytest.raises(Exception, match="--rerank"):
        get_strategy("hardneg", rerank=-1)


def test_concurrent_searches_give_the_same_scores_and_stats():
    problem, _ = make_problem(max_limit=8)
    one = hardneg_scores(problem, depth=2, chunk_size=7, searchers=1)
    many = hardneg_scores(problem, depth=2, chunk_size=7, searchers=4)
    np.testing.assert_array_equal(one[0], many[0])  # summed in chunk order: bit for bit
    np.testing.assert_array_equal(one[1], many[1])
    assert one[2] == many[2] and many[2]["deepened"] > 0 and many[2]["range_searched"] > 0
    with pytest.raises(Exception, match="--searchers"):
        get_strategy("hardneg", searchers=0)
