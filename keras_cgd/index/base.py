"""Shared parts of the vector indexes: ids, metadata, atomic save and load.

An index file is one NumPy `.npz` archive (any file name) holding the vectors
(or the serialised FAISS index), the ids, the per-vector metadata as JSON and
the index configuration. `save` writes a temporary file in the target's
directory, flushes it to disk and renames it over the target (`os.replace`),
so a reader sees the old file or the new one, never a partial one.
"""

import json
import os
import tempfile

import numpy as np

from keras_cgd.evaluation.neighbors import _as_index_array
from keras_cgd.evaluation.neighbors import _as_matrix
from keras_cgd.evaluation.neighbors import _validate_k
from keras_cgd.evaluation.neighbors import _validate_metric

FORMAT_VERSION = 1
_REGISTRY = {}


def _register(cls):
    _REGISTRY[cls.__name__] = cls
    return cls


def _current_umask():
    """The process umask (read by setting it and putting it back)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


class BaseIndex:
    """Vectors with int64 ids and optional JSON-serialisable metadata."""

    def __init__(self, metric="cosine", dimension=None):
        _validate_metric(metric)
        if dimension is not None and (
            isinstance(dimension, bool) or not isinstance(dimension, (int, np.integer)) or dimension < 1
        ):
            raise ValueError(
                "Invalid value received for argument `dimension`. Expected a "
                f"positive int or None. Received: dimension={dimension!r}"
            )
        self.metric = metric
        self.dimension = None if dimension is None else int(dimension)
        self._ids = np.zeros((0,), np.int64)
        self._metadata = []
        self._id_lookup = None  # (argsort of _ids, sorted _ids), built on demand

    # -- subclass hooks -------------------------------------------------
    def _add_vectors(self, vectors):
        raise NotImplementedError

    def _search_positions(self, queries, k):
        raise NotImplementedError

    def _vector_state(self):
        """Arrays to save (dict name -> array)."""
        raise NotImplementedError

    def _restore_vector_state(self, arrays):
        raise NotImplementedError

    def get_config(self):
        return {"metric": self.metric, "dimension": self.dimension}

    def _stored_count(self):
        """Vectors the backend holds after `_restore_vector_state`, or None if unknown.

        Checked at load against the ids and metadata. Default: the rows of a
        `vectors` attribute (exact) or `ntotal` of a FAISS `_index`; backends
        may override.
        """
        inner = getattr(self, "_index", None)
        if inner is not None and hasattr(inner, "ntotal"):
            return int(inner.ntotal)
        vectors = getattr(self, "vectors", None)
        return int(vectors.shape[0]) if getattr(vectors, "ndim", 0) == 2 else None

    # -- public API -----------------------------------------------------
    def __len__(self):
        return int(self._ids.shape[0])

    @property
    def ids(self):
        """int64 ids of the stored vectors, in insertion order."""
        return self._ids.copy()

    def _check_vectors(self, vectors, name):
        vectors = np.asarray(vectors)
        if vectors.ndim == 1:
            vectors = vectors[None, :]
        vectors = _as_matrix(vectors, name)
        if self.dimension is not None and vectors.shape[1] != self.dimension:
            raise ValueError(
                f"Invalid value received for argument `{name}`. Expected "
                f"vectors of dimension {self.dimension}. Received: "
                f"{name}.shape={vectors.shape}"
            )
        return vectors.astype(np.float32, copy=False)

    def add(self, vectors, ids=None, metadata=None):
        """Adds vectors `(n, D)` with optional int ids `(n,)` and metadata.

        Args:
            vectors: array `(n, D)` (or `(D,)` for one vector).
            ids: optional int array `(n,)`; default: consecutive integers after
                the largest id so far. Ids must be unique in the index.
            metadata: optional list of `n` JSON-serialisable objects (e.g.
                dicts with a file path and a label).
        Returns:
            the int64 ids of the added vectors.
        """
        vectors, ids, metadata = self._check_add(vectors, ids, metadata)
        if self.dimension is None:
            self.dimension = int(vectors.shape[1])
        self._add_vectors(vectors)
        self._ids = np.concatenate([self._ids, ids])
        self._id_lookup = None
        self._metadata.extend(metadata)
        return ids

    def _max_id(self):
        """The largest stored id (None when empty); the default ids follow it."""
        return int(self._ids.max()) if len(self) else None

    def _contains_any(self, ids):
        """Whether any of `ids` is already stored."""
        return bool(np.isin(ids, self._ids).any())

    def _check_add(self, vectors, ids, metadata):
        """Validated `(vectors float32 (n, D), ids int64 (n,), metadata list)` of `add`."""
        vectors = self._check_vectors(vectors, "vectors")
        n = vectors.shape[0]
        if ids is None:
            last = self._max_id()
            first = 0 if last is None else last + 1
            ids = np.arange(first, first + n, dtype=np.int64)
        else:
            ids = _as_index_array(ids, n, "ids", low=None)
            if np.unique(ids).size != n or self._contains_any(ids):
                raise ValueError(
                    "Invalid value received for argument `ids`. Expected ids "
                    "not already in the index and without duplicates."
                )
        if metadata is None:
            metadata = [None] * n
        else:
            metadata = list(metadata)
            if len(metadata) != n:
                raise ValueError(
                    "Invalid value received for argument `metadata`. Expected "
                    f"one entry per vector ({n}). Received: {len(metadata)} entries"
                )
            try:
                json.dumps(metadata)
            except TypeError as e:
                raise TypeError(
                    "Invalid value received for argument `metadata`. Expected "
                    f"JSON-serialisable entries. Received an error: {e}"
                ) from None
        return vectors, ids, metadata

    @staticmethod
    def _shard_source(shards):
        """A callable returning a fresh iterator of `(ids, vectors, keys)` shards."""
        if isinstance(shards, (str, os.PathLike)):
            from keras_cgd.embedding.shards import iter_embedding_shards

            path = os.fspath(shards)
            return lambda: iter_embedding_shards(path)
        if isinstance(shards, (list, tuple)):
            return lambda: iter(shards)
        raise TypeError(
            "Invalid value received for argument `shards`. Expected an output folder of "
            "`keras-cgd embed` or a list of (ids, vectors, keys) tuples. Received: "
            f"shards of type {type(shards).__name__}"
        )

    def add_shards(self, shards, metadata="key"):
        """Adds the output of an embedding job (`keras-cgd embed`) shard by shard.

        Memory holds one shard at a time (besides the index itself).

        Args:
            shards: an output folder of `keras-cgd embed` or of its Beam
                pipeline, or a sequence (or iterator) of `(ids, vectors, keys)`.
            metadata: `"key"` (default) stores `{"key": key}` (the image path)
                with each vector; None stores nothing.
        Returns:
            the number of vectors added.

        Example:
        >>> index = ExactIndex()
        >>> index.add_shards("embeddings/")    # written by `keras-cgd embed`
        """
        if metadata not in ("key", None):
            raise ValueError(
                "Invalid value received for argument `metadata`. Expected 'key' or None. "
                f"Received: metadata={metadata!r}"
            )
        iterator = shards if hasattr(shards, "__next__") else self._shard_source(shards)()
        added = 0
        for ids, vectors, keys in iterator:
            if len(ids):
                meta = None if metadata is None else [{"key": k} for k in keys]
                self.add(vectors, ids=ids, metadata=meta)
                added += len(ids)
        return added

    def search(self, queries, k=10):
        """Finds the k nearest stored vectors of each query.

        Ranking: decreasing similarity (`"cosine"`, `"inner_product"`) or
        increasing Euclidean distance; equal scores by insertion order.

        Args:
            queries: array `(Q, D)` (or `(D,)`).
            k: neighbours per query, `1 <= k <= len(index)`.
        Returns:
            `(ids, scores)`: int64 `(Q, k)` ids and float32 `(Q, k)`
            similarities or distances, best first.
        """
        queries = self._check_vectors(queries, "queries")
        k = _validate_k(k, len(self), limit="the index size")
        positions, scores = self._search_positions(queries, k)
        return self._ids[positions], scores.astype(np.float32, copy=False)

    def get_metadata(self, ids):
        """Metadata of the given ids (any shape), as nested lists."""
        ids = np.asarray(ids)
        if self._id_lookup is None:
            order = np.argsort(self._ids, kind="stable")
            self._id_lookup = (order, self._ids[order])
        order, sorted_ids = self._id_lookup
        pos = np.searchsorted(sorted_ids, ids.ravel())
        pos = np.minimum(pos, max(len(self) - 1, 0))
        if len(self) == 0 or (sorted_ids[pos] != ids.ravel()).any():
            raise KeyError(f"Unknown ids: {np.setdiff1d(ids, self._ids).tolist()}")
        flat = np.empty(ids.size, dtype=object)
        for j, i in enumerate(order[pos]):
            flat[j] = self._metadata[i]
        return flat.reshape(ids.shape).tolist()

    def save(self, path):
        """Writes the index to `path` atomically (temp file + rename)."""
        path = os.fspath(path)
        arrays = dict(self._vector_state())
        header = {
            "format_version": FORMAT_VERSION,
            "class_name": type(self).__name__,
            "config": self.get_config(),
            "metadata": self._metadata,
        }
        arrays["ids"] = self._ids
        arrays["header"] = np.frombuffer(json.dumps(header).encode("utf-8"), np.uint8)
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".index", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            # mkstemp creates the file with mode 0600; give it the mode a
            # plain open() would (0666 minus the umask) so others can read it.
            os.chmod(tmp, 0o666 & ~_current_umask())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        return path

    @classmethod
    def load(cls, path):
        """Loads an index written by `save` (checks the class matches)."""
        index = load_index(path)
        if not isinstance(index, cls):
            raise TypeError(
                f"The file {path!r} holds a {type(index).__name__}, not a "
                f"{cls.__name__}. Use `keras_cgd.index.load_index` to load any index."
            )
        return index


def load_index(path):
    """Loads any keras-cgd index file (`ExactIndex` or `FaissIndex`).

    Example:
    >>> index = ExactIndex()
    >>> ids = index.add(np.eye(2))
    >>> path = index.save("/tmp/i.npz")
    >>> load_index("/tmp/i.npz").search(np.eye(2), k=1)[0].tolist()
    [[0], [1]]
    """
    import zipfile

    try:
        with np.load(os.fspath(path), allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise ValueError(
            f"The file {os.fspath(path)!r} is not a readable keras-cgd index (truncated or not an .npz "
            f"archive: {type(e).__name__}: {e}). Rebuild it, e.g. `keras-cgd search ... --gallery ... --index`."
        ) from None
    if "header" not in arrays:
        raise ValueError(f"The file {path!r} is not a keras-cgd index (no header).")
    header = json.loads(arrays.pop("header").tobytes().decode("utf-8"))
    if header.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"Unsupported index format version {header.get('format_version')!r} "
            f"in {path!r}; this keras-cgd reads version {FORMAT_VERSION}."
        )
    name = header.get("class_name")
    if name not in _REGISTRY:
        raise ValueError(
            f"The file {path!r} holds an index of unknown class {name!r}. "
            f"Expected one of {sorted(_REGISTRY)}."
        )
    cls = _REGISTRY[name]
    index = cls(**header["config"])
    index._ids = arrays.pop("ids").astype(np.int64)
    index._metadata = list(header["metadata"])
    index._restore_vector_state(arrays)
    counts = {"ids": len(index._ids), "metadata": len(index._metadata)}
    stored = index._stored_count()
    if stored is not None:
        counts["vectors"] = stored
    if len(set(counts.values())) > 1:
        raise ValueError(
            f"The index file {os.fspath(path)!r} is inconsistent: its arrays disagree in "
            f"length ({', '.join(f'{k}: {v}' for k, v in counts.items())}); it was not "
            "written by `save` or has been modified. Rebuild it and save it again."
        )
    return index
