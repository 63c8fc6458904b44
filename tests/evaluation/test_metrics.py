"""Metrics and top-k against brute-force loops (full score matrix, stable sort).

Tie rule under test: decreasing similarity, equal scores by gallery index.
Integer-valued embeddings make every score exact, so ties are real ties.
"""

import numpy as np
import pytest

from keras_cgd.evaluation import copy_detection_map
from keras_cgd.evaluation import map_at_r
from keras_cgd.evaluation import mean_average_precision
from keras_cgd.evaluation import recall_at_k
from keras_cgd.evaluation import topk_neighbors


# ---------------------------------------------------------------- references
def brute_ranking(queries, gallery, exclude, metric):
    """Full ranking per query: list of gallery indices, best first."""
    q = np.asarray(queries, np.float64)
    g = np.asarray(gallery, np.float64)
    rankings = []
    for i in range(len(q)):
        items = []
        for j in range(len(g)):
            if exclude is not None and exclude[i] == j:
                continue
            if metric == "euclidean":
                key = float(np.sum((q[i] - g[j]) ** 2))
            elif metric == "inner_product":
                key = -float(np.dot(q[i], g[j]))
            else:
                key = -float(np.dot(q[i], g[j]) / (np.linalg.norm(q[i]) * np.linalg.norm(g[j])))
            items.append((key, j))
        items.sort()  # by score, then by index: the documented tie rule
        rankings.append([j for _, j in items])
    return rankings


def brute_recall(rankings, qlabels, glabels, k):
    return np.mean([any(glabels[j] == qlabels[i] for j in r[:k]) for i, r in enumerate(rankings)])


def brute_map_at_r(rankings, qlabels, glabels):
    aps = []
    for i, r in enumerate(rankings):
        rel = [glabels[j] == qlabels[i] for j in r]
        R = sum(rel)
        if R == 0:
            aps.append(0.0)
            continue
        hits, ap = 0, 0.0
        for pos in range(R):
            if rel[pos]:
                hits += 1
                ap += hits / (pos + 1)
        aps.append(ap / R)
    return float(np.mean(aps))


def brute_holidays_ap(ranks, nres):
    """The Holidays `score_ap_from_ranks_1` loop, written out."""
    ap = 0.0
    for ntp, rank in enumerate(ranks):
        precision_0 = 1.0 if rank == 0 else ntp / rank
        precision_1 = (ntp + 1) / (rank + 1)
        ap += (precision_1 + precision_0) / (2 * nres)
    return ap


def brute_map(rankings, qlabels, glabels, relevant_mask=None, k=None):
    aps = []
    for i, r in enumerate(rankings):
        rel = [glabels[j] == qlabels[i] and (relevant_mask is None or relevant_mask[j]) for j in r]
        nres = sum(rel)
        r_k = rel if k is None else rel[:k]
        ranks = [pos for pos, x in enumerate(r_k) if x]
        aps.append(brute_holidays_ap(ranks, nres) if nres else 0.0)
    return float(np.mean(aps))


