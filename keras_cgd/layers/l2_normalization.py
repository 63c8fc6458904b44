"""L2 normalisation as a layer."""

import keras

from keras_cgd.api_export import keras_cgd_export
from keras_cgd.layers.l2_normalize import l2_normalize


@keras_cgd_export
class L2Normalization(keras.layers.Layer):
    """`x / ||x||₂` along the last axis, computed in float32.

    Input shape: `(batch, dim)`. Output shape: same.
    """

    def call(self, inputs):
        return keras.ops.cast(l2_normalize(inputs), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape
