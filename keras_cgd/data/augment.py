"""Image augmentations of CGD and MultiGrain, written with stateless `tf.image` ops.

TensorFlow-only module (it runs inside `tf.data` pipelines on either Keras backend).

Every random transform takes an explicit `seed` (an int32/int64 tensor of shape `(2,)`)
and uses `tf.random.stateless_*` ops, so that a pipeline is reproducible and two copies of
one image given different seeds are augmented independently (MultiGrain's repeated
augmentation).

Images in and out are RGB pixel values in [0, 255] (uint8 in, float32 out) and are
**not** normalised: mean/std normalisation happens inside the model. The batchers of
`keras_cgd.data.batching` round the results to uint8.

Resizing is bilinear and antialiased when it shrinks, in training as in evaluation (PIL's
bilinear resize in both papers' code is antialiased too); enlarging is plain bilinear,
which is what the antialiased kernel computes there anyway.

Recipes:

- CGD (`naver/cgd`, `leftthomas/CGD`): `Resize((252, 252))` (aspect ratio not kept) →
  `RandomCrop(224)` → `RandomHorizontalFlip`. Sizes scale with `image_size`:
  resize = round(image_size * 252 / 224).
- MultiGrain "full" (`augmentations/transforms.py`, paper Table C.1):
  `RandomResizedCrop(image_size, scale=(0.08, 1), ratio=(3/4, 4/3))` → flip →
  `ColorJitter(0.3, 0.3, 0.3)` (random order) → AlexNet PCA `Lighting(0.1)` with the
  ImageNet eigenvalues/eigenvectors, which adds the colour noise and divides by 1.1 →
  clamp to [0, 1]. The jitter steps are affine in the pixel values, so keras-cgd folds
  them into one map `a x + b gray(x) + o` per image and applies it with the lighting in
  one pass (`folded_color_transform`: a clamp after the jitter and one at the end,
  instead of one per step).
- Test time: resize to a fixed size; MultiGrain "square" (resize the shorter side to
  int(256 / 224 * s), centre crop s); MultiGrain "rect" (longest side = s*, no crop).
"""

import math

import numpy as np
import tensorflow as tf

from keras_cgd._color_fold import IMAGENET_PCA_EIGENVALUES  # noqa: F401 (re-exported)
from keras_cgd._color_fold import IMAGENET_PCA_EIGENVECTORS  # noqa: F401
from keras_cgd._color_fold import folded_coefficients
from keras_cgd._color_fold import gray3

TRAIN_AUGMENTATIONS = ("cgd", "multigrain", "flip", "none")


def cgd_resize_size(image_size):
    """CGD's pre-crop resize for a given crop size: round(image_size * 252 / 224)."""
    return int(round(image_size * 252.0 / 224.0))


def check_image_size(image_size, name="image_size"):
    """Validates a positive int (or pair) size and returns `(height, width)`."""
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        image_size = (int(image_size), int(image_size))
    if (
        not isinstance(image_size, (tuple, list))
        or len(image_size) != 2
        or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in image_size)
        or min(image_size) < 1
    ):
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a positive int or a "
            f"pair of positive ints (height, width). Received: {name}={image_size!r}"
        )
    return int(image_size[0]), int(image_size[1])


def _seeds(seed, num):
    return tf.unstack(tf.random.experimental.stateless_split(seed, num=num))


