"""FaissIndex with IVF / PQ / HNSW factories, query-time knobs, shards and memory estimates."""

import os

import numpy as np
import pytest

faiss = pytest.importorskip("faiss", reason="FaissIndex needs faiss-cpu")

from keras_cgd.index import FaissIndex  # noqa: E402
from keras_cgd.index import estimate_faiss_memory  # noqa: E402
from keras_cgd.index import load_index  # noqa: E402
from tests.index.test_index import brute_search  # noqa: E402


def clustered(n, dim, clusters, seed=0, spread=0.3):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, dim))
    x = centers[rng.integers(0, clusters, n)] + spread * rng.normal(size=(n, dim))
    return x.astype(np.float32)


def recall(found, truth):
    return np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)])


@pytest.fixture(scope="module")
def data():
    x = clustered(3000, 32, 30)
    q = clustered(40, 32, 30, seed=1)
    return x, q


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_ivf_flat_probing_every_list_is_exact(data, metric):
    x, q = data
    ids = np.arange(3000) * 3 + 7
    index = FaissIndex(metric=metric, dimension=32, factory="IVF16,Flat", nprobe=16)
    index.train(x, max_samples=1000)
    index.add(x, ids=ids)
    got, scores = index.search(q, k=10)
    order, expected = brute_search(x, q, 10, metric)
    np.testing.assert_array_equal(got, ids[order])
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4)


def test_nprobe_and_ef_search_trade_speed_for_recall(data):
    x, q = data
    truth = brute_search(x, q, 10, "cosine")[0]
    ivf = FaissIndex(dimension=32, factory="IVF64,Flat")
    ivf.train(x)
    ivf.add(x)
    # More probed lists, higher recall; per-call values do not stick.
    r1 = recall(ivf.search(q, 10, nprobe=1)[0], truth)
    r64 = recall(ivf.search(q, 10, nprobe=64)[0], truth)
    assert r1 < r64 == 1.0
    assert recall(ivf.search(q, 10)[0], truth) == r1  # FAISS's default nprobe=1 again
    assert faiss.extract_index_ivf(ivf._index).nprobe == 1
    hnsw = FaissIndex(dimension=32, factory="HNSW16", ef_search=200, ef_construction=80)
    hnsw.add(x)
    assert hnsw._index.hnsw.efConstruction == 80
    assert recall(hnsw.search(q, 10)[0], truth) >= 0.9
    assert recall(hnsw.search(q, 10, ef_search=10)[0], truth) <= recall(hnsw.search(q, 10)[0], truth)
    pq = FaissIndex(dimension=32, factory="IVF16,PQ8x6,Refine(SQ8)", nprobe=16, k_factor=8)
    pq.train(x)
    pq.add(x)
    assert recall(pq.search(q, 10)[0], truth) >= 0.85
    assert recall(pq.search(q, 10, k_factor=1)[0], truth) < recall(pq.search(q, 10)[0], truth)
    with pytest.raises(ValueError, match="`nprobe`. It applies to IVF factories only"):
        FaissIndex(dimension=32, factory="HNSW16", nprobe=4)
    with pytest.raises(ValueError, match="`ef_construction`. It applies to HNSW"):
        FaissIndex(dimension=32, factory="IVF16,Flat", ef_construction=80)
    with pytest.raises(ValueError, match="has no efSearch parameter"):
        ivf.search(q, 10, ef_search=8)
    with pytest.raises(ValueError, match="drop the IDMap part"):
        FaissIndex(dimension=32, factory="IDMap,Flat")
    with pytest.raises(ValueError, match="FAISS cannot build it"):
        FaissIndex(dimension=30, factory="IVF16,PQ8")  # 30 is not a multiple of 8
    with pytest.raises(ValueError, match="must be trained"):
        FaissIndex(dimension=32, factory="IVF16,Flat").add(x)


