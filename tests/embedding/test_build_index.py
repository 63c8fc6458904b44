"""`keras-cgd index`: exact, FAISS and Milvus indexes built from embedding shards."""

import os

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="embedding shards are Parquet files (pip install pyarrow)")

from keras_cgd.embedding import shards as shard_io  # noqa: E402
from keras_cgd.embedding.index_cli import main as index_main  # noqa: E402
from keras_cgd.index import load_index  # noqa: E402
from tests.index.test_index import brute_search  # noqa: E402

try:  # imported before any test captures stderr: Milvus Lite keeps a log handler on it
    import milvus_lite  # noqa: F401
    import pymilvus  # noqa: F401
except ImportError:
    pass


@pytest.fixture
def shards(tmp_path):
    """A finished output folder of 3 shards: 500 vectors of dimension 16, ids 1000 + i."""
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(500, 16)).astype(np.float32)
    ids = np.arange(500, dtype=np.int64) + 1000
    out = str(tmp_path / "emb")
    os.makedirs(out)
    for s, (a, b) in enumerate([(0, 200), (200, 400), (400, 500)]):
        shard_io.write_shard(os.path.join(out, f"part-{s:06d}.parquet"), ids[a:b],
                             [f"/photos/{i}.jpg" for i in ids[a:b]], vectors[a:b], {"shard": s})
    shard_io.write_json(os.path.join(out, "manifest.json"), {
        "format": shard_io.FORMAT, "status": "complete", "files": "part-*.parquet", "num_files": 3,
        "dimension": 16, "num_embeddings": 500})
    return out, ids, vectors, rng.normal(size=(6, 16)).astype(np.float32)


@pytest.mark.parametrize("backend,extra", [
    ("exact", []),
    ("faiss", ["--factory", "IVF8,Flat", "--nprobe", "8", "--train-size", "300"]),
    ("milvus", []),
])
def test_index_from_shards_searches_like_brute_force(shards, tmp_path, backend, extra, capsys):
    if backend == "faiss":
        pytest.importorskip("faiss")
    if backend == "milvus":
        pytest.importorskip("pymilvus")
        pytest.importorskip("milvus_lite")
    out, ids, vectors, queries = shards
    path = str(tmp_path / "photos.index")
    assert index_main([out, path, "--backend", backend, *extra]) == 0
    assert f"index of 500 vectors ({backend}" in capsys.readouterr().out
    index = load_index(path)
    got, _ = index.search(queries, 5)
    np.testing.assert_array_equal(got, ids[brute_search(vectors, queries, 5, "cosine")[0]])
    assert index.get_metadata(got[:1, :1]) == [[{"key": f"/photos/{got[0, 0]}.jpg"}]]
    # Nothing is overwritten.
    before = open(path, "rb").read()
    assert index_main([out, path, "--backend", backend, *extra]) == 2
    assert "nothing is overwritten" in capsys.readouterr().err
    assert open(path, "rb").read() == before
    if backend == "milvus":
        assert index_main([out, str(tmp_path / "again.index"), "--backend", "milvus",
                           "--uri", str(tmp_path / "photos.db")]) == 2
        assert "already holds 500 vectors" in capsys.readouterr().err


def test_faiss_dry_run_prints_the_memory_estimate(shards, tmp_path, capsys):
    pytest.importorskip("faiss")
    from keras_cgd.index import estimate_faiss_memory

    out = shards[0]
    path = str(tmp_path / "x.index")
    assert index_main([out, path, "--backend", "faiss", "--factory", "HNSW8", "--dry-run"]) == 0
    mib = estimate_faiss_memory("HNSW8", 500, 16) / 2**20
    assert f"about {mib:.1f} MiB" in capsys.readouterr().out
    assert not os.path.exists(path)
    assert index_main([str(tmp_path), path]) == 2
    assert "Expected an output folder of `keras-cgd embed`" in capsys.readouterr().err
