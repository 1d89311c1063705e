"""ascmr: known answers for the match probability and its entropy, the search path against dense numpy, the density-aware
allocation, the uncertainty fallback, and the Gaussian heads (hnsel.model.probabilistic)."""

import dataclasses
import math

import numpy as np
import pytest

from hnsel.errors import SelectionError
from hnsel.strategies import AnchorChunk, ArrayVectors, ExactIndex, SelectionProblem, get_strategy
from hnsel.strategies.ascmr import (ASCMR, assign_regions, binary_entropy, gini, informativeness, lazy_greedy, match_entropy, match_logit,
                                    neighbour_graph)


def unit(x):
    x = np.asarray(x, dtype=np.float64)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_problem(cand, txt, cand_unc=None, txt_unc=None, max_limit=16384):
    cand_ids = np.array([f"u{i:03d}" for i in range(len(cand))], dtype=object)
    index = ExactIndex({"paired": (np.array([], dtype=object), np.zeros((0, cand.shape[1]), np.float32)), "candidates": (cand_ids, cand)},
                       max_limit=max_limit)

    def anchors(chunk_size):
        for s in range(0, len(txt), chunk_size):
            e = min(len(txt), s + chunk_size)
            yield AnchorChunk(np.array([f"t{i}" for i in range(s, e)], dtype=object), txt[s:e], tuple(frozenset() for _ in range(s, e)),
                              None if txt_unc is None else np.asarray(txt_unc[s:e]))

    return SelectionProblem(cand_ids, index, anchors, len(txt), vectors=ArrayVectors.from_index(index, cand_ids),
                            candidate_uncertainty=None if cand_unc is None else np.asarray(cand_unc))


def random_problem(seed=0, n_cand=60, n_txt=25, d=8, uncertain=True, max_limit=16384):
    rng = np.random.default_rng(seed)
    cand, txt = unit(rng.normal(size=(n_cand, d))), unit(rng.normal(size=(n_txt, d)))
    cu, tu = (rng.uniform(0, 0.6, n_cand), rng.uniform(0, 0.6, n_txt)) if uncertain else (None, None)
    return make_problem(cand, txt, cu, tu, max_limit), cand, txt, cu, tu


def test_match_probability_and_entropy_known_answers():
    # s = 0.5, u = 0.1, v = 0.2: d = 2 - 1 + 0.3 = 1.3; z = -10 * 1.3 + 10 = -3
    assert match_logit(0.5, 0.1, 0.2, 10.0, 10.0) == pytest.approx(-3.0)
    # p = 1 / (1 + e^3) = 0.047426; H = 0.047426 * 4.39817 + 0.952574 * 0.070099 = 0.27536 bits
    assert match_entropy(-3.0) == pytest.approx(0.27536, abs=1e-5)
    assert binary_entropy(1 / (1 + math.exp(3))) == pytest.approx(0.27536, abs=1e-5)
    # d = b / a gives p = 1/2, one full bit: s = 0.5 with zero variance
    assert match_entropy(match_logit(0.5, 0.0, 0.0, 10.0, 10.0)) == pytest.approx(1.0)
    assert binary_entropy([0.0, 1.0, 0.5, 0.25]) == pytest.approx([0.0, 0.0, 1.0, 0.811278], abs=1e-6)
    # far beyond float range the entropy is 0, not NaN
    assert np.all(match_entropy(np.array([-800.0, 800.0])) == 0.0)


def test_uncertainty_moves_a_candidate_to_the_ambiguous_distance():
    """Two candidates at the same similarity 0.6 to the one anchor: the one whose variance brings d to b/a = 1 is ambiguous."""
    txt = unit([[1, 0, 0]])
    cand = unit([[0.6, 0.8, 0], [0.6, 0, 0.8]])
    info, parts = informativeness(make_problem(cand, txt, [0.2, 0.0], [0.0]), neighbors=5)
    # u000: d = 0.8 + 0.2 = 1.0, H = 1; u001: d = 0.8, z = 2, p = 0.880797, H = 0.527065
    assert parts["ambiguity"] == pytest.approx([1.0, 0.527065], abs=1e-6)
    assert parts["intra"] == pytest.approx([1.0, 0.0]) and parts["cross"] == pytest.approx([1.0, 0.527065], abs=1e-6)
    assert info == pytest.approx([1.0, 0.527065 / 2], abs=1e-6)  # (1 * U + 1 * A) / 2
    sel = ASCMR(neighbors=5).select(make_problem(cand, txt, [0.2, 0.0], [0.0]), 2, np.random.default_rng(0))
    assert list(sel.ids) == ["u000", "u001"] and list(sel.reasons) == ["uncertainty", "ambiguity"]