def test_save_load_keeps_factory_and_query_parameters(data, tmp_path):
    x, q = data
    index = FaissIndex(dimension=32, factory="IVF32,PQ8np", nprobe=8)
    index.train(x)
    index.add(x, metadata=[{"i": i} for i in range(len(x))])
    path = index.save(tmp_path / "ivfpq.index")
    loaded = load_index(path)
    assert loaded.get_config() == index.get_config()
    assert faiss.extract_index_ivf(loaded._index).nprobe == 1  # applied per search, not stored by FAISS
    a, b = index.search(q, 5), loaded.search(q, 5)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1])
    assert loaded.get_metadata(a[0][:1, :2]) == [[{"i": int(a[0][0, 0])}, {"i": int(a[0][0, 1])}]]


def test_add_shards_trains_on_a_sample_and_equals_adding_arrays(data, tmp_path):
    pytest.importorskip("pyarrow", reason="embedding shards are Parquet files")
    from keras_cgd.embedding import shards as shard_io

    x, q = data
    out = str(tmp_path / "emb")
    os.makedirs(out)
    ids = np.arange(len(x), dtype=np.int64) + 100
    keys = [f"img{i}.jpg" for i in range(len(x))]
    bounds = [0, 1000, 1000, 2500, 3000]  # one empty shard
    for s in range(4):
        a, b = bounds[s], bounds[s + 1]
        shard_io.write_shard(os.path.join(out, f"part-{s:06d}.parquet"), ids[a:b], keys[a:b], x[a:b], {"shard": s})
    shard_io.write_json(os.path.join(out, "manifest.json"), {
        "format": shard_io.FORMAT, "status": "complete", "files": "part-*.parquet", "num_files": 4,
        "dimension": 32})
    index = FaissIndex(dimension=32, factory="IVF16,Flat", nprobe=16)
    assert index.add_shards(out, train_size=800) == 3000
    assert index.is_trained and len(index) == 3000
    got, _ = index.search(q, 10)
    np.testing.assert_array_equal(got, ids[brute_search(x, q, 10, "cosine")[0]])
    assert index.get_metadata(got[:1, :1]) == [[{"key": keys[int(got[0, 0]) - 100]}]]
    exact = FaissIndex()
    exact.add_shards(out, metadata=None)
    np.testing.assert_array_equal(exact.search(q, 10)[0], got)
    assert exact.get_metadata(got[:1, :1]) == [[None]]


@pytest.mark.parametrize("factory", [
    "Flat", "IVF32,Flat", "IVF32,PQ8", "IVF32,PQ16x4", "IVF32,PQ8,Refine(SQ8)", "IVF32,PQ8,RFlat",
    "IVF32,SQ8", "HNSW8", "HNSW8,Flat", "HNSW8_SQ8", "PCA16,IVF32,Flat",
    "IVF32_HNSW8,Flat", "SQfp16",
])
def test_memory_estimate_matches_the_built_index(data, factory):
    # FAISS's serialised index holds the same arrays as the one in memory;
    # keras-cgd adds 8 bytes of id per vector.
    x, _ = data
    index = FaissIndex(metric="cosine", dimension=32, factory=factory)
    index.train(x)
    index.add(x)
    built = len(faiss.serialize_index(index._index)) + 8 * len(x)
    estimate = index.estimate_memory(len(x))
    assert estimate == estimate_faiss_memory(factory, len(x), 32)
    assert abs(estimate - built) <= 0.02 * built + 2048, (estimate, built)


def test_memory_estimate_formulas_and_errors():
    n, d = 1_000_000, 256
    assert estimate_faiss_memory("Flat", n, d) == n * (4 * d + 8)
    ivfpq = estimate_faiss_memory("IVF1024,PQ32", n, d)
    assert ivfpq == n * (32 + 8 + 8) + 1024 * d * 4 + 256 * d * 4
    # Euclidean IVF-PQ adds FAISS's precomputed table: nlist x m x 256 floats.
    assert estimate_faiss_memory("IVF1024,PQ32", n, d, "euclidean") == ivfpq + 1024 * 32 * 256 * 4
    m = 32
    assert estimate_faiss_memory("HNSW32", n, d) == n * (4 * d + 8) + int(n * (4 * (2 * m + m / (m - 1)) + 12))
    with pytest.raises(ValueError, match="Cannot estimate the part 'LSH'"):
        estimate_faiss_memory("LSH", n, d)
    with pytest.raises(ValueError, match="Received: n=-1"):
        estimate_faiss_memory("Flat", -1, d)
