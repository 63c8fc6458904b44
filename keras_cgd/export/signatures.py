"""Serving functions of an exported model: guarded image decoding + forward pass.

TensorFlow-only module. Everything here is built from core TF ops
(`tf.io.decode_image`, `tf.image.extract_jpeg_shape`, `tf.image.resize`,
`tf.strings`), so the SavedModel runs in TensorFlow Serving, which has no
Python. Functions are written without autograph (Keras' `ExportArchive`
traces endpoints with `autograph=False`): control flow is `tf.cond`/`tf.map_fn`.
"""

import tensorflow as tf

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"


def image_header_shape(contents):
    """`[height, width]` (int64) declared in a JPEG or PNG header, without decoding.

    JPEG: `tf.image.extract_jpeg_shape` (reads the SOF marker). PNG: the IHDR
    chunk, big-endian uint32 width then height at bytes 16–23. Any other format
    returns `[-1, -1]`.

    Args:
        contents: scalar `tf.string`, the encoded file.

    Returns:
        int64 tensor of shape `(2,)`.
    """
    is_png = tf.equal(tf.strings.substr(contents, 0, 8), _PNG_SIGNATURE)
    is_jpeg = tf.equal(tf.strings.substr(contents, 0, 3), _JPEG_SIGNATURE)

    def png_shape():
        padded = tf.strings.join([contents, b"\x00" * 24])  # a truncated file reads zeros
        raw = tf.cast(tf.io.decode_raw(tf.strings.substr(padded, 16, 8), tf.uint8), tf.int64)
        weights = tf.constant([1 << 24, 1 << 16, 1 << 8, 1], tf.int64)
        width = tf.reduce_sum(raw[:4] * weights)
        height = tf.reduce_sum(raw[4:] * weights)
        return tf.stack([height, width])

    def jpeg_shape():
        return tf.cast(tf.image.extract_jpeg_shape(contents)[:2], tf.int64)

    def unknown():
        return tf.constant([-1, -1], tf.int64)

    return tf.cond(is_png, png_shape, lambda: tf.cond(is_jpeg, jpeg_shape, unknown))


def _check_pixels(shape, max_image_pixels):
    """Assert op: 1 ≤ height × width ≤ `max_image_pixels` for a header `shape`."""
    pixels = tf.reduce_prod(tf.cast(shape, tf.float64))  # no int64 overflow
    return tf.debugging.Assert(
        tf.logical_and(tf.reduce_all(shape > 0), pixels <= max_image_pixels),
        [
            f"Invalid image: more than max_image_pixels={max_image_pixels} pixels "
            "(or none) declared in its header; height, width =",
            shape[0],
            shape[1],
        ],
    )


def decode_image_guarded(contents, image_size, max_image_pixels, antialias=True):
    """Decode one JPEG/PNG to float32 `(H, W, 3)` pixels in [0, 255], guarded.

    Checks, before the full decode: the bytes start like a JPEG or PNG file,
    and the header declares 1 ≤ height × width ≤ `max_image_pixels`. A failed
    check raises `InvalidArgumentError` (TF Serving: HTTP 400). Then
    `tf.io.decode_image(channels=3, expand_animations=False)` (uint8) and
    `tf.image.resize(image, image_size, "bilinear", antialias)`, which computes
    in float32 and returns float32 as evaluation does
    (`keras_cgd.data.resize_for_test`), without a full-size float32 copy.

    Args:
        contents: scalar `tf.string`.
        image_size: `[H, W]` python ints.
        max_image_pixels: python int.
        antialias: bool.

    Returns:
        float32 tensor `(H, W, 3)`.
    """
    known = tf.logical_or(
        tf.equal(tf.strings.substr(contents, 0, 8), _PNG_SIGNATURE),
        tf.equal(tf.strings.substr(contents, 0, 3), _JPEG_SIGNATURE),
    )
    # The first bytes are shown as numbers: raw bytes in an error message are not
    # valid UTF-8 for most formats (WebP, GIF, ...) and break JSON error answers.
    first_bytes = tf.io.decode_raw(
        tf.strings.substr(tf.strings.join([contents, b"\x00" * 8]), 0, 8), tf.uint8
    )
    check_format = tf.debugging.Assert(
        known,
        [
            "Invalid image: expected JPEG or PNG bytes (only JPEG and PNG images are "
            "accepted); received bytes starting with (decimal values)",
            first_bytes,
        ],
        summarize=8,
    )
    with tf.control_dependencies([check_format]):
        shape = image_header_shape(contents)
    with tf.control_dependencies([_check_pixels(shape, max_image_pixels)]):
        image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    image = tf.image.resize(image, image_size, method="bilinear", antialias=antialias)
    return tf.cast(image, tf.float32)


