"""`embed_images`: the bulk embedding job behind `keras-cgd embed MODEL SOURCE OUT`.

The job streams the images of a source (`keras_cgd.embedding.sources`) through
a `tf.data` pipeline (parallel read + decode + resize, prefetched while the model
runs) into the model in batches, and writes the embeddings with their ids in
Parquet shards (`keras_cgd.embedding.shards`): shard `s` holds the items with
ids in `[s * shard_size, (s + 1) * shard_size)`. Memory is one shard of
embeddings plus the pipeline's prefetch buffers, whatever the number of images.

- **Unreadable images** (not an image, truncated, missing file, a TFRecord
  example without an image) are skipped, printed to stderr as they happen
  (also with `quiet=True`), recorded in their shard's metadata and listed in
  `OUT/skipped.jsonl`; they never stop the job and never shift other ids.
- **Resume**: a shard appears in one atomic rename, so after a kill rerunning
  the same command keeps the finished shards and computes the missing ones;
  the result equals an uninterrupted run's.
- **Another job's folder**: `OUT/manifest.json` names the model fingerprint,
  the embedding dimension, the image size, the source listing and the shard
  size; an `OUT` written with any other value (or a non-empty folder without a
  manifest) is refused with a `ValueError` before anything is written.

TensorFlow is used for reading and decoding (`tf.data`, `tf.io`) on either Keras
backend; a `.keras` model runs on the current backend.
"""

import fnmatch
import os
import sys
import time

import numpy as np

from keras_cgd.embedding import shards as shard_io
from keras_cgd.embedding.model_loading import load_embedding_model
from keras_cgd.embedding.sources import describe_decode_error
from keras_cgd.embedding.sources import resolve_source

WRITER = "keras-cgd embed"
SHARD_PATTERN = "part-*.parquet"
DEFAULT_BATCH_SIZE = 64
DEFAULT_SHARD_SIZE = 10_000


def shard_name(index):
    """File name of shard `index` of `keras-cgd embed` (`part-000007.parquet`)."""
    return f"part-{index:06d}.parquet"


def _check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a positive int. "
            f"Received: {name}={value!r}"
        )
    return int(value)


def _stderr(line):
    print(line, file=sys.stderr, flush=True)


def wanted_manifest(runner, source, shard_size, writer):
    """The manifest a job over (`runner`, `source`) writes (status `"running"`)."""
    return {
        "format": shard_io.FORMAT,
        "writer": writer,
        "model": runner.describe(),
        "dimension": runner.dimension,
        "image_size": list(runner.image_size),
        "source": source.describe(),
        "shard_size": shard_size,
        "status": "running",
    }


def prepare_output(out, wanted):
    """Creates `out` with `wanted` as its manifest, or checks an existing one matches.

    Returns the existing manifest (or `wanted`). Raises ValueError, before any
    write, for a file, a non-empty folder without a manifest, or a manifest of
    another model / dimension / job.
    """
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(
            "Invalid value received for argument `out`. Expected a folder (created when "
            f"missing). Received: out={out!r}, which is a file"
        )
    existing = shard_io.read_manifest(out) if os.path.isdir(out) else None
    if existing is None:
        if os.path.isdir(out) and os.listdir(out):
            raise ValueError(
                "Invalid value received for argument `out`. Expected a new or empty folder, or "
                f"one written by {wanted['writer']} (with {shard_io.MANIFEST}). The folder "
                f"{out!r} holds other files ({sorted(os.listdir(out))[:5]}); nothing was "
                f"written. Received: out={out!r}"
            )
        os.makedirs(out, exist_ok=True)
        shard_io.write_json(os.path.join(out, shard_io.MANIFEST), wanted)
        return wanted
    shard_io.check_compatible(out, existing, wanted)
    return existing


