"""Retrieval metrics: Recall@K, MAP@R, mAP (Holidays-style) and copy-detection mAP.

All metrics rank the gallery with `iter_topk_neighbors` (chunked, never an
N x N matrix) and accumulate per block, so only `(chunk_size, k)` neighbours are
held at a time. Ranking rule: decreasing similarity (increasing distance), ties
broken by gallery index. Relevant items are gallery items whose label equals the
query's label.

Three query setups are accepted by every metric:

- `query_embeddings=None`: every gallery item is a query and never retrieves
  itself (CUB-200, CARS196, SOP);
- `query_indices=...`: the queries are these gallery items, each excluded from
  its own ranking (INRIA Holidays: the first image of each group);
- `query_embeddings` and `query_labels`: a separate query set searched in the
  gallery with nothing excluded (In-shop, copy detection).

Queries with no relevant item in the gallery score 0 and count in the mean.
"""

import numpy as np

from keras_cgd.evaluation.neighbors import _as_index_array
from keras_cgd.evaluation.neighbors import _validate_k
from keras_cgd.evaluation.neighbors import iter_topk_neighbors


def _as_labels(labels, n, name):
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a 1-D array "
            f"with one label per embedding ({n}). Received: {name}.shape="
            f"{labels.shape}"
        )
    return labels


def _setup(embeddings, labels, query_embeddings, query_labels, query_indices):
    """Returns (queries, gallery, query_labels, gallery_labels, exclude)."""
    gallery = np.asarray(embeddings)
    if gallery.ndim != 2:
        raise ValueError(
            "Invalid value received for argument `embeddings`. Expected a 2-D "
            f"array (num_items, dim). Received: embeddings.shape={gallery.shape}"
        )
    gallery_labels = _as_labels(labels, gallery.shape[0], "labels")
    if (query_embeddings is None) != (query_labels is None):
        raise ValueError(
            "Arguments `query_embeddings` and `query_labels` must be given "
            "together. Received only one of them."
        )
    if query_embeddings is not None:
        if query_indices is not None:
            raise ValueError(
                "Argument `query_indices` selects queries from the gallery and "
                "cannot be combined with `query_embeddings`. Received both."
            )
        queries = np.asarray(query_embeddings)
        if queries.ndim != 2:
            raise ValueError(
                "Invalid value received for argument `query_embeddings`. "
                "Expected a 2-D array. Received: query_embeddings.shape="
                f"{queries.shape}"
            )
        return (
            queries,
            gallery,
            _as_labels(query_labels, queries.shape[0], "query_labels"),
            gallery_labels,
            None,
        )
    if query_indices is None:
        return None, gallery, gallery_labels, gallery_labels, None
    query_indices = _as_index_array(query_indices, None, "query_indices", high=gallery.shape[0])
    return (
        gallery[query_indices],
        gallery,
        gallery_labels[query_indices],
        gallery_labels,
        query_indices,
    )


def _num_relevant(query_labels, gallery_labels, candidate_mask, self_excluded):
    """Relevant gallery items per query (labels equal, candidates only)."""
    pool = gallery_labels if candidate_mask is None else gallery_labels[candidate_mask]
    uniq, counts = np.unique(pool, return_counts=True)
    nres = np.zeros(len(query_labels), np.int64)
    if uniq.size:
        pos = np.clip(np.searchsorted(uniq, query_labels), 0, uniq.size - 1)
        hit = uniq[pos] == query_labels
        nres[hit] = counts[pos[hit]]
    if self_excluded:  # the query itself is in the gallery, with its label
        nres -= 1
    return nres


def _ranked_relevance(setup, k, metric, chunk_size, candidate_mask=None):
    """Yields (start, stop, relevance (rows, k) bool) block by block."""
    queries, gallery, query_labels, gallery_labels, exclude = setup
    same = queries is None
    for start, stop, idx, _ in iter_topk_neighbors(
        gallery if same else queries,
        None if same else gallery,
        k,
        exclude=exclude,
        metric=metric,
        chunk_size=chunk_size,
    ):
        rel = gallery_labels[idx] == query_labels[start:stop, None]
        if candidate_mask is not None:
            rel &= candidate_mask[idx]
        yield start, stop, rel


