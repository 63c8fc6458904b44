"""The bulk embedding job as an Apache Beam pipeline (`RunInference` on a SavedModel).

TensorFlow-only module (the model is an exported SavedModel, run by
TensorFlow in the Beam workers whatever the Keras backend); needs
`apache-beam` (`pip install keras-cgd[beam]`).

    images ──(id, key) listing──► read + decode + resize (DoFn) ──► RunInference
        (KeyedModelHandler over the SavedModel's `serving_pixels` signature,
        batched by Beam) ──► WriteToParquet(OUT/beam-<run>-SSSSS-of-NNNNN.parquet)
    unreadable images ──► OUT/skipped.jsonl (the same records as `keras-cgd embed`)

The items, ids, keys, decoding and Parquet schema are those of
`keras_cgd.embedding.embed_images` (`keras-cgd embed`), so both jobs write the
same rows for the same images (in other files, in another order:
`read_embeddings` sorts by id). The pipeline runs on the DirectRunner unless the
pipeline arguments name another runner (`--runner FlinkRunner`, `--runner
SparkRunner`, `--runner DataflowRunner`: every argument is passed to Beam's
`PipelineOptions`). The launcher lists and fingerprints the source and the
model with local file APIs, so they must be on a file system that it and the
workers share (NFS, a mounted bucket); object-store URLs (`gs://`) for them are
not supported yet. `OUT` is written through Beam's `FileSystems`.

- Listing: image files are listed by the launcher (`resolve_source`) into
  `OUT/.listing-<run>/chunk-*.txt` (10,000 `id<TAB>path` lines each), which the
  workers read in parallel; TFRecord files are counted in parallel and their
  records numbered from the counts (so ids are global record positions).
- Fault tolerance and atomicity are Beam's: a runner retries failed bundles, and
  the Parquet sink writes to a temporary folder and renames the finished files.
  A rerun after a failed pipeline starts the pipeline again (not resumable by
  shard, unlike `keras-cgd embed`); an output folder of another model,
  dimension or job is refused before anything is written.
"""

import json
import os
import secrets
import time

import numpy as np

from keras_cgd.embedding import shards as shard_io
from keras_cgd.embedding.job import _check_positive_int
from keras_cgd.embedding.job import _stderr
from keras_cgd.embedding.job import wanted_manifest
from keras_cgd.embedding.model_loading import load_embedding_model
from keras_cgd.embedding.model_loading import pixel_signature
from keras_cgd.embedding.sources import describe_decode_error
from keras_cgd.embedding.sources import resolve_source

WRITER = "keras-cgd embed --beam"
LISTING_CHUNK = 10_000


def import_beam():
    """The `apache_beam` module, or an ImportError saying how to install it."""
    try:
        import apache_beam
    except ImportError as e:
        raise ImportError(
            "The Beam pipeline needs `apache-beam`, which is not installed. Install it with "
            "`pip install apache-beam` (or `pip install keras-cgd[beam]`), or run the "
            f"single-machine job `keras-cgd embed` without --beam. Original error: {e}"
        ) from e
    return apache_beam


# --------------------------------------------------------------- functions run by workers


def _read_listing_chunk(path):
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as f:
        for line in f.read().decode("utf-8").splitlines():
            if line:
                item_id, item_path = line.split("\t", 1)
                yield int(item_id), item_path, item_path


def _count_records(item):
    import tensorflow as tf

    index, path = item
    return index, int(tf.data.TFRecordDataset(path).reduce(np.int64(0), lambda n, _: n + 1))


def _record_offsets(counts):
    offsets, total = {}, 0
    for index, count in sorted(counts):
        offsets[index] = total
        total += count
    return offsets


def _read_records(item, offsets):
    import tensorflow as tf

    index, path = item
    start = offsets[index]
    for ri, record in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
        yield start + ri, f"{path}:{ri}", record


