"""MultiGrain's colour augmentation folded into one affine map: the coefficients.

Shared by the `tf.data` pipelines (`keras_cgd.data.augment.folded_color_transform*`,
on the CPU) and by the training-only layer `keras_cgd.layers.MultiGrainColorAugmentation`
(on the accelerator), so both apply the same map. No TensorFlow or Keras import here: the
functions take the array namespace to use (`tensorflow` or `keras.ops`).
"""

import numpy as np

# AlexNet / fb.resnet.torch PCA of ImageNet RGB pixels (0-1 scale), as used by MultiGrain.
IMAGENET_PCA_EIGENVALUES = np.array([0.2175, 0.0188, 0.0045], dtype="float32")
IMAGENET_PCA_EIGENVECTORS = np.array(
    [
        [-0.5675, 0.7192, 0.4009],
        [-0.5808, -0.0045, -0.8140],
        [-0.5836, -0.6948, 0.4203],
    ],
    dtype="float32",
)
# ITU-R 601-2 luma (PIL / torchvision weights).
GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def gray3(v):
    """Luma of `(..., 3)` colours, written with indexing and arithmetic only."""
    return GRAY_WEIGHTS[0] * v[..., 0] + GRAY_WEIGHTS[1] * v[..., 1] + GRAY_WEIGHTS[2] * v[..., 2]


def folded_coefficients(mean, params, ops):
    """`(a, b, o, rgb)` of the folded colour map from the images' mean colours `(B, 3)`.

    The jitter steps (brightness, contrast, saturation, in the per-image order of
    `params[:, 3:6]`) compose to j(x) = a·x + b·gray(x)·1 + o; see
    `keras_cgd.data.augment.folded_color_transform` for the derivation.

    Args:
        mean: float32 `(B, 3)`, each image's mean colour (pixel scale).
        params: float32 `(B, 9)` as drawn by `multigrain_color_params`.
        ops: the namespace (`tensorflow` or `keras.ops`): `cast`, `where`, `matmul`,
            `ones_like`, `zeros_like`.

    Returns:
        a, b: `(B,)`; o: `(B, 3)` the jitter's colour offset (pixel scale); rgb: `(B, 3)`
        the PCA lighting colour V(α·λ) on the [0, 1] scale.
    """
    params = ops.cast(params, "float32")
    mean = ops.cast(mean, "float32")
    fb, fc, fs = params[:, 0], params[:, 1], params[:, 2]
    order = ops.cast(params[:, 3:6], "int32")
    a = ops.ones_like(fb)
    b = ops.zeros_like(fb)
    o = ops.zeros_like(mean)
    gray_mean = gray3(mean)
    for position in range(3):
        step = order[:, position]
        # brightness
        ab, bb, ob = fb * a, fb * b, fb[:, None] * o
        # contrast (blend with the mean grey of the current image)
        m = (a + b) * gray_mean + gray3(o)
        ac, bc, oc = fc * a, fc * b, fc[:, None] * o + ((1.0 - fc) * m)[:, None]
        # saturation (blend with the per-pixel grey)
        as_, bs, os_ = fs * a, fs * b + (1.0 - fs) * (a + b), fs[:, None] * o + ((1.0 - fs) * gray3(o))[:, None]
        a = ops.where(step == 0, ab, ops.where(step == 1, ac, as_))
        b = ops.where(step == 0, bb, ops.where(step == 1, bc, bs))
        o = ops.where((step == 0)[:, None], ob, ops.where((step == 1)[:, None], oc, os_))
    rgb = ops.matmul(params[:, 6:9] * IMAGENET_PCA_EIGENVALUES, IMAGENET_PCA_EIGENVECTORS.T)
    return a, b, o, rgb
