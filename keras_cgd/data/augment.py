"""Image augmentations of CGD and MultiGrain, written with stateless `tf.image` ops.

TensorFlow-only module (it runs inside `tf.data` pipelines on either Keras backend).

Every random transform takes an explicit `seed` (an int32/int64 tensor of shape `(2,)`)
and uses `tf.random.stateless_*` ops, so that a pipeline is reproducible and two copies of
one image given different seeds are augmented independently (MultiGrain's repeated
augmentation).

Images in and out are RGB pixel values in [0, 255] (uint8 in, float32 out) and are
**not** normalised: mean/std normalisation happens inside the model.

Recipes:

- CGD (`naver/cgd`, `leftthomas/CGD`): `Resize((252, 252))` (aspect ratio not kept) →
  `RandomCrop(224)` → `RandomHorizontalFlip`. Sizes scale with `image_size`:
  resize = round(image_size * 252 / 224).
- MultiGrain "full" (`augmentations/transforms.py`, paper Table C.1):
  `RandomResizedCrop(image_size, scale=(0.08, 1), ratio=(3/4, 4/3))` → flip →
  `ColorJitter(0.3, 0.3, 0.3)` (random order) → AlexNet PCA `Lighting(0.1)` with the
  ImageNet eigenvalues/eigenvectors, which adds the colour noise and divides by 1.1 →
  clamp to [0, 1].
- Test time: resize to a fixed size; MultiGrain "square" (resize the shorter side to
  int(256 / 224 * s), centre crop s); MultiGrain "rect" (longest side = s*, no crop).
"""

import math

import numpy as np
import tensorflow as tf

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


def random_resized_crop_window(seed, height, width, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0)):
    """Samples a RandomResizedCrop window `(y, x, h, w)` as torchvision does.

    Up to 10 candidate windows with area fraction ~ U(scale) and log aspect ratio
    ~ U(log ratio) are drawn; the first one that fits is used, otherwise a centre crop
    with the aspect ratio clamped into `ratio`.

    Args:
        seed: int tensor of shape `(2,)`.
        height, width: scalar int tensors, size of the region to crop from.
        scale, ratio: the paper defaults (0.08, 1) and (3/4, 4/3).

    Returns:
        int32 tensor `[y, x, h, w]`.
    """
    s_area, s_ratio, s_offset = _seeds(seed, 3)
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    area = h * w
    target = area * tf.random.stateless_uniform([10], s_area, scale[0], scale[1])
    log_r = tf.random.stateless_uniform([10], s_ratio, math.log(ratio[0]), math.log(ratio[1]))
    r = tf.exp(log_r)
    cw = tf.round(tf.sqrt(target * r))
    ch = tf.round(tf.sqrt(target / r))
    ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = tf.argmax(tf.cast(ok, tf.int32), output_type=tf.int32)
    in_ratio = w / h
    fw = tf.where(in_ratio < ratio[0], w, tf.where(in_ratio > ratio[1], tf.round(h * ratio[1]), w))
    fh = tf.where(in_ratio < ratio[0], tf.round(w / ratio[0]), h)
    found = tf.reduce_any(ok)
    cw = tf.where(found, cw[first], fw)
    ch = tf.where(found, ch[first], fh)
    u = tf.random.stateless_uniform([2], s_offset)
    y = tf.where(found, tf.floor(u[0] * (h - ch + 1.0)), tf.floor((h - ch) / 2.0))
    x = tf.where(found, tf.floor(u[1] * (w - cw + 1.0)), tf.floor((w - cw) / 2.0))
    y = tf.clip_by_value(y, 0.0, h - ch)
    x = tf.clip_by_value(x, 0.0, w - cw)
    return tf.cast(tf.stack([y, x, ch, cw]), tf.int32)


def random_flip(image, seed):
    """Flips `image` left-right with probability 1/2 (stateless)."""
    return tf.image.stateless_random_flip_left_right(image, seed)


def _grayscale(image):
    # ITU-R 601-2 luma, as PIL / torchvision.
    weights = tf.constant([0.299, 0.587, 0.114], tf.float32)
    return tf.reduce_sum(image * weights, axis=-1, keepdims=True)


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


def _resize(image, size, antialias):
    return tf.image.resize(image, size, method="bilinear", antialias=antialias)


def cgd_train_augment(image, seed, image_size=224, antialias=False):
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
    image = _resize(tf.cast(image, tf.float32), resize, antialias)
    image = tf.image.stateless_random_crop(image, [size[0], size[1], 3], s_crop)
    return random_flip(image, s_flip)


def multigrain_color_augment(image, seed, jitter=0.3, lighting=0.1):
    """MultiGrain "full" colour part: ColorJitter(0.3, 0.3, 0.3) then PCA lighting 0.1.

    Takes and returns float32 pixel values in [0, 255].
    """
    s_jit, s_light = _seeds(seed, 2)
    x = tf.cast(image, tf.float32)
    if jitter:
        x = color_jitter(x, s_jit, jitter, jitter, jitter, max_value=255.0)
    if lighting:
        x = pca_lighting(x, s_light, lighting, max_value=255.0)
    return x


def multigrain_train_augment(image, seed, image_size=224, antialias=False):
    """MultiGrain "full" training augmentation on a decoded image.

    RandomResizedCrop(scale 0.08–1, ratio 3/4–4/3) → flip → ColorJitter 0.3 →
    PCA Lighting 0.1 (ImageNet eigen-decomposition) → clamp. Output float32 in [0, 255].

    The pipelines in `keras_cgd.data.batching` apply the same steps but decode only the
    crop window of JPEG files (`tf.io.decode_and_crop_jpeg`), which is faster.

    Reference: Berman et al. 2019, MultiGrain, Table C.1.
    """
    size = check_image_size(image_size)
    s_crop, s_rest = _seeds(seed, 2)
    shape = tf.shape(image)
    win = random_resized_crop_window(s_crop, shape[0], shape[1])
    crop = tf.slice(image, [win[0], win[1], 0], [win[2], win[3], 3])
    return multigrain_after_crop(crop, s_rest, size, antialias)


def multigrain_after_crop(crop, seed, image_size, antialias=False):
    """Resize of a RandomResizedCrop window, then flip, jitter, lighting (MultiGrain)."""
    s_flip, s_col = _seeds(seed, 2)
    x = _resize(tf.cast(crop, tf.float32), image_size, antialias)
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

    Returns float32 pixel values in [0, 255].
    """
    size = check_test_resize(image_size, longest_side)
    image = tf.cast(image, tf.float32)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    if longest_side is not None:
        factor = float(longest_side) / tf.reduce_max(shape)
        new = tf.cast(tf.maximum(tf.round(shape * factor), 1.0), tf.int32)
        return _resize(image, new, antialias)
    if not center_crop:
        return _resize(image, size, antialias)
    short = float(int(256.0 / 224.0 * min(size)))
    factor = short / tf.reduce_min(shape)
    new = tf.maximum(tf.round(shape * factor), tf.constant([size[0], size[1]], tf.float32))
    new = tf.cast(new, tf.int32)
    image = _resize(image, new, antialias)
    return tf.image.resize_with_crop_or_pad(image, size[0], size[1])
