"""Generalized-mean (GeM) global pooling; SPoC and MAC are its p=1 and p=inf."""

import math

import keras
from keras import ops

from keras_cgd.api_export import keras_cgd_export

# Fixed exponents computed without `power` on the feature map (mean, or products).
FAST_EXPONENTS = (1.0, 2.0, 3.0, 4.0)


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


def _integer_power(x, p):
    """`x ** p` for p in 1..4 by multiplication (exact to float rounding)."""
    if p == 1:
        return x
    x2 = x * x
    if p == 2:
        return x2
    return x2 * x if p == 3 else x2 * x2


def _signed_root(m, p):
    """`sign(m) * |m| ** (1 / p)` (the GeM root of leftthomas/CGD, defined for m < 0)."""
    if p == 1:
        return m
    if p == 2:
        return ops.sign(m) * ops.sqrt(ops.abs(m))
    return ops.sign(m) * ops.power(ops.abs(m), 1.0 / p)


@keras_cgd_export
class GeneralizedMeanPooling(keras.layers.Layer):
    r"""Generalized-mean pooling over the spatial axes of a feature map.

    For every channel c of a feature map x with spatial positions Ω:

        f_c = ( 1/|Ω| · Σ_{u∈Ω} max(x_cu, ε)^p )^(1/p)          (clamp=True)
        f_c = sign(m_c) |m_c|^(1/p),  m_c = 1/|Ω| · Σ_u x_cu^p   (clamp=False)

    `p=1` gives average pooling (SPoC), `p=inf` gives max pooling (MAC) and
    `p=3` is the GeM setting of both papers. With `clamp=True` activations
    are clamped at `ε` so that zero or negative inputs never produce NaN
    (Radenović et al., MultiGrain's `gem`); with `clamp=False` p=1 is a plain
    mean (CGD's SPoC) and integer p follows `leftthomas/CGD`'s GeM. The power
    is computed in float32 whatever the dtype policy (mixed precision safe).
    Any spatial size works, so a model built on `(None, None, C)` inputs can
    be evaluated at a test-time resolution s*.

    Speed: a fixed (non-trainable) p of 1, 2, 3 or 4 is computed as a mean of
    products, without `power` on the feature map (same outputs and gradients
    to float rounding); p=inf is a max. Because `p` stays a variable that a
    test-time p* may be assigned to, the fast path is chosen at run time
    (`ops.cond` on `p == initial p`, one scalar test per call); any other
    value, and a trainable p, take the general `power` path.

    Args:
        p: float > 0 or `float("inf")`. The pooling exponent. CGD fixes
            p=3; MultiGrain trains with p=3 and evaluates with p* (3–5).
        trainable_p: bool. Learn `p` with the rest of the model (ignored
            for p=inf). Default False, as in both papers' training.
        epsilon: float. Clamp value for activations (1e-6 in both papers).
        keepdims: bool. Keep the spatial axes as size 1.
        data_format: "channels_last" or "channels_first"; defaults to the
            Keras image data format.
        clamp: bool. Clamp activations at `epsilon` before the power
            (default True, as GeM in MultiGrain and Radenović et al.). False
            needs p = 1, an integer p or inf, fixed (a negative activation to
            a non-integer power is NaN); p=inf never clamps.

    Input shape: `(batch, H, W, C)` (channels_last) or `(batch, C, H, W)`.
    Output shape: `(batch, C)`, or with size-1 spatial axes if `keepdims`.

    Example:

    >>> x = np.random.rand(2, 7, 7, 8).astype("float32")
    >>> GeneralizedMeanPooling(p=3.0)(x).shape
    (2, 8)
    >>> spoc = GeneralizedMeanPooling(p=1.0, clamp=False)  # CGD's SPoC: x.mean(H, W)

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
        clamp=True,
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
        if not isinstance(clamp, bool):
            raise TypeError(
                "Invalid type received for argument `clamp`. Expected a bool. "
                f"Received: clamp={clamp!r}"
            )
        if not clamp and not math.isinf(self.p_init) and (
            trainable_p or self.p_init != round(self.p_init)
        ):
            raise ValueError(
                "Invalid value received for argument `clamp`. clamp=False needs a "
                "fixed integer p (or p=inf): a negative activation to a non-integer "
                f"power is NaN. Received: clamp=False with p={self.p_init}, "
                f"trainable_p={trainable_p}"
            )
        self.trainable_p = trainable_p
        self.epsilon = float(epsilon)
        self.keepdims = keepdims
        self.clamp = clamp
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

    def _mean(self, x):
        return ops.mean(x, axis=self._spatial_axes(), keepdims=self.keepdims)

    def _general(self, x, p):
        """The formula with `power` (any p, trainable p)."""
        if self.clamp:
            return ops.power(self._mean(ops.power(x, p)), 1.0 / p)
        m = self._mean(ops.power(x, p))
        return ops.sign(m) * ops.power(ops.abs(m), 1.0 / p)

    def _fixed(self, x):
        """The formula for the initial integer p, by products (no `power` on the map)."""
        p = int(self.p_init)
        m = self._mean(_integer_power(x, p))
        if self.clamp:  # m > 0
            if p == 1:
                return m
            return ops.sqrt(m) if p == 2 else ops.power(m, 1.0 / p)
        return _signed_root(m, p)

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        if self.is_max:
            return ops.cast(
                ops.max(x, axis=self._spatial_axes(), keepdims=self.keepdims),
                self.compute_dtype,
            )
        if self.clamp:
            x = ops.maximum(x, self.epsilon)
        p = ops.cast(self.p, "float32")
        if self.trainable_p or self.p_init not in FAST_EXPONENTS:
            out = self._general(x, p)
        else:
            out = ops.cond(
                ops.equal(p, self.p_init),
                lambda: self._fixed(x),
                lambda: self._general(x, p),
            )
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
                "clamp": self.clamp,
            }
        )
        return config