def test_fallback_without_uncertainty_is_zero_variance_and_says_so():
    problem, cand, txt, _, _ = random_problem(seed=3, uncertain=False)
    sel = ASCMR().select(problem, 10, np.random.default_rng(0))
    assert sel.stats["ascmr"]["uncertainty"] == {"candidates": "fallback: zero variance", "anchors": "fallback: zero variance"}
    assert "similarities alone" in sel.stats["ascmr"]["reason"] and sel.stats["ascmr"]["weights"]["intra"] == 0.0
    zeros = make_problem(cand, txt, np.zeros(len(cand)), np.zeros(len(txt)))  # explicit zero variance: the same picks
    explicit = ASCMR().select(zeros, 10, np.random.default_rng(0))
    assert list(explicit.ids) == list(sel.ids) and np.allclose(explicit.scores, sel.scores)
    assert explicit.stats["ascmr"]["uncertainty"] == {"candidates": "model", "anchors": "model"}
    assert set(sel.reasons) == {"ambiguity"}


@pytest.mark.parametrize("chunk_size", [1, 7, 1024])
def test_search_path_equals_dense_numpy_when_m_covers_the_pool(chunk_size):
    problem, cand, txt, cu, tu = random_problem(seed=1)
    info, parts = informativeness(problem, neighbors=len(cand), scale=7.0, shift=6.0, intra_weight=0.5, chunk_size=chunk_size)
    s = txt.astype(np.float64) @ cand.T.astype(np.float64)  # anchors x pool: the reference only
    p = 1 / (1 + np.exp(-(-7.0 * (2 - 2 * s + cu[None, :] + tu[:, None]) + 6.0)))
    amb = (-(p * np.log2(p) + (1 - p) * np.log2(1 - p))).sum(axis=0)
    intra = (cu - cu.min()) / (cu.max() - cu.min())
    assert parts["ambiguity"] == pytest.approx(amb, rel=1e-5)
    assert info == pytest.approx((0.5 * intra + amb / amb.max()) / 1.5, rel=1e-5)
    assert list(parts["hits"]) == [len(txt)] * len(cand) and parts["anchors"] == len(txt)


def test_top_m_cut_equals_the_dense_sum_over_each_anchors_m_nearest():
    problem, cand, txt, cu, tu = random_problem(seed=2, max_limit=6)  # neighbors 10 capped by the index at 6
    _, parts = informativeness(problem, neighbors=10, chunk_size=4)
    s = txt.astype(np.float64) @ cand.T.astype(np.float64)
    z = -10 * (2 - 2 * s + cu[None, :] + tu[:, None]) + 10
    near = np.argsort(-s, axis=1, kind="stable")[:, :6]
    mask = np.zeros_like(s, dtype=bool)
    np.put_along_axis(mask, near, True, axis=1)
    assert parts["ambiguity"] == pytest.approx((match_entropy(z) * mask).sum(axis=0), rel=1e-5, abs=1e-12)
    assert parts["hits"].sum() == 6 * len(txt)
    tail = match_entropy(np.take_along_axis(z, near[:, -1:], axis=1))
    assert parts["tail_entropy_max"] == pytest.approx(tail.max(), rel=1e-5)


def brute_greedy(info, ids, edges, budget, lam):
    pen, picks = np.zeros(len(info)), []
    for _ in range(budget):
        best = min((r for r in range(len(info)) if r not in picks), key=lambda r: (-(info[r] - lam * pen[r]), ids[r]))
        picks.append(best)
        for (a, b), w in edges.items():
            if a == best:
                pen[b] += w
    return picks


def csr(edges, size):
    keys = sorted(edges)
    cols = np.array([b for _, b in keys], dtype=np.int64)
    weights = np.array([edges[k] for k in keys])
    indptr = np.r_[0, np.cumsum(np.bincount(np.array([a for a, _ in keys], dtype=np.int64), minlength=size))]
    return indptr, cols, weights