def random_resized_crop_windows(seed, num, height, width, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0)):
    """Samples `num` independent RandomResizedCrop windows `(y, x, h, w)` as torchvision does.

    For each window, up to 10 candidates with area fraction ~ U(scale) and log aspect
    ratio ~ U(log ratio) are drawn; the first one that fits is used, otherwise a centre
    crop with the aspect ratio clamped into `ratio`. The offsets are uniform integers.

    Args:
        seed: int tensor of shape `(2,)`.
        num: int, number of windows (static).
        height, width: scalar int tensors, size of the region to crop from.
        scale, ratio: the paper defaults (0.08, 1) and (3/4, 4/3).

    Returns:
        int32 tensor `(num, 4)` of `[y, x, h, w]` rows.
    """
    s_area, s_ratio, s_offset = _seeds(seed, 3)
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    area = h * w
    target = area * tf.random.stateless_uniform([num, 10], s_area, scale[0], scale[1])
    log_r = tf.random.stateless_uniform([num, 10], s_ratio, math.log(ratio[0]), math.log(ratio[1]))
    r = tf.exp(log_r)
    cw = tf.round(tf.sqrt(target * r))
    ch = tf.round(tf.sqrt(target / r))
    ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = tf.argmax(tf.cast(ok, tf.int32), axis=1, output_type=tf.int32)
    in_ratio = w / h
    fw = tf.where(in_ratio < ratio[0], w, tf.where(in_ratio > ratio[1], tf.round(h * ratio[1]), w))
    fh = tf.where(in_ratio < ratio[0], tf.round(w / ratio[0]), h)
    found = tf.reduce_any(ok, axis=1)
    cw = tf.where(found, tf.gather(cw, first, batch_dims=1), fw)
    ch = tf.where(found, tf.gather(ch, first, batch_dims=1), fh)
    u = tf.random.stateless_uniform([num, 2], s_offset)
    y = tf.where(found, tf.floor(u[:, 0] * (h - ch + 1.0)), tf.floor((h - ch) / 2.0))
    x = tf.where(found, tf.floor(u[:, 1] * (w - cw + 1.0)), tf.floor((w - cw) / 2.0))
    y = tf.clip_by_value(y, 0.0, h - ch)
    x = tf.clip_by_value(x, 0.0, w - cw)
    return tf.cast(tf.stack([y, x, ch, cw], axis=1), tf.int32)


def random_resized_crop_window(seed, height, width, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0)):
    """One RandomResizedCrop window: int32 `[y, x, h, w]` (see `random_resized_crop_windows`)."""
    return random_resized_crop_windows(seed, 1, height, width, scale, ratio)[0]


def random_flip(image, seed):
    """Flips `image` left-right with probability 1/2 (stateless)."""
    return tf.image.stateless_random_flip_left_right(image, seed)


def _grayscale(image):
    # ITU-R 601-2 luma, as PIL / torchvision.
    return gray3(image)[..., None]


def color_jitter(image, seed, brightness=0.3, contrast=0.3, saturation=0.3, max_value=1.0):
    """torchvision-style ColorJitter on a float image in [0, max_value], in a random order.

    Factors f ~ U(1 - a, 1 + a); brightness: f * x; contrast: blend with the mean grey
    level, f * x + (1 - f) * mean(gray(x)); saturation: blend with the per-pixel grey,
    f * x + (1 - f) * gray(x); the result is clamped to [0, max_value] after each step.
    """
    s_order, s_b, s_c, s_s = _seeds(seed, 4)
    fb = tf.random.stateless_uniform([], s_b, 1.0 - brightness, 1.0 + brightness)
    fc = tf.random.stateless_uniform([], s_c, 1.0 - contrast, 1.0 + contrast)
    fs = tf.random.stateless_uniform([], s_s, 1.0 - saturation, 1.0 + saturation)

    def bright(x):
        return tf.clip_by_value(x * fb, 0.0, max_value)

    def contr(x):
        mean = tf.reduce_mean(_grayscale(x))
        return tf.clip_by_value(fc * x + (1.0 - fc) * mean, 0.0, max_value)

    def satur(x):
        return tf.clip_by_value(fs * x + (1.0 - fs) * _grayscale(x), 0.0, max_value)

    order = tf.argsort(tf.random.stateless_uniform([3], s_order))
    for i in range(3):
        image = tf.switch_case(order[i], [lambda: bright(image), lambda: contr(image), lambda: satur(image)])
    return image


def pca_lighting(image, seed, alpha_std=0.1, max_value=1.0):
    """AlexNet PCA colour noise as in MultiGrain's `Lighting` (float image in [0, 1]).

    x + V (alpha * lambda), alpha ~ N(0, alpha_std), then divided by (1 + alpha_std) and
    clamped to [0, 1], with V, lambda the ImageNet RGB eigenvectors / eigenvalues (0-1
    pixel scale). With `max_value=255` the same on the 0-255 scale.
    """
    alpha = tf.random.stateless_normal([3], seed, stddev=alpha_std)
    rgb = tf.linalg.matvec(tf.constant(IMAGENET_PCA_EIGENVECTORS), alpha * IMAGENET_PCA_EIGENVALUES)
    scale = 1.0 / (1.0 + alpha_std)
    return tf.clip_by_value(image * scale + rgb * (max_value * scale), 0.0, max_value)


