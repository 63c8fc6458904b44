"""Generalized-mean (GeM) global pooling; SPoC and MAC are its p=1 and p=inf."""

import math

import keras
from keras import ops

from keras_cgd.api_export import keras_cgd_export


def _check_p(p):
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(
            "Invalid type received for argument `p`. Expected a number > 0 "
            f"(float('inf') for max pooling). Received: p={p!r}"
        )
    if math.isnan(p) or p <= 0:
        raise ValueError(
            "Invalid value received for argument `p`. Expected a number > 0 "
            f"(float('inf') for max pooling). Received: p={p}"
        )
    return float(p)


@keras_cgd_export
class GeneralizedMeanPooling(keras.layers.Layer):
    r"""Generalized-mean pooling over the spatial axes of a feature map.

    For every channel c of a feature map x with spatial positions Ω:

        f_c = ( 1/|Ω| · Σ_{u∈Ω} max(x_cu, ε)^p )^(1/p)

    `p=1` gives average pooling (SPoC), `p=inf` gives max pooling (MAC) and
    `p=3` is the GeM setting of both papers. Activations are clamped at `ε`
    so that zero or negative inputs never produce NaN, and the power is
    computed in float32 whatever the dtype policy (mixed precision safe).
    Any spatial size works, so a model built on `(None, None, C)` inputs can
    be evaluated at a test-time resolution s*.

    Args:
        p: float > 0 or `float("inf")`. The pooling exponent. CGD fixes
            p=3; MultiGrain trains with p=3 and evaluates with p* (3–5).
        trainable_p: bool. Learn `p` with the rest of the model (ignored
            for p=inf). Default False, as in both papers' training.
        epsilon: float. Clamp value for activations (1e-6 in both papers).
        keepdims: bool. Keep the spatial axes as size 1.
        data_format: "channels_last" or "channels_first"; defaults to the
            Keras image data format.

    Input shape: `(batch, H, W, C)` (channels_last) or `(batch, C, H, W)`.
    Output shape: `(batch, C)`, or with size-1 spatial axes if `keepdims`.

    Example:

    >>> x = np.random.rand(2, 7, 7, 8).astype("float32")
    >>> GeneralizedMeanPooling(p=3.0)(x).shape
    (2, 8)

    Reference: Radenović et al., "Fine-tuning CNN Image Retrieval with No
    Human Annotation" (TPAMI 2018); used by Berman et al. 2019 (MultiGrain)
    and Jun et al. 2019 (CGD).
    """

    def __init__(
        self,
        p=3.0,
        trainable_p=False,
        epsilon=1e-6,
        keepdims=False,
        data_format=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.p_init = _check_p(p)
        if not isinstance(trainable_p, bool):
            raise TypeError(
                "Invalid type received for argument `trainable_p`. Expected "
                f"a bool. Received: trainable_p={trainable_p!r}"
            )
        if not epsilon > 0:
            raise ValueError(
                "Invalid value received for argument `epsilon`. Expected a "
                f"float > 0. Received: epsilon={epsilon}"
            )
        self.trainable_p = trainable_p
        self.epsilon = float(epsilon)
        self.keepdims = keepdims
        data_format = data_format or keras.config.image_data_format()
        if data_format not in ("channels_last", "channels_first"):
            raise ValueError(
                "Invalid value received for argument `data_format`. Expected "
                "'channels_last' or 'channels_first'. "
                f"Received: data_format={data_format!r}"
            )
        self.data_format = data_format
        self.input_spec = keras.layers.InputSpec(ndim=4)
        self.p = None

    @property
    def is_max(self):
        return math.isinf(self.p_init)

    def build(self, input_shape):
        if not self.is_max:
            self.p = self.add_weight(
                name="p",
                shape=(),
                initializer=keras.initializers.Constant(self.p_init),
                trainable=self.trainable_p,
                dtype="float32",
                autocast=False,
            )

    def _spatial_axes(self):
        return (1, 2) if self.data_format == "channels_last" else (2, 3)

    def call(self, inputs):
        axes = self._spatial_axes()
        x = ops.cast(inputs, "float32")
        if self.is_max:
            out = ops.max(x, axis=axes, keepdims=self.keepdims)
        else:
            p = ops.cast(self.p, "float32")
            x = ops.maximum(x, self.epsilon)
            out = ops.mean(ops.power(x, p), axis=axes, keepdims=self.keepdims)
            out = ops.power(out, 1.0 / p)
        return ops.cast(out, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        input_shape = list(input_shape)
        axes = self._spatial_axes()
        if self.keepdims:
            for a in axes:
                input_shape[a] = 1
            return tuple(input_shape)
        return tuple(d for i, d in enumerate(input_shape) if i not in axes)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "p": self.p_init,
                "trainable_p": self.trainable_p,
                "epsilon": self.epsilon,
                "keepdims": self.keepdims,
                "data_format": self.data_format,
            }
        )
        return config