def test_lazy_greedy_known_answer_spreads_over_two_regions():
    """Region {a, b, c} is more informative than {d, e}; one linked pick at similarity 0.9 costs 0.45 at lam 0.5."""
    ids = np.array(["a", "b", "c", "d", "e"], dtype=object)
    info = np.array([1.0, 0.95, 0.9, 0.6, 0.55])
    edges = {(x, y): 0.9 for x in range(3) for y in range(3) if x != y} | {(3, 4): 0.9, (4, 3): 0.9}
    indptr, cols, weights = csr(edges, 5)
    rows, gains, pens = lazy_greedy(info, ids, indptr, cols, weights, 3, 0.5)
    assert list(rows) == [0, 3, 1] and gains == pytest.approx([1.0, 0.6, 0.5]) and pens == pytest.approx([0, 0, 0.9])
    assert list(lazy_greedy(info, ids, indptr, cols, weights, 3, 0.0)[0]) == [0, 1, 2]  # lam 0: the informativeness ranking
    assert list(assign_regions(indptr, cols, weights)) == [0, 0, 0, 3, 3]


def test_lazy_greedy_equals_plain_greedy_with_ties_by_id():
    rng = np.random.default_rng(5)
    size = 40
    info = np.round(rng.uniform(0, 1, size) * 4) / 4  # many ties; quarters keep every sum exact
    ids = np.array([f"x{i:02d}" for i in rng.permutation(size)], dtype=object)
    edges = {}
    for a in range(size):
        for b in rng.choice(size, 4, replace=False):
            if a != b:
                edges[(a, int(b))] = edges[(int(b), a)] = float(np.round(rng.uniform(0, 1) * 4) / 4)
    indptr, cols, weights = csr(edges, size)
    for lam in (0.0, 0.5, 2.0):
        assert list(lazy_greedy(info, ids, indptr, cols, weights, 25, lam)[0]) == brute_greedy(info, ids, edges, 25, lam)


def test_neighbour_graph_equals_dense_knn():
    problem, cand, _, _, _ = random_problem(seed=4, n_cand=30)
    short = np.array([3, 0, 7, 12, 25, 29, 8, 15])
    indptr, cols, weights, knn = neighbour_graph(problem, short, 3, chunk_size=3)
    s = cand.astype(np.float64) @ cand.T.astype(np.float64)
    np.fill_diagonal(s, -np.inf)
    near = np.argsort(-s, axis=1, kind="stable")[:, :3]
    where = {c: r for r, c in enumerate(short)}
    expected = {}
    for r, c in enumerate(short):
        for k in near[c]:
            if k in where:
                expected[(r, where[k])] = expected[(where[k], r)] = max(s[c, k], 0.0)
    got = {(r, int(cols[i])): weights[i] for r in range(len(short)) for i in range(indptr[r], indptr[r + 1])}
    assert set(got) == set(expected) and all(got[k] == pytest.approx(expected[k], abs=1e-6) for k in got)
    assert knn == pytest.approx([s[c, near[c]].mean() for c in short], abs=1e-6)


def two_regions():
    """Region A (5 candidates near e1) sits at similarity 0.5 to three anchors, region B (near e2) to one."""
    offsets = 0.03 * np.array([[0, 0, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 1], [0, 0, -1, 0, 0]])
    a = unit(np.eye(5)[0] + offsets)
    b = unit(np.eye(5)[1] + offsets)
    h = math.sqrt(3) / 2
    txt = unit([[0.5, 0, h, 0, 0], [0.5, 0, 0, h, 0], [0.5, 0, 0, 0, h], [0, 0.5, h, 0, 0]])
    return np.concatenate([a, b]), txt


def test_allocation_spreads_over_two_dense_regions_instead_of_piling_into_one():
    cand, txt = two_regions()
    problem = make_problem(cand, txt)
    plain = ASCMR(neighbors=5, lam=0.0, density_neighbors=4).select(problem, 4, np.random.default_rng(0))
    assert {i < "u005" for i in plain.ids} == {True}  # without the regulariser every pick comes from region A
    sel = ASCMR(neighbors=5, density_neighbors=4).select(problem, 4, np.random.default_rng(0))
    in_a = [i < "u005" for i in sel.ids]
    assert in_a == [True, True, False, True] and len(set(sel.ids)) == 4
    d = sel.stats["ascmr"]
    assert d["regions"] == 2 and d["regions_picked"] == 2
    assert d["max_share"] == 0.75 and d["max_share_without_regulariser"] == 1.0
    assert [r["picks"] for r in d["top_regions"]] == [3, 1] and [r["shortlisted"] for r in d["top_regions"]] == [5, 5]
    assert d["gini"] == pytest.approx(gini([3, 1])) and d["gini_without_regulariser"] == pytest.approx(0.5)
    assert d["penalised_picks"] == 2 and np.all(np.diff(sel.scores) <= 1e-12)
    assert list(sel.violations) == [3, 3, 1, 3]  # anchors whose nearest candidates include each pick