COLOR_PARAMS = 9  # per image: 3 jitter factors, the order of the 3 jitter steps, 3 PCA alphas


def multigrain_color_params(seed, num, jitter=0.3, lighting=0.1):
    """Random parameters of `num` MultiGrain colour augmentations, float32 `(num, 9)`.

    Columns 0–2: brightness, contrast, saturation factors ~ U(1 - jitter, 1 + jitter);
    3–5: the order of the three jitter steps (a random permutation of 0 = brightness,
    1 = contrast, 2 = saturation, stored as floats); 6–8: the PCA lighting coefficients
    alpha ~ N(0, lighting). Used by `folded_color_transform`.
    """
    s_fac, s_order, s_light = _seeds(seed, 3)
    factors = tf.random.stateless_uniform([num, 3], s_fac, 1.0 - jitter, 1.0 + jitter)
    order = tf.argsort(tf.random.stateless_uniform([num, 3], s_order), axis=1)
    alpha = tf.random.stateless_normal([num, 3], s_light, stddev=lighting) if lighting else tf.zeros([num, 3])
    return tf.concat([factors, tf.cast(order, tf.float32), alpha], axis=1)


def folded_color_transform(images, params, lighting=0.1, max_value=255.0):
    r"""ColorJitter (random order) then PCA Lighting, folded into one affine map per image.

    Each jitter step is affine in the pixels x (RGB): brightness f·x; saturation
    f·x + (1 - f)·gray(x)·1; contrast f·x + (1 - f)·mean(gray(x))·1. Since gray(1) = 1,
    any composition of them is

        j(x) = a·x + b·gray(x)·1 + o      (scalars a, b and a colour offset o per image)

    where the contrast step uses the mean colour μ of the input (the mean grey of the
    current image is (a + b)·gray(μ) + gray(o)). Lighting then adds the PCA colour noise
    and divides by 1 + lighting, as MultiGrain's `Lighting`:

        y = clamp( (clamp(j(x)) + max_value·V(α·λ)) / (1 + lighting) )

    with clamp to [0, max_value]. Two clamps instead of torchvision's one per step; the
    one after the jitter is kept because it shapes the output: without it the brightest
    1 % of pixels of a photo reach 255 where the step-by-step reference tops out near
    0.91·255. Where no intermediate value leaves [0, max_value] the result equals the
    step-by-step one; elsewhere the per-channel mean and spread agree to a fraction of a
    grey level (tests/data/test_augment.py).

    Args:
        images: `(B, H, W, 3)` (any real or integer dtype) pixel values in [0, max_value].
        params: float32 `(B, 9)` from `multigrain_color_params`.
        lighting: the lighting standard deviation the alphas were drawn with (0.1);
            sets the 1 / (1 + lighting) scale of MultiGrain's `Lighting`.
        max_value: 255 for pixel values, 1 for [0, 1] images.

    Returns:
        float32 `(B, H, W, 3)` in [0, max_value].

    Reference: torchvision `ColorJitter(0.3, 0.3, 0.3)`; Krizhevsky et al. 2012 (PCA
    lighting); MultiGrain `augmentations/transforms.py`.
    """
    x = tf.cast(images, tf.float32)
    a, b, o, rgb = folded_coefficients(tf.reduce_mean(x, axis=[1, 2]), params, tf)
    scale = 1.0 / (1.0 + lighting)
    gray = gray3(x)[..., None]
    y = a[:, None, None, None] * x + b[:, None, None, None] * gray + o[:, None, None, :]
    y = tf.clip_by_value(y, 0.0, max_value)
    return tf.clip_by_value((y + (max_value * rgb)[:, None, None, :]) * scale, 0.0, max_value)


def _round_to_uint8(x):
    return tf.cast(tf.round(tf.clip_by_value(x, 0.0, 255.0)), tf.uint8)


