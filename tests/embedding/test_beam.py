"""The Beam pipeline (DirectRunner) writes what `keras-cgd embed` writes.

The pipeline runs a SavedModel with TensorFlow, whatever the Keras backend; on
JAX the SavedModel fixture is exported by the TF-backend subprocess of
`export_saved_model`, and the `.keras` comparison runs the JAX model.
"""

import os

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="embedding shards are Parquet files (pip install pyarrow)")
pytest.importorskip("apache_beam", reason="the Beam pipeline needs apache-beam (pip install keras-cgd[beam])")

from keras_cgd import embedding  # noqa: E402
from keras_cgd.embedding.cli import main as embed_main  # noqa: E402
from tests.embedding._helpers import listing  # noqa: E402
from tests.embedding.test_embed_job import _write_tfrecords  # noqa: E402
from tests.embedding.test_embed_job import folder_digest  # noqa: E402


def quiet(line):
    pass


def test_beam_output_equals_keras_cgd_embed_output(photo_folder, keras_runner, saved_model_dir, tmp_path):
    root, _, broken = photo_folder
    local, beam = str(tmp_path / "local"), str(tmp_path / "beam")
    embedding.embed_images(saved_model_dir, root, local, batch_size=3, shard_size=4, quiet=True, report=quiet)
    lines = []
    result = embedding.run_beam_pipeline(saved_model_dir, root, beam, batch_size=3, report=lines.append)
    ids_a, vectors_a, keys_a = embedding.read_embeddings(local)
    ids_b, vectors_b, keys_b = embedding.read_embeddings(beam)
    np.testing.assert_array_equal(ids_b, ids_a)
    assert keys_b == keys_a
    np.testing.assert_allclose(vectors_b, vectors_a, rtol=0, atol=1e-6)
    assert embedding.read_skipped(beam) == embedding.read_skipped(local)
    assert [r["key"] for r in embedding.read_skipped(beam)] == sorted(broken)
    assert sum("skipped unreadable image" in line for line in lines) == 2
    assert result["num_embeddings"] == 7 and result["num_skipped"] == 2
    # The same images through the .keras model on the current backend.
    keras_out = str(tmp_path / "keras")
    embedding.embed_images(keras_runner, root, keras_out, quiet=True, report=quiet)
    np.testing.assert_allclose(vectors_b, embedding.read_embeddings(keras_out)[1], atol=1e-5)
    manifest = embedding.read_manifest(beam)
    assert manifest["status"] == "complete" and manifest["dimension"] == 96
    assert manifest["model"]["fingerprint"] == embedding.read_manifest(local)["model"]["fingerprint"]
    assert not [n for n in os.listdir(beam) if n.startswith(".") or n.startswith("beam-temp")]
    # Rerunning a finished output does nothing.
    before = folder_digest(beam)
    embedding.run_beam_pipeline(saved_model_dir, root, beam, report=quiet)
    assert folder_digest(beam) == before


def test_beam_on_tfrecords_and_bad_inputs(photo_folder, keras_model_path, saved_model_dir, tmp_path):
    root = photo_folder[0]
    items = listing(photo_folder)
    records = str(tmp_path / "records")
    _write_tfrecords(items, records, per_file=4)
    local, beam = str(tmp_path / "local"), str(tmp_path / "beam")
    embedding.embed_images(saved_model_dir, records, local, quiet=True, report=quiet)
    assert embed_main([saved_model_dir, records, beam, "--beam", "--quiet", "--runner=DirectRunner"]) == 0
    a, b = embedding.read_embeddings(local), embedding.read_embeddings(beam)
    np.testing.assert_array_equal(b[0], a[0])
    assert b[2] == a[2]
    np.testing.assert_allclose(b[1], a[1], atol=1e-6)
    assert embedding.read_skipped(beam) == embedding.read_skipped(local)
    # Another job's folder is refused before the pipeline starts, and not changed.
    before = folder_digest(local)
    with pytest.raises(ValueError, match="output written by keras-cgd embed; this run is keras-cgd embed --beam"):
        embedding.run_beam_pipeline(saved_model_dir, records, local)
    with pytest.raises(ValueError, match="another source listing"):
        embedding.run_beam_pipeline(saved_model_dir, root, beam)
    assert folder_digest(local) == before
    with pytest.raises(ValueError, match="export the model first"):
        embedding.run_beam_pipeline(keras_model_path, root, str(tmp_path / "k"))