def test_gini_known_answers():
    assert gini([1, 1, 1]) == 0.0 and gini([0, 0, 4]) == pytest.approx(2 / 3) and gini([]) == 0.0


def test_seeded_fill_is_reproducible_and_reported():
    rng = np.random.default_rng(0)
    cand = unit(rng.normal(size=(20, 4)))
    problem = make_problem(cand, np.zeros((0, 4), np.float32))  # no anchors, no uncertainty: nothing is informative
    a = ASCMR().select(problem, 5, np.random.default_rng(9))
    assert list(ASCMR().select(problem, 5, np.random.default_rng(9)).ids) == list(a.ids)
    assert list(ASCMR().select(problem, 5, np.random.default_rng(10)).ids) != list(a.ids)
    assert set(a.reasons) == {"fill"} and a.stats["filled"] == 5 and a.stats["ascmr"]["fill"] == 5
    problem, *_ = random_problem(seed=6)
    first, again = (ASCMR().select(problem, 12, np.random.default_rng(1)) for _ in range(2))
    assert list(first.ids) == list(again.ids) and first.stats == again.stats


def test_budget_errors_and_parameters():
    problem, *_ = random_problem(seed=0)
    with pytest.raises(SelectionError, match="larger than the 60 candidates"):
        ASCMR().select(problem, 61, np.random.default_rng(0))
    with pytest.raises(SelectionError, match="at least 1"):
        ASCMR().select(problem, 0, np.random.default_rng(0))
    assert isinstance(get_strategy("ascmr", lam=0.2, scale=4.0), ASCMR)
    for bad in ({"lam": -1.0}, {"scale": 0.0}, {"neighbors": 0}, {"shortlist": 0}):
        with pytest.raises(SelectionError, match="ascmr"):
            get_strategy("ascmr", **bad)
    for f in dataclasses.fields(ASCMR):
        assert f.metadata["help"].endswith(".") and f.metadata["help"].count(". ") == 0, f.name


def test_bad_uncertainty_arrays_are_one_line_errors():
    _, cand, txt, cu, tu = random_problem(seed=0)
    with pytest.raises(SelectionError, match="59 values for 60"):
        ASCMR().select(make_problem(cand, txt, cu[:-1], tu), 5, np.random.default_rng(0))
    with pytest.raises(SelectionError, match="finite and 0 or more"):
        ASCMR().select(make_problem(cand, txt, cu, -tu), 5, np.random.default_rng(0))


# ---- the Gaussian heads (torch) ----

def test_uncertainty_is_the_summed_variance():
    torch = pytest.importorskip("torch")
    from hnsel.model.probabilistic import uncertainty

    out = uncertainty(torch.log(torch.tensor([[0.1, 0.2], [1.0, 1.0], [0.5, 0.25]])))
    assert out.shape == (3,) and torch.allclose(out, torch.tensor([0.3, 2.0, 0.75]))


def test_closed_form_match_probability_agrees_with_the_strategy():
    torch = pytest.importorskip("torch")
    from hnsel.model.probabilistic import expected_distance, match_probability

    mu1 = torch.tensor([[1.0, 0.0, 0.0]])
    mu2 = torch.tensor([[0.6, 0.8, 0.0], [0.0, 1.0, 0.0]])
    lv1 = torch.log(torch.tensor([[0.05, 0.05, 0.1]]))  # summed variance 0.2
    lv2 = torch.log(torch.tensor([[0.1, 0.1, 0.1], [0.2, 0.2, 0.1]]))  # 0.3 and 0.5
    d = expected_distance(mu1, lv1, mu2, lv2)
    assert torch.allclose(d, torch.tensor([[0.8 + 0.5, 2.0 + 0.7]]))  # ||mu1 - mu2||^2 = 2 - 2 s, plus both variances
    p = match_probability(mu1, lv1, mu2, lv2, 10.0, 10.0)
    z = match_logit(np.array([0.6, 0.0]), np.array([0.3, 0.5]), 0.2, 10.0, 10.0)
    assert np.allclose(p.numpy()[0], 1 / (1 + np.exp(-z)), atol=1e-6)