def _available(setup):
    queries, gallery, _, _, exclude = setup
    return gallery.shape[0] - (1 if queries is None or exclude is not None else 0)


def _num_queries(setup):
    queries, gallery = setup[0], setup[1]
    n = gallery.shape[0] if queries is None else queries.shape[0]
    if n == 0:
        raise ValueError("Expected at least one query. Received: 0 queries.")
    return n


def recall_at_k(
    embeddings,
    labels,
    ks=(1, 2, 4, 8),
    query_embeddings=None,
    query_labels=None,
    *,
    query_indices=None,
    metric="cosine",
    chunk_size=None,
):
    """Recall@K: fraction of queries with a relevant item among their K nearest.

    `R@K = (1/Q) sum_q 1[exists i <= K : label(g_(q,i)) == label(q)]`.

    Args:
        embeddings: gallery embeddings `(N, D)`.
        labels: gallery labels `(N,)` (any comparable dtype).
        ks: the K values (positive ints, at most the gallery size available).
        query_embeddings, query_labels: optional separate query set `(Q, D)`,
            `(Q,)`; default: every gallery item queries the rest (self-match
            excluded).
        query_indices: optional gallery indices used as queries (each one
            excluded from its own ranking).
        metric: `"cosine"`, `"inner_product"` or `"euclidean"`.
        chunk_size: queries per block (see `topk_neighbors`).

    Returns:
        dict `{k: recall}` with Python floats in [0, 1].

    Example:
    >>> emb = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], "float32")
    >>> recall_at_k(emb, [0, 0, 1, 1], ks=(1, 2))
    {1: 1.0, 2: 1.0}

    Reference: the Recall@K of CGD (Jun et al. 2019): K = 1, 2, 4, 8 for
    CUB-200/CARS196, 1, 10, 100, 1000 for SOP, 1, 10, 20, 30, 40, 50 for
    In-shop (query -> gallery).
    """
    setup = _setup(embeddings, labels, query_embeddings, query_labels, query_indices)
    num_queries = _num_queries(setup)
    if isinstance(ks, (int, np.integer)):
        ks = (ks,)
    ks = list(ks)
    if not ks:
        raise ValueError("Invalid value received for argument `ks`. Expected at least one K. Received: ks=()")
    available = _available(setup)
    ks = [_validate_k(k, available, "ks") for k in ks]
    k_max = max(ks)
    k_sorted = np.array(sorted(set(ks)))
    hits = np.zeros(k_sorted.size, np.int64)
    for _, _, rel in _ranked_relevance(setup, k_max, metric, chunk_size):
        first = np.where(rel.any(axis=1), rel.argmax(axis=1), k_max)
        hits += np.count_nonzero(first[:, None] < k_sorted[None, :], axis=0)
    recalls = dict(zip(k_sorted.tolist(), (hits / num_queries).tolist()))
    return {k: recalls[k] for k in ks}


def map_at_r(
    embeddings,
    labels,
    query_embeddings=None,
    query_labels=None,
    *,
    query_indices=None,
    metric="cosine",
    chunk_size=None,
):
    """MAP@R: mean average precision over the first R results, R = #relevant.

    `AP@R(q) = (1/R) sum_{i=1}^{R} P@i * rel_i`, with R the number of gallery
    items relevant to q and `P@i` the precision of the first i results.

    Args: as `recall_at_k` (without `ks`).

    Returns:
        float in [0, 1].

    Example:
    >>> emb = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], "float32")
    >>> map_at_r(emb, [0, 0, 1, 1])
    1.0

    Reference: Musgrave, Belongie, Lim, "A Metric Learning Reality Check",
    ECCV 2020.
    """
    setup = _setup(embeddings, labels, query_embeddings, query_labels, query_indices)
    num_queries = _num_queries(setup)
    queries, _, qlabels, glabels, exclude = setup
    nres = _num_relevant(qlabels, glabels, None, queries is None or exclude is not None)
    k = max(int(nres.max()), 1)
    total = 0.0
    positions = np.arange(1, k + 1)
    for start, stop, rel in _ranked_relevance(setup, k, metric, chunk_size):
        r = nres[start:stop]
        within = positions[None, :] <= r[:, None]
        rel = rel & within
        precision = np.cumsum(rel, axis=1) / positions[None, :]
        ap = np.sum(precision * rel, axis=1) / np.maximum(r, 1)
        total += float(ap.sum())
    return total / num_queries


