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


def test_exact_and_faiss_agree(data):
    vectors, queries = data
    a, b = ExactIndex(), FaissIndex()
    a.add(vectors)
    b.add(vectors)
    np.testing.assert_array_equal(a.search(queries, 20)[0], b.search(queries, 20)[0])


def test_faiss_ties_by_insertion_order():
    index = FaissIndex(metric="inner_product")
    index.add(np.ones((5, 2), np.float32), ids=[4, 2, 9, 1, 0])
    ids, _ = index.search(np.ones((1, 2)), 5)
    assert ids.tolist() == [[4, 2, 9, 1, 0]]


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
