"""Tests of `ukbench_score` against a brute-force NumPy loop."""

import numpy as np
import pytest

from keras_cgd.evaluation import ukbench_score


def _brute_ns(emb, labels, k=4, metric="cosine"):
    """Full score matrix, stable sort (ties by index), self kept."""
    emb = np.asarray(emb, np.float64)
    labels = np.asarray(labels)
    if metric == "cosine":
        x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        scores = x @ x.T
    elif metric == "inner_product":
        scores = emb @ emb.T
    else:
        scores = -np.sqrt(((emb[:, None, :] - emb[None, :, :]) ** 2).sum(-1))
    total = 0
    for q in range(len(emb)):
        order = sorted(range(len(emb)), key=lambda j: (-scores[q, j], j))
        total += sum(labels[j] == labels[q] for j in order[:k])
    return total / len(emb)


@pytest.mark.parametrize("metric", ["cosine", "inner_product", "euclidean"])
def test_matches_brute_force_random(metric):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(10, 8))
    labels = np.repeat(np.arange(10), 4)
    emb = centers[labels] + 0.9 * rng.normal(size=(40, 8))
    emb = emb.astype("float64")
    got = ukbench_score(emb, labels, metric=metric, chunk_size=7)
    want = _brute_ns(emb, labels, metric=metric)
    assert got == pytest.approx(want, abs=1e-12)
    assert 0.0 < got < 4.0  # noisy data: neither perfect nor zero


def test_perfect_and_self_counts():
    # Four tight clusters of four: every top-4 is the whole group, self included.
    labels = np.repeat(np.arange(4), 4)
    emb = np.eye(4)[labels] + 1e-3 * np.arange(16)[:, None] * np.array([1, -1, 1, -1])
    assert ukbench_score(emb, labels) == 4.0
    # Singletons in their own direction: only the query itself matches.
    emb2 = np.eye(6)
    assert ukbench_score(emb2, np.arange(6)) == _brute_ns(emb2, np.arange(6)) == 1.0


def test_ties_follow_index_order():
    # Exact duplicates: items 0..5 identical; labels differ so the tie rule matters.
    emb = np.zeros((8, 3), np.float32)
    emb[:6] = [1.0, 0.0, 0.0]
    emb[6:] = [0.0, 1.0, 0.0]
    labels = np.array([0, 1, 0, 1, 0, 0, 2, 2])
    got = ukbench_score(emb, labels)
    want = _brute_ns(emb, labels)
    # Hand count: queries 0..5 all retrieve items 0,1,2,3 (ties by index).
    # labels of 0..3 are [0,1,0,1]: label-0 queries (0,2,4,5) score 2, label-1
    # queries (1,3) score 2; queries 6,7 retrieve 6,7 then 0,1 -> 2 each.
    assert want == 2.0
    assert got == want


def test_k_argument_and_integer_ties():
    rng = np.random.default_rng(3)
    emb = rng.integers(0, 3, size=(30, 4)).astype("float32")  # many exact ties
    emb[emb.sum(1) == 0] = 1.0
    labels = rng.integers(0, 6, size=30)
    for k in (1, 3, 4, 7):
        for metric in ("cosine", "inner_product", "euclidean"):
            assert ukbench_score(emb, labels, k=k, metric=metric, chunk_size=4) == pytest.approx(
                _brute_ns(emb, labels, k, metric), abs=1e-12
            )


def test_validation():
    emb = np.eye(4, dtype="float32")
    with pytest.raises(ValueError, match="`k`"):
        ukbench_score(emb, [0, 0, 1, 1], k=5)
    with pytest.raises(ValueError, match="`labels`"):
        ukbench_score(emb, [0, 0, 1])
    with pytest.raises(ValueError, match="`embeddings`"):
        ukbench_score(np.ones(4), [0, 0, 1, 1])
    with pytest.raises(ValueError, match="`metric`"):
        ukbench_score(emb, [0, 0, 1, 1], metric="l1")
