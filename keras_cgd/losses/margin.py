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


def _counts_with_replacement(weights, num_draws, seed):
    """`(n, n)` int32 counts of `num_draws[i]` draws with replacement from row i of `weights`.

    Inverse-CDF sampling without an `(n, n, n)` tensor: the `n` uniform draws of a row
    (those beyond `num_draws[i]` moved past the end) are sorted together with the row's
    cumulative weights; the number of draws below each cumulative weight, differenced,
    counts the draws of each entry. Rows of zero weight get no draws.
    """
    n = ops.shape(weights)[0]
    cdf = ops.cumsum(weights, axis=1)
    total = cdf[:, -1:]
    u = keras.random.uniform(ops.shape(weights), minval=1e-6, maxval=1.0 - 1e-6, seed=seed) * total
    active = ops.less(ops.expand_dims(ops.arange(n, dtype="int32"), 0), num_draws)
    u = ops.where(active, u, 2.0 * total + 1.0)
    values = ops.concatenate([cdf, u], axis=1)
    is_draw = ops.concatenate([ops.zeros_like(cdf), ops.ones_like(u)], axis=1)
    order = ops.argsort(values, axis=1)
    below = ops.cumsum(ops.take_along_axis(is_draw, order, axis=1), axis=1)
    below = ops.take_along_axis(below, ops.argsort(order, axis=1), axis=1)[:, :n]
    counts = below - ops.concatenate([ops.zeros_like(below[:, :1]), below[:, :-1]], axis=1)
    return ops.cast(ops.where(ops.greater(total, 0.0), counts, 0.0), "int32")


def distance_weighted_sampling(
    embeddings,
    instance_ids,
    cutoff=0.5,
    nonzero_loss_cutoff=1.4,
    seed=None,
):
    r"""Choose, for every anchor, its positives and distance-weighted negatives.

    Positives of anchor i are all j≠i with the same instance id (the other
    augmented copies of the same image under repeated augmentation). As many
    negatives as positives, `n_i`, are drawn among the samples of other ids at
    distance < `nonzero_loss_cutoff` ("eligible"), with probability
    p(j|i) = w_ij / Σ_k w_ik (`distance_weighted_log_weights`, normalised per
    anchor as in Wu et al. 2017): without replacement when there are at least `n_i`
    eligible negatives (Gumbel-top-k: one vectorised draw that runs under `jit`),
    otherwise with replacement (a negative may be drawn more than once, and then
    counts as often in the loss), as the MultiGrain code falls back to
    `np.random.choice(..., replace=True)`. An anchor with no eligible negative draws
    uniformly among all its negatives (again with replacement if there are fewer
    than `n_i`).

    Normalisation: MultiGrain's `DistanceWeightedSampling` subtracts the *global*
    maximum of log w over the batch before `exp`. At dimension 2048 log w spans
    about 1500 nats between d = 0.5 (log w ≈ 1484) and d = 1.4 (≈ 0), so every
    negative's weight underflows to 0 in float32, each row sums to 0 (NaN after
    the division), and the code's fallback samples negatives uniformly. Here the
    maximum is taken per anchor over its eligible negatives (the paper's
    p(j|i) ∝ 1/q(d_ij)), so the weighting is actually applied.

    Args:
        embeddings: `(n, dim)` L2-normalised embeddings.
        instance_ids: `(n,)` int ids.
        cutoff: lower clamp of distances in the weights (0.5).
        nonzero_loss_cutoff: only negatives closer than this are eligible
            (1.4), since farther ones give zero loss.
        seed: int, `keras.random.SeedGenerator` or None.

    Returns:
        `(distances, positive_mask, negative_counts)`: `(n, n)` float32
        distances `sqrt(d² + 1e-8)`, the boolean `(n, n)` positive mask and
        `(n, n)` int32 counts of the draws of each negative (each row sums to
        `n_i` whenever the anchor has a negative).

    Reference: Wu et al., "Sampling Matters in Deep Embedding Learning", ICCV
    2017; MultiGrain `multigrain/modules/margin.py` (cutoff 0.5, 1.4).
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
    n_pos = ops.sum(ops.cast(pos, "int32"), axis=1, keepdims=True)
    # Without replacement: Gumbel-top-k over the eligible negatives.
    u = keras.random.uniform(ops.shape(d), minval=1e-7, maxval=1.0 - 1e-7, seed=seed)
    gumbel = -ops.log(-ops.log(u))
    scores = ops.where(eligible, log_w - row_max + gumbel, _NEG_INF)
    order = ops.argsort(-scores, axis=1)
    rank = ops.argsort(order, axis=1)
    chosen = ops.cast(ops.logical_and(ops.less(rank, n_pos), eligible), "int32")
    # With replacement, for anchors with fewer eligible negatives than positives.
    weights = ops.where(eligible, ops.exp(ops.where(eligible, log_w - row_max, 0.0)), 0.0)
    repeated = _counts_with_replacement(weights, n_pos, seed)
    enough = ops.greater_equal(ops.sum(ops.cast(eligible, "int32"), axis=1, keepdims=True), n_pos)
    return d, pos, ops.where(enough, chosen, repeated)


def margin_loss_from_masks(distances, positive_mask, negative_mask, beta, alpha=0.2):
    r"""Margin loss of Wu et al. 2017 on given pairs.

        l = [Σ_{(i,j)∈P} (d_ij − β + α)_+ + Σ_{(i,k)∈N} c_ik (β − d_ik + α)_+]
            / max(#non-zero terms, 1)

    `negative_mask` may hold counts c_ik (a negative drawn twice with replacement
    is two terms); a boolean mask is counts of 0 and 1.

    Returns `(n,)` per-anchor values whose mean is `l`.
    """
    beta = ops.cast(beta, "float32")
    pos_w = ops.cast(positive_mask, "float32")
    neg_w = ops.cast(negative_mask, "float32")
    pos_r = ops.relu(distances - beta + alpha)
    neg_r = ops.relu(beta - distances + alpha)
    count = ops.sum(pos_w * ops.cast(pos_r > 0, "float32")) + ops.sum(
        neg_w * ops.cast(neg_r > 0, "float32")
    )
    per_anchor = ops.sum(pos_r * pos_w + neg_r * neg_w, axis=1)
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
