import glob
import hashlib
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="embedding shards are Parquet files (pip install pyarrow)")

from keras_cgd import embedding  # noqa: E402
from keras_cgd.embedding import shards as shard_io  # noqa: E402
from keras_cgd.embedding.cli import main as embed_main  # noqa: E402
from keras_cgd.embedding.model_loading import EmbeddingModelRunner  # noqa: E402
from tests.embedding._helpers import listing  # noqa: E402
from tests.embedding._helpers import reference_embeddings  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def shard_contents(out):
    """[(file name, ids, keys, vectors, metadata)] of every shard, by file name."""
    result = []
    for path in sorted(glob.glob(os.path.join(out, "part-*.parquet"))):
        ids, vectors, keys = shard_io.read_shard(path)
        result.append((os.path.basename(path), ids, keys, vectors, shard_io.shard_metadata(path)))
    return result


def assert_same_shards(a, b):
    assert [s[0] for s in a] == [s[0] for s in b]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x[1], y[1])
        assert x[2] == y[2]
        np.testing.assert_allclose(x[3], y[3], rtol=0, atol=1e-6)
        assert x[4] == y[4]


def folder_digest(out):
    digest = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(out, "**"), recursive=True) + glob.glob(os.path.join(out, ".*"))):
        if os.path.isfile(path):
            digest.update(path.encode() + open(path, "rb").read())
    return digest.hexdigest()


def test_embeddings_equal_model_predict_with_ids_keys_and_reported_skips(
        photo_folder, keras_model_path, keras_runner, tmp_path, capsys):
    root, readable, broken = photo_folder
    items = listing(photo_folder)  # 9 files in path order: the ids
    out = str(tmp_path / "emb")
    lines = []
    result = embedding.embed_images(keras_runner, root, out, batch_size=3, shard_size=2,
                                    quiet=True, report=lines.append)

    ids, vectors, keys = embedding.read_embeddings(out)
    good = [i for i, p in enumerate(items) if p not in broken]
    np.testing.assert_array_equal(ids, good)
    assert keys == [items[i] for i in good]
    np.testing.assert_allclose(vectors, reference_embeddings(keras_model_path, keys), atol=1e-5)
    # Skips: the two unreadable files, each reported once with a reason, and listed.
    skipped = embedding.read_skipped(out)
    assert [(r["id"], r["key"]) for r in skipped] == [(items.index(p), p) for p in sorted(broken)]
    assert all(r["reason"] and r["reason"] != "unreadable" for r in skipped)
    for r in skipped:
        assert sum(r["key"] in line and r["reason"] in line for line in lines) == 1
    assert result["num_embeddings"] == 7 and result["num_skipped"] == 2 and result["dimension"] == 96
    # Shards of 2 items: ids [2s, 2s + 2) in shard s; 5 shards for 9 items.
    contents = shard_contents(out)
    assert [c[0] for c in contents] == [f"part-{s:06d}.parquet" for s in range(5)]
    for s, (_, shard_ids, _, shard_vectors, meta) in enumerate(contents):
        assert set(shard_ids.tolist()) <= {2 * s, 2 * s + 1}
        assert shard_vectors.dtype == np.float32 and shard_vectors.shape[1] == 96
        assert meta["shard"] == s and meta["dimension"] == 96
    manifest = embedding.read_manifest(out)
    assert manifest["status"] == "complete" and manifest["dimension"] == 96
    assert manifest["num_items"] == 9 and manifest["image_size"] == [32, 32]
    assert not [n for n in os.listdir(out) if n.startswith(".")]  # no temporary file left


