"""Embedding shards on disk: Parquet files of `(id, key, embedding)` plus a manifest.

Layout of an output folder (`OUT` of `keras-cgd embed` and of the Beam pipeline):

    OUT/manifest.json        model fingerprint, dimension, source, status
    OUT/part-000000.parquet  shard 0 (keras-cgd embed: items [0, S), S = shard_size)
    OUT/part-000001.parquet  ...   (Beam: beam-<run>-00000-of-00004.parquet)
    OUT/skipped.jsonl        one {"id", "key", "reason"} line per unreadable image

Format: Apache Parquet, one row per image: `id` int64, `key` string (the file
path or TFRecord key), `embedding` `fixed_size_list<float32>[D]`. Parquet is
the primary (and only) format because one file per shard holds the ids, keys
and vectors together, so a shard appears in one atomic rename; its schema and
footer metadata (model fingerprint, dimension) make a shard self-describing;
Beam's `WriteToParquet` writes the same schema on every runner, so one reader
serves both jobs; and Spark, BigQuery, DuckDB, pandas and Milvus' bulk import
read it as is. Needs `pyarrow` (`pip install keras-cgd[embed]`).

Every file appears by `os.replace` of a hidden temporary file in the same
folder, so a reader (or a resumed run) never sees a half-written shard.
"""

import json
import os
import tempfile

import numpy as np

MANIFEST = "manifest.json"
SKIPPED = "skipped.jsonl"
FORMAT = "keras_cgd.embeddings/1"
METADATA_KEY = b"keras_cgd"
_TMP_PREFIX = ".tmp-"


def import_pyarrow():
    """`(pyarrow, pyarrow.parquet)`, or an ImportError saying how to install them."""
    try:
        import pyarrow
        import pyarrow.parquet as parquet
    except ImportError as e:
        raise ImportError(
            "Embedding shards are Parquet files and need `pyarrow`, which is not installed. "
            "Install it with `pip install pyarrow` (or `pip install keras-cgd[embed]`). "
            f"Original error: {e}"
        ) from e
    return pyarrow, parquet


