"""The trainable state of MultiGrain's margin loss, kept inside the model."""

import keras

from keras_cgd.api_export import keras_cgd_export
from keras_cgd.layers._seed_state import SavesSeedState


@keras_cgd_export
class MarginState(SavesSeedState, keras.layers.Layer):
    """Identity layer that owns the margin loss's learnable boundary β.

    β (and the random state of distance-weighted sampling) must be model
    variables so that `model.fit` trains, saves and restores them on every
    backend; a Keras loss cannot own trainable variables. The layer returns
    its input unchanged; `EmbeddingModel.compile` hands `beta` and
    `seed_generator` to every `MarginLoss` it is compiled with.

    Args:
        beta_init: float, initial β (1.2 in MultiGrain).
        seed: int or None, seed of the negative sampling.
    """

    def __init__(self, beta_init=1.2, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.beta_init = float(beta_init)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape):
        self.beta = self.add_weight(
            name="beta",
            shape=(),
            initializer=keras.initializers.Constant(self.beta_init),
            dtype="float32",
            autocast=False,
        )

    def call(self, inputs):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"beta_init": self.beta_init, "seed": self.seed})
        return config