def _trapezoid_ap(rel, nres):
    """Holidays AP per row of a relevance matrix (positions 0-based)."""
    ranks = np.arange(rel.shape[1])[None, :]
    ntp = np.cumsum(rel, axis=1) - 1  # relevant items before this one
    with np.errstate(divide="ignore", invalid="ignore"):
        p0 = np.where(ranks == 0, 1.0, ntp / np.maximum(ranks, 1))
    p1 = (ntp + 1) / (ranks + 1)
    ap = np.sum(np.where(rel, (p0 + p1) / 2, 0.0), axis=1)
    return ap / np.maximum(nres, 1)


def _mean_ap(setup, k, metric, chunk_size, candidate_mask=None):
    num_queries = _num_queries(setup)
    queries, gallery, qlabels, glabels, exclude = setup
    available = _available(setup)
    k = available if k is None else _validate_k(k, available)
    nres = _num_relevant(
        qlabels, glabels, candidate_mask, queries is None or exclude is not None
    )
    total = 0.0
    for start, stop, rel in _ranked_relevance(setup, k, metric, chunk_size, candidate_mask):
        total += float(_trapezoid_ap(rel, nres[start:stop]).sum())
    return total / num_queries


def mean_average_precision(
    embeddings,
    labels,
    query_embeddings=None,
    query_labels=None,
    *,
    query_indices=None,
    k=None,
    metric="cosine",
    chunk_size=None,
):
    """Mean average precision, INRIA Holidays style (trapezoidal AP).

    For a query with `n` relevant items found at 0-based ranks `r_0 < r_1 < ...`:
    `AP = sum_j (p0_j + p1_j) / (2 n)`, `p0_j = j / r_j` (1 if `r_j = 0`),
    `p1_j = (j + 1) / (r_j + 1)`. This is the `score_ap_from_ranks_1` rule of
    the Holidays evaluation package, used by MultiGrain's `score_ap`.

    Args:
        embeddings, labels, query_embeddings, query_labels, query_indices,
            metric, chunk_size: as `recall_at_k`.
        k: rank only the first k results (relevant items further down add
            nothing); default: the whole gallery.

    Returns:
        float in [0, 1].

    Example (Holidays: queries are the first image of each group):
    >>> emb = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], "float32")
    >>> mean_average_precision(emb, [0, 0, 1, 1], query_indices=[0, 2])
    1.0

    Reference: Jegou, Douze, Schmid, "Hamming embedding and weak geometric
    consistency", ECCV 2008 (Holidays); MultiGrain (Berman et al. 2019) reports
    Holidays mAP.
    """
    setup = _setup(embeddings, labels, query_embeddings, query_labels, query_indices)
    return _mean_ap(setup, k, metric, chunk_size)


