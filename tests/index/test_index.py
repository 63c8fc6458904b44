import json
import os

import numpy as np
import pytest

from keras_cgd.index import ExactIndex
from keras_cgd.index import FaissIndex
from keras_cgd.index import load_index


def brute_search(vectors, queries, k, metric):
    q, g = np.asarray(queries, np.float64), np.asarray(vectors, np.float64)
    if metric == "euclidean":
        d = np.sqrt(((q[:, None] - g[None]) ** 2).sum(-1))
        order = np.argsort(d, axis=1, kind="stable")[:, :k]
        return order, np.take_along_axis(d, order, 1)
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        g = g / np.linalg.norm(g, axis=1, keepdims=True)
    s = q @ g.T
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(s, order, 1)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(200, 16)).astype(np.float32), rng.normal(size=(9, 16)).astype(np.float32)


@pytest.mark.parametrize("cls", [ExactIndex, FaissIndex])
@pytest.mark.parametrize("metric", ["cosine", "inner_product", "euclidean"])
def test_search_matches_bruteforce_with_ids(cls, metric, data):
    vectors, queries = data
    ids = np.arange(1000, 1200)[::-1].copy()
    index = cls(metric=metric)
    index.add(vectors[:120], ids=ids[:120])
    index.add(vectors[120:], ids=ids[120:])  # two batches
    got_ids, got_scores = index.search(queries, k=7)
    order, scores = brute_search(vectors, queries, 7, metric)
    np.testing.assert_array_equal(got_ids, ids[order])
    np.testing.assert_allclose(got_scores, scores, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cls", [ExactIndex, FaissIndex])
@pytest.mark.parametrize("metric", ["inner_product", "euclidean"])
def test_ties_straddling_kth_result_by_insertion_order(cls, metric):
    # 6 distinct small-integer vectors, each stored 10 times in shuffled
    # order: every score is exact in float32, and equal scores come in groups
    # of 10 that cut across the k-th result. 24 queries (FAISS switches to
    # BLAS from 20 queries on).
    rng = np.random.default_rng(7)
    vectors = rng.integers(-3, 4, size=(6, 8))[rng.permutation(np.repeat(np.arange(6), 10))].astype(np.float32)
    queries = rng.integers(-3, 4, size=(24, 8)).astype(np.float32)
    ids = rng.permutation(np.arange(500, 560))  # not the insertion order
    k = 15
    order, scores = brute_search(vectors, queries, k + 1, metric)
    assert (scores[:, k - 1] == scores[:, k]).all()  # a tie straddles the k-th result
    index = cls(metric=metric)
    index.add(vectors[:25], ids=ids[:25])
    index.add(vectors[25:], ids=ids[25:])
    got_ids, got_scores = index.search(queries, k)
    np.testing.assert_array_equal(got_ids, ids[order[:, :k]])
    np.testing.assert_allclose(got_scores, scores[:, :k], rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("cls", [ExactIndex, FaissIndex])
def test_save_load_roundtrip_with_metadata(cls, data, tmp_path):
    vectors, queries = data
    index = cls(metric="euclidean")
    meta = [{"path": f"img_{i}.jpg", "label": int(i % 3)} for i in range(200)]
    index.add(vectors, ids=np.arange(200) * 2, metadata=meta)
    path = tmp_path / "sub" / "my.index"
    index.save(path)
    assert sorted(os.listdir(tmp_path / "sub")) == ["my.index"]  # no temp file left
    loaded = load_index(path)
    assert type(loaded) is cls and loaded.metric == "euclidean" and len(loaded) == 200
    np.testing.assert_array_equal(loaded.search(queries, 5)[0], index.search(queries, 5)[0])
    ids = loaded.search(queries[:2], 3)[0]
    assert loaded.get_metadata(ids) == [[meta[i // 2] for i in row] for row in ids.tolist()]
    # overwrite in place, then class check on load
    index.add(queries)
    index.save(path)
    assert len(cls.load(path)) == 209
    other = FaissIndex if cls is ExactIndex else ExactIndex
    with pytest.raises(TypeError, match="load_index"):
        other.load(path)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_saved_file_mode_follows_umask(tmp_path, umask):
    index = ExactIndex()
    index.add(np.eye(3))
    old = os.umask(umask)
    try:
        index.save(tmp_path / "a.index")
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "a.index").st_mode & 0o777 == 0o666 & ~umask


def test_load_unknown_class_raises_value_error(tmp_path):
    header = {"format_version": 1, "class_name": "MysteryIndex", "config": {}, "metadata": []}
    path = tmp_path / "x.index"
    with open(path, "wb") as f:
        np.savez(f, ids=np.zeros(0, np.int64), header=np.frombuffer(json.dumps(header).encode(), np.uint8))
    with pytest.raises(ValueError, match="MysteryIndex"):
        load_index(path)


def test_save_is_atomic_on_failure(tmp_path, monkeypatch):
    index = ExactIndex()
    index.add(np.eye(3))
    path = tmp_path / "a.index"
    index.save(path)
    before = path.read_bytes()
    index.add(np.ones((1, 3)))

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        index.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["a.index"]


def test_auto_ids_and_validation():
    index = ExactIndex()
    assert index.add(np.eye(2), ids=[5, 7]).tolist() == [5, 7]
    assert index.add(np.eye(2)).tolist() == [8, 9]
    with pytest.raises(ValueError, match="ids"):
        index.add(np.eye(2), ids=[5, 6])  # 5 already present
    with pytest.raises(ValueError, match="dimension"):
        index.add(np.eye(3))
    with pytest.raises(ValueError, match="metadata"):
        index.add(np.eye(2), metadata=["one"])
    with pytest.raises(ValueError, match="`k`"):
        index.search(np.eye(2), k=5)
    with pytest.raises(KeyError):
        index.get_metadata([123])
    with pytest.raises(ValueError, match="shape"):
        index.add(np.eye(2), ids=[[1, 2]])
    with pytest.raises(ValueError, match="k=0"):
        index.search(np.eye(2), k=0)
    with pytest.raises(ValueError, match="metric"):
        ExactIndex(metric="hamming")


def test_faiss_missing_gives_helpful_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("No module named 'faiss'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        FaissIndex()


def test_metadata_of_any_json_shape():
    index = ExactIndex()
    index.add(np.eye(3), ids=[7, 8, 9], metadata=[[1, 2], [3, 4], {"a": 1}])
    assert index.get_metadata([[7, 8], [9, 7]]) == [[[1, 2], [3, 4]], [{"a": 1}, [1, 2]]]
    assert index.get_metadata(8) == [3, 4]
    index.add(np.ones((1, 3)), ids=[-1], metadata=["new"])  # the id lookup follows adds
    assert index.get_metadata([-1, 9]) == ["new", {"a": 1}]


def test_exact_search_after_add_and_load_uses_current_vectors(tmp_path):
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(30, 5)).astype(np.float32), rng.normal(size=(20, 5)).astype(np.float32)
    queries = rng.normal(size=(4, 5)).astype(np.float32)
    index = ExactIndex()
    index.add(a)
    index.search(queries, 3)  # builds the normalised copy
    index.add(b)
    order, _ = brute_search(np.concatenate([a, b]), queries, 5, "cosine")
    np.testing.assert_array_equal(index.search(queries, 5)[0], order)
    index.save(tmp_path / "i.index")
    loaded = ExactIndex.load(tmp_path / "i.index")
    np.testing.assert_array_equal(loaded.search(queries, 5)[0], order)