def tie_data(seed, n=40, d=3, num_classes=6):
    """Small integer embeddings with many exact ties and duplicates."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, size=(n, d)).astype(np.float32)
    x[np.all(x == 0, axis=1), 0] = 1  # no zero vector
    labels = rng.integers(0, num_classes, size=n)
    labels[-1] = 99  # a query with no relevant item
    return x, labels


METRICS = ["cosine", "inner_product", "euclidean"]


# ---------------------------------------------------------------- top-k
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("chunk_size", [1, 7, None])
def test_topk_matches_bruteforce_with_ties(metric, chunk_size):
    x, _ = tie_data(0)
    # Cosine of integer vectors is not exact in float, so cosine is tested on
    # one-hot rows (exact scores 0 or 1, ties everywhere).
    if metric == "cosine":
        x = np.eye(3, dtype=np.float32)[np.random.default_rng(1).integers(0, 3, 40)]
    ref = brute_ranking(x, x, np.arange(len(x)), metric)
    for k in (1, 5, len(x) - 1):
        idx, _ = topk_neighbors(x, k=k, metric=metric, chunk_size=chunk_size)
        np.testing.assert_array_equal(idx, np.array([r[:k] for r in ref]))


def test_topk_block_path_matches_exact_sort():
    # N >= 4 * max(4k, 1024) takes the block lower-bound fast path.
    rng = np.random.default_rng(3)
    g = rng.integers(-3, 4, size=(5000, 4)).astype(np.float32)  # many ties
    q = rng.integers(-3, 4, size=(9, 4)).astype(np.float32)
    scores = q.astype(np.float64) @ g.T.astype(np.float64)
    for k in (1, 3, 50):
        idx, val = topk_neighbors(q, g, k, metric="inner_product")
        ref = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(idx, ref)
        np.testing.assert_allclose(val, np.take_along_axis(scores, ref, 1))


def test_topk_random_float_values_and_distances():
    rng = np.random.default_rng(4)
    q, g = rng.normal(size=(13, 8)), rng.normal(size=(300, 8))
    idx, dist = topk_neighbors(q, g, 10, metric="euclidean", chunk_size=4)
    full = np.sqrt(((q[:, None, :] - g[None]) ** 2).sum(-1))
    ref = np.argsort(full, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(idx, ref)
    np.testing.assert_allclose(dist, np.take_along_axis(full, ref, 1), rtol=1e-6, atol=1e-6)


def test_topk_exclude_argument():
    x, _ = tie_data(5)
    exclude = np.array([3, -1, 0, 39] + [-1] * 36)
    ref = brute_ranking(x, x, exclude, "inner_product")
    idx, _ = topk_neighbors(x, x, 6, exclude=exclude, metric="inner_product", chunk_size=3)
    np.testing.assert_array_equal(idx, np.array([r[:6] for r in ref]))


def test_topk_rejects_bad_arguments():
    x = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="`k`"):
        topk_neighbors(x, k=3)  # only 2 others when excluding self
    with pytest.raises(ValueError, match="metric"):
        topk_neighbors(x, k=1, metric="l1")
    with pytest.raises(ValueError, match="finite"):
        topk_neighbors(np.array([[np.nan, 1.0], [1.0, 0.0]]), k=1)
    with pytest.raises(ValueError, match="exclude_self"):
        topk_neighbors(x, np.eye(4, 3), k=1, exclude_self=True)


# ---------------------------------------------------------------- metrics
@pytest.mark.parametrize("metric", ["inner_product", "euclidean"])
@pytest.mark.parametrize("seed", [0, 1])
def test_recall_at_k_self_retrieval(metric, seed):
    x, labels = tie_data(seed)
    ref = brute_ranking(x, x, np.arange(len(x)), metric)
    ks = (1, 2, 4, 8, 39)
    out = recall_at_k(x, labels, ks, metric=metric, chunk_size=6)
    assert list(out) == list(ks)
    for k in ks:
        assert out[k] == pytest.approx(brute_recall(ref, labels, labels, k))


def test_recall_at_k_query_gallery_and_cosine():
    rng = np.random.default_rng(7)
    g, q = rng.normal(size=(60, 5)), rng.normal(size=(17, 5))
    gl, ql = rng.integers(0, 5, 60), rng.integers(0, 6, 17)  # class 5: no relevant
    ref = brute_ranking(q, g, None, "cosine")
    out = recall_at_k(g, gl, (1, 10, 20), q, ql)
    for k in (1, 10, 20):
        assert out[k] == pytest.approx(brute_recall(ref, ql, gl, k))


def test_recall_at_k_hand_computed():
    # query 0's neighbours: 1 (same class) -> hit; query 2 ties 0 and 3 at
    # score 0; the tie goes to index 0 (wrong class) before 3 (right class).
    x = np.array([[1, 0], [1, 0], [0, 1], [0, 0]], np.float32)
    labels = np.array([0, 0, 1, 1])
    out = recall_at_k(x, labels, (1, 2), metric="inner_product")
    # q0 -> [1,...] hit; q1 -> [0] hit; q2 -> [0,1,3] miss@1, miss@2; q3 -> [0,1,2] miss@1, miss@2
    assert out == {1: 0.5, 2: 0.5}


def test_map_at_r_matches_bruteforce():
    for seed in range(3):
        x, labels = tie_data(seed)
        ref = brute_ranking(x, x, np.arange(len(x)), "inner_product")
        got = map_at_r(x, labels, metric="inner_product", chunk_size=5)
        assert got == pytest.approx(brute_map_at_r(ref, labels, labels))


def test_map_at_r_query_gallery():
    rng = np.random.default_rng(8)
    g, q = rng.normal(size=(50, 4)), rng.normal(size=(11, 4))
    gl, ql = rng.integers(0, 4, 50), rng.integers(0, 5, 11)
    ref = brute_ranking(q, g, None, "euclidean")
    got = map_at_r(g, gl, q, ql, metric="euclidean")
    assert got == pytest.approx(brute_map_at_r(ref, ql, gl))


@pytest.mark.parametrize("k", [None, 5])
def test_mean_average_precision_holidays_style(k):
    x, labels = tie_data(2)
    query_indices = np.array([0, 4, 9, 17, 39])  # 39 has no relevant item
    ref = brute_ranking(x[query_indices], x, query_indices, "inner_product")
    got = mean_average_precision(x, labels, query_indices=query_indices, k=k, metric="inner_product")
    assert got == pytest.approx(brute_map(ref, labels[query_indices], labels, k=k))


def test_mean_average_precision_self_and_hand_value():
    x, labels = tie_data(3)
    ref = brute_ranking(x, x, np.arange(len(x)), "euclidean")
    got = mean_average_precision(x, labels, metric="euclidean", chunk_size=8)
    assert got == pytest.approx(brute_map(ref, labels, labels))
    # one query, relevant items at ranks 0 and 2 of 3: (1+1)/2/2 + (1/2+2/3)/2/2
    g = np.array([[1.0, 0.0], [0.5, 0.5], [0.2, 0.8]], np.float32)
    got = mean_average_precision(g, [0, 1, 0], np.array([[1.0, 0.1]]), [0], metric="inner_product")
    assert got == pytest.approx(0.5 + (0.5 + 2 / 3) / 4)


def test_copy_detection_map():
    rng = np.random.default_rng(9)
    ref = rng.normal(size=(12, 6))
    ref_ids = np.arange(100, 112)
    copies = ref[[3, 3, 7, 0]] + rng.normal(scale=0.8, size=(4, 6))
    copy_ids = ref_ids[[3, 3, 7, 0]]
    distractors = rng.normal(size=(30, 6))
    gallery = np.concatenate([ref, distractors])
    glabels = np.concatenate([ref_ids, np.full(30, -5)])
    mask = np.arange(42) < 12
    ranking = brute_ranking(copies, gallery, None, "cosine")
    got = copy_detection_map(copies, copy_ids, ref, ref_ids, distractors)
    assert got == pytest.approx(brute_map(ranking, copy_ids, glabels, mask))
    # distractors never count, even if they share a label value with a query
    got2 = copy_detection_map(copies, copy_ids, ref, ref_ids, distractors, k=3)
    assert got2 == pytest.approx(brute_map(ranking, copy_ids, glabels, mask, k=3))


def test_metrics_reject_bad_arguments():
    x = np.eye(4, dtype=np.float32)
    with pytest.raises(ValueError, match="ks"):
        recall_at_k(x, [0, 0, 1, 1], ks=(1, 4))
    with pytest.raises(ValueError, match="labels"):
        recall_at_k(x, [0, 1], ks=(1,))
    with pytest.raises(ValueError, match="together"):
        map_at_r(x, [0, 0, 1, 1], query_embeddings=x)
    with pytest.raises(ValueError, match="query_indices"):
        mean_average_precision(x, [0, 0, 1, 1], query_indices=[5])


def test_recall_never_allocates_the_full_matrix():
    import tracemalloc

    rng = np.random.default_rng(11)
    n = 4000
    x = rng.normal(size=(n, 8)).astype(np.float32)
    labels = rng.integers(0, 500, n)
    tracemalloc.start()
    recall_at_k(x, labels, (1, 10), chunk_size=200, metric="inner_product")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < n * n * 4 / 4  # a quarter of the N x N float32 matrix
