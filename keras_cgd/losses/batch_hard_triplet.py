"""Batch-hard triplet loss (CGD's ranking loss)."""

import keras
from keras import ops

from keras_cgd.api_export import keras_cgd_export
from keras_cgd.losses.pairwise import label_masks
from keras_cgd.losses.pairwise import mean_over_valid
from keras_cgd.losses.pairwise import pairwise_distances


def batch_hard_triplet_loss(y_true, y_pred, margin=0.1):
    r"""Batch-hard triplet loss on Euclidean distances.

    For each anchor i with at least one positive (same label, j≠i) and one
    negative in the batch:

        l_i = max(0, max_{j∈P(i)} d(i, j) − min_{k∈N(i)} d(i, k) + margin)

    Anchors without a positive or without a negative are left out; the
    result is the mean over the remaining anchors (0 if there are none).

    Args:
        y_true: int labels, shape `(batch,)` or `(batch, 1)`.
        y_pred: embeddings, shape `(batch, dim)` (CGD: L2-normalised).
        margin: float ≥ 0 (CGD: 0.1).

    Returns:
        `(batch,)` float32 per-anchor values whose mean is the loss (see
        `mean_over_valid`).

    Reference: Hermans et al. 2017, "In Defense of the Triplet Loss"; used
    with margin 0.1 by Jun et al. 2019 (CGD).
    """
    d = pairwise_distances(y_pred)
    pos, neg = label_masks(y_true)
    big = ops.max(d) + 1.0
    hardest_pos = ops.max(ops.where(pos, d, 0.0), axis=1)
    hardest_neg = ops.min(ops.where(neg, d, big), axis=1)
    valid = ops.logical_and(ops.any(pos, axis=1), ops.any(neg, axis=1))
    per_anchor = ops.relu(hardest_pos - hardest_neg + margin)
    return mean_over_valid(per_anchor, valid)


@keras_cgd_export
class BatchHardTripletLoss(keras.losses.Loss):
    """Batch-hard triplet loss (class form of `batch_hard_triplet_loss`).

    Args:
        margin: float ≥ 0. CGD uses 0.1.

    Example:

    >>> loss = BatchHardTripletLoss(margin=0.1)
    >>> emb = np.eye(4, dtype="float32")
    >>> float(loss(np.array([0, 0, 1, 1]), emb))  # all distances sqrt(2)
    0.1...
    """

    def __init__(
        self,
        margin=0.1,
        reduction="sum_over_batch_size",
        name="batch_hard_triplet_loss",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not margin >= 0:
            raise ValueError(
                "Invalid value received for argument `margin`. Expected a "
                f"float >= 0. Received: margin={margin}"
            )
        self.margin = float(margin)

    def call(self, y_true, y_pred):
        return batch_hard_triplet_loss(y_true, y_pred, margin=self.margin)

    def get_config(self):
        config = super().get_config()
        config.update({"margin": self.margin})
        return config
