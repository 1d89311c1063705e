"""Recall@K against hand-made similarity matrices with known ranks."""

from __future__ import annotations

import numpy as np
import pytest

from hnsel.errors import InputError
from hnsel.model.metrics import evaluate_recall, image_to_text_ranks, text_to_image_ranks


def vectors_for(sim: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image and text vectors whose dot products are exactly ``sim`` (images x captions)."""
    sim = np.asarray(sim, dtype=np.float32)
    return np.eye(sim.shape[0], dtype=np.float32), sim.T.copy()


# 3 images, 5 captions: captions 0, 1 -> image 0; caption 2 -> image 1; captions 3, 4 -> image 2
SIM = np.array(
    [
        [0.9, 0.1, 0.5, 0.2, 0.3],  # image 0: best own caption 0.9 -> rank 0
        [0.8, 0.7, 0.6, 0.1, 0.2],  # image 1: own 0.6, beaten by 0.8 and 0.7 -> rank 2
        [0.1, 0.95, 0.3, 0.4, 0.2],  # image 2: best own 0.4, beaten by 0.95 -> rank 1
    ]
)
INDEX = np.array([0, 0, 1, 2, 2])


def test_ranks_with_several_captions_per_image_and_a_tie():
    images, texts = vectors_for(SIM)
    assert image_to_text_ranks(images, texts, INDEX).tolist() == [0, 2, 1]
    # caption 1's image 0 (0.1) is below 0.7 and 0.95; caption 4's image 2 (0.2) is below 0.3 and tied
    # with image 1's 0.2: ties count against the model
    assert text_to_image_ranks(images, texts, INDEX).tolist() == [0, 2, 0, 0, 2]


def test_recall_values_in_percent():
    images, texts = vectors_for(SIM)
    got = evaluate_recall(images, texts, INDEX, ks=(1, 2, 3))
    assert got["i2t"] == pytest.approx({"r1": 100 / 3, "r2": 200 / 3, "r3": 100.0})
    assert got["t2i"] == pytest.approx({"r1": 60.0, "r2": 60.0, "r3": 100.0})
    assert got["rsum"] == pytest.approx(100 / 3 + 200 / 3 + 100 + 60 + 60 + 100)


def test_recall_at_1_5_10_with_known_ranks():
    n = 12
    sim = np.full((n, n), 0.1)
    for i in range(n):  # image i's caption is beaten by exactly i other captions
        others = [j for j in range(n) if j != i][:i]
        sim[i, others] = 0.9
        sim[i, i] = 0.5
    images, texts = vectors_for(sim)
    got = evaluate_recall(images, texts, np.arange(n))
    assert got["i2t"] == pytest.approx({"r1": 100 / 12, "r5": 500 / 12, "r10": 1000 / 12})
    assert set(got) == {"i2t", "t2i", "rsum"}


def test_chunking_does_not_change_the_answer_and_matches_argsort():
    rng = np.random.default_rng(0)
    images, texts = rng.normal(size=(30, 8)), rng.normal(size=(70, 8))
    index = np.concatenate([np.arange(30), rng.integers(0, 30, size=40)])
    whole = evaluate_recall(images, texts, index)
    assert evaluate_recall(images, texts, index, max_chunk_elements=1) == whole
    sim = images @ texts.T
    order = np.argsort(-sim, axis=1)
    naive_i2t = [min(np.flatnonzero(index[order[i]] == i)) for i in range(30)]
    naive_t2i = [int(np.flatnonzero(np.argsort(-sim[:, j]) == index[j])[0]) for j in range(70)]
    assert image_to_text_ranks(images, texts, index, max_chunk_elements=50).tolist() == naive_i2t
    assert text_to_image_ranks(images, texts, index, max_chunk_elements=50).tolist() == naive_t2i


def test_collapsed_vectors_score_zero_not_hundred():
    got = evaluate_recall(np.ones((20, 4)), np.ones((20, 4)), np.arange(20))
    assert got["rsum"] == 0.0


@pytest.mark.parametrize(
    "images, texts, index, message",
    [
        (np.eye(3), np.eye(3)[:2], np.array([0, 1]), "image index 2 has no caption"),
        (np.eye(3), np.eye(3), np.array([0, 1, 3]), "outside 0..2"),
        (np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0, dtype=int), "nothing to evaluate"),
        (np.eye(3), np.eye(4), np.arange(4) % 3, "same dimension"),
    ],
)
def test_bad_inputs_name_the_problem(images, texts, index, message):
    with pytest.raises(InputError, match=message):
        evaluate_recall(images, texts, index)
