"""An exported SavedModel used like a Keras model for embedding. TensorFlow-only module.

`keras-cgd evaluate` and `keras-cgd search` take a `.keras` file, a run directory or a
SavedModel written by `keras_cgd.export.export_saved_model`; `load_embedder` (in
`run_state`) returns a Keras model for the first two and a `SavedModelEmbedder` for the
last, which offers the two things those commands use: `input_shape` and
`predict(x)["embedding"]`. It calls the SavedModel's `serving_pixels` signature
(float32 `(N, H, W, 3)` RGB pixels in [0, 255] -> `embedding`, `logits`), i.e. exactly
what TF Serving computes for `{"signature_name": "serving_pixels"}` requests.
"""

import json
import os

import numpy as np

from keras_cgd.training.errors import usage_error as _usage_error

SIGNATURE = "serving_pixels"


class SavedModelEmbedder:
    """A SavedModel version directory (`<base>/<version>/saved_model.pb`) as an embedder.

    Args:
        path: the version directory.

    Attributes:
        path: the version directory.
        input_shape: `(None, H, W, 3)`, as a Keras model's.
        output_names: the signature's outputs (`embedding`, and `logits` with a classifier).

    Example:

    >>> m = SavedModelEmbedder("savedmodels/cgd_tiny/1")
    >>> m.predict(np.zeros((2, 64, 64, 3), "float32"))["embedding"].shape
    (2, D)
    """

    def __init__(self, path):
        import tensorflow as tf

        self.path = os.fspath(path)
        self._loaded = tf.saved_model.load(self.path)  # keeps the signature's variables alive
        signatures = dict(self._loaded.signatures)
        if SIGNATURE not in signatures:
            raise _usage_error(
                "model", f"a SavedModel with a {SIGNATURE!r} signature (written by `keras-cgd export`); "
                f"this one has {sorted(signatures)}", self.path)
        self._fn = signatures[SIGNATURE]
        spec = self._fn.structured_input_signature[1]["images"]
        shape = list(spec.shape.as_list())
        if shape[1] is None or shape[2] is None:
            shape[1:3] = self._image_size_from_assets()
        self.input_shape = (None, int(shape[1]), int(shape[2]), 3)
        self.output_names = sorted(self._fn.structured_outputs)

    def _image_size_from_assets(self):
        facts = os.path.join(self.path, "assets.extra", "keras_cgd.json")
        try:
            with open(facts, encoding="utf-8") as f:
                return [int(v) for v in json.load(f)["image_size"]]
        except (OSError, KeyError, ValueError, TypeError):
            raise _usage_error("model", "a SavedModel whose serving_pixels input has a fixed size or whose "
                               "assets.extra/keras_cgd.json names its image_size", self.path)

    def predict(self, x, batch_size=64, verbose=0, callbacks=None):
        """Outputs of the `serving_pixels` signature for pixels `x`, batch by batch.

        Args:
            x: `(N, H, W, 3)` array of RGB pixels in [0, 255], or a `tf.data.Dataset` of
                such batches (or of `(batch, labels)` pairs).
            batch_size: batch size for an array.
            verbose: ignored (use a progress callback).
            callbacks: objects with Keras' `on_predict_begin`, `on_predict_batch_end`,
                `on_predict_end` (e.g. `progress.keras_progress(...)`).

        Returns:
            dict `{name: (N, ...) float32 array}`, e.g. `embedding`, `logits`.
        """
        import tensorflow as tf

        callbacks = list(callbacks or [])
        if hasattr(x, "cardinality"):
            batches = (b[0] if isinstance(b, (tuple, list)) else b for b in x)
        else:
            x = np.asarray(x)
            batches = (x[i: i + batch_size] for i in range(0, len(x), int(batch_size)))
        for cb in callbacks:
            cb.on_predict_begin()
        outputs = {name: [] for name in self.output_names}
        for step, batch in enumerate(batches):
            result = self._fn(images=tf.cast(batch, tf.float32))
            for name in self.output_names:
                outputs[name].append(result[name].numpy())
            for cb in callbacks:
                cb.on_predict_batch_end(step)
        for cb in callbacks:
            cb.on_predict_end()
        return {name: np.concatenate(v) if v else np.zeros((0,), "float32") for name, v in outputs.items()}

    def __repr__(self):
        return f"SavedModelEmbedder({self.path!r}, input_shape={self.input_shape})"
