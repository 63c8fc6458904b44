"""Property-based fuzzing (Hypothesis) of the request parser and the image-bytes decoder.

- `rest.parse_json_body` / `rest.read_predict_inputs` (the one request validator): any
  body and any JSON document give arrays within the limits or a 4xx `RestError`, never
  another exception (which the server would answer with a 500).
- `rest.image_header` (the server's pre-decode check) against TensorFlow: for mutated
  real JPEG/PNG files, whatever Python accepts, `tf.io.decode_image` decodes to the
  declared size or refuses; whatever Python refuses, TensorFlow cannot decode.
- `decode_image_guarded` (the exported signature's decoder): any bytes give a float32
  `(H, W, 3)` image in [0, 255] or `InvalidArgumentError`, nothing else.

Deterministic (`derandomize=True`) so that CI failures reproduce.
"""

import base64
import json

import numpy as np
import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from keras_cgd.serving import rest
from tests.reliability.conftest import encode

FUZZ = settings(max_examples=200, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
FUZZ_TF = settings(max_examples=120, deadline=None, database=None, derandomize=True,
                   suppress_health_check=[HealthCheck.too_slow])

LIMITS = rest.RequestLimits(max_instances=6, max_decoded_bytes=2000, max_image_pixels=4096,
                            max_request_pixels=10000, min_image_pixels=64)
SPECS = [{"image_bytes": "string"}, {"images": "float32"}, {"a": "int32", "b": "string"}]

_rng = np.random.RandomState(0)
SEEDS = {
    "png": encode(_rng.randint(0, 256, (9, 13, 3), dtype=np.uint8)),
    "jpeg": encode(_rng.randint(0, 256, (11, 7, 3), dtype=np.uint8), "JPEG"),
    "jpeg_progressive": encode(_rng.randint(0, 256, (16, 24, 3), dtype=np.uint8), "JPEG",
                               progressive=True),
    "png_gray": encode(_rng.randint(0, 256, (5, 6), dtype=np.uint8)),
}


def _b64_values():
    return st.binary(max_size=120).map(lambda b: {"b64": base64.b64encode(b).decode()})


_SEED_B64 = st.sampled_from(sorted(SEEDS)).map(
    lambda k: {"b64": base64.b64encode(SEEDS[k]).decode()})

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
    | _b64_values() | _SEED_B64 | st.just({"b64": "@@"}),
    lambda children: st.lists(children, max_size=8)
    | st.dictionaries(st.sampled_from(["image_bytes", "images", "a", "b", "b64", "x"]),
                      children, max_size=3),
    max_leaves=40,
)
_image_values = _SEED_B64 | _b64_values() | st.sampled_from(
    [{"b64": base64.b64encode(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + size).decode()}
     for size in (b"\x00\x00\x01\x00\x00\x00\x01\x00", b"\xff\xff\xff\xff\x00\x00\x00\x01",
                  b"\x00\x00\x00\x00\x00\x00\x00\x05")])
documents = st.dictionaries(
    st.sampled_from(["instances", "inputs", "signature_name", "other"]), json_values,
    max_size=3,
) | st.builds(
    lambda key, images: {key: images},
    st.sampled_from(["instances", "inputs"]),
    st.lists(_image_values | st.dictionaries(st.just("image_bytes"), _image_values,
                                             min_size=1), min_size=1, max_size=8),
)


def _check_result(tensors, specs):
    assert set(tensors) == set(specs)
    decoded = 0
    for name, array in tensors.items():
        assert isinstance(array, np.ndarray)
        if array.ndim:
            assert array.shape[0] <= LIMITS.max_instances
        if specs[name] == "string":
            decoded += sum(len(x) for x in array.reshape(-1))
            assert all(isinstance(x, bytes) for x in array.reshape(-1))
    assert decoded <= LIMITS.max_decoded_bytes


@FUZZ
@given(body=st.binary(max_size=300) | documents.map(lambda d: json.dumps(d).encode()))
def test_parse_json_body_never_raises_anything_but_400(body):
    try:
        doc = rest.parse_json_body(body)
    except rest.RestError as e:
        assert e.status == 400 and e.message
        return
    assert isinstance(doc, dict)


