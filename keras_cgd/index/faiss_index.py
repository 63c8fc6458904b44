"""FAISS-backed index (optional dependency `faiss-cpu` or `faiss-gpu`).

`faiss` is imported lazily, on the first `FaissIndex(...)`, so that
`import keras_cgd` works without it.
"""

import numpy as np

from keras_cgd.evaluation.neighbors import _l2_normalize
from keras_cgd.index.base import BaseIndex
from keras_cgd.index.base import _register


def _import_faiss():
    try:
        import faiss
    except ImportError as e:
        raise ImportError(
            "`FaissIndex` needs the FAISS library, which is not installed. "
            "Install it with `pip install faiss-cpu` (or `pip install "
            "keras-cgd[faiss]`; `faiss-gpu` for CUDA), or use "
            "`keras_cgd.index.ExactIndex`, which needs nothing extra. "
            f"Original error: {e}"
        ) from e
    return faiss


@_register
class FaissIndex(BaseIndex):
    """FAISS index with ids and metadata, same API as `ExactIndex`.

    `factory="Flat"` (default) is exact (`IndexFlatIP` / `IndexFlatL2`) and
    returns the same neighbours as `ExactIndex`; other FAISS factory strings
    (e.g. `"HNSW32"`, `"IVF1024,Flat"`) give approximate search and may need
    `train(vectors)` before `add`. For `"cosine"` vectors are L2-normalised and
    searched by inner product; `"euclidean"` scores are distances (FAISS's
    squared distances, square-rooted). Results with equal scores are sorted by
    insertion order, also when they straddle the k-th result (more results
    are then fetched).

    Args:
        metric: `"cosine"` (default), `"inner_product"` or `"euclidean"`.
        dimension: vector size; needed before the first `add` for factories
            other than "Flat", else taken from the first `add`.
        factory: a `faiss.index_factory` string (default `"Flat"`).

    Example:
    >>> index = FaissIndex()
    >>> index.add(np.eye(3), ids=[10, 11, 12])
    array([10, 11, 12])
    >>> index.search([[0.9, 0.1, 0.0]], k=2)[0].tolist()
    [[10, 11]]

    Reference: Johnson, Douze, Jegou, "Billion-scale similarity search with
    GPUs", 2017 (FAISS).
    """

    def __init__(self, metric="cosine", dimension=None, factory="Flat"):
        self._faiss = _import_faiss()
        super().__init__(metric=metric, dimension=dimension)
        if not isinstance(factory, str) or not factory:
            raise ValueError(
                "Invalid value received for argument `factory`. Expected a "
                f"FAISS index_factory string such as 'Flat'. Received: factory={factory!r}"
            )
        self.factory = factory
        self._index = None
        if self.dimension is not None:
            self._index = self._new_index(self.dimension)

    def get_config(self):
        config = super().get_config()
        config["factory"] = self.factory
        return config

    def _new_index(self, dimension):
        faiss = self._faiss
        faiss_metric = faiss.METRIC_L2 if self.metric == "euclidean" else faiss.METRIC_INNER_PRODUCT
        return faiss.index_factory(int(dimension), self.factory, faiss_metric)

    def _prepare(self, vectors):
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.metric == "cosine":
            vectors = _l2_normalize(vectors)
        return vectors

    def train(self, vectors):
        """Trains the FAISS index (IVF, PQ, ... factories); no-op for "Flat"."""
        vectors = self._check_vectors(vectors, "vectors")
        if self._index is None:
            self.dimension = int(vectors.shape[1])
            self._index = self._new_index(self.dimension)
        self._index.train(self._prepare(vectors))

    def _add_vectors(self, vectors):
        if self._index is None:
            self._index = self._new_index(vectors.shape[1])
        if not self._index.is_trained:
            raise ValueError(
                f"The FAISS index {self.factory!r} must be trained before "
                "vectors are added. Call `index.train(sample_vectors)` first."
            )
        self._index.add(self._prepare(vectors))

    def _search_positions(self, queries, k):
        # FAISS picks arbitrary members of a group of equal scores that
        # straddles the k-th result, so ask for more results until the last
        # one scores worse than the k-th (the whole group is in), then sort by
        # (score, insertion position) and keep k. Rows are re-searched only
        # while they end in such a tie.
        queries = self._prepare(queries)
        num_queries, total = queries.shape[0], self._index.ntotal
        positions = np.empty((num_queries, k), np.int64)
        scores = np.empty((num_queries, k), np.float32)
        rows = np.arange(num_queries)
        fetch = min(k + 1, total)
        while rows.size:
            s, pos = self._index.search(queries[rows], fetch)
            if (pos[:, :k] < 0).any():
                raise RuntimeError(
                    f"FAISS returned fewer than k={k} results for some queries "
                    f"(index {self.factory!r}); lower k or search more cells (nprobe)."
                )
            if self.metric == "euclidean":
                s = np.sqrt(np.maximum(s, 0))  # missing results (FLT_MAX) stay last
                order = np.lexsort((pos, s), axis=-1)[:, :k]
            else:
                order = np.lexsort((pos, -s), axis=-1)[:, :k]
            done = (s[:, k - 1] != s[:, -1]) | (fetch == total)
            positions[rows[done]] = np.take_along_axis(pos[done], order[done], axis=1)
            scores[rows[done]] = np.take_along_axis(s[done], order[done], axis=1)
            rows = rows[~done]
            fetch = min(2 * fetch, total)
        return positions, scores

    def _vector_state(self):
        if self._index is None:
            return {"faiss_index": np.zeros((0,), np.uint8)}
        return {"faiss_index": self._faiss.serialize_index(self._index)}

    def _restore_vector_state(self, arrays):
        data = arrays["faiss_index"]
        self._index = self._faiss.deserialize_index(data) if data.size else None
