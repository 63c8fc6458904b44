"""Pairwise distances and label masks shared by the ranking losses."""

from keras import ops


def _labels_1d(labels):
    labels = ops.convert_to_tensor(labels)
    if len(labels.shape) == 2 and labels.shape[-1] == 1:
        labels = ops.squeeze(labels, axis=-1)
    if len(labels.shape) != 1:
        raise ValueError(
            "Expected integer labels of shape (batch,) or (batch, 1). "
            f"Received: labels.shape={tuple(labels.shape)}"
        )
    return labels


def pairwise_squared_distances(a, b=None):
    """Squared Euclidean distances between rows of `a` and `b`, in float32.

    Args:
        a: `(n, d)` tensor; b: `(m, d)` tensor (defaults to `a`, in which
            case the diagonal is exactly 0).
    Returns:
        `(n, m)` float32 tensor, clamped at 0.
    """
    a = ops.cast(a, "float32")
    same = b is None
    b = a if same else ops.cast(b, "float32")
    sq_a = ops.sum(ops.square(a), axis=-1, keepdims=True)
    sq_b = ops.sum(ops.square(b), axis=-1, keepdims=True)
    d2 = ops.maximum(sq_a - 2.0 * ops.matmul(a, ops.transpose(b)) + ops.transpose(sq_b), 0.0)
    if same:
        d2 = d2 * (1.0 - ops.eye(ops.shape(a)[0], dtype="float32"))
    return d2


def pairwise_distances(a, b=None, epsilon=1e-12):
    """Euclidean distances `sqrt(max(d², ε))` with a finite gradient at 0."""
    return ops.sqrt(ops.maximum(pairwise_squared_distances(a, b), epsilon))


def label_masks(labels):
    """Boolean `(n, n)` masks of positive pairs (same label, i≠j) and negatives."""
    labels = _labels_1d(labels)
    same = ops.equal(ops.expand_dims(labels, 1), ops.expand_dims(labels, 0))
    n = ops.shape(labels)[0]
    not_self = ops.logical_not(ops.cast(ops.eye(n), "bool"))
    return ops.logical_and(same, not_self), ops.logical_not(same)


def mean_over_valid(per_anchor, valid):
    """Scale per-anchor values so that their batch mean is the mean over the
    valid anchors only (0 when none is valid).

    Keras reduces a loss vector with `sum_over_batch_size`; returning
    `v_i · n / n_valid` for valid anchors and 0 otherwise makes that
    reduction equal `Σ_valid v_i / n_valid`.
    """
    valid = ops.cast(valid, "float32")
    n = ops.cast(ops.shape(valid)[0], "float32")
    n_valid = ops.sum(valid)
    return per_anchor * valid * n / ops.maximum(n_valid, 1.0)
