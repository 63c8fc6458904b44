"""MilvusIndex against a real Milvus Lite database (a local file), compared with brute force."""

import os

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="MilvusIndex needs pymilvus (pip install pymilvus milvus-lite)")
pytest.importorskip("milvus_lite", reason="the embedded database needs milvus-lite")

from keras_cgd.index import ExactIndex  # noqa: E402
from keras_cgd.index import MilvusIndex  # noqa: E402
from keras_cgd.index import load_index  # noqa: E402
from tests.index.test_index import brute_search  # noqa: E402


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return str(tmp_path_factory.mktemp("milvus") / "test.db")


@pytest.mark.parametrize("metric", ["cosine", "inner_product", "euclidean"])
def test_milvus_lite_search_equals_exact_search(db, metric, tmp_path):
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(250, 16)).astype(np.float32)
    queries = rng.normal(size=(12, 16)).astype(np.float32)
    ids = rng.permutation(100_000)[:250]
    meta = [{"path": f"img_{i}.jpg"} for i in ids]
    index = MilvusIndex(db, collection=f"exact_{metric}", metric=metric)
    index.add(vectors[:100], ids=ids[:100], metadata=meta[:100])
    index.add(vectors[100:], ids=ids[100:], metadata=meta[100:])  # two batches
    assert len(index) == 250 and index.dimension == 16
    got_ids, got_scores = index.search(queries, k=10)
    order, scores = brute_search(vectors, queries, 10, metric)
    np.testing.assert_array_equal(got_ids, ids[order])
    np.testing.assert_allclose(got_scores, scores, rtol=1e-5, atol=1e-5)
    exact = ExactIndex(metric=metric)
    exact.add(vectors, ids=ids, metadata=meta)
    np.testing.assert_array_equal(got_ids, exact.search(queries, 10)[0])
    assert index.get_metadata(got_ids[:2, :3]) == exact.get_metadata(got_ids[:2, :3])
    np.testing.assert_array_equal(index.ids, ids)  # insertion order
    np.testing.assert_allclose(index.get_vectors(ids[:3]), vectors[:3])
    with pytest.raises(KeyError, match="Unknown ids"):
        index.get_metadata([-5])
    # save writes a descriptor; load_index reopens the same collection.
    path = index.save(tmp_path / "milvus.index")
    loaded = load_index(path)
    assert type(loaded) is MilvusIndex and len(loaded) == 250 and loaded.metric == metric
    np.testing.assert_array_equal(loaded.search(queries, 10)[0], got_ids)


def test_ties_by_insertion_order_and_default_ids(db):
    # Integer vectors repeated 10 times: groups of equal scores straddle the k-th result.
    rng = np.random.default_rng(7)
    vectors = rng.integers(-3, 4, size=(6, 8))[rng.permutation(np.repeat(np.arange(6), 10))].astype(np.float32)
    queries = rng.integers(-3, 4, size=(5, 8)).astype(np.float32)
    k = 15
    order, scores = brute_search(vectors, queries, k + 1, "inner_product")
    assert (scores[:, k - 1] == scores[:, k]).all()
    index = MilvusIndex(db, collection="ties", metric="inner_product")
    first = index.add(vectors[:25])
    second = index.add(vectors[25:])
    np.testing.assert_array_equal(np.concatenate([first, second]), np.arange(60))
    got, got_scores = index.search(queries, k)
    np.testing.assert_array_equal(got, order[:, :k])
    np.testing.assert_allclose(got_scores, scores[:, :k], atol=1e-5)
    reopened = MilvusIndex(db, collection="ties", metric="inner_product")
    np.testing.assert_array_equal(reopened.add(vectors[:2]), [60, 61])  # after the largest id


def test_bad_collections_and_inputs_are_clear_errors(db):
    rng = np.random.default_rng(0)
    index = MilvusIndex(db, collection="dim16", dimension=16)
    index.add(rng.normal(size=(5, 16)), ids=[1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match="holds vectors of dimension 16.*Received: dimension=8"):
        MilvusIndex(db, collection="dim16", dimension=8)
    with pytest.raises(ValueError, match="indexed for metric 'COSINE'.*Received: metric='euclidean'"):
        MilvusIndex(db, collection="dim16", metric="euclidean")
    with pytest.raises(ValueError, match="Expected vectors of dimension 16"):
        index.add(rng.normal(size=(2, 8)))
    with pytest.raises(ValueError, match="ids not already in the index"):
        index.add(rng.normal(size=(2, 16)), ids=[5, 6])
    with pytest.raises(ValueError, match="at most 65535 bytes"):
        index.add(rng.normal(size=(1, 16)), metadata=["x" * 70_000])
    assert len(MilvusIndex(db, collection="dim16")) == 5  # nothing was added by the failures
    # A collection that keras-cgd did not create.
    from pymilvus import DataType
    from pymilvus import MilvusClient

    client = MilvusClient(os.path.abspath(db))
    schema = client.create_schema(auto_id=True)
    schema.add_field("pk", DataType.INT64, is_primary=True)
    schema.add_field("emb", DataType.FLOAT_VECTOR, dim=4)
    params = client.prepare_index_params()
    params.add_index(field_name="emb", index_type="FLAT", metric_type="L2")
    client.create_collection("foreign", schema=schema, index_params=params)
    with pytest.raises(ValueError, match="is not a keras-cgd index"):
        MilvusIndex(db, collection="foreign")


def test_add_shards(db, tmp_path):
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(30, 8)).astype(np.float32)
    shards = [(np.arange(0, 20), vectors[:20], [f"k{i}" for i in range(20)]),
              (np.arange(20, 30), vectors[20:], [f"k{i}" for i in range(20, 30)])]
    index = MilvusIndex(db, collection="shards")
    assert index.add_shards(shards) == 30
    got = index.search(vectors[:3], 1)[0]
    np.testing.assert_array_equal(got[:, 0], [0, 1, 2])
    assert index.get_metadata(got) == [[{"key": "k0"}], [{"key": "k1"}], [{"key": "k2"}]]