def _remove_own_temporaries(out):
    for name in os.listdir(out):
        if name.startswith(shard_io._TMP_PREFIX) and fnmatch.fnmatch(
            name[len(shard_io._TMP_PREFIX):], "*-*"
        ):
            os.remove(os.path.join(out, name))


def _finished_shards(out, fingerprint):
    """`{index: metadata}` of the shards present in `out` (checked to be this model's)."""
    done = {}
    for name in sorted(os.listdir(out)):
        if not fnmatch.fnmatch(name, SHARD_PATTERN):
            continue
        path = os.path.join(out, name)
        meta = shard_io.shard_metadata(path)
        if meta.get("model_fingerprint") != fingerprint or shard_name(meta.get("shard", -1)) != name:
            raise ValueError(
                f"The shard {path!r} does not belong to this job (model fingerprint "
                f"{meta.get('model_fingerprint')!r}, shard {meta.get('shard')!r}); the output "
                "folder was modified. Nothing was written; use a new output folder."
            )
        done[int(meta["shard"])] = meta
    return done


# --------------------------------------------------------------------------- pipelines


def _file_pipeline(source, todo_ids, image_size, batch_size):
    """`(expected, batches)` for image files: every `(id, key, raw)` to come, and the
    `(ids, pixels)` batches of the readable ones, both in id order."""
    import tensorflow as tf

    from keras_cgd.embedding.sources import decode_image_file

    paths = source.files

    def expected():
        for i in todo_ids:
            yield int(i), paths[i], paths[i]

    def load(i, path):
        return i, decode_image_file(tf.io.read_file(path), image_size)

    ids = np.asarray(todo_ids, np.int64)
    ds = tf.data.Dataset.from_tensor_slices((ids, np.asarray([paths[i] for i in ids], dtype=object).astype(str)))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.ignore_errors(log_warning=False).batch(batch_size).prefetch(tf.data.AUTOTUNE)
    return expected(), ((b[0], b[1], None) for b in ds.as_numpy_iterator())


