"""Batch normalisation whose statistics stay fixed while gamma/beta train."""

import keras

from keras_cgd.api_export import keras_cgd_export


@keras_cgd_export
class FrozenBatchNormalization(keras.layers.BatchNormalization):
    """BatchNormalization that always normalises with its moving statistics.

    Unlike `BatchNormalization(trainable=False)`, the scale (gamma) and offset
    (beta) stay trainable; only the moving mean and variance are frozen. This
    is PyTorch's `bn.eval()` with trainable affine parameters, which the CGD
    reference reimplementation applies to every backbone BN layer.
    """

    def call(self, inputs, training=None, mask=None):
        return super().call(inputs, training=False, mask=mask)
