"""FAISS-backed index (optional dependency `faiss-cpu` or `faiss-gpu`).

`faiss` is imported lazily, on the first `FaissIndex(...)`, so that
`import keras_cgd` works without it; `estimate_faiss_memory` needs no FAISS.

Standard factory strings (`faiss.index_factory`) and when to use them, for N
vectors of dimension D (Johnson et al. 2017; the FAISS wiki "Guidelines to
choose an index"):

| factory | kind | memory per vector | query-time knob |
|---|---|---|---|
| `"Flat"` | exact | 4 D bytes | — |
| `"IVF4096,Flat"` | inverted file, exact distances in the probed lists | 4 D + 8 | `nprobe` |
| `"IVF4096,PQ32"` | inverted file + product quantizer (32 bytes a vector) | 32 + 8 | `nprobe` |
| `"IVF4096,PQ32,Refine(SQ8)"` | the same, re-ranked with 8-bit scalar codes | 32 + 8 + D | `nprobe`, `k_factor` |
| `"HNSW32"` | graph (HNSW), full vectors | 4 D + about 8 M + 12 | `efSearch` |

Rules of thumb: `IVF{nlist}` with `nlist` between 4 sqrt(N) and 16 sqrt(N),
trained on 30 to 256 vectors per list; PQ with D / m = 2 to 8 dimensions per
sub-quantizer; `efSearch` and `nprobe` trade speed for recall at query time.
"""

import re

import numpy as np

from keras_cgd.evaluation.neighbors import _l2_normalize
from keras_cgd.index.base import BaseIndex
from keras_cgd.index.base import _register

_FLOAT = 4
_ID = 8
# name -> (FAISS ParameterSpace name, FAISS's default, factories it applies to)
_KNOBS = {
    "nprobe": ("nprobe", 1, "IVF"),
    "ef_search": ("efSearch", 16, "HNSW"),
    "k_factor": ("k_factor", 1, "Refine/RFlat"),
}


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


# --------------------------------------------------------------------- memory estimate

_SUPPORTED = (
    "Flat, IVF<nlist>[_HNSW<M>], PQ<m>[x<bits>][np], SQ4/SQ6/SQ8/SQfp16/SQbf16, HNSW<M>[_<codes>], "
    "PCA[R]<d>, OPQ<m>[_<d>], L2norm, RFlat, Refine(<codes>)"
)


def _factory_error(factory, part):
    return ValueError(
        "Invalid value received for argument `factory`. Expected a FAISS factory string made "
        f"of: {_SUPPORTED}. Cannot estimate the part {part!r}. Received: factory={factory!r}"
    )


def _code_bytes(part, dimension):
    """Bytes per vector of a codec ("Flat", "PQ16x8", "SQ8", ...), or None."""
    if part == "Flat":
        return _FLOAT * dimension, 0
    m = re.fullmatch(r"PQ(\d+)(?:x(\d+))?(np)?", part)
    if m:
        sub, bits = int(m.group(1)), int(m.group(2) or 8)
        codebooks = (1 << bits) * dimension * _FLOAT
        return -(-sub * bits // 8), codebooks
    scalar = {"SQ4": 0.5, "SQ6": 0.75, "SQ8": 1, "SQfp16": 2, "SQbf16": 2}
    if part in scalar:
        return int(np.ceil(scalar[part] * dimension)), 2 * dimension * _FLOAT
    return None


def _hnsw_graph_bytes(n, links):
    # FAISS HNSW: level 0 has 2 M neighbour slots, each level above M slots; a
    # vector reaches level l >= 1 with probability M^-l, so on average
    # M / (M - 1) slots above level 0. Slots are int32; plus an int32 level and
    # an 8-byte offset per vector.
    slots = 2 * links + links / (links - 1)
    return int(n * (4 * slots + 4 + 8))


def estimate_faiss_memory(factory, n, dimension, metric="cosine"):
    """Estimated bytes of a `FaissIndex(factory)` holding `n` vectors of dimension `dimension`.

    Counted: the codes (`n * code_size`), inverted-list ids (8 bytes a vector),
    coarse centroids (`nlist * D * 4`), PQ / SQ codebooks, pre-transform
    matrices, the HNSW graph (see `_hnsw_graph_bytes`), refinement codes,
    IVF-PQ's precomputed table for the Euclidean metric (`nlist * m * 2^bits * 4`)
    and keras-cgd's own int64 ids (8 bytes a vector). Not counted: metadata,
    the temporary buffers of training and search, and the spare capacity of
    IVF inverted lists (`std::vector`s that grow geometrically while vectors
    are added: up to 2x the codes; 1.38x measured for `IVF1024,Flat` filled in
    shards of 100,000, `benchmarks/ann_index.py`).

    Args:
        factory: FAISS factory string (see the module docstring).
        n: number of vectors.
        dimension: vector size `D`.
        metric: `"cosine"`, `"inner_product"` or `"euclidean"`.

    Returns:
        int, bytes.

    Example:
    >>> estimate_faiss_memory("IVF1024,PQ32", 1_000_000, 256) / 2**20   # MiB
    77.8...
    """
    if not isinstance(factory, str) or not factory.strip():
        raise _factory_error(factory, factory)
    for name, value in (("n", n), ("dimension", dimension)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0 + (name == "dimension"):
            raise ValueError(
                f"Invalid value received for argument `{name}`. Expected a "
                f"{'positive' if name == 'dimension' else 'non-negative'} int. Received: {name}={value!r}"
            )
    n, d = int(n), int(dimension)
    total = _ID * n  # keras-cgd's ids
    parts = [p.strip() for p in re.split(r",(?![^(]*\))", factory)]
    nlist = None
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        m = re.fullmatch(r"PCAR?W?(\d+)", part) or re.fullmatch(r"RR(\d+)", part)
        if m:
            d_out = int(m.group(1))
            total += _FLOAT * (d * d_out + d)
            d = d_out
            continue
        m = re.fullmatch(r"OPQ(\d+)(?:_(\d+))?", part)
        if m:
            d_out = int(m.group(2) or d)
            total += _FLOAT * d * d_out
            d = d_out
            continue
        if part == "L2norm":
            continue
        m = re.fullmatch(r"IVF(\d+)(?:_HNSW(\d+))?", part)
        if m:
            nlist = int(m.group(1))
            total += _FLOAT * nlist * d + _ID * n  # centroids + inverted-list ids
            if m.group(2):
                total += _hnsw_graph_bytes(nlist, int(m.group(2)))
            continue
        m = re.fullmatch(r"HNSW(\d+)(?:_(.+))?", part)
        if m and nlist is None:
            links = int(m.group(1))
            codec = m.group(2) or "Flat"
            if codec == "Flat" and not last and parts[i + 1] == "Flat":
                parts[i + 1] = ""  # "HNSW32,Flat" is "HNSW32"
            coded = _code_bytes(codec, d)
            if coded is None:
                raise _factory_error(factory, part)
            total += coded[0] * n + coded[1] + _hnsw_graph_bytes(n, links)
            continue
        if part == "":
            continue
        if part == "RFlat":
            total += _FLOAT * d * n
            continue
        m = re.fullmatch(r"Refine\((.+)\)", part)
        if m:
            coded = _code_bytes(m.group(1), d)
            if coded is None:
                raise _factory_error(factory, part)
            total += coded[0] * n + coded[1]
            continue
        coded = _code_bytes(part, d)
        if coded is None:
            raise _factory_error(factory, part)
        total += coded[0] * n + coded[1]
        pq = re.fullmatch(r"PQ(\d+)(?:x(\d+))?(np)?", part)
        if pq and nlist is not None and metric == "euclidean":
            table = nlist * int(pq.group(1)) * (1 << int(pq.group(2) or 8)) * _FLOAT
            if table <= 2 << 30:  # FAISS's precomputed_table_max_bytes
                total += table
    return int(total)


# ------------------------------------------------------------------------------ index


def _check_search_knob(value, name):
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a positive int or None "
            f"(FAISS's default). Received: {name}={value!r}"
        )
    return None if value is None else int(value)


@_register
class FaissIndex(BaseIndex):
    """FAISS index with ids and metadata, same API as `ExactIndex`.

    `factory="Flat"` (default) is exact (`IndexFlatIP` / `IndexFlatL2`) and
    returns the same neighbours as `ExactIndex`; other FAISS factory strings
    (`"IVF1024,Flat"`, `"IVF1024,PQ32"`, `"HNSW32"`, see the module docstring)
    give approximate search. Factories with a trained part (IVF, PQ, SQ, PCA,
    OPQ) are trained on a sample by `train(vectors)`, or by `add_shards` on a
    random sample of the shards; `nprobe` (IVF) and `ef_search` (HNSW) set the
    speed / recall trade-off at query time, per index or per `search` call. For
    `"cosine"` vectors are L2-normalised and searched by inner product;
    `"euclidean"` scores are distances (FAISS's squared distances,
    square-rooted). Results with equal scores are sorted by insertion order,
    also when they straddle the k-th result (more results are then fetched).
    Product quantizers are trained without FAISS's polysemous training (a
    Hamming-filter option this index does not use, and the slow part of
    training).

    Args:
        metric: `"cosine"` (default), `"inner_product"` or `"euclidean"`.
        dimension: vector size; needed before the first `add` for factories
            other than "Flat", else taken from the first `add`.
        factory: a `faiss.index_factory` string (default `"Flat"`).
        nprobe: inverted lists searched per query (IVF factories; FAISS's
            default 1). Recall grows with it, speed falls about linearly.
        ef_search: HNSW search queue length (HNSW factories; FAISS's default 16).
        k_factor: re-ranked candidates per result of a `Refine`/`RFlat` factory
            (FAISS's default 1).
        ef_construction: HNSW build queue length (FAISS's default 40); larger
            builds a better graph (higher recall at a given `ef_search`) more slowly.

    Example:
    >>> index = FaissIndex()
    >>> index.add(np.eye(3), ids=[10, 11, 12])
    array([10, 11, 12])
    >>> index.search([[0.9, 0.1, 0.0]], k=2)[0].tolist()
    [[10, 11]]
    >>> big = FaissIndex(dimension=256, factory="IVF1024,PQ32", nprobe=16)
    >>> estimate_faiss_memory("IVF1024,PQ32", 10**6, 256)   # bytes, before building

    Reference: Johnson, Douze, Jegou, "Billion-scale similarity search with
    GPUs", 2017 (FAISS); Jegou et al., "Product quantization for nearest
    neighbor search", 2011; Malkov & Yashunin, "Efficient and robust
    approximate nearest neighbor search using HNSW graphs", 2018.
    """

    def __init__(self, metric="cosine", dimension=None, factory="Flat", nprobe=None, ef_search=None,
                 k_factor=None, ef_construction=None):
        self._faiss = _import_faiss()
        super().__init__(metric=metric, dimension=dimension)
        if not isinstance(factory, str) or not factory:
            raise ValueError(
                "Invalid value received for argument `factory`. Expected a "
                f"FAISS index_factory string such as 'Flat'. Received: factory={factory!r}"
            )
        if re.search(r"IDMap", factory):
            raise ValueError(
                "Invalid value received for argument `factory`. FaissIndex keeps the ids itself "
                "(with metadata and insertion-order ties); drop the IDMap part. Received: "
                f"factory={factory!r}"
            )
        self.factory = factory
        self.nprobe = _check_search_knob(nprobe, "nprobe")
        self.ef_search = _check_search_knob(ef_search, "ef_search")
        self.k_factor = _check_search_knob(k_factor, "k_factor")
        self.ef_construction = _check_search_knob(ef_construction, "ef_construction")
        self._index = None
        if self.dimension is not None:
            self._index = self._new_index(self.dimension)

    def get_config(self):
        config = super().get_config()
        config.update(factory=self.factory, nprobe=self.nprobe, ef_search=self.ef_search,
                      k_factor=self.k_factor, ef_construction=self.ef_construction)
        return config

    def _new_index(self, dimension):
        faiss = self._faiss
        faiss_metric = faiss.METRIC_L2 if self.metric == "euclidean" else faiss.METRIC_INNER_PRODUCT
        try:
            index = faiss.index_factory(int(dimension), self.factory, faiss_metric)
        except RuntimeError as e:
            raise ValueError(
                "Invalid value received for argument `factory`. FAISS cannot build it for "
                f"dimension {dimension} ({' '.join(str(e).split())[:300]}). Received: "
                f"factory={self.factory!r}"
            ) from None
        self._validate_knobs(index)
        return index

    def _parts(self, index):
        """The sub-indexes of a composite FAISS index (pre-transform, refine, IVF...)."""
        faiss = self._faiss
        stack, seen = [index], []
        while stack:
            sub = faiss.downcast_index(stack.pop())
            seen.append(sub)
            for attr in ("index", "base_index"):
                child = getattr(sub, attr, None)
                if child is not None and hasattr(child, "ntotal"):
                    stack.append(child)
        return seen

    def _knobs_of(self, index):
        """Names of the query-time parameters that `index` has."""
        faiss = self._faiss
        parts = self._parts(index)
        has = {
            "nprobe": any(isinstance(p, faiss.IndexIVF) for p in parts),
            "ef_search": any(hasattr(p, "hnsw") for p in parts),
            "k_factor": any(isinstance(p, faiss.IndexRefine) for p in parts),
        }
        return [name for name, present in has.items() if present]

    def _validate_knobs(self, index):
        knobs = self._knobs_of(index)
        for name in _KNOBS:
            if getattr(self, name) is not None and name not in knobs:
                raise ValueError(
                    f"Invalid value received for argument `{name}`. It applies to "
                    f"{_KNOBS[name][2]} factories only. Received: {name}={getattr(self, name)!r} "
                    f"with factory={self.factory!r}"
                )
        if self.ef_construction is not None:
            if "ef_search" not in knobs:
                raise ValueError(
                    "Invalid value received for argument `ef_construction`. It applies to HNSW "
                    f"factories only. Received: ef_construction={self.ef_construction!r} with "
                    f"factory={self.factory!r}"
                )
            for p in self._parts(index):
                if hasattr(p, "hnsw"):
                    p.hnsw.efConstruction = self.ef_construction
        for p in self._parts(index):  # polysemous training: unused by this index and very slow
            if hasattr(p, "do_polysemous_training"):
                p.do_polysemous_training = False

    def _apply_knobs(self, **values):
        """Sets every query-time parameter of the index: the call's value, else the
        index's, else FAISS's default, so a per-call value never sticks."""
        knobs = self._knobs_of(self._index)
        for name, value in values.items():
            value = _check_search_knob(value, name)
            if value is not None and name not in knobs:
                raise ValueError(
                    f"Invalid value received for argument `{name}`. The factory {self.factory!r} "
                    f"has no {_KNOBS[name][0]} parameter. Received: {name}={value!r}"
                )
        faiss = self._faiss
        effective = {}
        for name in knobs:
            value = values.get(name)
            value = getattr(self, name) if value is None else value
            effective[name] = _KNOBS[name][1] if value is None else value
        for part in self._parts(self._index):
            if "nprobe" in effective and isinstance(part, faiss.IndexIVF):
                part.nprobe = effective["nprobe"]
            if "ef_search" in effective and hasattr(part, "hnsw"):
                part.hnsw.efSearch = effective["ef_search"]
            if "k_factor" in effective and isinstance(part, faiss.IndexRefine):
                part.k_factor = float(effective["k_factor"])

    def _prepare(self, vectors):
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.metric == "cosine":
            vectors = _l2_normalize(vectors)
        return vectors

    @property
    def is_trained(self):
        """Whether vectors can be added (always True for "Flat" and "HNSW")."""
        return self._index is not None and bool(self._index.is_trained)

    def train(self, vectors, max_samples=None, seed=0):
        """Trains the FAISS index (IVF, PQ, SQ, ... factories) on a sample; no-op for "Flat".

        Args:
            vectors: `(n, D)` training vectors (a sample of the data to index).
            max_samples: train on at most this many, drawn without replacement
                (default: all of `vectors`).
            seed: seed of that draw.
        """
        vectors = self._check_vectors(vectors, "vectors")
        if self._index is None:
            self.dimension = int(vectors.shape[1])
            self._index = self._new_index(self.dimension)
        if max_samples is not None and vectors.shape[0] > max_samples:
            rows = np.sort(np.random.default_rng(seed).choice(vectors.shape[0], int(max_samples), replace=False))
            vectors = vectors[rows]
        self._index.train(self._prepare(vectors))

    def default_train_size(self, n):
        """Training-sample size for `n` vectors: 64 per IVF list (at least 10,000,
        and 256 x 2^bits for product / scalar quantizers), at most `n`."""
        size = 10_000
        m = re.search(r"IVF(\d+)", self.factory)
        if m:
            size = max(size, 64 * int(m.group(1)))
        m = re.search(r"PQ\d+(?:x(\d+))?", self.factory)
        if m:
            size = max(size, 256 * (1 << int(m.group(1) or 8)))
        return int(min(n, size))

    def estimate_memory(self, n):
        """`estimate_faiss_memory(self.factory, n, self.dimension, self.metric)`."""
        if self.dimension is None:
            raise ValueError("The index has no dimension yet; pass `dimension=` to FaissIndex.")
        return estimate_faiss_memory(self.factory, n, self.dimension, self.metric)

    def add_shards(self, shards, metadata="key", train_size=None, seed=0):
        """Adds the output of an embedding job shard by shard; trains first if needed.

        An untrained index is first trained on `train_size` vectors drawn
        uniformly at random without replacement (`seed`) from all the shards
        (one extra read of each shard), then every shard is added.

        Args:
            shards: an output folder of `keras-cgd embed` (or its Beam pipeline),
                or a list of `(ids, vectors, keys)` tuples (any iterable once the
                index is trained).
            metadata: `"key"` (default) stores `{"key": key}` with each vector;
                None stores nothing.
            train_size: training-sample size (default `default_train_size(N)`;
                all vectors when there are fewer).
            seed: seed of the sample.

        Returns:
            the number of vectors added.
        """
        if self.is_trained or (self._index is None and self.factory == "Flat"):
            return super().add_shards(shards, metadata=metadata)
        shards = self._shard_source(shards)
        # One pass draws a uniform sample without replacement: every vector gets
        # a random key and the `size` smallest keys are kept.
        size = self.default_train_size(np.inf) if train_size is None else int(train_size)
        rng = np.random.default_rng(seed)
        keys, sample = np.zeros((0,)), None
        for _, vectors, _ in shards():
            vectors = np.asarray(vectors, np.float32)
            if not len(vectors):
                continue
            keys = np.concatenate([keys, rng.random(len(vectors))])
            sample = vectors if sample is None else np.concatenate([sample, vectors])
            if len(keys) > size:
                keep = np.sort(np.argpartition(keys, size)[:size])
                keys, sample = keys[keep], sample[keep]
        if sample is None:
            return 0
        self.train(sample)
        return super().add_shards(shards(), metadata=metadata)

    def _add_vectors(self, vectors):
        if self._index is None:
            self._index = self._new_index(vectors.shape[1])
        if not self._index.is_trained:
            raise ValueError(
                f"The FAISS index {self.factory!r} must be trained before "
                "vectors are added. Call `index.train(sample_vectors)` first "
                "(or use `index.add_shards`, which trains on a sample)."
            )
        self._index.add(self._prepare(vectors))

    def search(self, queries, k=10, *, nprobe=None, ef_search=None, k_factor=None):
        """Finds the k nearest stored vectors of each query (see `BaseIndex.search`).

        Args:
            queries: array `(Q, D)` (or `(D,)`).
            k: neighbours per query.
            nprobe, ef_search, k_factor: override the index's query-time
                parameters for this call (None: the index's value).
        Returns:
            `(ids, scores)`: int64 `(Q, k)` and float32 `(Q, k)`, best first.
        """
        if self._index is not None:
            self._apply_knobs(nprobe=nprobe, ef_search=ef_search, k_factor=k_factor)
        return super().search(queries, k)

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
            done = (s[:, k - 1] != s[:, -1]) | (pos[:, -1] < 0) | (fetch == total)
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