class _DecodeImages:
    """DoFn body: `(id, key, path_or_record)` -> `((id, key), pixels)` or a skip record."""

    def __init__(self, image_size, tfrecord):
        self.image_size = tuple(image_size)
        self.tfrecord = tfrecord
        self._fn = None

    def setup(self):
        import tensorflow as tf

        from keras_cgd.embedding.sources import decode_image_file
        from keras_cgd.embedding.sources import parse_example

        size = self.image_size

        @tf.function(input_signature=[tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.string)])
        def decode(contents, name):
            if self.tfrecord:
                contents, name = parse_example(contents, name)
            return decode_image_file(contents, size), name

        self._fn = decode

    def process(self, element):
        import apache_beam as beam
        import tensorflow as tf

        item_id, key, raw = element
        try:
            if not self.tfrecord:
                from apache_beam.io.filesystems import FileSystems

                with FileSystems.open(raw) as f:
                    contents = f.read()
            else:
                contents = raw
            pixels, name = self._fn(tf.constant(contents), tf.constant(key))
        except Exception:  # noqa: BLE001 - every read/decode error is a reported skip
            reason = describe_decode_error(raw, self.image_size, parse=self.tfrecord)
            yield beam.pvalue.TaggedOutput("skipped", {"id": item_id, "key": key, "reason": reason})
            return
        key = name.numpy().decode("utf-8", "replace")
        yield (item_id, key), pixels.numpy()


def _make_decode_dofn(image_size, tfrecord):
    beam = import_beam()

    class DecodeImages(beam.DoFn):
        def __init__(self):
            self.body = _DecodeImages(image_size, tfrecord)

        def setup(self):
            self.body.setup()

        def process(self, element):
            yield from self.body.process(element)

    return DecodeImages()


class _LoadedSavedModel:
    """A loaded SavedModel and its pixel signature (Beam shares it by weak reference)."""

    def __init__(self, path):
        import tensorflow as tf

        self.loaded = tf.saved_model.load(path)
        self.signature, self.input_name, _, _ = pixel_signature(self.loaded, path)


def saved_model_handler(model_path, max_batch_size=64):
    """A Beam `ModelHandler` running a keras-cgd SavedModel's pixel signature.

    `load_model` loads the SavedModel with `tf.saved_model.load` and picks its
    `serving_pixels` signature (`model_loading.pixel_signature`);
    `run_inference` stacks a batch of float32 `(H, W, 3)` images and returns one
    `PredictionResult` per image whose `inference` is the float32 embedding
    `(D,)` (`example` is None, so the pixels are not kept).

    Args:
        model_path: a SavedModel folder (local or any Beam/TF file system).
        max_batch_size: largest batch Beam's `BatchElements` forms.
    """
    beam = import_beam()
    from apache_beam.ml.inference.base import ModelHandler
    from apache_beam.ml.inference.base import PredictionResult

    del beam

    class SavedModelPixelsHandler(ModelHandler):
        def __init__(self):
            super().__init__(min_batch_size=1, max_batch_size=max_batch_size)
            self.model_path = model_path

        def load_model(self):
            import tensorflow as tf

            return _LoadedSavedModel(self.model_path)

        def run_inference(self, batch, model, inference_args=None):
            import tensorflow as tf

            images = tf.constant(np.stack(batch).astype(np.float32, copy=False))
            vectors = model.signature(**{model.input_name: images})["embedding"].numpy()
            return [PredictionResult(None, v) for v in vectors]

        def get_num_bytes(self, batch):
            return int(sum(np.asarray(x).nbytes for x in batch))

        def get_metrics_namespace(self):
            return "keras_cgd_embed"

    return SavedModelPixelsHandler()


def _to_row(element):
    (item_id, key), result = element
    return {"id": int(item_id), "key": key, "embedding": np.asarray(result.inference, np.float32).tolist()}


# ------------------------------------------------------------------------ the pipeline


