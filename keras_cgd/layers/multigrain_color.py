"""MultiGrain's flip and colour augmentation as a training-only layer (on the accelerator)."""

import keras
from keras import ops

from keras_cgd._color_fold import folded_coefficients
from keras_cgd._color_fold import gray3
from keras_cgd.api_export import keras_cgd_export
from keras_cgd.layers._seed_state import SavesSeedState


def _check_fraction(name, value, upper):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < upper:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a number in [0, {upper}). "
            f"Received: {name}={value!r}"
        )
    return float(value)


@keras_cgd_export
class MultiGrainColorAugmentation(SavesSeedState, keras.layers.Layer):
    """Random left-right flip, ColorJitter(0.3, 0.3, 0.3) and PCA lighting 0.1, in training only.

    The same map as the CPU pipelines apply (`repeated_augmentation_batches`): the jitter
    steps in a random order per image and MultiGrain's lighting, folded into one affine
    colour map with two clamps (`keras_cgd.data.augment.folded_color_transform`), the
    result rounded to whole grey levels as the uint8 pipelines' is. Put in front of a
    model (`build_model(..., flip_and_color=True)`) it moves that work from the CPU input
    pipeline onto the accelerator, batched: feed it crops from
    `repeated_augmentation_batches(..., flip_and_color=False)`. At inference
    (`training=False`, `predict`, exported signatures) it returns its input unchanged.

    Its random state is saved with the weights (`SavesSeedState`), so a resumed run
    draws the colours of an uninterrupted one.

    Args:
        flip: draw a left-right flip per image (p = 1/2).
        jitter: brightness, contrast and saturation factors ~ U(1 - jitter, 1 + jitter).
        lighting: standard deviation of the PCA lighting coefficients.
        seed: int or None, seed of the draws.

    Input shape: `(batch, H, W, 3)` pixel values in [0, 255], any real or integer dtype.
    Output shape: same; float32 in training, the input itself otherwise.

    Reference: Berman et al. 2019, MultiGrain, Table C.1 (the "full" augmentation);
    torchvision `ColorJitter`; Krizhevsky et al. 2012 (PCA lighting).
    """

    def __init__(self, flip=True, jitter=0.3, lighting=0.1, seed=None, **kwargs):
        kwargs.setdefault("dtype", "float32")  # colour maths in float32 under mixed precision
        super().__init__(**kwargs)
        if not isinstance(flip, bool):
            raise ValueError(f"Invalid value received for argument `flip`. Expected a bool. Received: flip={flip!r}")
        self.flip = flip
        self.jitter = _check_fraction("jitter", jitter, 1)
        self.lighting = _check_fraction("lighting", lighting, float("inf"))
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def draw(self, batch_size):
        """`(params, flips)` for `batch_size` images: float32 `(B, 9)` laid out as
        `keras_cgd.data.augment.multigrain_color_params`'s, and bool `(B,)`."""
        shape = (batch_size, 3)
        factors = keras.random.uniform(shape, 1.0 - self.jitter, 1.0 + self.jitter, seed=self.seed_generator)
        order = ops.argsort(keras.random.uniform(shape, seed=self.seed_generator), axis=1)
        alpha = keras.random.normal(shape, stddev=self.lighting, seed=self.seed_generator)
        params = ops.concatenate([factors, ops.cast(order, "float32"), alpha], axis=1)
        flips = keras.random.uniform((batch_size,), seed=self.seed_generator) < 0.5
        if not self.flip:
            flips = ops.zeros_like(flips)
        return params, flips

    def transform(self, images, params, flips):
        """The map for given draws: float32 `(B, H, W, 3)` of whole grey levels in [0, 255]."""
        x = ops.cast(images, "float32")
        x = ops.where(flips[:, None, None, None], ops.flip(x, axis=2), x)
        a, b, o, rgb = folded_coefficients(ops.mean(x, axis=(1, 2)), params, ops)
        y = a[:, None, None, None] * x + b[:, None, None, None] * gray3(x)[..., None] + o[:, None, None, :]
        y = ops.clip(y, 0.0, 255.0)
        y = ops.clip((y + (255.0 * rgb)[:, None, None, :]) / (1.0 + self.lighting), 0.0, 255.0)
        return ops.floor(y + 0.5)

    def call(self, inputs, training=None):
        if not training:
            return inputs
        params, flips = self.draw(ops.shape(inputs)[0])
        return self.transform(inputs, params, flips)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"flip": self.flip, "jitter": self.jitter, "lighting": self.lighting, "seed": self.seed})
        return config