def test_resume_after_a_failure_gives_the_shards_of_an_uninterrupted_run(photo_folder, keras_runner, tmp_path):
    root = photo_folder[0]
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    embedding.embed_images(keras_runner, root, full, batch_size=2, shard_size=2, quiet=True,
                           report=lambda line: None)

    def fail_after(index):
        if index == 1:
            raise KeyboardInterrupt("interrupted after shard 1")

    with pytest.raises(KeyboardInterrupt):
        embedding.embed_images(keras_runner, root, cut, batch_size=2, shard_size=2, quiet=True,
                               on_shard=fail_after, report=lambda line: None)
    assert sorted(os.listdir(cut)) == ["manifest.json", "part-000000.parquet", "part-000001.parquet"]
    assert embedding.read_manifest(cut)["status"] == "running"
    with pytest.raises(ValueError, match="has not finished"):
        embedding.read_embeddings(cut)
    kept = {n: os.stat(os.path.join(cut, n)).st_mtime_ns for n in os.listdir(cut) if n.startswith("part-")}
    written = []
    result = embedding.embed_images(keras_runner, root, cut, batch_size=2, shard_size=2, quiet=True,
                                    on_shard=written.append, report=lambda line: None)
    assert result["resumed_shards"] == 2 and written == [2, 3, 4]
    assert {n: os.stat(os.path.join(cut, n)).st_mtime_ns for n in kept} == kept  # not rewritten
    assert_same_shards(shard_contents(cut), shard_contents(full))
    assert embedding.read_skipped(cut) == embedding.read_skipped(full)
    # A finished folder: rerunning writes nothing.
    before = folder_digest(cut)
    again = embedding.embed_images(keras_runner, root, cut, batch_size=2, shard_size=2, quiet=True,
                                   on_shard=written.append, report=lambda line: None)
    assert written == [2, 3, 4] and folder_digest(cut) == before and again["num_embeddings"] == 7


