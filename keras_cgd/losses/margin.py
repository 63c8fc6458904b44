"""MultiGrain's margin loss with distance-weighted negative sampling."""

import keras
from keras import ops

from keras_cgd.api_export import keras_cgd_export
from keras_cgd.losses.pairwise import label_masks
from keras_cgd.losses.pairwise import pairwise_squared_distances

_NEG_INF = -1e30


def distance_weighted_log_weights(distances, dim, cutoff=0.5):
    r"""Log of Wu et al.'s inverse-density sampling weights.

    Points uniform on the unit sphere in R^dim have pairwise distances with
    density q(d) ∝ d^(dim−2) (1 − d²/4)^((dim−3)/2); sampling a negative with
    weight 1/q(max(d, cutoff)) spreads the chosen negatives over distances.

        log w = (2 − dim)·log d_c − ((dim − 3)/2)·log(1 − d_c²/4),
        d_c = max(d, cutoff)
    """
    d = ops.maximum(ops.cast(distances, "float32"), cutoff)
    inner = ops.maximum(1.0 - 0.25 * ops.square(d), 1e-8)
    dim = float(dim)
    return (2.0 - dim) * ops.log(d) - 0.5 * (dim - 3.0) * ops.log(inner)


def distance_weighted_sampling(
    embeddings,
    instance_ids,
    cutoff=0.5,
    nonzero_loss_cutoff=1.4,
    seed=None,
):
    """Choose, for every anchor, its positives and distance-weighted negatives.

    Positives of anchor i are all j≠i with the same instance id (the other
    augmented copies of the same image under repeated augmentation). As many
    negatives as positives are drawn without replacement among the samples of
    other ids at distance < `nonzero_loss_cutoff`, with probability ∝ w_ij
    (`distance_weighted_log_weights`). An anchor with no such sample draws
    uniformly among all its negatives. If fewer candidates than positives
    exist, all candidates are taken. Sampling uses the Gumbel-top-k trick, so
    it is one vectorised draw that runs under `jit` on every backend.

    Args:
        embeddings: `(n, dim)` L2-normalised embeddings.
        instance_ids: `(n,)` int ids.
        cutoff: lower clamp of distances in the weights (0.5).
        nonzero_loss_cutoff: only negatives closer than this are eligible
            (1.4), since farther ones give zero loss.
        seed: int, `keras.random.SeedGenerator` or None.

    Returns:
        `(distances, positive_mask, negative_mask)`: `(n, n)` float32
        distances `sqrt(d² + 1e-8)` and two boolean `(n, n)` masks.
    """
    pos, neg = label_masks(instance_ids)
    d = ops.sqrt(pairwise_squared_distances(embeddings) + 1e-8)
    d_sg = ops.stop_gradient(d)
    dim = embeddings.shape[-1]
    log_w = distance_weighted_log_weights(d_sg, dim, cutoff)
    eligible = ops.logical_and(neg, ops.less(d_sg, nonzero_loss_cutoff))
    has_eligible = ops.any(eligible, axis=1, keepdims=True)
    # Fallback: uniform over all negatives when nothing is eligible.
    eligible = ops.where(has_eligible, eligible, neg)
    log_w = ops.where(has_eligible, log_w, 0.0)
    row_max = ops.max(ops.where(eligible, log_w, _NEG_INF), axis=1, keepdims=True)
    u = keras.random.uniform(ops.shape(d), minval=1e-7, maxval=1.0 - 1e-7, seed=seed)
    gumbel = -ops.log(-ops.log(u))
    scores = ops.where(eligible, log_w - row_max + gumbel, _NEG_INF)
    order = ops.argsort(-scores, axis=1)
    rank = ops.argsort(order, axis=1)
    n_pos = ops.sum(ops.cast(pos, "int32"), axis=1, keepdims=True)
    chosen = ops.logical_and(ops.less(rank, n_pos), eligible)
    return d, pos, chosen


def margin_loss_from_masks(distances, positive_mask, negative_mask, beta, alpha=0.2):
    r"""Margin loss of Wu et al. 2017 on given pairs.

        l = [Σ_{(i,j)∈P} (d_ij − β + α)_+ + Σ_{(i,k)∈N} (β − d_ik + α)_+]
            / max(#non-zero terms, 1)

    Returns `(n,)` per-anchor values whose mean is `l`.
    """
    beta = ops.cast(beta, "float32")
    pos_t = ops.relu(distances - beta + alpha) * ops.cast(positive_mask, "float32")
    neg_t = ops.relu(beta - distances + alpha) * ops.cast(negative_mask, "float32")
    count = ops.sum(ops.cast(pos_t > 0, "float32")) + ops.sum(
        ops.cast(neg_t > 0, "float32")
    )
    per_anchor = ops.sum(pos_t + neg_t, axis=1)
    n = ops.cast(ops.shape(per_anchor)[0], "float32")
    return per_anchor * n / ops.maximum(count, 1.0)


