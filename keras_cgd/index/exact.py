"""Exact (brute-force) index in NumPy, on the chunked top-k of the metrics."""

import numpy as np

from keras_cgd.evaluation.neighbors import _concat_blocks
from keras_cgd.evaluation.neighbors import _iter_prepared
from keras_cgd.evaluation.neighbors import _l2_normalize
from keras_cgd.index.base import BaseIndex
from keras_cgd.index.base import _register


@_register
class ExactIndex(BaseIndex):
    """Exact nearest-neighbour index with ids and metadata; no extra dependency.

    Search scores every stored vector with the chunked loop of
    `keras_cgd.evaluation.topk_neighbors` (never a Q x N matrix), so results
    are exact and follow its tie rule (equal scores: insertion order first).
    The stored vectors are validated once, on `add`; for `"cosine"` an
    L2-normalised copy is kept between searches, so a search only normalises
    its queries.

    Args:
        metric: `"cosine"` (default), `"inner_product"` or `"euclidean"`.
        dimension: optional vector size (set by the first `add` otherwise).
        chunk_size: queries per block (default: automatic).

    Example:
    >>> index = ExactIndex()
    >>> index.add(np.eye(3), ids=[10, 11, 12], metadata=["a", "b", "c"])
    array([10, 11, 12])
    >>> ids, scores = index.search([[0.9, 0.1, 0.0]], k=2)
    >>> ids.tolist(), index.get_metadata(ids)
    ([[10, 11]], [['a', 'b']])
    """

    def __init__(self, metric="cosine", dimension=None, chunk_size=None):
        super().__init__(metric=metric, dimension=dimension)
        self.chunk_size = chunk_size
        self._parts = []
        self._vectors = np.zeros((0, dimension or 0), np.float32)
        self._gallery = None  # search-ready vectors (normalised for cosine)

    def get_config(self):
        config = super().get_config()
        config["chunk_size"] = self.chunk_size
        return config

    @property
    def vectors(self):
        """The stored vectors `(n, D)`, float32, in insertion order."""
        if self.dimension is None:
            return np.zeros((0, 0), np.float32)
        if self._parts:
            self._vectors = np.concatenate([self._vectors.reshape(-1, self.dimension)] + self._parts)
            self._parts = []
        return self._vectors

    def _add_vectors(self, vectors):
        self._parts.append(np.array(vectors, np.float32))
        self._gallery = None

    def _search_positions(self, queries, k):
        if self._gallery is None:
            vectors = self.vectors
            self._gallery = _l2_normalize(vectors) if self.metric == "cosine" else vectors
        if self.metric == "cosine":
            queries = _l2_normalize(queries)
        indices, values = [], []
        for _, _, idx, val in _iter_prepared(
            queries,
            self._gallery,
            k,
            euclidean=self.metric == "euclidean",
            chunk_size=self.chunk_size,
        ):
            indices.append(idx)
            values.append(val)
        return _concat_blocks(indices, values, k, np.float32)

    def _vector_state(self):
        return {"vectors": self.vectors}

    def _restore_vector_state(self, arrays):
        self._vectors = arrays["vectors"].astype(np.float32)
        self._parts = []
        self._gallery = None