def test_probabilistic_heads_start_as_stated_and_rebuild_from_spec():
    torch = pytest.importorskip("torch")
    from hnsel.model.heads import ProjectionHead, build_head
    from hnsel.model.probabilistic import MatchCalibration, uncertainty

    torch.manual_seed(0)
    plain = ProjectionHead("linear", 6, 4)
    torch.manual_seed(0)
    head = ProjectionHead("linear", 6, 4, variance=0.2)
    x = torch.randn(3, 6)
    assert torch.equal(head(x), plain(x))  # the variance branch is drawn aside: the mean is a plain head's of the same seed
    assert torch.allclose(uncertainty(head.log_variance(x)), torch.full((3,), 0.2))
    assert head.spec["variance"] == 0.2 and head.probabilistic and not plain.probabilistic
    with pytest.raises(ValueError, match="not probabilistic"):
        plain.log_variance(x)
    head.spec["match"] = MatchCalibration().match_parameters()
    assert head.spec["match"] == pytest.approx({"scale": 10.0, "shift": 10.0})
    copy = build_head(head.spec, head.state_dict())
    assert torch.equal(copy(x), head(x)) and torch.equal(copy.log_variance(x), head.log_variance(x)) and copy.spec == head.spec


def test_probabilistic_loss_decreases_on_a_matched_toy_batch():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    from hnsel.model.heads import ProjectionHead
    from hnsel.model.probabilistic import MatchCalibration, probabilistic_loss

    torch.manual_seed(0)
    image = torch.randn(16, 12)
    text = image[:, :8] + 0.1 * torch.randn(16, 8)  # caption i describes image i
    heads = [ProjectionHead("linear", 12, 6, variance=0.1), ProjectionHead("linear", 8, 6, variance=0.1)]
    match = MatchCalibration()
    opt = torch.optim.Adam([p for m in (*heads, match) for p in m.parameters()], lr=0.05)

    def loss():
        return probabilistic_loss(F.normalize(heads[0](image), dim=-1), heads[0].log_variance(image), F.normalize(heads[1](text), dim=-1),
                                  heads[1].log_variance(text), match.scale, match.shift, 1e-4)

    losses = []
    for _ in range(40):
        value = loss()
        opt.zero_grad()
        value.backward()
        opt.step()
        losses.append(value.item())
    assert losses[-1] < 0.5 * losses[0] and match.scale.item() > 0
    with pytest.raises(ValueError, match="not square"):
        probabilistic_loss(torch.zeros(3, 6), torch.zeros(3, 6), torch.zeros(16, 6), torch.zeros(16, 6), 1.0, 0.0, 0.0)


def test_train_heads_probabilistic_keeps_retrieval_and_calibrates():
    """Gaussian heads trained beside InfoNCE: retrieval within a few R-sum points of plain heads from the same seed,
    a summed variance per sample, and the calibrated match parameters in the heads' spec."""
    pytest.importorskip("torch")
    from hnsel.model.train import head_uncertainty, train_heads

    rng = np.random.default_rng(0)
    img = rng.normal(size=(300, 24)).astype(np.float32)
    idx = np.repeat(np.arange(300), 2)
    txt = img[idx] + 0.7 * rng.normal(size=(600, 24)).astype(np.float32)
    plain, plain_curve = train_heads(img, txt, idx, epochs=8, dim_out=12, val_fraction=0.2, patience=100)
    gauss, gauss_curve = train_heads(img, txt, idx, epochs=8, dim_out=12, val_fraction=0.2, patience=100, probabilistic=1.0)
    assert gauss_curve[0]["val_rsum"] == plain_curve[0]["val_rsum"]  # the same means at the start
    assert abs(gauss_curve[-1]["val_rsum"] - plain_curve[-1]["val_rsum"]) < 15
    u = head_uncertainty(gauss["image"], img)
    assert u.shape == (300,) and (u > 0).all() and head_uncertainty(plain["image"], img) is None
    assert set(gauss["text"].spec["match"]) == {"scale", "shift"} and gauss["text"].spec["match"]["scale"] > 0


def test_reason_warns_when_the_top_m_cut_leaves_ambiguity_out():
    problem, *_ = random_problem(seed=8)
    short = ASCMR(neighbors=3).select(problem, 5, np.random.default_rng(0)).stats["ascmr"]
    assert short["tail_entropy_mean"] < 0.5 and "raise neighbors" not in short["reason"]
    at_tail = ASCMR(neighbors=3, shift=14.0).select(problem, 5, np.random.default_rng(0)).stats["ascmr"]  # p = 1/2 at d = 1.4, about the 3rd hit
    assert at_tail["tail_entropy_mean"] > 0.5 and "raise neighbors" in at_tail["reason"]


