"""Cross-entropy with label smoothing and temperature (CGD's classifier loss)."""

import keras
from keras import ops

from keras_cgd.api_export import keras_cgd_export
from keras_cgd.losses.pairwise import _labels_1d


def smoothed_cross_entropy(y_true, y_pred, label_smoothing=0.1, temperature=0.5):
    r"""Sparse softmax cross-entropy with label smoothing and temperature.

    With p = softmax(z / τ) over C classes and true class y:

        l = (1 − ε) · (−log p_y) + ε · (1/C) Σ_c (−log p_c)

    Args:
        y_true: int class ids, shape `(batch,)` or `(batch, 1)`.
        y_pred: logits, shape `(batch, C)`.
        label_smoothing: ε in [0, 1) (CGD: 0.1).
        temperature: τ > 0 (CGD: 0.5).

    Returns: `(batch,)` float32 losses.
    """
    labels = ops.cast(_labels_1d(y_true), "int32")
    logits = ops.cast(y_pred, "float32") / temperature
    log_p = ops.log_softmax(logits, axis=-1)
    nll = -ops.take_along_axis(log_p, ops.expand_dims(labels, -1), axis=-1)[:, 0]
    uniform = -ops.mean(log_p, axis=-1)
    return (1.0 - label_smoothing) * nll + label_smoothing * uniform


@keras_cgd_export
class SmoothedCrossEntropy(keras.losses.Loss):
    """Class form of `smoothed_cross_entropy`.

    Args:
        label_smoothing: float in [0, 1). CGD: 0.1; MultiGrain: 0.
        temperature: float > 0. CGD: 0.5; MultiGrain: 1.
    """

    def __init__(
        self,
        label_smoothing=0.1,
        temperature=0.5,
        reduction="sum_over_batch_size",
        name="smoothed_cross_entropy",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not 0 <= label_smoothing < 1:
            raise ValueError(
                "Invalid value received for argument `label_smoothing`. "
                "Expected a float in [0, 1). "
                f"Received: label_smoothing={label_smoothing}"
            )
        if not temperature > 0:
            raise ValueError(
                "Invalid value received for argument `temperature`. Expected "
                f"a float > 0. Received: temperature={temperature}"
            )
        self.label_smoothing = float(label_smoothing)
        self.temperature = float(temperature)

    def call(self, y_true, y_pred):
        return smoothed_cross_entropy(
            y_true, y_pred, self.label_smoothing, self.temperature
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "label_smoothing": self.label_smoothing,
                "temperature": self.temperature,
            }
        )
        return config