_KILLER = """
import os, signal, sys
calls = []
real_replace = os.replace
def replace(src, dst):
    if dst.endswith(".parquet"):
        calls.append(dst)
        if len(calls) == 3:  # killed while shard 2 is written: its temp file stays
            os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst)
os.replace = replace
from keras_cgd.embedding.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_killed_process_resumes_to_the_same_shards(photo_folder, keras_model_path, keras_runner, tmp_path):
    root = photo_folder[0]
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    args = ["--batch-size", "2", "--shard-size", "2", "--quiet"]
    embedding.embed_images(keras_runner, root, full, batch_size=2, shard_size=2, quiet=True,
                           report=lambda line: None)
    script = tmp_path / "killer.py"
    script.write_text(_KILLER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(script), keras_model_path, root, cut, *args],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    names = sorted(os.listdir(cut))
    hidden = [n for n in names if n.startswith(".")]
    assert [n for n in names if n not in hidden] == ["manifest.json", "part-000000.parquet", "part-000001.parquet"]
    assert len(hidden) == 1 and hidden[0].startswith(".tmp-part-000002.parquet")  # the half-written shard
    assert embed_main([keras_model_path, root, cut, *args]) == 0
    assert not [n for n in os.listdir(cut) if n.startswith(".")]
    assert_same_shards(shard_contents(cut), shard_contents(full))


def test_output_folder_of_another_model_or_dimension_is_refused_untouched(photo_folder, keras_runner, tmp_path):
    root = photo_folder[0]
    out = str(tmp_path / "emb")
    embedding.embed_images(keras_runner, root, out, shard_size=4, quiet=True, report=lambda line: None)
    before = folder_digest(out)
    # Runners of other models: the folder is refused before any image is read.
    def runner(fingerprint, dimension):
        return EmbeddingModelRunner("keras", "other.keras", fingerprint, (32, 32),
                                    lambda x: np.zeros((len(x), dimension), np.float32), dimension)

    with pytest.raises(ValueError, match="another model") as e:
        embedding.embed_images(runner("0" * 64, 96), root, out, shard_size=4, quiet=True)
    assert "Nothing was written" in str(e.value) and out in str(e.value)
    with pytest.raises(ValueError, match="dimension 96; this model gives dimension 48"):
        embedding.embed_images(runner(keras_runner.fingerprint, 48), root, out, shard_size=4, quiet=True)
    with pytest.raises(ValueError, match="shards of 4 items; this run asks for 3"):
        embedding.embed_images(keras_runner, root, out, shard_size=3, quiet=True)
    assert folder_digest(out) == before
    # A folder that is not an embedding output is not written into either.
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds other files"):
        embedding.embed_images(keras_runner, root, str(foreign), quiet=True)
    assert os.listdir(foreign) == ["keep.txt"]


def _write_tfrecords(paths, folder, per_file):
    import tensorflow as tf

    os.makedirs(folder, exist_ok=True)
    files = []
    for f, start in enumerate(range(0, len(paths), per_file)):
        name = os.path.join(folder, f"part-{f}.tfrecord")
        with tf.io.TFRecordWriter(name) as w:
            for p in paths[start:start + per_file]:
                feature = {"image/encoded": tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[open(p, "rb").read()]))}
                w.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
        files.append(name)
    return files


def test_sources_folder_glob_list_and_tfrecords_give_the_same_embeddings(photo_folder, keras_runner, tmp_path):
    root, _, broken = photo_folder
    items = listing(photo_folder)
    ref_out = str(tmp_path / "folder")
    embedding.embed_images(keras_runner, root, ref_out, shard_size=4, quiet=True, report=lambda line: None)
    ref_ids, ref_vectors, ref_keys = embedding.read_embeddings(ref_out)
    # A glob and a .txt list (relative paths, a comment) in another order.
    listed = list(reversed(items))
    list_file = tmp_path / "list.txt"
    list_file.write_text("# my images\n" + "\n".join(os.path.relpath(p, tmp_path) for p in listed) + "\n\n")
    for spec, order in ((os.path.join(root, "**", "*.*"), items), (str(list_file), listed)):
        source = embedding.resolve_source(spec)
        assert source.files == order
    out = str(tmp_path / "list")
    embedding.embed_images(keras_runner, str(list_file), out, shard_size=4, quiet=True,
                           report=lambda line: None)
    ids, vectors, keys = embedding.read_embeddings(out)
    position = {p: i for i, p in enumerate(listed)}
    assert ids.tolist() == sorted(position[k] for k in ref_keys)
    by_key = dict(zip(ref_keys, ref_vectors))
    np.testing.assert_allclose(vectors, [by_key[k] for k in keys], atol=1e-6)
    # TFRecords: 9 examples in 3 files (two of them unreadable) and one without an image.
    import tensorflow as tf

    files = _write_tfrecords(items, str(tmp_path / "records"), per_file=4)
    with tf.io.TFRecordWriter(os.path.join(str(tmp_path / "records"), "part-9.tfrecord")) as w:
        w.write(tf.train.Example().SerializeToString())
    out = str(tmp_path / "tfr")
    result = embedding.embed_images(keras_runner, str(tmp_path / "records"), out, shard_size=4,
                                    quiet=True, report=lambda line: None)
    ids, vectors, keys = embedding.read_embeddings(out)
    np.testing.assert_array_equal(ids, ref_ids)
    assert keys == [f"{files[i // 4]}:{i % 4}" for i in ids]
    np.testing.assert_allclose(vectors, ref_vectors, atol=1e-6)
    skipped = embedding.read_skipped(out)
    assert [r["id"] for r in skipped] == [items.index(p) for p in sorted(broken)] + [9]
    assert "no image feature" in skipped[-1]["reason"]
    assert result["num_shards"] == 3  # 10 records, 4 a shard
    with pytest.raises(ValueError, match="Expected a folder of images, a glob"):
        embedding.resolve_source(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="the glob matches no file ending in"):
        embedding.resolve_source(str(tmp_path / "*.png"))


def test_saved_model_gives_the_embeddings_of_the_keras_model(photo_folder, keras_runner, saved_model_dir, tmp_path):
    root = photo_folder[0]
    runner = embedding.load_embedding_model(os.path.dirname(saved_model_dir))  # TF Serving base path
    assert runner.kind == "saved_model" and runner.path == saved_model_dir
    assert runner.image_size == (32, 32) and runner.dimension == 96
    a, b = str(tmp_path / "keras"), str(tmp_path / "sm")
    embedding.embed_images(keras_runner, root, a, quiet=True, report=lambda line: None)
    embedding.embed_images(saved_model_dir, root, b, quiet=True, report=lambda line: None)
    ka, va, _ = embedding.read_embeddings(a)
    kb, vb, _ = embedding.read_embeddings(b)
    np.testing.assert_array_equal(ka, kb)
    np.testing.assert_allclose(va, vb, atol=1e-5)
    assert embedding.read_manifest(a)["model"]["fingerprint"] != embedding.read_manifest(b)["model"]["fingerprint"]
    with pytest.raises(ValueError, match="Expected a .keras file, a run directory"):
        embedding.load_embedding_model(str(tmp_path))


def test_cli(photo_folder, keras_model_path, tmp_path, capsys):
    root = photo_folder[0]
    out = str(tmp_path / "emb")
    assert embed_main([keras_model_path, root, out, "--shard-size", "5"]) == 0
    captured = capsys.readouterr()
    assert "7 embeddings (dimension 96) in 2 shard(s)" in captured.out
    assert captured.err.count("skipped unreadable image") == 2
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert manifest["num_embeddings"] == 7
    assert embed_main([str(tmp_path / "nope.keras"), root, str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "Invalid value received for argument `model`" in err and len(err.strip().splitlines()) == 1
    assert embed_main([keras_model_path, root, str(tmp_path / "y"), "--runner", "DirectRunner"]) == 2
    assert "need --beam" in capsys.readouterr().err