def copy_detection_map(
    query_embeddings,
    query_labels,
    reference_embeddings,
    reference_labels,
    distractor_embeddings=None,
    *,
    k=None,
    metric="cosine",
    chunk_size=None,
):
    """Copy-detection mAP: find each copy's original among references + distractors.

    The gallery is the references followed by the distractors; a result is
    relevant when it is a reference with the query's label (distractors never
    are). AP is the Holidays trapezoidal AP of `mean_average_precision`.

    Args:
        query_embeddings: the transformed copies `(Q, D)`.
        query_labels: id of each copy's original `(Q,)`.
        reference_embeddings, reference_labels: the originals `(R, D)`, `(R,)`.
        distractor_embeddings: optional unrelated images `(M, D)`.
        k, metric, chunk_size: as `mean_average_precision`.

    Returns:
        float in [0, 1].

    Example:
    >>> ref = np.eye(3, dtype="float32")
    >>> copies = ref[[2, 0]] + 0.1
    >>> copy_detection_map(copies, [2, 0], ref, [0, 1, 2], np.ones((2, 3)))
    1.0

    Reference: MultiGrain (Berman et al. 2019) reports CD10k: Copydays
    "strong" + 10k YFCC100M distractors.
    """
    reference = np.asarray(reference_embeddings)
    reference_labels = _as_labels(
        reference_labels, reference.shape[0] if reference.ndim else -1, "reference_labels"
    )
    candidate_mask = None
    gallery, gallery_labels = reference, reference_labels
    if distractor_embeddings is not None:
        distractors = np.asarray(distractor_embeddings)
        if distractors.ndim != 2 or reference.ndim != 2 or distractors.shape[1] != reference.shape[1]:
            raise ValueError(
                "Invalid value received for argument `distractor_embeddings`. "
                "Expected a 2-D array with the references' dimension. Received: "
                f"distractor_embeddings.shape={distractors.shape}, "
                f"reference_embeddings.shape={reference.shape}"
            )
        gallery = np.concatenate([reference, distractors.astype(reference.dtype)])
        gallery_labels = np.concatenate(
            [reference_labels, np.resize(reference_labels, distractors.shape[0])]
        )
        candidate_mask = np.zeros(gallery.shape[0], bool)
        candidate_mask[: reference.shape[0]] = True
    setup = _setup(gallery, gallery_labels, query_embeddings, query_labels, None)
    return _mean_ap(setup, k, metric, chunk_size, candidate_mask)


def ukbench_score(embeddings, labels, *, k=4, metric="cosine", chunk_size=None):
    """UKBench N-S score: mean number of same-group images among the top 4.

    `NS = (1/N) sum_q |{i <= k : label(g_(q,i)) == label(q)}|`, every image a query
    and the query itself INCLUDED in the gallery (it counts when it is retrieved,
    normally first), as in the UKBench protocol. Range `[0, k]`; 4 is perfect for
    UKBench's groups of 4.

    Ranking is that of `topk_neighbors` (self not excluded): decreasing similarity
    (increasing distance), equal scores ordered by increasing gallery index. So when
    several items tie exactly with the query (duplicates), the ones with the
    smallest indices come first, the query included only if its index is among them.

    Args:
        embeddings: `(N, D)` embeddings of every benchmark image.
        labels: `(N,)` group labels (UKBench: image number // 4).
        k: the length of the short list (4 for UKBench), `1 <= k <= N`.
        metric: `"cosine"`, `"inner_product"` or `"euclidean"`.
        chunk_size: queries per block (see `topk_neighbors`); never an N x N matrix.

    Returns:
        float in `[0, k]`.

    Example:
    >>> emb = np.repeat(np.eye(2, dtype="float32"), 4, axis=0) + 0.01 * np.arange(8)[:, None]
    >>> ukbench_score(emb, [0, 0, 0, 0, 1, 1, 1, 1])
    4.0

    Reference: Nister & Stewenius, "Scalable recognition with a vocabulary
    tree", CVPR 2006; MultiGrain (Berman et al. 2019) reports UKB (/4).
    """
    gallery = np.asarray(embeddings)
    if gallery.ndim != 2:
        raise ValueError(
            "Invalid value received for argument `embeddings`. Expected a 2-D "
            f"array (num_items, dim). Received: embeddings.shape={gallery.shape}"
        )
    labels = _as_labels(labels, gallery.shape[0], "labels")
    if gallery.shape[0] == 0:
        raise ValueError("Expected at least one query. Received: 0 queries.")
    k = _validate_k(k, gallery.shape[0])
    total = 0
    for start, stop, idx, _ in iter_topk_neighbors(
        gallery, gallery, k, exclude_self=False, metric=metric, chunk_size=chunk_size
    ):
        total += int(np.count_nonzero(labels[idx] == labels[start:stop, None]))
    return total / gallery.shape[0]
