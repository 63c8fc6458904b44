"""The model of a bulk embedding job: a `.keras` file, a run directory or a SavedModel.

`load_embedding_model(path)` returns an `EmbeddingModelRunner`: a callable from
float32 RGB pixels `(n, H, W, 3)` in [0, 255] to float32 embeddings `(n, D)`,
with the facts the job records in its manifest (fingerprint, dimension, input
size).

- `.keras` file or run directory (its last checkpoint, `keras_cgd.training.load_model`):
  runs on the current Keras backend (TensorFlow or JAX) with `predict_on_batch`.
- SavedModel (a folder with `saved_model.pb`, or a TF Serving model base path
  `name/<version>/`, whose highest version is taken, as TF Serving does): loaded
  with `tf.saved_model.load` (TensorFlow only, whatever the Keras backend) and
  run through its `serving_pixels` signature (float32 `images`, written by
  `keras_cgd.export`), or `serving_default` when that one takes float images.

The fingerprint is the SHA-256 of the model's files (the `.keras` archive, or
`saved_model.pb` and `variables/*`), so two outputs agree on it only when the
same file embedded them.
"""

import hashlib
import os

import numpy as np


def _usage(value, detail=""):
    return ValueError(
        "Invalid value received for argument `model`. Expected a .keras file, a run "
        "directory with a checkpoint, a SavedModel directory (with saved_model.pb) or a "
        f"TF Serving model base path (numeric version folders){detail}. Received: model={value!r}"
    )


def _hash_files(paths, root):
    digest = hashlib.sha256()
    for path in paths:
        digest.update(os.fsencode(os.path.relpath(path, root)) + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def saved_model_dir(path):
    """The SavedModel folder named by `path` (itself, or its highest numeric version)."""
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    from keras_cgd.export.saved_model import version_dirs

    versions = version_dirs(path)
    if versions:
        latest = versions[max(versions)]
        if os.path.isfile(os.path.join(latest, "saved_model.pb")):
            return latest
    return None


def saved_model_fingerprint(path):
    """SHA-256 of `saved_model.pb` and the files under `variables/`."""
    files = [os.path.join(path, "saved_model.pb")]
    for dirpath, dirnames, filenames in os.walk(os.path.join(path, "variables")):
        dirnames.sort()
        files.extend(os.path.join(dirpath, f) for f in sorted(filenames))
    return _hash_files(files, path)


class EmbeddingModelRunner:
    """Callable `pixels (n, H, W, 3) float32 -> embeddings (n, D) float32` plus facts.

    Attributes:
        kind: `"keras"` or `"saved_model"`.
        path: the file or folder that was loaded.
        fingerprint: SHA-256 hex digest of the model's files.
        image_size: `(H, W)` the model takes.
        dimension: `D`, the embedding size.
    """

    def __init__(self, kind, path, fingerprint, image_size, predict, dimension=None):
        self.kind = kind
        self.path = path
        self.fingerprint = fingerprint
        self.image_size = tuple(int(s) for s in image_size)
        self._predict = predict
        if dimension is None:
            probe = np.zeros((1, *self.image_size, 3), np.float32)
            dimension = self(probe).shape[1]
        self.dimension = int(dimension)

    def __call__(self, pixels):
        out = np.asarray(self._predict(np.asarray(pixels, np.float32)), dtype=np.float32)
        if out.ndim != 2:
            raise ValueError(
                f"The model {self.path!r} returned embeddings of shape {out.shape}; expected (n, D)."
            )
        return out

    def describe(self):
        """JSON-able facts for the output manifest."""
        return {"kind": self.kind, "path": os.path.abspath(self.path), "fingerprint": self.fingerprint}

    def __repr__(self):
        return (f"EmbeddingModelRunner({self.kind}, D={getattr(self, 'dimension', '?')}, "
                f"image_size={self.image_size}, path={self.path!r})")


def _keras_runner(path):
    import keras

    from keras_cgd import training

    model = training.load_model(path)
    if os.path.isdir(path):
        state = training.read_state(path)
        path = os.path.join(path, state["checkpoint"])
    pre = getattr(model, "preprocessing", None) or {}
    image_size = pre.get("image_size") or tuple(model.input_shape[1:3])
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    if any(s is None for s in image_size):
        raise _usage(path, f" with a fixed input size (this model takes {model.input_shape})")

    def predict(pixels):
        out = model.predict_on_batch(pixels)
        if isinstance(out, dict):
            out = out["embedding"]
        return keras.ops.convert_to_numpy(keras.ops.cast(out, "float32"))

    return EmbeddingModelRunner("keras", path, _hash_files([path], os.path.dirname(path)),
                                image_size, predict)


def pixel_signature(loaded, path):
    """`(signature, input_name, (H, W), dimension)` of a SavedModel taking float images."""
    import tensorflow as tf

    tried = []
    for name in ("serving_pixels", "serving_default"):
        if name not in loaded.signatures:
            continue
        fn = loaded.signatures[name]
        _, kwargs = fn.structured_input_signature
        tried.append(f"{name}({', '.join(f'{k}: {v.dtype.name}{v.shape}' for k, v in kwargs.items())})")
        if len(kwargs) != 1:
            continue
        (input_name, spec), = kwargs.items()
        outputs = fn.structured_outputs
        if (spec.dtype == tf.float32 and spec.shape.rank == 4 and spec.shape[3] == 3
                and spec.shape[1] is not None and spec.shape[2] is not None
                and isinstance(outputs, dict) and "embedding" in outputs):
            dimension = outputs["embedding"].shape[-1]
            return fn, input_name, (spec.shape[1], spec.shape[2]), dimension
    raise _usage(path, " whose `serving_pixels` (or `serving_default`) signature takes float32 "
                 "images (None, H, W, 3) and returns an 'embedding'; the SavedModel has "
                 f"{sorted(loaded.signatures)}: {tried}")


def _saved_model_runner(path):
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    fn, input_name, image_size, dimension = pixel_signature(loaded, path)

    def predict(pixels):
        return fn(**{input_name: tf.constant(pixels)})["embedding"].numpy()

    runner = EmbeddingModelRunner("saved_model", path, saved_model_fingerprint(path), image_size,
                                  predict, dimension)
    runner._loaded = loaded  # keeps the signature's variables alive
    return runner


def load_embedding_model(model):
    """An `EmbeddingModelRunner` for a `.keras` file, run directory or SavedModel.

    Args:
        model: path (see the module docstring), or an `EmbeddingModelRunner`.

    Returns:
        `EmbeddingModelRunner`.

    Example:
    >>> runner = load_embedding_model("savedmodels/cgd_tiny")   # highest version
    >>> runner(np.zeros((2, *runner.image_size, 3), "float32")).shape
    (2, 96)
    """
    if isinstance(model, EmbeddingModelRunner):
        return model
    if not isinstance(model, (str, os.PathLike)):
        raise _usage(model)
    path = os.fspath(model)
    if os.path.isdir(path):
        sm = saved_model_dir(path)
        if sm is not None:
            return _saved_model_runner(sm)
        from keras_cgd import training

        state = training.read_state(path)
        if state and state.get("checkpoint"):
            return _keras_runner(path)
        raise _usage(path, " (the folder holds neither saved_model.pb, nor version folders, "
                     "nor a run state)")
    if os.path.isfile(path) and path.endswith(".keras"):
        return _keras_runner(path)
    raise _usage(path, "" if os.path.exists(path) else " (no such file or folder)")