def schema(dimension, metadata=None):
    """The Arrow schema of a shard: `id` int64, `key` string, `embedding` float32[D]."""
    pa, _ = import_pyarrow()
    fields = [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32(), int(dimension)), nullable=False),
    ]
    meta = None if metadata is None else {METADATA_KEY: json.dumps(metadata).encode()}
    return pa.schema(fields, metadata=meta)


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, write):
    """Calls `write(tmp_path)`, fsyncs, then renames `tmp_path` over `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX + os.path.basename(path) + "-", dir=directory)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(directory)
    return path


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json(path, obj):
    """Writes `obj` as JSON to `path` atomically."""
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
            f.write("\n")
    return atomic_write(path, write)


def write_jsonl(path, rows):
    """Writes one JSON object per line to `path` atomically."""
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, sort_keys=True) + "\n")
    return atomic_write(path, write)


def write_shard(path, ids, keys, embeddings, metadata):
    """Writes one Parquet shard atomically.

    Args:
        path: target file.
        ids: int64 `(n,)`.
        keys: `n` strings.
        embeddings: float32 `(n, D)`.
        metadata: JSON-able dict stored in the file's schema metadata.
    """
    pa, pq = import_pyarrow()
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    n, dimension = embeddings.shape
    flat = pa.array(embeddings.reshape(-1), type=pa.float32())
    table = pa.Table.from_arrays(
        [
            pa.array(np.asarray(ids, np.int64), type=pa.int64()),
            pa.array([str(k) for k in keys], type=pa.string()),
            pa.FixedSizeListArray.from_arrays(flat, int(dimension)),
        ],
        schema=schema(dimension, metadata),
    )
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def shard_metadata(path):
    """The keras-cgd metadata dict of a shard (`{}` when absent)."""
    _, pq = import_pyarrow()
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def read_shard(path):
    """`(ids int64 (n,), embeddings float32 (n, D), keys list of str)` of one shard."""
    _, pq = import_pyarrow()
    table = pq.read_table(path)
    column = table.column("embedding").combine_chunks()
    dimension = column.type.list_size
    vectors = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    ids = table.column("id").to_numpy().astype(np.int64, copy=False)
    return ids, vectors.reshape(len(ids), dimension), table.column("key").to_pylist()


def read_manifest(out):
    """The manifest dict of output folder `out`, or None when there is none."""
    path = os.path.join(os.fspath(out), MANIFEST)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def check_compatible(out, existing, wanted):
    """Raises ValueError when `existing` manifest is of another model, dimension or job.

    Compared: model fingerprint, dimension, image size, source fingerprint and
    shard size (the last two fix which items a shard holds).
    """
    if existing.get("format") != FORMAT:
        raise ValueError(
            f"Invalid value received for argument `out`. {out!r} holds a manifest of format "
            f"{existing.get('format')!r}, not {FORMAT!r}; use another output folder. "
            f"Received: out={out!r}"
        )
    checks = [
        ("writer", existing.get("writer"), wanted.get("writer"),
         "output written by {old}; this run is {new}"),
        ("dimension", existing["dimension"], wanted["dimension"],
         "embeddings of dimension {old}; this model gives dimension {new}"),
        ("model", existing["model"]["fingerprint"], wanted["model"]["fingerprint"],
         "embeddings of another model (fingerprint {old} from {old_path}; this model: {new})"),
        ("image_size", existing["image_size"], wanted["image_size"],
         "embeddings at image size {old}; this run uses {new}"),
        ("source", existing["source"]["fingerprint"], wanted["source"]["fingerprint"],
         "embeddings of another source listing ({old_spec!r}); this run lists {new_spec!r}"),
        ("shard_size", existing.get("shard_size"), wanted.get("shard_size"),
         "shards of {old} items; this run asks for {new}"),
    ]
    for name, old, new, text in checks:
        if old != new:
            detail = text.format(
                old=old, new=new, old_path=existing["model"].get("path"),
                old_spec=existing["source"].get("spec"), new_spec=wanted["source"].get("spec"),
            )
            raise ValueError(
                f"Invalid value received for argument `out`. The folder {out!r} already holds "
                f"{detail}. Nothing was written; use a new output folder (or delete this one). "
                f"Received: out={out!r}"
            )


def _shard_files(out, manifest):
    pattern = manifest.get("files", "part-*.parquet")
    import fnmatch

    names = sorted(n for n in os.listdir(out) if fnmatch.fnmatch(n, pattern))
    return [os.path.join(out, n) for n in names]


def finished_output(out):
    out = os.fspath(out)
    manifest = read_manifest(out)
    if manifest is None:
        raise ValueError(
            "Invalid value received for argument `out`. Expected an output folder of "
            f"`keras-cgd embed` (with {MANIFEST}). Received: out={out!r}"
        )
    if manifest.get("status") != "complete":
        raise ValueError(
            f"Invalid value received for argument `out`. The embedding job writing {out!r} "
            f"has not finished (status {manifest.get('status')!r}); rerun the same "
            f"`keras-cgd embed` command to complete it. Received: out={out!r}"
        )
    files = _shard_files(out, manifest)
    if len(files) != manifest["num_files"]:
        raise ValueError(
            f"The output folder {out!r} lists {manifest['num_files']} shard files in its "
            f"manifest but {len(files)} are present; it was modified after the job ended."
        )
    return manifest, files


def iter_embedding_shards(out):
    """Yields `(ids, embeddings, keys)` of each shard of a finished output folder.

    Memory holds one shard at a time. Shards come in file-name order (for
    `keras-cgd embed`: increasing ids; for the Beam pipeline: any order).

    Args:
        out: an output folder of `keras-cgd embed` or of the Beam pipeline.

    Yields:
        `ids` int64 `(n,)`, `embeddings` float32 `(n, D)`, `keys` list of n str.

    Example:
    >>> for ids, vectors, keys in iter_embedding_shards("embeddings/"):
    ...     index.add(vectors, ids=ids)
    """
    _, files = finished_output(out)
    for path in files:
        yield read_shard(path)


def read_embeddings(out):
    """All embeddings of a finished output folder, sorted by id.

    Returns:
        `(ids int64 (N,), embeddings float32 (N, D), keys list of N str)`.
    """
    manifest, _ = finished_output(out)
    parts = list(iter_embedding_shards(out))
    if not parts:
        dim = manifest["dimension"]
        return np.zeros((0,), np.int64), np.zeros((0, dim), np.float32), []
    ids = np.concatenate([p[0] for p in parts])
    vectors = np.concatenate([p[1] for p in parts])
    keys = [k for p in parts for k in p[2]]
    order = np.argsort(ids, kind="stable")
    return ids[order], vectors[order], [keys[i] for i in order]


def read_skipped(out):
    """The `{"id", "key", "reason"}` records of the images a finished job skipped, by id."""
    finished_output(out)
    path = os.path.join(os.fspath(out), SKIPPED)
    rows = []
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    return sorted(rows, key=lambda r: r["id"])
