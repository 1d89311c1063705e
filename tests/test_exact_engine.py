"""The exact engine (``problem.engine = "exact"``, torch on the CPU here) against the dense numpy reference, and the
dense reference against the brute-force definition, caption by caption."""

import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest

from hnsel.errors import SelectionError
from hnsel.strategies import AnchorChunk, ArrayVectors, ExactIndex, SelectionProblem, get_strategy
from hnsel.strategies import density as density_module
from hnsel.strategies import exact, hardneg
from hnsel.strategies.dense import dense_hardneg_scores
from hnsel.strategies.hardneg import hardneg_scores, rank_with_fill
from hnsel.strategies.thresholds import chance_stats, minibatch_thresholds


def unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@dataclass
class Case:
    """A problem on ExactIndex and the arrays the dense reference needs."""

    problem: SelectionProblem
    anchors: np.ndarray  # anchor vectors, in stream order
    positives: list  # per anchor, frozenset of paired ids
    paired_ids: np.ndarray  # the negatives' side
    paired: np.ndarray
    candidates: np.ndarray


def make_case(modality="image", seed=0, d=16, n_img=24, n_txt=72, n_cand=150, max_limit=8, shuffled_stream=False) -> Case:
    """modality image: anchors are captions (one positive), candidates unpaired images. modality text: anchors are
    paired images with their several captions as positives (some with none), candidates unpaired captions."""
    rng = np.random.default_rng(seed)
    img = unit(rng.normal(size=(n_img, d)))
    img_ids = np.array([f"p{i:02d}" for i in range(n_img)], dtype=object)
    owner = rng.integers(0, n_img - 3, n_txt)  # the last three images have no caption
    txt = unit(img[owner] + 0.8 * rng.normal(size=(n_txt, d)))
    txt_ids = np.array([f"c{i:03d}" for i in range(n_txt)], dtype=object)
    if modality == "image":
        anchor_ids, anchors, positives = txt_ids, txt, [frozenset([img_ids[o]]) for o in owner]
        paired_ids, paired = img_ids, img
        cand = unit(rng.normal(size=(n_cand, d)) + 0.5 * img[rng.integers(0, n_img, n_cand)])
    else:
        anchor_ids, anchors, positives = img_ids, img, [frozenset(txt_ids[owner == i]) for i in range(n_img)]
        paired_ids, paired = txt_ids, txt
        cand = unit(img[rng.integers(0, n_img, n_cand)] + 0.9 * rng.normal(size=(n_cand, d)))
    cand_ids = np.array([f"u{i:03d}" for i in range(n_cand)], dtype=object)
    index = ExactIndex({"paired": (paired_ids, paired), "candidates": (cand_ids, cand)}, max_limit=max_limit)

    def anchor_stream(chunk_size):
        for s in range(0, len(anchor_ids), chunk_size):
            yield AnchorChunk(anchor_ids[s:s + chunk_size], anchors[s:s + chunk_size], tuple(positives[s:s + chunk_size]))

    class Shuffled(ArrayVectors):
        def candidate_batches(self, batch_size):  # as a Milvus query iterator: not in candidate order, uneven batches
            order = np.random.default_rng(99).permutation(n_cand)
            for s in range(0, n_cand, batch_size):
                yield order[s:s + batch_size], cand[order[s:s + batch_size]]

    vectors = (Shuffled if shuffled_stream else ArrayVectors)(cand, paired_ids, paired)
    problem = SelectionProblem(cand_ids, index, anchor_stream, len(anchor_ids), vectors=vectors)
    return Case(problem, anchors, positives, paired_ids, paired, cand)


def positive_similarity(case: Case) -> np.ndarray:
    """Per anchor, its similarity to its most similar positive (NaN without one): the semi window's upper bound."""
    row = {x: i for i, x in enumerate(case.paired_ids)}
    sims = case.anchors @ case.paired.T
    return np.array([max((sims[a, row[p]] for p in pos), default=np.nan) for a, pos in enumerate(case.positives)], dtype=np.float64)


