"""L2 normalisation computed in float32."""

from keras import ops


def l2_normalize(x, axis=-1, epsilon=1e-12):
    """Return `x / max(||x||_2, sqrt(epsilon))` along `axis`, in float32.

    The squared norm is accumulated in float32 so that float16/bfloat16
    activations neither overflow nor lose the normalisation.
    """
    x = ops.cast(x, "float32")
    sq = ops.sum(ops.square(x), axis=axis, keepdims=True)
    return x * ops.rsqrt(ops.maximum(sq, epsilon))
