"""Losses of keras-cgd: ranking (triplet, margin) and classification."""

from keras_cgd.losses.batch_hard_triplet import BatchHardTripletLoss
from keras_cgd.losses.batch_hard_triplet import batch_hard_triplet_loss
from keras_cgd.losses.margin import MarginLoss
from keras_cgd.losses.margin import distance_weighted_sampling
from keras_cgd.losses.margin import margin_loss
from keras_cgd.losses.pairwise import pairwise_distances
from keras_cgd.losses.smoothed_cross_entropy import SmoothedCrossEntropy
from keras_cgd.losses.smoothed_cross_entropy import smoothed_cross_entropy

__all__ = [
    "BatchHardTripletLoss",
    "MarginLoss",
    "SmoothedCrossEntropy",
    "batch_hard_triplet_loss",
    "distance_weighted_sampling",
    "margin_loss",
    "pairwise_distances",
    "smoothed_cross_entropy",
]