@tf.function(jit_compile=True, reduce_retracing=True)
def _folded_color_uint8_xla(images, params, lighting, flips):
    # The map of `folded_color_transform`, written channel by channel (planes of
    # (B, H, W) that XLA vectorises; a reduction over a last axis of 3 does not) and
    # rounded half up: 2.8x faster on CPU than the (B, H, W, 3) form.
    x = tf.cast(images, tf.float32)
    a, b, o, rgb = folded_coefficients(tf.reduce_mean(x, axis=[1, 2]), params, tf)
    scale = 1.0 / (1.0 + lighting)
    planes = [x[..., c] for c in range(3)]
    gray = gray3(x)  # from the same planes x[..., c]
    per_image = lambda v: v[:, None, None]  # noqa: E731
    outs = []
    for c, plane in enumerate(planes):
        y = tf.clip_by_value(per_image(a) * plane + per_image(b) * gray + per_image(o[:, c]), 0.0, 255.0)
        y = tf.clip_by_value((y + per_image(255.0 * rgb[:, c])) * scale, 0.0, 255.0)
        outs.append(tf.cast(y + 0.5, tf.uint8))
    out = tf.stack(outs, axis=-1)
    return tf.where(flips[:, None, None, None], tf.reverse(out, axis=[2]), out)


def folded_color_transform_uint8(images, params, lighting=0.1, flips=None):
    """`folded_color_transform` of a uint8 batch, rounded back to uint8, compiled with XLA.

    XLA fuses the whole map (cast, mean, affine map, clamp, rounding to the nearest grey
    level with halves up, and the left-right flips of the images where `flips` (bool
    `(B,)`) is True) into one pass over the batch: on CPU inside `tf.data` it is ~10×
    faster than the same ops run one by one.
    """
    if flips is None:
        flips = tf.zeros(tf.shape(images)[:1], tf.bool)
    return _folded_color_uint8_xla(images, params, tf.constant(lighting, tf.float32), flips)


def resize_bilinear(image, size, antialias=True):
    """Bilinear resize of a `(H, W, C)` image (uint8 or float) to `size`, float32 out.

    With `antialias` (default), shrinking uses the antialiased triangle kernel (the
    values of `tf.image.resize(..., antialias=True)`, as PIL's bilinear resize), computed
    by `ScaleAndTranslate` straight from the input dtype (`tf.image.resize` first makes a
    float32 copy); an image that is not shrunk along either axis takes the plain
    bilinear kernel, which gives the same values there and is faster.
    """
    size = [int(size[0]), int(size[1])]
    if not antialias:
        return tf.cast(tf.image.resize(image, size, method="bilinear"), tf.float32)
    shape = tf.shape(image)

    def shrink():
        scale = tf.constant(size, tf.float32) / tf.cast(shape[:2], tf.float32)
        return tf.raw_ops.ScaleAndTranslate(
            images=image[None], size=size, scale=scale, translation=tf.zeros([2]),
            kernel_type="triangle", antialias=True,
        )[0]

    return tf.cond(
        (shape[0] <= size[0]) & (shape[1] <= size[1]),
        lambda: tf.cast(tf.image.resize(image, size, method="bilinear"), tf.float32),
        shrink,
    )


def _resize(image, size, antialias):
    return resize_bilinear(image, size, antialias)


def cgd_train_augment(image, seed, image_size=224, antialias=True):
    """CGD training augmentation: resize (R, R) → random crop `image_size` → random flip.

    R = round(image_size * 252 / 224) (252 for 224); the resize does not keep the aspect
    ratio, as in `leftthomas/CGD`.

    Args:
        image: `(H, W, 3)` uint8 or float32 tensor in [0, 255].
        seed: int tensor of shape `(2,)`.
        image_size: output size (int or (height, width)).

    Returns:
        `(image_size, image_size, 3)` float32 in [0, 255].

    Example:
        >>> out = cgd_train_augment(tf.zeros([300, 200, 3], tf.uint8), tf.constant([1, 2]), 64)
        >>> out.shape
        TensorShape([64, 64, 3])
    """
    size = check_image_size(image_size)
    resize = (cgd_resize_size(size[0]), cgd_resize_size(size[1]))
    s_crop, s_flip = _seeds(seed, 2)
    image = _resize(image, resize, antialias)
    image = tf.image.stateless_random_crop(image, [size[0], size[1], 3], s_crop)
    return random_flip(image, s_flip)


