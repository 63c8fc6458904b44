"""`EvalCallback`: Recall@K on held-out classes after every epoch of `fit`.

TensorBoard logging (optional, `log_dir`) uses `tf.summary`, so it needs
TensorFlow installed (any Keras backend).
"""

import keras
import numpy as np

from keras_cgd.evaluation.metrics import recall_at_k


def _split_dataset(data):
    """Embeddable batches and labels from a tf.data.Dataset / iterable."""
    if hasattr(data, "as_numpy_iterator"):  # tf.data: NumPy batches for any backend
        data = data.as_numpy_iterator()
    for batch in data:
        if isinstance(batch, (tuple, list)) and len(batch) >= 2:
            images, labels = batch[0], batch[1]
            if isinstance(labels, dict):
                if "embedding" not in labels:
                    raise ValueError(
                        "Dataset labels given as a dict need an 'embedding' key "
                        f"(ranking labels). Received keys: {sorted(labels)}"
                    )
                labels = labels["embedding"]
            yield images, np.asarray(labels)
        else:
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            yield images, None


def _write_scalar(tf, tag, value, step):
    """A TensorBoard scalar via core `tf.summary.write` (no `tensorboard` needed).

    Same record as `tf.summary.scalar`: a float32 tensor tagged with the
    "scalars" plugin metadata.
    """
    from tensorflow.core.framework import summary_pb2

    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = "scalars"
    metadata.data_class = summary_pb2.DATA_CLASS_SCALAR
    tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=metadata)


