"""Bulk embedding of image collections into Parquet shards (`keras-cgd embed`).

- `embed_images(model, source, out)`: the resumable single-machine job
  (`tf.data` decoding, the model on the current Keras backend or a SavedModel).
- `run_beam_pipeline(model, source, out, pipeline_args=...)`: the same job as an
  Apache Beam pipeline (`RunInference` on the SavedModel; DirectRunner by
  default, Dataflow / Flink / Spark by `--runner`). Needs `apache-beam`.
- `read_embeddings(out)`, `iter_embedding_shards(out)`, `read_skipped(out)`:
  read either job's output (`keras_cgd.index` indexes take it via `add_shards`).
- `resolve_source(spec)`, `load_embedding_model(path)`: the pieces both share.

Nothing heavy is imported until used (`pyarrow`, TensorFlow, Beam).

    >>> from keras_cgd import embedding
    >>> embedding.embed_images("runs/cgd_tiny", "photos/", "embeddings/")
    >>> ids, vectors, keys = embedding.read_embeddings("embeddings/")
"""

import importlib

_EXPORTS = {
    "embed_images": "keras_cgd.embedding.job",
    "run_beam_pipeline": "keras_cgd.embedding.beam",
    "saved_model_handler": "keras_cgd.embedding.beam",
    "read_embeddings": "keras_cgd.embedding.shards",
    "iter_embedding_shards": "keras_cgd.embedding.shards",
    "read_skipped": "keras_cgd.embedding.shards",
    "read_manifest": "keras_cgd.embedding.shards",
    "resolve_source": "keras_cgd.embedding.sources",
    "ImageSource": "keras_cgd.embedding.sources",
    "load_embedding_model": "keras_cgd.embedding.model_loading",
    "EmbeddingModelRunner": "keras_cgd.embedding.model_loading",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'keras_cgd.embedding' has no attribute {name!r}")


def __dir__():
    return __all__
