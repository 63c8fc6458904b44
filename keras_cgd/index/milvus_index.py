"""Milvus-backed index: a vector database as the index of record (optional `pymilvus`).

`MilvusIndex` stores the vectors, ids and metadata in a Milvus collection and
has the `add / search / save / load` interface of `ExactIndex` and
`FaissIndex`:

- **Milvus Lite** (the default, `uri="<file>.db"`): an embedded database in one
  local file, no server (`pip install pymilvus milvus-lite`, or
  `keras-cgd[milvus]`). Milvus Lite runs FLAT (exact) search and IVF_FLAT.
- **A Milvus server** (`uri="http://host:19530"`, optional `token`), standalone
  or distributed, for collections beyond one machine and indexes such as HNSW,
  IVF_PQ or DiskANN (`index_type`, `index_params`, `search_params`).

Collection layout: `id` INT64 primary key (the index's id), `seq` INT64 (the
insertion position: equal scores are ranked by it, as in the other indexes),
`vector` FLOAT_VECTOR[D], `metadata` VARCHAR (the JSON text of the entry's
metadata). The database is the index of record: `len`, `ids` and
`get_metadata` query it, and `save(path)` writes a small keras-cgd index file
naming the database and collection (no copy of the vectors), which
`keras_cgd.index.load_index(path)` reopens, so `keras-cgd search --index` works
with every backend.

Opening an existing collection checks that it is a keras-cgd collection of the
requested dimension and metric; a collection of another dimension is a
`ValueError`, and nothing in it is changed.

`pymilvus` is imported on the first `MilvusIndex(...)`.
"""

import json
import os

import numpy as np

from keras_cgd.evaluation.neighbors import _l2_normalize
from keras_cgd.index.base import BaseIndex
from keras_cgd.index.base import _register

_METRICS = {"cosine": "COSINE", "inner_product": "IP", "euclidean": "L2"}
_FIELDS = ("id", "seq", "vector", "metadata")
_MAX_TOPK = 16384  # Milvus' largest search limit
_MAX_METADATA = 65535  # VARCHAR max_length
_BATCH = 1000  # rows per insert / ids per filter expression


def _import_pymilvus():
    try:
        import pymilvus
    except ImportError as e:
        raise ImportError(
            "`MilvusIndex` needs `pymilvus` (and `milvus-lite` for a local .db file), which "
            "is not installed. Install them with `pip install pymilvus milvus-lite` (or "
            "`pip install keras-cgd[milvus]`), or use `keras_cgd.index.ExactIndex` / "
            f"`FaissIndex`. Original error: {e}"
        ) from e
    return pymilvus


def _check_name(value, name):
    if not isinstance(value, str) or not value:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a non-empty string. "
            f"Received: {name}={value!r}"
        )
    return value