def dense_reference(case: Case, *, k=1, weight="surplus", batch="full", batch_size=128, window="hard", rng=None, **_):
    """hardneg_scores by the dense reference: the same draws from ``rng`` (the mini-batch shuffle), the chance stats."""
    rng = rng if rng is not None else np.random.default_rng(0)
    xi = None
    if batch == "mini":
        order = rng.permutation(len(case.positives))
        xi = minibatch_thresholds(case.anchors, case.positives, order, batch_size, k, case.problem.paired_vectors)
    upper = positive_similarity(case) if window == "semi" else None
    scores, counts = dense_hardneg_scores(case.anchors, case.positives, case.paired_ids, case.paired, case.candidates, k=k,
                                          weight=weight, thresholds=xi, upper=upper)
    negatives = {}
    for pos in case.positives:
        negatives.setdefault(pos, [len(case.paired_ids) - len(pos & set(case.paired_ids)), 0])[1] += 1
    stats = dict(chance_stats(counts, negatives if batch == "full" else None, k), truncated=0, anchors=len(case.positives))
    return scores, counts, stats


def patched_reference(case: Case, calls: list):
    def scores(problem, **kw):
        calls.append(kw)
        return dense_reference(case, **kw)

    return scores


def exact_problem(case: Case) -> Case:
    case.problem.engine = "exact"
    return case


PARAMS = [dict(k=k, weight=w, window=win, batch=b, batch_size=16)
          for k in (1, 3) for w in ("surplus", "count") for win in ("hard", "semi") for b in ("full", "mini")]


def _label(p):
    return f"k{p['k']}-{p['weight']}-{p['window']}-{p['batch']}"


@pytest.mark.parametrize("modality", ["image", "text"])
@pytest.mark.parametrize("params", PARAMS, ids=_label)
def test_hardneg_exact_engine_equals_dense_reference(modality, params):
    case = make_case(modality, seed=1 if modality == "image" else 2, shuffled_stream=True)
    rng = np.random.default_rng(5)  # as the strategy draws: the mini-batch shuffle (if any), then the fill
    ref_scores, ref_counts, _ = dense_reference(case, rng=rng, **params)
    ref = rank_with_fill(case.problem.candidate_ids, ref_scores, ref_counts, 30, rng, "hardneg", {}, {})
    sel = get_strategy("hardneg", **params).select(exact_problem(case).problem, 30, np.random.default_rng(5))
    assert sel.stats["engine"] == "exact" and sel.stats["device"] == "cpu"
    assert list(sel.ids) == list(ref.ids)
    assert list(sel.reasons) == list(ref.reasons)
    np.testing.assert_allclose(sel.scores, ref.scores, atol=1e-4)
    assert list(sel.violations) == list(ref.violations)
    assert 0 < sel.stats["picked_on_merit"]  # the picks are scored, not only filled
    scores, counts, _ = hardneg_scores(case.problem, rng=np.random.default_rng(5), **params)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-4)
    np.testing.assert_array_equal(counts, ref_counts)


@pytest.mark.parametrize("modality", ["image", "text"])
@pytest.mark.parametrize("params", [dict(), dict(coverage_share=0.4), dict(k=3, weight="count", batch="mini", batch_size=16),
                                    dict(window="semi", coverage_share=0.4)], ids=["default", "share", "k3-count-mini", "semi-share"])
def test_auto_with_exact_engine_equals_auto_on_dense_reference(modality, params, monkeypatch):
    case = make_case(modality, seed=3)
    auto = get_strategy("auto", **params)
    calls = []
    with monkeypatch.context() as m:  # auto's hard-negative scores from the dense reference
        m.setattr(hardneg, "hardneg_scores", patched_reference(case, calls))
        ref = auto.select(case.problem, 25, np.random.default_rng(8))
    assert len(calls) == 1
    sel = auto.select(exact_problem(case).problem, 25, np.random.default_rng(8))
    assert sel.stats["auto_decision"] == ref.stats["auto_decision"]
    assert list(sel.ids) == list(ref.ids) and list(sel.reasons) == list(ref.reasons)
    np.testing.assert_allclose(sel.scores, ref.scores, atol=1e-4)
    if params.get("coverage_share") is not None or params.get("batch") == "mini":  # the hard-negative picks come from the scores
        assert sel.stats["auto_decision"]["hardneg_picks"] > 0
    else:  # the spread of the violators decides the split
        assert sel.stats["auto_decision"]["violator_spread"] is not None