def margin_loss(
    y_true,
    y_pred,
    beta=1.2,
    alpha=0.2,
    cutoff=0.5,
    nonzero_loss_cutoff=1.4,
    seed=None,
):
    """Margin loss with distance-weighted sampling (functional form).

    Args:
        y_true: `(batch,)` instance ids (copies of one image share an id).
        y_pred: `(batch, dim)` L2-normalised embeddings.
        beta: float or scalar variable, the boundary β.
        alpha: the margin α (0.2).
        cutoff, nonzero_loss_cutoff, seed: see `distance_weighted_sampling`.

    Returns: `(batch,)` values whose mean is the loss.

    Reference: Wu et al., "Sampling Matters in Deep Embedding Learning",
    ICCV 2017; Berman et al., "MultiGrain", arXiv:1902.05509 (2019).
    """
    d, pos, neg = distance_weighted_sampling(
        y_pred, y_true, cutoff, nonzero_loss_cutoff, seed
    )
    return margin_loss_from_masks(d, pos, neg, beta, alpha)


def scale_gradient(x, multiplier):
    """Identity in the forward pass; multiplies the gradient by `multiplier`."""
    if multiplier == 1.0:
        return x
    return x * multiplier + ops.stop_gradient(x * (1.0 - multiplier))


@keras_cgd_export
class MarginLoss(keras.losses.Loss):
    """MultiGrain's margin loss with a learnable β and distance-weighted sampling.

    β is a model variable (`keras_cgd.layers.MarginState`): a model built by
    `keras_cgd.build_model("multigrain")` binds it to this loss when it is
    compiled, so `fit` trains β together with the network, with its gradient
    scaled by `beta_lr_multiplier` (an exact learning-rate multiplier for
    SGD). An unbound loss uses the constant `beta_init`.

    Args:
        alpha: margin α (0.2).
        beta_init: initial β (1.2).
        beta_lr_multiplier: learning-rate multiplier of β. The official code
            uses 1.0; the paper's Table B.1 lists 0.1.
        cutoff: distance clamp of the sampling weights (0.5).
        nonzero_loss_cutoff: eligible negatives are closer than this (1.4).
        seed: int or None; seed of an unbound loss's sampling.
    """

    def __init__(
        self,
        alpha=0.2,
        beta_init=1.2,
        beta_lr_multiplier=1.0,
        cutoff=0.5,
        nonzero_loss_cutoff=1.4,
        seed=None,
        reduction="sum_over_batch_size",
        name="margin_loss",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        for arg, value in (("alpha", alpha), ("beta_lr_multiplier", beta_lr_multiplier)):
            if not value >= 0:
                raise ValueError(
                    f"Invalid value received for argument `{arg}`. Expected a "
                    f"float >= 0. Received: {arg}={value}"
                )
        if not 0 < cutoff < nonzero_loss_cutoff:
            raise ValueError(
                "Invalid values received for arguments `cutoff` and "
                "`nonzero_loss_cutoff`. Expected 0 < cutoff < "
                f"nonzero_loss_cutoff. Received: cutoff={cutoff}, "
                f"nonzero_loss_cutoff={nonzero_loss_cutoff}"
            )
        self.alpha = float(alpha)
        self.beta_init = float(beta_init)
        self.beta_lr_multiplier = float(beta_lr_multiplier)
        self.cutoff = float(cutoff)
        self.nonzero_loss_cutoff = float(nonzero_loss_cutoff)
        self.seed = seed
        self.beta = None
        self.seed_generator = None

    def bind(self, beta, seed_generator):
        """Use the model variable `beta` and the model's `seed_generator`."""
        self.beta = beta
        self.seed_generator = seed_generator

    def call(self, y_true, y_pred):
        if self.beta is None:
            beta = ops.convert_to_tensor(self.beta_init, "float32")
        else:
            beta = scale_gradient(
                ops.convert_to_tensor(self.beta), self.beta_lr_multiplier
            )
        seed = self.seed_generator if self.seed_generator is not None else self.seed
        return margin_loss(
            y_true,
            y_pred,
            beta=beta,
            alpha=self.alpha,
            cutoff=self.cutoff,
            nonzero_loss_cutoff=self.nonzero_loss_cutoff,
            seed=seed,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "alpha": self.alpha,
                "beta_init": self.beta_init,
                "beta_lr_multiplier": self.beta_lr_multiplier,
                "cutoff": self.cutoff,
                "nonzero_loss_cutoff": self.nonzero_loss_cutoff,
                "seed": self.seed,
            }
        )
        return config