def _tfrecord_records(source, skip, done_shards, shard_size):
    """`tf.data` of `(id, file index, record index, record)` in order, done shards left out."""
    import tensorflow as tf

    files = tf.constant(source.files)

    def per_file(fi, path):
        return tf.data.TFRecordDataset(path).enumerate().map(lambda ri, rec: (fi, ri, rec))

    ds = tf.data.Dataset.from_tensor_slices((tf.range(len(source.files), dtype=tf.int64), files))
    ds = ds.flat_map(per_file).enumerate().map(lambda gid, x: (gid, x[0], x[1], x[2]))
    ds = ds.skip(skip)
    if done_shards:
        done = tf.constant(sorted(done_shards), tf.int64)
        ds = ds.filter(lambda gid, fi, ri, rec: tf.logical_not(
            tf.reduce_any(tf.equal(gid // shard_size, done))))
    return ds, files


def _tfrecord_pipeline(source, skip, done_shards, shard_size, image_size, batch_size):
    import tensorflow as tf

    from keras_cgd.embedding.sources import decode_image_file
    from keras_cgd.embedding.sources import parse_example

    ds, files = _tfrecord_records(source, skip, done_shards, shard_size)

    def record_name(fi, ri):
        return tf.strings.join([tf.gather(files, fi), ":", tf.strings.as_string(ri)])

    def load(gid, fi, ri, rec):
        image, key = parse_example(rec, record_name(fi, ri))
        return gid, decode_image_file(image, image_size), key

    def expected():
        # A second, read-only pass in lockstep: it names every item, readable or not.
        cheap, _ = _tfrecord_records(source, skip, done_shards, shard_size)
        for gid, fi, ri, rec in cheap.as_numpy_iterator():
            yield int(gid), f"{source.files[int(fi)]}:{int(ri)}", rec

    heavy = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    heavy = heavy.ignore_errors(log_warning=False).batch(batch_size).prefetch(tf.data.AUTOTUNE)
    batches = ((ids, pixels, [k.decode("utf-8", "replace") for k in keys])
               for ids, pixels, keys in heavy.as_numpy_iterator())
    return expected(), batches


# --------------------------------------------------------------------------- the job


class _ShardWriter:
    """Collects rows of the current shard and writes it when the next one begins."""

    def __init__(self, out, shard_size, fingerprint, dimension, report, on_shard):
        self.out, self.shard_size = out, shard_size
        self.fingerprint, self.dimension = fingerprint, dimension
        self.report, self.on_shard = report, on_shard
        self.current = None
        self.written = []
        self._reset(None)

    def _reset(self, shard):
        self.current = shard
        self.ids, self.keys, self.vectors, self.skipped = [], [], [], []
        self.last_id = None

    def _enter(self, shard):
        if shard != self.current:
            self.flush()
            self._reset(shard)

    def add(self, item_id, key, vector):
        self._enter(item_id // self.shard_size)
        self.ids.append(item_id)
        self.keys.append(key)
        self.vectors.append(vector)
        self.last_id = item_id

    def skip(self, item_id, key, reason):
        self._enter(item_id // self.shard_size)
        self.skipped.append({"id": item_id, "key": key, "reason": reason})
        self.last_id = item_id
        self.report(f"keras-cgd embed: skipped unreadable image {key} (id {item_id}): {reason}")

    def flush(self):
        if self.current is None:
            return
        s = self.current
        vectors = (np.stack(self.vectors) if self.vectors
                   else np.zeros((0, self.dimension), np.float32))
        meta = {
            "model_fingerprint": self.fingerprint,
            "dimension": self.dimension,
            "shard": s,
            "first_id": s * self.shard_size,
            "stop_id": self.last_id + 1,
            "skipped": self.skipped,
        }
        shard_io.write_shard(os.path.join(self.out, shard_name(s)), self.ids, self.keys, vectors, meta)
        self.written.append(s)
        if self.on_shard is not None:
            self.on_shard(s)
        self._reset(None)


def embed_images(model, source, out, *, batch_size=DEFAULT_BATCH_SIZE, shard_size=DEFAULT_SHARD_SIZE,
                 quiet=False, report=None, on_shard=None):
    """Embeds every image of `source` with `model` into Parquet shards under `out`.

    For each readable image `x` with id `i`: a row `(i, key, f(x))`, where
    `f(x)` is the model's float32 embedding of `resize(decode(x))` (see
    `keras_cgd.embedding.sources.decode_image_file`). Rerunning after a kill
    resumes at shard granularity; see the module docstring for skips and the
    checks of an existing `out`.

    Args:
        model: a `.keras` file, a run directory, a SavedModel folder or TF Serving
            model base path, or an `EmbeddingModelRunner`.
        source: a folder of images, a glob, a `.txt` file list, TFRecord files, or an
            `ImageSource` (see `keras_cgd.embedding.resolve_source`).
        out: output folder (created when missing).
        batch_size: images per model call (default 64).
        shard_size: images per shard (default 10,000): the resume granularity and
            the memory of the job (`shard_size * D * 4` bytes of embeddings).
        quiet: no progress bar (skipped images are still reported).
        report: callable taking one line, for skip reports (default: stderr).
        on_shard: optional callable `on_shard(index)` called after each shard is
            written (used by tests to interrupt a run).

    Returns:
        dict with `out`, `num_embeddings`, `num_skipped`, `skipped` (list of
        `{"id", "key", "reason"}`), `num_shards`, `resumed_shards` (shards kept
        from an earlier run), `seconds`, `dimension`.

    Example:
    >>> result = embed_images("runs/cgd_tiny/epoch-0008.keras", "photos/", "embeddings/")
    >>> ids, vectors, keys = keras_cgd.embedding.read_embeddings("embeddings/")
    """
    start_time = time.perf_counter()
    batch_size = _check_positive_int(batch_size, "batch_size")
    shard_size = _check_positive_int(shard_size, "shard_size")
    shard_io.import_pyarrow()
    if not isinstance(out, (str, os.PathLike)):
        raise ValueError(f"Invalid value received for argument `out`. Expected a folder path. Received: out={out!r}")
    out = os.fspath(out)
    source = resolve_source(source)
    runner = load_embedding_model(model)
    report = report or _stderr
    manifest = prepare_output(out, wanted_manifest(runner, source, shard_size, WRITER))
    _remove_own_temporaries(out)
    done = _finished_shards(out, runner.fingerprint)
    resumed = len(done)

    if manifest.get("status") != "complete":
        if source.kind == "files":
            n = source.num_items
            num_shards = -(-n // shard_size)
            todo = [i for s in range(num_shards) if s not in done
                    for i in range(s * shard_size, min((s + 1) * shard_size, n))]
            expected, batches = _file_pipeline(source, todo, runner.image_size, batch_size)
            target = len(todo)
        else:
            prefix = 0
            while prefix in done:
                prefix += 1
            expected, batches = _tfrecord_pipeline(
                source, prefix * shard_size, [s for s in done if s > prefix], shard_size,
                runner.image_size, batch_size)
            target = None
        progbar = None
        if not quiet:
            import keras

            progbar = keras.utils.Progbar(target, unit_name="image")
        writer = _ShardWriter(out, shard_size, runner.fingerprint, runner.dimension, report, on_shard)
        parse = source.kind == "tfrecord"
        seen = 0
        for ids, pixels, keys in batches:
            vectors = runner(pixels)
            for j, item_id in enumerate(ids.tolist()):
                for gid, key, raw in expected:  # items before this one failed to decode
                    if gid == item_id:
                        break
                    writer.skip(gid, key, describe_decode_error(raw, runner.image_size, parse))
                    seen += 1
                writer.add(item_id, keys[j] if keys is not None else key, vectors[j])
            seen += len(ids)
            if progbar is not None:
                progbar.update(seen)
        for gid, key, raw in expected:  # trailing unreadable items
            writer.skip(gid, key, describe_decode_error(raw, runner.image_size, parse))
            seen += 1
        writer.flush()
        if progbar is not None and target is None:
            progbar.update(seen, finalize=True)
        done.update({s: None for s in writer.written})
        metas = _finished_shards(out, runner.fingerprint)
        if source.kind == "tfrecord":
            total = max([m["stop_id"] for m in metas.values()], default=0)
            num_shards = -(-total // shard_size)
            missing = sorted(set(range(num_shards)) - set(metas))
            if missing:  # only an empty trailing range can leave no shard
                raise RuntimeError(f"Shards {missing[:5]} of {out!r} were not written.")
        skipped = [row for s in sorted(metas) for row in metas[s]["skipped"]]
        num_embeddings = sum(shard_io.import_pyarrow()[1].read_metadata(
            os.path.join(out, shard_name(s))).num_rows for s in metas)
        shard_io.write_jsonl(os.path.join(out, shard_io.SKIPPED), skipped)
        manifest = dict(manifest, status="complete", files=SHARD_PATTERN, num_files=len(metas),
                        num_embeddings=int(num_embeddings), num_skipped=len(skipped),
                        num_items=int(num_embeddings) + len(skipped))
        shard_io.write_json(os.path.join(out, shard_io.MANIFEST), manifest)
    skipped = shard_io.read_skipped(out)
    if skipped:
        report(f"keras-cgd embed: {len(skipped)} unreadable image(s) skipped; listed in "
               f"{os.path.join(out, shard_io.SKIPPED)}")
    return {
        "out": out,
        "num_embeddings": manifest["num_embeddings"],
        "num_skipped": len(skipped),
        "skipped": skipped,
        "num_shards": manifest["num_files"],
        "resumed_shards": resumed,
        "dimension": runner.dimension,
        "seconds": time.perf_counter() - start_time,
    }