def build_pipeline(pipeline, runner, source, out, run_id, batch_size):
    """Adds the embedding transforms to `pipeline` (a `beam.Pipeline`).

    Args:
        pipeline: the `beam.Pipeline` to add to.
        runner: the `EmbeddingModelRunner` of the SavedModel (its path, image size,
            dimension and fingerprint are used; the workers load the model again).
        source: a resolved `ImageSource`.
        out: output folder.
        run_id: hex string naming this run's files.
        batch_size: largest inference batch.
    """
    beam = import_beam()
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.ml.inference.base import KeyedModelHandler
    from apache_beam.ml.inference.base import RunInference

    tfrecord = source.kind == "tfrecord"
    if tfrecord:
        files = pipeline | "TFRecordFiles" >> beam.Create(list(enumerate(source.files)))
        offsets = (files | "Count" >> beam.Map(_count_records)
                   | "Offsets" >> beam.combiners.ToList() | beam.Map(_record_offsets))
        items = files | "Records" >> beam.FlatMap(_read_records, offsets=beam.pvalue.AsSingleton(offsets))
    else:
        chunks = _write_listing(FileSystems, out, run_id, source.files)
        items = (pipeline | "Listing" >> beam.Create(chunks)
                 | "ReadListing" >> beam.FlatMap(_read_listing_chunk))
    decoded = (items | "Spread" >> beam.Reshuffle()
               | "Decode" >> beam.ParDo(_make_decode_dofn(runner.image_size, tfrecord))
               .with_outputs("skipped", main="images"))
    handler = KeyedModelHandler(saved_model_handler(runner.path, batch_size))
    meta = {"model_fingerprint": runner.fingerprint, "dimension": runner.dimension, "run": run_id}
    (decoded.images
     | "Embed" >> RunInference(handler)
     | "Rows" >> beam.Map(_to_row)
     | "Write" >> beam.io.WriteToParquet(
         FileSystems.join(out, f"beam-{run_id}"), shard_io.schema(runner.dimension, meta),
         file_name_suffix=".parquet"))
    (decoded.skipped
     | "SkipLines" >> beam.Map(lambda row: json.dumps(row, sort_keys=True))
     | "WriteSkipped" >> beam.io.WriteToText(FileSystems.join(out, f".beam-{run_id}-skipped"),
                                             file_name_suffix=".jsonl"))


def _write_listing(filesystems, out, run_id, paths):
    folder = filesystems.join(out, f".listing-{run_id}")
    filesystems.mkdirs(folder)
    chunks = []
    for c, start in enumerate(range(0, len(paths), LISTING_CHUNK)):
        path = filesystems.join(folder, f"chunk-{c:06d}.txt")
        lines = "".join(f"{start + j}\t{p}\n" for j, p in enumerate(paths[start:start + LISTING_CHUNK]))
        with filesystems.create(path) as f:
            f.write(lines.encode("utf-8"))
        chunks.append(path)
    return chunks


def _glob(filesystems, pattern):
    return sorted(m.path for m in filesystems.match([pattern])[0].metadata_list)


def run_beam_pipeline(model, source, out, *, batch_size=64, pipeline_args=None, report=None):
    """Runs the Beam embedding pipeline and waits for it; returns the job's summary.

    Args:
        model: a SavedModel folder or TF Serving model base path (export a `.keras`
            model first with `keras-cgd export`).
        source: as for `embed_images` (a folder, glob, `.txt` list or TFRecords).
        out: output folder (a path the workers can write).
        batch_size: largest inference batch (default 64).
        pipeline_args: list of Beam pipeline arguments, e.g. `["--runner=FlinkRunner",
            "--flink_master=flink:8081"]` or `["--direct_num_workers=8",
            "--direct_running_mode=multi_processing"]`; default: the DirectRunner.
        report: callable taking one line, for skip reports (default: stderr).

    Returns:
        dict with `out`, `num_embeddings`, `num_skipped`, `skipped`, `num_shards`,
        `dimension`, `seconds`, `run`.

    Example:
    >>> run_beam_pipeline("savedmodels/cgd_tiny", "photos/", "embeddings-beam/")
    >>> run_beam_pipeline("/shared/savedmodels/cgd/3", "/shared/photos/", "/shared/emb",
    ...                   pipeline_args=["--runner=FlinkRunner", "--flink_master=flink:8081"])
    """
    start_time = time.perf_counter()
    beam = import_beam()
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    batch_size = _check_positive_int(batch_size, "batch_size")
    shard_io.import_pyarrow()
    report = report or _stderr
    out = os.fspath(out)
    runner = load_embedding_model(model)
    if runner.kind != "saved_model":
        raise ValueError(
            "Invalid value received for argument `model`. The Beam pipeline runs a SavedModel "
            "with RunInference; export the model first (`keras-cgd export MODEL savedmodels/NAME`) "
            f"and pass the SavedModel folder. Received: model={runner.path!r} ({runner.kind})"
        )
    source = resolve_source(source)
    wanted = wanted_manifest(runner, source, None, WRITER)
    manifest_path = FileSystems.join(out, shard_io.MANIFEST)
    existing = None
    if FileSystems.exists(manifest_path):
        with FileSystems.open(manifest_path) as f:
            existing = json.loads(f.read().decode("utf-8"))
        shard_io.check_compatible(out, existing, wanted)
    elif FileSystems.exists(out) and _glob(FileSystems, FileSystems.join(out, "*")):
        raise ValueError(
            "Invalid value received for argument `out`. Expected a new or empty folder, or one "
            f"written by {WRITER} (with {shard_io.MANIFEST}); {out!r} holds other files. Nothing "
            f"was written. Received: out={out!r}"
        )
    if existing is not None and existing.get("status") == "complete":
        manifest = existing
    else:
        FileSystems.mkdirs(out) if not FileSystems.exists(out) else None
        _write_manifest(FileSystems, manifest_path, wanted)
        # Files of an earlier, unfinished run of this job (the manifest matched).
        stale = [m for pattern in ("beam-*.parquet", "beam-temp-*", ".beam-*", ".listing-*")
                 for m in _glob(FileSystems, FileSystems.join(out, pattern))]
        if stale:
            FileSystems.delete(stale)
        run_id = secrets.token_hex(4)
        args = list(pipeline_args or [])
        if not any(a == "--runner" or a.startswith("--runner=") for a in args):
            args = ["--runner", "DirectRunner", *args]
        pipeline = beam.Pipeline(options=PipelineOptions(args))
        build_pipeline(pipeline, runner, source, out, run_id, batch_size)
        result = pipeline.run()
        result.wait_until_finish()
        manifest = _finalize(FileSystems, out, wanted, run_id)
    skipped = _read_skipped(FileSystems, out)
    for row in skipped if existing is None or existing.get("status") != "complete" else []:
        report(f"keras-cgd embed: skipped unreadable image {row['key']} (id {row['id']}): {row['reason']}")
    if skipped:
        report(f"keras-cgd embed: {len(skipped)} unreadable image(s) skipped; listed in "
               f"{FileSystems.join(out, shard_io.SKIPPED)}")
    return {
        "out": out,
        "num_embeddings": manifest["num_embeddings"],
        "num_skipped": len(skipped),
        "skipped": skipped,
        "num_shards": manifest["num_files"],
        "dimension": runner.dimension,
        "run": manifest.get("run"),
        "seconds": time.perf_counter() - start_time,
    }


