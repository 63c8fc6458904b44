"""Keras layers of keras-cgd (TensorFlow and JAX backends)."""

from keras_cgd.layers.combined_global_descriptor import CombinedGlobalDescriptor
from keras_cgd.layers.frozen_batch_normalization import FrozenBatchNormalization
from keras_cgd.layers.generalized_mean_pooling import GeneralizedMeanPooling
from keras_cgd.layers.image_normalization import ImageNormalization
from keras_cgd.layers.l2_normalization import L2Normalization
from keras_cgd.layers.margin_state import MarginState
from keras_cgd.layers.multigrain_color import MultiGrainColorAugmentation

__all__ = [
    "CombinedGlobalDescriptor",
    "FrozenBatchNormalization",
    "GeneralizedMeanPooling",
    "ImageNormalization",
    "L2Normalization",
    "MarginState",
    "MultiGrainColorAugmentation",
]