def multigrain_color_augment(image, seed, jitter=0.3, lighting=0.1):
    """MultiGrain "full" colour part: ColorJitter(0.3, 0.3, 0.3) then PCA lighting 0.1.

    One affine colour map (`folded_color_transform`) with parameters drawn from `seed`
    (`multigrain_color_params`). Takes and returns float32 pixel values in [0, 255].
    """
    params = multigrain_color_params(seed, 1, jitter, lighting)
    return folded_color_transform(tf.cast(image, tf.float32)[None], params, lighting)[0]


def multigrain_train_augment(image, seed, image_size=224, antialias=True):
    """MultiGrain "full" training augmentation on a decoded image.

    RandomResizedCrop(scale 0.08–1, ratio 3/4–4/3) → flip → ColorJitter 0.3 →
    PCA Lighting 0.1 (ImageNet eigen-decomposition) → clamp. Output float32 in [0, 255].

    The pipelines in `keras_cgd.data.batching` apply the same steps to whole batches:
    they decode each file once for all of its crops (only the region the crops cover,
    with `tf.io.decode_and_crop_jpeg`) and apply the colour map to the batch.

    Reference: Berman et al. 2019, MultiGrain, Table C.1.
    """
    size = check_image_size(image_size)
    s_crop, s_rest = _seeds(seed, 2)
    shape = tf.shape(image)
    win = random_resized_crop_window(s_crop, shape[0], shape[1])
    crop = tf.slice(image, [win[0], win[1], 0], [win[2], win[3], 3])
    return multigrain_after_crop(crop, s_rest, size, antialias)


def multigrain_after_crop(crop, seed, image_size, antialias=True):
    """Resize of a RandomResizedCrop window, then flip, jitter, lighting (MultiGrain)."""
    s_flip, s_col = _seeds(seed, 2)
    x = _resize(crop, image_size, antialias)
    x = random_flip(x, s_flip)
    return multigrain_color_augment(x, s_col)


def check_test_resize(image_size=None, longest_side=None):
    """Validates the sizes of `resize_for_test`; returns `(H, W)`, or None with `longest_side`."""
    if (image_size is None) == (longest_side is None):
        raise ValueError(
            "Exactly one of `image_size` and `longest_side` must be given. "
            f"Received: image_size={image_size!r}, longest_side={longest_side!r}"
        )
    if longest_side is not None:
        if not isinstance(longest_side, (int, np.integer)) or isinstance(longest_side, bool) or longest_side < 1:
            raise ValueError(
                "Invalid value received for argument `longest_side`. Expected a positive int. "
                f"Received: longest_side={longest_side!r}"
            )
        return None
    return check_image_size(image_size)


def resize_for_test(image, image_size=None, longest_side=None, center_crop=False, antialias=True):
    """Test-time resizing (no randomness).

    Exactly one of:
        - `image_size` (int or (H, W)), `center_crop=False`: resize to that size (CGD test);
        - `image_size=s`, `center_crop=True`: MultiGrain "square": shorter side to
          int(256 / 224 * s), then centre crop s × s;
        - `longest_side=s`: MultiGrain "rect": resize so that the longest side equals s,
          aspect ratio kept, no crop (output shape varies per image).

    Returns float32 pixel values in [0, 255] (the resize reads uint8 input directly:
    no full-size float copy).
    """
    size = check_test_resize(image_size, longest_side)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    if longest_side is not None:
        factor = float(longest_side) / tf.reduce_max(shape)
        new = tf.cast(tf.maximum(tf.round(shape * factor), 1.0), tf.int32)
        return tf.cast(tf.image.resize(image, new, method="bilinear", antialias=antialias), tf.float32)
    if not center_crop:
        return tf.cast(tf.image.resize(image, size, method="bilinear", antialias=antialias), tf.float32)
    short = float(int(256.0 / 224.0 * min(size)))
    factor = short / tf.reduce_min(shape)
    new = tf.maximum(tf.round(shape * factor), tf.constant([size[0], size[1]], tf.float32))
    new = tf.cast(new, tf.int32)
    image = tf.cast(tf.image.resize(image, new, method="bilinear", antialias=antialias), tf.float32)
    return tf.image.resize_with_crop_or_pad(image, size[0], size[1])