@FUZZ
@given(method=st.sampled_from(["GET", "POST", "PUT"]),
       path=st.text(max_size=60).map(lambda t: "/v1/models/" + t)
       | st.integers(0, 6000).map(lambda n: "/v1/models/m/versions/" + "9" * n)
       | st.integers(0, 6000).map(lambda n: "/v1/models/m/versions/" + "0" * n + "7:predict"))
def test_route_never_raises_anything_but_400(method, path):
    try:
        target = rest.route(method, path)
    except rest.RestError as e:
        assert e.status == 400 and len(e.message) < 500, e.message
        return
    if target["version"] is not None:
        assert 0 <= target["version"] <= rest.INT64_MAX


@FUZZ
@given(doc=documents, spec_index=st.integers(0, len(SPECS) - 1))
def test_read_predict_inputs_never_raises_anything_but_4xx(doc, spec_index):
    specs = SPECS[spec_index]
    images = {"image_bytes"} if "image_bytes" in specs else set()
    try:
        tensors, _ = rest.read_predict_inputs(doc, specs, LIMITS, images)
    except rest.RestError as e:
        assert 400 <= e.status < 500 and e.message, e.message
        json.dumps({"error": e.message})  # always a valid JSON answer
        return
    _check_result(tensors, specs)
    for name in images:
        total = 0
        for data in tensors[name].reshape(-1):  # every accepted image has a sane header
            fmt, height, width = rest.image_header(data)
            assert fmt in ("png", "jpeg") and 1 <= height * width <= LIMITS.max_image_pixels
            total += max(height * width, LIMITS.min_image_pixels)
        assert total <= LIMITS.max_request_pixels


def _mutate(data, edits, cut):
    data = bytearray(data)
    for position, value in edits:
        data[position % len(data)] = value
    return bytes(data[:cut]) if cut else bytes(data)


mutated_images = st.builds(
    _mutate,
    st.sampled_from(sorted(SEEDS)).map(SEEDS.get),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=4),
    st.none() | st.integers(0, 400),
)


@FUZZ
@given(data=st.binary(max_size=200) | mutated_images
       | st.binary(max_size=60).map(lambda b: b"\xff\xd8\xff" + b)
       | st.binary(max_size=60).map(lambda b: b"\x89PNG\r\n\x1a\n" + b))
def test_image_header_only_raises_value_error(data):
    try:
        fmt, height, width = rest.image_header(data)
    except ValueError as e:
        assert str(e)
        return
    assert fmt in ("png", "jpeg")
    assert 0 <= height < 2**32 and 0 <= width < 2**32


@FUZZ_TF
@given(data=mutated_images)
def test_image_header_agrees_with_tensorflow_decoder(data):
    """Differential: the pure-Python header check against TensorFlow's own decoder."""
    tf = pytest.importorskip("tensorflow")
    try:
        _, height, width = rest.image_header(data)
    except ValueError:
        height = width = None
    try:
        image = tf.io.decode_image(data, channels=3, expand_animations=False).numpy()
    except tf.errors.InvalidArgumentError:
        return  # TensorFlow refuses: the server may have accepted the header only
    if data[:3] == b"\xff\xd8\xff" or data[:8] == b"\x89PNG\r\n\x1a\n":
        assert height is not None, "TensorFlow decodes what the server refuses"
        assert image.shape == (height, width, 3)


@pytest.fixture(scope="module")
def guarded_decoder():
    tf = pytest.importorskip("tensorflow")
    from keras_cgd.export.signatures import decode_image_guarded

    fn = tf.function(lambda b: decode_image_guarded(b, [8, 8], max_image_pixels=4096),
                     input_signature=[tf.TensorSpec([], tf.string)])
    return tf, fn


@FUZZ_TF
@given(data=mutated_images | st.binary(max_size=100))
def test_guarded_decoder_gives_pixels_or_invalid_argument(guarded_decoder, data):
    tf, fn = guarded_decoder
    try:
        image = fn(tf.constant(data)).numpy()
    except tf.errors.InvalidArgumentError as e:
        assert e.message
        return
    assert image.shape == (8, 8, 3) and image.dtype == np.float32
    assert np.isfinite(image).all() and image.min() >= 0 and image.max() <= 255