@_register
class MilvusIndex(BaseIndex):
    """Nearest-neighbour index in a Milvus collection (Milvus Lite file or server).

    Scores as in `ExactIndex`: cosine similarity (`"cosine"`), inner product
    (`"inner_product"`), or Euclidean distance (`"euclidean"`, the square root of
    Milvus' squared L2), best first; equal scores by insertion order (more
    results are fetched when a tie straddles the k-th one). With the default
    `index_type="FLAT"` search is exact; other index types are approximate.

    Args:
        uri: a local file path ending in `.db` (Milvus Lite, created when
            missing; default `"keras_cgd_milvus.db"`) or a server URI
            (`"http://localhost:19530"`).
        collection: collection name (default `"keras_cgd"`). An existing one is
            opened (and checked); a missing one is created on the first `add`.
        metric: `"cosine"` (default), `"inner_product"` or `"euclidean"`.
        dimension: vector size; taken from an existing collection or the first
            `add` when None. A collection of another dimension is an error.
        index_type: Milvus index type (default `"FLAT"`; Milvus Lite also
            `"IVF_FLAT"`; servers e.g. `"HNSW"`, `"IVF_PQ"`, `"AUTOINDEX"`).
        index_params: dict of build parameters (e.g. `{"nlist": 1024}`,
            `{"M": 32, "efConstruction": 200}`).
        search_params: dict of query parameters (e.g. `{"nprobe": 16}`,
            `{"ef": 64}`).
        token: server credentials (`"user:password"` or an API key), not saved.

    Example:
    >>> index = MilvusIndex("photos.db", dimension=3)
    >>> index.add(np.eye(3), ids=[10, 11, 12], metadata=["a", "b", "c"])
    array([10, 11, 12])
    >>> ids, scores = index.search([[0.9, 0.1, 0.0]], k=2)
    >>> ids.tolist(), index.get_metadata(ids)
    ([[10, 11]], [['a', 'b']])
    >>> index.save("photos.index")       # reopen with load_index("photos.index")

    Reference: Wang et al., "Milvus: A Purpose-Built Vector Data Management
    System", SIGMOD 2021.
    """

    def __init__(self, uri="keras_cgd_milvus.db", collection="keras_cgd", metric="cosine", dimension=None,
                 index_type="FLAT", index_params=None, search_params=None, token=None):
        pymilvus = _import_pymilvus()
        super().__init__(metric=metric, dimension=dimension)
        self.uri = _check_name(os.fspath(uri) if isinstance(uri, os.PathLike) else uri, "uri")
        self.collection = _check_name(collection, "collection")
        self.index_type = _check_name(index_type, "index_type")
        for name, value in (("index_params", index_params), ("search_params", search_params)):
            if value is not None and not isinstance(value, dict):
                raise ValueError(
                    f"Invalid value received for argument `{name}`. Expected a dict or None. "
                    f"Received: {name}={value!r}"
                )
        self.index_params = dict(index_params or {})
        self.search_params = dict(search_params or {})
        self._pymilvus = pymilvus
        self._is_lite = "://" not in self.uri
        uri = os.path.abspath(self.uri) if self._is_lite else self.uri
        if self._is_lite:
            os.makedirs(os.path.dirname(uri), exist_ok=True)
        kwargs = {"token": token} if token else {}
        self._client = pymilvus.MilvusClient(uri=uri, **kwargs)
        self._count = 0
        self._max = None  # largest id, found on demand
        if self._client.has_collection(self.collection):
            self._open_existing()

    # ---------------------------------------------------------------- collection

    def get_config(self):
        config = super().get_config()
        uri = os.path.abspath(self.uri) if self._is_lite else self.uri
        config.update(uri=uri, collection=self.collection, index_type=self.index_type,
                      index_params=self.index_params, search_params=self.search_params)
        return config

    def _open_existing(self):
        info = self._client.describe_collection(self.collection)
        fields = {f["name"]: f for f in info["fields"]}
        if set(fields) != set(_FIELDS) or not fields["id"].get("is_primary"):
            raise ValueError(
                "Invalid value received for argument `collection`. The collection "
                f"{self.collection!r} in {self.uri!r} is not a keras-cgd index (fields "
                f"{sorted(fields)}, expected {sorted(_FIELDS)}); use another name. Received: "
                f"collection={self.collection!r}"
            )
        dim = int(fields["vector"]["params"]["dim"])
        if self.dimension is not None and dim != self.dimension:
            raise ValueError(
                "Invalid value received for argument `dimension`. The collection "
                f"{self.collection!r} in {self.uri!r} holds vectors of dimension {dim}. Expected "
                f"dimension={dim} (or None to take it from the collection), or another collection "
                f"name. Received: dimension={self.dimension}"
            )
        indexed = self._client.describe_index(self.collection, "vector")
        if indexed and indexed.get("metric_type") != _METRICS[self.metric]:
            raise ValueError(
                "Invalid value received for argument `metric`. The collection "
                f"{self.collection!r} in {self.uri!r} is indexed for metric "
                f"{indexed.get('metric_type')!r}; this index asks for {_METRICS[self.metric]!r} "
                f"({self.metric!r}). Received: metric={self.metric!r}"
            )
        self.dimension = dim
        self._client.load_collection(self.collection)
        self._count = self._query_count()

    def _create(self, dimension):
        DataType = self._pymilvus.DataType
        schema = self._client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("seq", DataType.INT64)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(dimension))
        schema.add_field("metadata", DataType.VARCHAR, max_length=_MAX_METADATA)
        params = self._client.prepare_index_params()
        params.add_index(field_name="vector", index_type=self.index_type,
                         metric_type=_METRICS[self.metric], params=self.index_params)
        self._client.create_collection(self.collection, schema=schema, index_params=params,
                                       consistency_level="Strong")

    def _query_count(self):
        rows = self._client.query(self.collection, filter="", output_fields=["count(*)"],
                                  consistency_level="Strong")
        return int(rows[0]["count(*)"])

    def _iter_rows(self, fields):
        if not self._client.has_collection(self.collection):
            return
        iterator = self._client.query_iterator(self.collection, batch_size=_BATCH * 10, filter="",
                                               output_fields=list(fields))
        try:
            while True:
                rows = iterator.next()
                if not rows:
                    break
                yield from rows
        finally:
            iterator.close()

    # --------------------------------------------------------------- BaseIndex API

    def __len__(self):
        return self._count

    @property
    def ids(self):
        """int64 ids of the stored vectors, in insertion order (read from the database)."""
        rows = sorted(self._iter_rows(["id", "seq"]), key=lambda r: r["seq"])
        return np.asarray([r["id"] for r in rows], np.int64)

    def _max_id(self):
        if self._count == 0:
            return None
        if self._max is None:
            self._max = max(int(r["id"]) for r in self._iter_rows(["id"]))
        return self._max

    def _fetch(self, ids, fields):
        ids = [int(i) for i in np.asarray(ids).ravel()]
        found = {}
        for start in range(0, len(ids), _BATCH):
            chunk = ids[start:start + _BATCH]
            rows = self._client.query(self.collection, filter=f"id in {chunk}", output_fields=list(fields),
                                      consistency_level="Strong")
            found.update({int(r["id"]): r for r in rows})
        return found

    def _contains_any(self, ids):
        return bool(self._count) and bool(self._fetch(ids, ["id"]))

    def add(self, vectors, ids=None, metadata=None):
        """Inserts vectors `(n, D)` with optional ids and metadata (see `BaseIndex.add`).

        The collection is created on the first add (FLAT by default). Each
        entry's metadata is stored as JSON text of at most 65,535 bytes.
        """
        vectors, ids, metadata = self._check_add(vectors, ids, metadata)
        texts = [json.dumps(m) for m in metadata]
        too_long = [i for i, t in enumerate(texts) if len(t.encode("utf-8")) > _MAX_METADATA]
        if too_long:
            raise ValueError(
                "Invalid value received for argument `metadata`. Expected entries of at most "
                f"{_MAX_METADATA} bytes of JSON (a Milvus VARCHAR). Received: entry {too_long[0]} "
                f"of {len(texts[too_long[0]].encode('utf-8'))} bytes"
            )
        if self.dimension is None:
            self.dimension = int(vectors.shape[1])
        if not self._client.has_collection(self.collection):
            self._create(self.dimension)
        rows = [
            {"id": int(i), "seq": self._count + j, "vector": v, "metadata": t}
            for j, (i, v, t) in enumerate(zip(ids.tolist(), vectors, texts))
        ]
        for start in range(0, len(rows), _BATCH):
            self._client.insert(self.collection, rows[start:start + _BATCH])
        self._count += len(rows)
        if len(ids):
            top = int(ids.max())
            self._max = top if self._max is None else max(self._max, top)
        return ids

    def search(self, queries, k=10, search_params=None):
        """Finds the k nearest stored vectors of each query (see `BaseIndex.search`).

        Args:
            queries: array `(Q, D)` (or `(D,)`).
            k: neighbours per query, `1 <= k <= min(len(index), 16384)`.
            search_params: overrides the index's `search_params` for this call.
        Returns:
            `(ids, scores)`: int64 `(Q, k)` and float32 `(Q, k)`, best first.
        """
        from keras_cgd.evaluation.neighbors import _validate_k

        queries = self._check_vectors(queries, "queries")
        k = _validate_k(k, min(len(self), _MAX_TOPK), limit="the index size (at most 16384 for Milvus)")
        params = dict(self.search_params if search_params is None else search_params)
        if self.metric == "cosine":
            queries = _l2_normalize(queries)
        num_queries, total = queries.shape[0], min(len(self), _MAX_TOPK)
        out_ids = np.empty((num_queries, k), np.int64)
        out_scores = np.empty((num_queries, k), np.float32)
        rows = np.arange(num_queries)
        fetch = min(k + 1, total)
        while rows.size:
            hits = self._client.search(
                self.collection, data=[q for q in queries[rows]], limit=fetch,
                output_fields=["seq"], search_params={"metric_type": _METRICS[self.metric], "params": params},
                consistency_level="Strong",
            )
            done = np.zeros(rows.size, bool)
            for r, row_hits in enumerate(hits):
                if len(row_hits) < k:
                    raise RuntimeError(
                        f"Milvus returned {len(row_hits)} < k={k} results (index {self.index_type!r}); "
                        "lower k or search more (search_params)."
                    )
                ids = np.asarray([h["id"] for h in row_hits], np.int64)
                seq = np.asarray([h["entity"]["seq"] for h in row_hits], np.int64)
                s = np.asarray([h["distance"] for h in row_hits], np.float64)
                if self.metric == "euclidean":
                    s = np.sqrt(np.maximum(s, 0))
                    order = np.lexsort((seq, s))[:k]
                else:
                    order = np.lexsort((seq, -s))[:k]
                if s[k - 1] != s[-1] or len(row_hits) < fetch or fetch == total:
                    done[r] = True
                    out_ids[rows[r]] = ids[order]
                    out_scores[rows[r]] = s[order]
            rows = rows[~done]
            fetch = min(2 * fetch, total)
        return out_ids, out_scores

    def get_metadata(self, ids):
        """Metadata of the given ids (any shape), as nested lists (read from the database)."""
        ids = np.asarray(ids)
        found = self._fetch(ids, ["id", "metadata"]) if ids.size and self._count else {}
        missing = sorted({int(i) for i in ids.ravel()} - set(found))
        if missing:
            raise KeyError(f"Unknown ids: {missing}")
        flat = np.empty(ids.size, dtype=object)
        for j, i in enumerate(ids.ravel().tolist()):
            flat[j] = json.loads(found[int(i)]["metadata"])
        return flat.reshape(ids.shape).tolist()

    def get_vectors(self, ids):
        """Stored vectors `(len(ids), D)` float32 of the given ids (cosine: as given to `add`)."""
        ids = np.asarray(ids, np.int64).ravel()
        found = self._fetch(ids, ["id", "vector"])
        missing = sorted({int(i) for i in ids} - set(found))
        if missing:
            raise KeyError(f"Unknown ids: {missing}")
        return np.asarray([found[int(i)]["vector"] for i in ids], np.float32).reshape(len(ids), -1)

    def flush(self):
        """Makes the inserted rows durable (sealed segments) in the database."""
        if self._client.has_collection(self.collection):
            self._client.flush(self.collection)

    def close(self):
        """Closes the connection (a Milvus Lite file can then be opened elsewhere)."""
        self._client.close()

    def drop(self):
        """Deletes the collection and everything in it."""
        if self._client.has_collection(self.collection):
            self._client.drop_collection(self.collection)
        self._count, self._max = 0, None

    def save(self, path):
        """Flushes the collection and writes an index file naming it (atomic).

        The vectors stay in the database (the index of record); the file holds
        the uri, collection, metric, dimension and index settings, so
        `load_index(path)` reopens it (the server token is not saved).
        """
        self.flush()
        return super().save(path)

    # The saved file holds no vectors, ids or metadata: the database does.
    def _vector_state(self):
        return {}

    def _restore_vector_state(self, arrays):
        pass

    def _search_positions(self, queries, k):  # search is overridden
        raise NotImplementedError

    def _add_vectors(self, vectors):  # add is overridden
        raise NotImplementedError