def test_ascmr_through_milvus_equals_the_exact_problem_with_stored_uncertainties(store_uri, namespace):
    """Uncertainties and the calibrated match parameters stored with the vectors (FLAT, Lite and server): ``hnsel select
    --strategy ascmr`` reads them and picks what the same strategy picks on the in-memory problem."""
    from hnsel import api
    from hnsel.config import HnselConfig, StoreConfig
    from hnsel.schema import MATCH_META_KEY
    from hnsel.store import open_store

    rng = np.random.default_rng(4)
    d, n_cand, n_img = 8, 50, 12
    cand, img = unit(rng.normal(size=(n_cand, d))), unit(rng.normal(size=(n_img, d)))
    owner = np.repeat(np.arange(n_img), 2)
    txt = unit(img[owner] + 0.4 * rng.normal(size=(len(owner), d)))
    cu, tu = rng.uniform(0.05, 0.5, n_cand), rng.uniform(0.05, 0.5, len(owner))
    config = HnselConfig(store=StoreConfig(uri=store_uri, namespace=namespace))
    cand_ids = [f"u{i:03d}" for i in range(n_cand)]
    with open_store(config.store) as store:
        store.ensure_collections(d, uncertainty=True)
        store.upsert("images", {"id": cand_ids + [f"p{i:02d}" for i in range(n_img)], "vector": np.concatenate([cand, img]),
                                "pool": ["unpaired"] * n_cand + ["paired"] * n_img, "uncertainty": np.concatenate([cu, np.full(n_img, 0.2)])})
        store.upsert("texts", {"id": [f"t{i:02d}" for i in range(len(owner))], "vector": txt, "pool": ["paired"] * len(owner),
                               "image_id": [f"p{o:02d}" for o in owner], "uncertainty": tu})
        store.set_meta(MATCH_META_KEY, {"scale": 6.0, "shift": 5.0})
    result = api.select(config, budget=8, strategy="ascmr", params={"neighbors": 20, "density_neighbors": 5}, seed=1, record=False)
    problem = make_problem(cand, txt, cu, tu)
    problem.anchors = (lambda f: (lambda n: (AnchorChunk(c.ids, c.vectors, tuple(frozenset([f"p{owner[int(i[1:])]:02d}"]) for i in c.ids),
                                                        c.uncertainty) for c in f(n))))(problem.anchors)
    problem.match = {"scale": 6.0, "shift": 5.0}
    expected = get_strategy("ascmr", neighbors=20, density_neighbors=5).select(problem, 8, np.random.default_rng(1))
    assert list(result.selection.ids) == list(expected.ids)
    assert np.allclose(result.selection.scores, expected.scores, atol=1e-5)
    decision = result.selection.stats["ascmr"]
    assert decision["uncertainty"] == {"candidates": "model", "anchors": "model"} == expected.stats["ascmr"]["uncertainty"]
    assert decision["scale"] == 6.0 and decision["shift"] == 5.0


def test_recording_and_pairing_keep_the_stored_uncertainty(lite_uri):
    """``Store.update`` rewrites whole rows (Milvus has no partial update): the optional field goes along."""
    from hnsel.config import StoreConfig
    from hnsel.store import open_store

    with open_store(StoreConfig(uri=lite_uri, namespace="keep_u")) as store:
        store.ensure_collections(4, uncertainty=True)
        store.upsert("images", {"id": ["a", "b"], "vector": np.eye(4, dtype=np.float32)[:2], "pool": ["unpaired"] * 2,
                                "uncertainty": [0.25, 0.5]})
        assert store.set_round("images", ["a", "b"], 3) == 2
        assert store.update("images", ["b"], {"pool": "paired"}) == 1
        # rows rewritten without the field (as an annotation import pairs images) keep it; a new row's is unknown
        store.upsert("images", {"id": ["a", "c"], "vector": np.eye(4, dtype=np.float32)[[0, 2]], "pool": ["paired", "unpaired"]})
        rows = {r["id"]: r for r in store.get("images", ["a", "b", "c"], ["id", "round", "pool", "uncertainty"])}
    assert rows["a"]["round"] == rows["b"]["round"] == 3 and rows["b"]["pool"] == rows["a"]["pool"] == "paired"
    assert rows["a"]["uncertainty"] == pytest.approx(0.25) and rows["b"]["uncertainty"] == pytest.approx(0.5)
    assert rows["c"]["uncertainty"] == -1.0 and rows["c"]["round"] == -1