def decode_images(image_bytes, image_size, max_image_pixels, max_request_pixels=None,
                  antialias=True):
    """Batch version of `decode_image_guarded`: `[N]` string → `(N, H, W, 3)` float32.

    Before any decoding, the costs of the images must sum to at most
    `max_request_pixels` (None: no per-request budget), else
    `InvalidArgumentError`; an image costs the pixels its header declares, but
    at least `H × W` (what it becomes after the resize), so that thousands of
    1 × 1 images are not free. Images are decoded one at a time
    (`parallel_iterations=1`), so at most one full-size image is in memory.
    """
    h, w = image_size
    checks = []
    if max_request_pixels is not None:
        shapes = tf.map_fn(
            image_header_shape, image_bytes, fn_output_signature=tf.TensorSpec([2], tf.int64)
        )
        pixels = tf.reduce_prod(tf.maximum(tf.cast(shapes, tf.float64), 0.0), axis=1)
        # An image over max_image_pixels fails its own check before it is decoded.
        cost = tf.maximum(tf.where(pixels <= max_image_pixels, pixels, 0.0), float(h * w))
        total = tf.reduce_sum(cost)
        checks.append(tf.debugging.Assert(
            total <= max_request_pixels,
            [
                f"Invalid request: its images cost more than max_request_pixels="
                f"{max_request_pixels} pixels (each counts its header's width x height, at "
                f"least {h * w}); send fewer or smaller images. Cost =",
                tf.cast(total, tf.int64),
            ],
        ))
    with tf.control_dependencies(checks):
        image_bytes = tf.identity(image_bytes)
    return tf.map_fn(
        lambda b: decode_image_guarded(b, image_size, max_image_pixels, antialias),
        image_bytes,
        fn_output_signature=tf.TensorSpec([h, w, 3], tf.float32),
        parallel_iterations=1,
    )


def make_serving_functions(model, image_size, max_image_pixels, antialias=True,
                           max_request_pixels=None):
    """The `serving_default` (bytes) and `serving_pixels` (float) functions.

    Returns a dict with both functions and `output_dims` (filled on tracing):
    `{name: last dim}` of the float32 outputs.
    """
    output_dims = {}

    def forward(pixels):
        outputs = model(pixels, training=False)
        if not isinstance(outputs, dict):
            outputs = {"embedding": outputs}
        if "embedding" not in outputs:
            raise ValueError(
                "The model must return a dict with an 'embedding' key or a single "
                f"embedding tensor. Received output keys: {sorted(outputs)}"
            )
        result = {name: tf.cast(value, tf.float32) for name, value in outputs.items()}
        output_dims.update({name: int(value.shape[-1]) for name, value in result.items()})
        return result

    def serving_bytes(image_bytes):
        return forward(decode_images(image_bytes, image_size, max_image_pixels,
                                     max_request_pixels, antialias))

    def serving_pixels(images):
        return forward(images)

    return {
        "serving_default": serving_bytes,
        "serving_pixels": serving_pixels,
        "output_dims": output_dims,
    }