class EvalCallback(keras.callbacks.Callback):
    """Computes Recall@K of `model.predict(x)["embedding"]` every few epochs.

    Adds `f"{prefix}recall@{k}"` to the epoch logs (so `History`, and callbacks
    listed after this one, see it), writes it to TensorBoard if `log_dir` is
    given, and can keep the weights with the best Recall@`monitor_k` (CGD's
    model selection). Put it first in `callbacks=[...]` so that `EarlyStopping`
    / `ModelCheckpoint` can monitor `val_recall@1`.

    Args:
        x: images `(N, H, W, 3)` in [0, 255], or a `tf.data.Dataset` (or any
            iterable) of batches `images` or `(images, labels)`; labels may be a
            dict, whose `"embedding"` entry is used.
        labels: `(N,)` labels when `x` is an array (taken from the batches of a
            dataset otherwise).
        ks: the K values (default 1, 2, 4, 8).
        query_x, query_labels: optional separate query images (In-shop);
            default: every image queries the others.
        batch_size: predict batch size for arrays.
        every_n_epochs: evaluate every n-th epoch (and never in between).
        log_dir: optional TensorBoard directory (a `validation_retrieval` run).
        restore_best_weights: at the end of training, load the weights of the
            epoch with the best Recall@`monitor_k`.
        monitor_k: the K used to select the best weights (1).
        prefix: key prefix in the logs (`"val_"`).
        metric: `"cosine"`, `"inner_product"` or `"euclidean"`.
        verbose: 1 prints the recalls after each evaluation.

    Attributes: `best_recall`, `best_epoch`, `history` (list of dicts).

    Example:
    >>> cb = EvalCallback(val_images, val_labels, ks=(1, 2, 4, 8),
    ...                   restore_best_weights=True)  # doctest: +SKIP
    >>> model.fit(train_ds, epochs=20, callbacks=[cb])  # doctest: +SKIP
    >>> history.history["val_recall@1"]  # doctest: +SKIP

    Reference: CGD (Jun et al. 2019) reports the best Recall@1 on the test
    classes; leftthomas/CGD keeps the best epoch's weights.
    """

    def __init__(
        self,
        x,
        labels=None,
        ks=(1, 2, 4, 8),
        query_x=None,
        query_labels=None,
        batch_size=32,
        every_n_epochs=1,
        log_dir=None,
        restore_best_weights=False,
        monitor_k=1,
        prefix="val_",
        metric="cosine",
        verbose=0,
    ):
        super().__init__()
        self.ks = tuple(int(k) for k in ((ks,) if np.isscalar(ks) else ks))
        if not self.ks:
            raise ValueError("Invalid value received for argument `ks`. Expected at least one K. Received: ks=()")
        if monitor_k not in self.ks:
            raise ValueError(
                "Invalid value received for argument `monitor_k`. Expected one "
                f"of ks={self.ks}. Received: monitor_k={monitor_k!r}"
            )
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(
                "Invalid value received for argument `every_n_epochs`. Expected "
                f"a positive int. Received: every_n_epochs={every_n_epochs!r}"
            )
        if isinstance(x, np.ndarray) and labels is None:
            raise ValueError("Argument `labels` is required when `x` is an array.")
        if (query_x is None and query_labels is not None) or (
            isinstance(query_x, np.ndarray) and query_labels is None
        ):
            raise ValueError("Arguments `query_x` and `query_labels` must be given together.")
        self.x, self.labels = x, labels
        self.query_x, self.query_labels = query_x, query_labels
        self.batch_size = batch_size
        self.every_n_epochs = every_n_epochs
        self.log_dir = log_dir
        self.restore_best_weights = restore_best_weights
        self.monitor_k = monitor_k
        self.prefix = prefix
        self.metric = metric
        self.verbose = verbose
        self.best_recall = -np.inf
        self.best_epoch = None
        self.best_weights = None
        self.history = []
        self._writer = None
        if log_dir is not None:
            try:
                import tensorflow as tf
            except ImportError as e:
                raise ImportError(
                    "EvalCallback(log_dir=...) writes TensorBoard summaries with "
                    "TensorFlow, which is not installed. Install `tensorflow` or "
                    "leave `log_dir=None`."
                ) from e
            self._tf = tf

    def _embed(self, x, labels):
        if isinstance(x, np.ndarray) or keras.ops.is_tensor(x):
            out = self.model.predict(x, batch_size=self.batch_size, verbose=0)
            return np.asarray(out["embedding"]), np.asarray(labels)
        embeddings, collected = [], []
        for images, batch_labels in _split_dataset(x):
            out = self.model.predict_on_batch(images)
            embeddings.append(keras.ops.convert_to_numpy(out["embedding"]))
            collected.append(batch_labels)
        if labels is None:
            if any(c is None for c in collected):
                raise ValueError("The dataset yields no labels: pass `labels=`.")
            labels = np.concatenate(collected)
        return np.concatenate(embeddings), np.asarray(labels)

    def evaluate(self):
        """Returns `{k: recall}` for the current weights."""
        embeddings, labels = self._embed(self.x, self.labels)
        if self.query_x is None:
            return recall_at_k(embeddings, labels, self.ks, metric=self.metric)
        queries, query_labels = self._embed(self.query_x, self.query_labels)
        return recall_at_k(embeddings, labels, self.ks, queries, query_labels, metric=self.metric)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        recalls = self.evaluate()
        named = {f"{self.prefix}recall@{k}": float(v) for k, v in recalls.items()}
        if logs is not None:
            logs.update(named)
        self.history.append({"epoch": epoch, **named})
        if self.verbose:
            print(" - ".join(f"{name}: {value:.4f}" for name, value in named.items()))
        if self._writer is None and self.log_dir is not None:
            import os

            self._writer = self._tf.summary.create_file_writer(
                os.path.join(self.log_dir, "validation_retrieval")
            )
        if self._writer is not None:
            with self._writer.as_default():
                for name, value in named.items():
                    _write_scalar(self._tf, f"epoch_{name}", value, epoch)
            self._writer.flush()
        value = recalls[self.monitor_k]
        if value > self.best_recall:
            self.best_recall, self.best_epoch = value, epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()

    def on_train_end(self, logs=None):
        if self.restore_best_weights and self.best_weights is not None:
            self.model.set_weights(self.best_weights)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
