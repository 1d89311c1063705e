"""Each loss against a value computed by hand on a tiny batch, and the sign of its gradient."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hnsel.errors import ConfigError
from hnsel.model.losses import caption_labels, infonce_loss, kendall_loss, list_losses, parse_loss, triplet_sn_loss, vsepp_loss


def sp(x: float) -> float:
    return math.log1p(math.exp(x))


# Two images, three captions: captions 0 and 1 describe image 0, caption 2 describes image 1.
SIM_MULTI = [[0.7, 0.4, 0.55], [0.3, 0.65, 0.8]]
POS_MULTI = torch.tensor([[True, True, False], [False, False, True]])


def t(rows, grad=False):
    return torch.tensor(rows, dtype=torch.float64, requires_grad=grad)


def test_vsepp_hand_value_with_an_image_owning_two_captions():
    # caption 0: img neg 0.3 -> [0.2-0.7+0.3]=0 ; cap neg of img0 is caption 2 only (0.55) -> 0.05
    # caption 1: img neg 0.65 -> 0.45 ; cap neg 0.55 -> 0.35 (caption 0 is a positive, not a negative)
    # caption 2: img neg 0.55 -> 0 ; cap neg of img1 max(0.3, 0.65) -> 0.05
    expected = (0.05 + 0.45 + 0.35 + 0.05) / 3
    assert vsepp_loss(t(SIM_MULTI), POS_MULTI, margin=0.2).item() == pytest.approx(expected, abs=1e-9)


def test_infonce_hand_value_and_equal_to_clip_with_one_caption_per_image():
    # temperature 1: caption 0: t2i softplus(0.3-0.7), i2t softplus(0.55-0.7)
    # caption 1: t2i softplus(0.65-0.4), i2t softplus(0.55-0.4); caption 2: t2i softplus(0.55-0.8),
    # i2t softplus(logsumexp(0.3, 0.65) - 0.8)
    lse = math.log(math.exp(0.3) + math.exp(0.65))
    t2i = (sp(0.3 - 0.7) + sp(0.65 - 0.4) + sp(0.55 - 0.8)) / 3
    i2t = (sp(0.55 - 0.7) + sp(0.55 - 0.4) + sp(lse - 0.8)) / 3
    got = infonce_loss(t(SIM_MULTI), POS_MULTI, temperature=1.0).item()
    assert got == pytest.approx((t2i + i2t) / 2, abs=1e-9)

    gen = torch.Generator().manual_seed(0)
    sim = torch.rand(5, 5, generator=gen, dtype=torch.float64)
    logits, target = sim / 0.07, torch.arange(5)
    clip = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    assert infonce_loss(sim, torch.eye(5, dtype=torch.bool), temperature=0.07).item() == pytest.approx(clip.item(), abs=1e-9)


def test_triplet_sn_hand_value_and_limit_is_vsepp():
    sim = [[0.5, 0.2, 0.1], [0.45, 0.6, 0.3], [0.35, 0.1, 0.7]]
    pos = torch.eye(3, dtype=torch.bool)
    # caption 0 (s=0.5): negative images 0.45, 0.35 -> hinges 0.15, 0.05, weights softmax(4.5, 3.5)
    # image 1's negative captions 0.45, 0.3 -> hinges 0.05, 0 (for caption 1, s=0.6); all else 0
    w = 1 / (1 + math.exp(-1.0))
    expected = (w * 0.15 + (1 - w) * 0.05 + 1 / (1 + math.exp(-1.5)) * 0.05) / 3
    got = triplet_sn_loss(t(sim), pos, margin=0.2, sn_temperature=0.1, sn_top_k=2).item()
    assert got == pytest.approx(expected, abs=1e-9)

    gen = torch.Generator().manual_seed(1)
    rand = torch.rand(6, 6, generator=gen, dtype=torch.float64)
    eye = torch.eye(6, dtype=torch.bool)
    hardest_only = triplet_sn_loss(rand, eye, margin=0.5, sn_top_k=1).item()
    assert hardest_only == pytest.approx(vsepp_loss(rand, eye, margin=0.5).item(), abs=1e-12)


def test_kendall_hand_value_sliding_window():
    sim = [[0.5, 0.4, 0.6], [0.2, 0.1, 0.3]]
    labels = t([[1.0, 0.2, 0.6], [0.3, 1.0, 0.25]])
    pos = torch.tensor([[True, False, True], [False, True, False]])
    disc = lambda dp: (1 - math.tanh(dp / 0.1)) / 2  # noqa: E731  (label order a > b)
    pairs = [
        disc(-0.1), disc(0.2),  # image 0: (c0, c2), (c2, c1)
        disc(-0.1), disc(-0.1),  # image 1: (c1, c0), (c0, c2)
        disc(0.3), disc(-0.3), disc(0.3),  # captions 0, 1, 2: (their image, the other)
    ]
    got = kendall_loss(t(sim), pos, labels, kendall_window=1, kendall_hardest=0, kendall_temperature=0.1).item()
    assert got == pytest.approx(sum(pairs) / len(pairs), abs=1e-9)


def test_kendall_hand_value_hardest_pairs_and_ties_dropped():
    sim, labels = t([[0.5, 0.4, 0.6]]), t([[1.0, 0.2, 0.6]])
    pos = torch.tensor([[True, True, True]])
    # all pairs among the 3 highest-scored: (c2, c0): label order reversed; (c2, c1); (c0, c1)
    expected = ((1 + math.tanh(1)) / 2 + (1 - math.tanh(2)) / 2 + (1 - math.tanh(1)) / 2) / 3
    got = kendall_loss(sim, pos, labels, kendall_window=0, kendall_hardest=3, kendall_temperature=0.1).item()
    assert got == pytest.approx(expected, abs=1e-9)
    ties = kendall_loss(sim, pos, t([[0.5, 0.5, 0.5]]), kendall_window=2, kendall_hardest=3)
    assert ties.item() == 0.0


@pytest.mark.parametrize("name", ["infonce", "vsepp", "triplet-sn"])
def test_gradient_raises_the_positive_and_lowers_the_hardest_negative(name):
    # caption 0's positive (0.2) sits below a negative image (0.5): a violated triplet
    sim = t([[0.2, 0.1], [0.5, 0.6]], grad=True)
    parse_loss(name)(sim, torch.eye(2, dtype=torch.bool)).backward()
    assert sim.grad[0, 0] < 0  # descending the loss raises s(image 0, caption 0)
    assert sim.grad[1, 0] > 0  # and lowers the hard negative s(image 1, caption 0)


def test_kendall_gradient_follows_the_label_order():
    sim = t([[0.3, 0.5]], grad=True)  # the model ranks caption 1 first
    labels = t([[0.9, 0.2]])  # but caption 0 is closer to the image's own captions
    kendall_loss(sim, torch.tensor([[True, True]]), labels, kendall_window=1).backward()
    assert sim.grad[0, 0] < 0 and sim.grad[0, 1] > 0


def test_caption_labels_is_max_over_the_images_own_captions():
    texts = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=1)
    own = torch.stack([texts[[0, 1]], torch.stack([texts[2], torch.zeros(2)])])  # image 1 has one caption
    mask = torch.tensor([[True, True], [True, False]])
    got = caption_labels(own, mask, texts)
    r = 1 / math.sqrt(2)
    assert torch.allclose(got, torch.tensor([[1.0, 1.0, r], [r, r, 1.0]]), atol=1e-6)


def test_parse_loss_weights_params_and_errors():
    spec = parse_loss("vsepp + 0.5*kendall", margin=0.3)
    assert spec.terms == ((1.0, "vsepp"), (0.5, "kendall")) and spec.needs_labels
    assert str(spec) == "vsepp+0.5*kendall"
    sim = t([[0.2, 0.1], [0.5, 0.6]])
    eye, labels = torch.eye(2, dtype=torch.bool), t([[1.0, 0.1], [0.1, 1.0]])
    combined = spec(sim, eye, labels).item()
    separate = vsepp_loss(sim, eye, margin=0.3).item() + 0.5 * kendall_loss(sim, eye, labels).item()
    assert combined == pytest.approx(separate, abs=1e-12)
    assert set(list_losses()) == {"infonce", "vsepp", "triplet-sn", "kendall"}
    with pytest.raises(ConfigError, match="'hinge'"):
        parse_loss("vsepp+hinge")
    with pytest.raises(ConfigError, match="temperature"):
        parse_loss("vsepp", temperature=0.1)