def _write_manifest(filesystems, path, manifest):
    if "://" not in path:
        shard_io.write_json(path, manifest)
        return
    with filesystems.create(path) as f:  # object stores replace a whole object at once
        f.write(json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8"))


def _read_skipped(filesystems, out):
    path = filesystems.join(out, shard_io.SKIPPED)
    if not filesystems.exists(path):
        return []
    with filesystems.open(path) as f:
        rows = [json.loads(line) for line in f.read().decode("utf-8").splitlines() if line.strip()]
    return sorted(rows, key=lambda r: r["id"])


def _finalize(filesystems, out, wanted, run_id):
    """Merges the skip records, counts the rows, marks the manifest complete."""
    pattern = f"beam-{run_id}-*.parquet"
    files = _glob(filesystems, filesystems.join(out, pattern))
    _, pq = shard_io.import_pyarrow()
    num_rows = 0
    for path in files:
        with filesystems.open(path) as f:
            num_rows += pq.ParquetFile(f).metadata.num_rows
    skipped = []
    skip_files = _glob(filesystems, filesystems.join(out, f".beam-{run_id}-skipped*"))
    for path in skip_files:
        with filesystems.open(path) as f:
            skipped.extend(json.loads(line) for line in f.read().decode("utf-8").splitlines() if line)
    skipped.sort(key=lambda r: r["id"])
    skipped_path = filesystems.join(out, shard_io.SKIPPED)
    if "://" not in out:
        shard_io.write_jsonl(skipped_path, skipped)
    else:
        with filesystems.create(skipped_path) as f:
            f.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in skipped).encode("utf-8"))
    listing = filesystems.join(out, f".listing-{run_id}")
    to_delete = skip_files + ([listing] if filesystems.exists(listing) else [])
    if to_delete:
        filesystems.delete(to_delete)
    manifest = dict(wanted, status="complete", files=pattern, num_files=len(files), run=run_id,
                    num_embeddings=int(num_rows), num_skipped=len(skipped),
                    num_items=int(num_rows) + len(skipped))
    _write_manifest(filesystems, filesystems.join(out, shard_io.MANIFEST), manifest)
    return manifest