@pytest.mark.parametrize("modality", ["image", "text"])
def test_density_with_exact_engine_equals_density_on_dense_reference(modality, monkeypatch):
    case = make_case(modality, seed=4)
    density = get_strategy("density")
    calls = []
    with monkeypatch.context() as m:  # density's hard-negative scores (through HardNegative.scores) from the dense reference
        m.setattr(hardneg, "hardneg_scores", patched_reference(case, calls))
        m.setattr(density_module, "hardneg_scores", patched_reference(case, calls), raising=False)
        ref = density.select(case.problem, 20, np.random.default_rng(9))
    assert len(calls) == 1
    sel = density.select(exact_problem(case).problem, 20, np.random.default_rng(9))
    assert list(sel.ids) == list(ref.ids) and list(sel.reasons) == list(ref.reasons)
    np.testing.assert_allclose(sel.scores, ref.scores, atol=1e-4)
    assert "density" in set(sel.reasons)


@pytest.mark.parametrize("hit_bytes", [40, 10**6], ids=["whole-tile", "row-by-row"])
@pytest.mark.parametrize("window", ["hard", "semi"])
def test_tiny_tiles_and_sliced_gathers(hit_bytes, window, monkeypatch):
    # 1 KB tiles: a few anchors per block, many candidate batches; violations gathered per tile or (as when a tile
    # holds more than the budget allows) one row at a time
    monkeypatch.setattr(exact, "HIT_BYTES", hit_bytes)
    case = make_case("text", seed=5)
    ref_scores, ref_counts, _ = dense_reference(case, k=3, window=window)
    scores, counts, stats = exact.exact_hardneg_scores(case.problem, k=3, window=window, device="cpu", memory_mb=1 / 1024,
                                                       candidate_batch=17)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-4)
    np.testing.assert_array_equal(counts, ref_counts)
    assert stats["anchor_block"] == 1024 // (17 * exact.TILE_BYTES)
    assert stats["candidate_batches"] == -(-150 // 17)


@pytest.mark.parametrize("params", [dict(), dict(k=3, window="semi"), dict(batch="mini", batch_size=16, weight="count")], ids=["default", "k3-semi", "mini"])
def test_exact_engine_stats_match_the_search_path(params):
    case = make_case("text", seed=6)
    scores, counts, searched = hardneg_scores(case.problem, depth=2, rng=np.random.default_rng(1), **params)
    e_scores, e_counts, stats = hardneg_scores(exact_problem(case).problem, rng=np.random.default_rng(1), device="cpu", **params)
    np.testing.assert_allclose(e_scores, scores, atol=1e-5)
    np.testing.assert_array_equal(e_counts, counts)
    assert searched["engine"] == "milvus" and searched["deepened"] > 0
    assert stats["engine"] == "exact" and stats["device"] == "cpu"
    assert stats["deepened"] == stats["range_searched"] == stats["truncated"] == stats["unknown_hits"] == 0
    assert stats["candidate_batches"] == 1 and stats["anchor_block"] == 24
    for key in ("anchors", "anchors_without_negatives", "above_positive", "thresholds", "violations", "expected_violations",
                "violation_excess", "violator_spread"):
        assert stats[key] == searched[key], key
    assert stats["violations"] == counts.sum() > 0


def test_anchors_without_negatives_are_counted_and_skipped():
    # one anchor describes every paired sample (no negatives, no threshold); the other has one negative
    p = unit(np.array([[1, 0], [0.6, 0.8]], np.float32))
    index = ExactIndex({"paired": (["p0", "p1"], p), "candidates": (["a", "b"], unit(np.array([[0.8, 0.6], [0, 1]], np.float32)))})
    chunk = AnchorChunk(np.array(["t0", "t1"], dtype=object), unit(np.array([[1, 0], [1, 0]], np.float32)),
                        (frozenset(["p0", "p1"]), frozenset(["p0"])))
    problem = SelectionProblem(np.array(["a", "b"], dtype=object), index, lambda n: iter([chunk]), 2,
                               vectors=ArrayVectors.from_index(index, ["a", "b"]))
    problem.engine = "exact"
    scores, counts, stats = hardneg_scores(problem)
    assert stats["anchors"] == 2 and stats["anchors_without_negatives"] == 1
    assert scores == pytest.approx([0.2, 0.0], abs=1e-6) and counts.tolist() == [1, 0]  # xi = 0.6 from p1


def test_the_problem_names_the_device_unless_the_call_does():
    case = exact_problem(make_case("image"))
    case.problem.device = "cpu"
    assert hardneg_scores(case.problem)[2]["device"] == "cpu"
    case.problem.device = "tpu"
    with pytest.raises(SelectionError, match="--device 'tpu'"):
        hardneg_scores(case.problem)
    assert hardneg_scores(case.problem, device="cpu")[2]["device"] == "cpu"  # the argument wins


def test_unknown_engine_and_device_are_one_line_errors():
    case = make_case("image")
    case.problem.engine = "faiss"
    with pytest.raises(SelectionError, match="engine 'faiss'"):
        hardneg_scores(case.problem)
    with pytest.raises(SelectionError, match="--device"):
        exact.resolve_device("tpu")
    import torch

    if not torch.cuda.is_available():
        assert str(exact.resolve_device(None)) == "cpu"
        with pytest.raises(SelectionError, match="no CUDA device"):
            exact.resolve_device("cuda")


def test_modules_import_without_torch():
    code = "import sys, hnsel.strategies, hnsel.strategies.exact, hnsel.strategies.hardneg; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_float32_rounding_keeps_comparisons_exact():
    x = np.array([0.1, -0.3, 1 / 3, 0.5, np.nan])  # 0.5 is a float32; the others are not
    lo, hi = exact.below_float32(x), exact.above_float32(x)
    s = np.array([np.float32(0.1), np.float32(-0.3), np.float32(1 / 3), np.float32(0.5), np.float32(0)])
    finite = ~np.isnan(x)
    assert ((s > lo) == (s.astype(np.float64) > x))[finite].all() and ((s < hi) == (s.astype(np.float64) < x))[finite].all()
    assert np.isnan(lo[-1]) and np.isnan(hi[-1]) and lo[3] == hi[3] == np.float32(0.5)
    assert (lo[:3] < hi[:3]).all() and (np.nextafter(lo[:3], np.float32(1)) == hi[:3]).all()


# --- the dense reference against the definition written out caption by caption --------------------------
def brute_force(anchors, positives, neg_ids, negs, cands, k, weight, thresholds=None, upper=None):
    scores, counts = np.zeros(len(cands)), np.zeros(len(cands), dtype=np.int64)
    for j, a in enumerate(anchors):
        if thresholds is None:
            sims = sorted((float(np.dot(a, v)) for x, v in zip(neg_ids, negs) if x not in positives[j]), reverse=True)
            xi = np.nan if not sims else (sims[k - 1] if len(sims) >= k else sims[-1])
        else:
            xi = thresholds[j]
        for i, c in enumerate(cands):
            s = float(np.dot(a, c))
            if not np.isnan(xi) and s > xi and (upper is None or np.isnan(upper[j]) or s < upper[j]):
                counts[i] += 1
                scores[i] += 1.0 if weight == "count" else s - xi
    return scores, counts


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("weight", ["surplus", "count"])
@pytest.mark.parametrize("semi", [False, True])
def test_dense_reference_equals_brute_force_definition(k, weight, semi):
    rng = np.random.default_rng(k)
    negs = unit(rng.normal(size=(7, 5)))
    neg_ids = [f"n{i}" for i in range(7)]
    anchors = unit(rng.normal(size=(9, 5)))
    cands = unit(rng.normal(size=(40, 5)))
    # several positives, one unknown id, one anchor with every sample positive, one with 3 negatives (fewer than k=4)
    positives = [frozenset(["n0"]), frozenset(["n1", "n2"]), frozenset(neg_ids), frozenset(["n3", "zz"]), frozenset(),
                 frozenset(neg_ids[:4]), frozenset(["n6"]), frozenset(["n5", "n0"]), frozenset(["n4"])]
    upper = np.array([0.9, np.nan, 0.5, 0.3, 0.95, 0.2, 0.7, 0.8, 0.6]) if semi else None
    expected = brute_force(anchors, positives, neg_ids, negs, cands, k, weight, upper=upper)
    got = dense_hardneg_scores(anchors, positives, neg_ids, negs, cands, k=k, weight=weight, upper=upper, chunk_size=2, block_floats=16)
    np.testing.assert_allclose(got[0], expected[0], atol=1e-6)
    np.testing.assert_array_equal(got[1], expected[1])
    assert expected[1].sum() > 0
    xi = rng.uniform(-0.2, 0.4, size=9)  # given (mini-batch) thresholds, one missing
    xi[4] = np.nan
    expected = brute_force(anchors, positives, neg_ids, negs, cands, k, weight, thresholds=xi, upper=upper)
    got = dense_hardneg_scores(anchors, positives, neg_ids, negs, cands, k=k, weight=weight, thresholds=xi, upper=upper)
    np.testing.assert_allclose(got[0], expected[0], atol=1e-6)
    np.testing.assert_array_equal(got[1], expected[1])
