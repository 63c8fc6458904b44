"""keras_cgd.serving.Client against the reference server and a loopback stub."""

import json
import threading

import numpy as np
import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Response

from keras_cgd.serving import Client
from keras_cgd.serving import ServingError
from tests.serving.test_server import reference_embedding


def test_embed_paths_bytes_and_arrays_in_order(server, exported, images, tmp_path):
    model, _ = exported
    path = tmp_path / "a.jpg"
    path.write_bytes(images["jpeg"])
    pixels = np.random.RandomState(5).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    client = Client(server, "cgd", batch_size=2)
    got = client.embed([images["png"], str(path), pixels[0], images["png_rect"], pixels[1]])
    assert got.shape == (5, 96) and got.dtype == np.float32
    want_bytes = reference_embedding(
        model, [images["png"], images["jpeg"], images["png_rect"]]
    )["embedding"]
    want_pixels = model.predict(pixels, verbose=0)["embedding"]
    np.testing.assert_allclose(got[[0, 1, 3]], want_bytes, atol=1e-5)
    np.testing.assert_allclose(got[[2, 4]], want_pixels, atol=1e-5)
    np.testing.assert_allclose(Client(server, "cgd").embed(pixels), want_pixels, atol=1e-5)
    logits = client.embed(images["png"], output="logits")
    assert logits.shape == (1, 5)


def test_client_errors(server, images):
    with pytest.raises(ServingError) as info:
        Client(server, "nope").embed([images["png"]])
    assert info.value.status_code == 404 and "Latest(nope)" in info.value.message
    with pytest.raises(ServingError) as info:
        Client(server, "cgd").embed([b"not an image"])
    assert info.value.status_code == 400
    with pytest.raises(ValueError, match="output='nope'"):
        Client(server, "cgd").embed([images["png"]], output="nope")


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"url": "localhost:8501"}, "url="),
        ({"model_name": ""}, "model_name="),
        ({"batch_size": 0}, "batch_size=0"),
        ({"version": 1, "label": "stable"}, "exclusive"),
        ({"version": -2}, "version=-2"),
    ],
)
def test_invalid_arguments(kwargs, fragment):
    args = {"url": "http://127.0.0.1:1", "model_name": "m", **kwargs}
    with pytest.raises(ValueError, match=fragment):
        Client(**args)


def test_invalid_images_argument():
    client = Client("http://127.0.0.1:1", "m")
    with pytest.raises(ValueError, match=r"position 0: ndarray of shape \(4, 4\)"):
        client.embed([np.zeros((4, 4))])


@pytest.fixture
def flaky_stub():
    """A loopback server answering 503 `failures` times, then a fixed embedding."""
    state = {"calls": 0, "failures": 2, "paths": []}

    def app(environ, start_response):
        state["calls"] += 1
        state["paths"].append(environ["PATH_INFO"])
        if state["calls"] <= state["failures"]:
            response = Response(json.dumps({"error": "loading"}), 503,
                                content_type="application/json")
        else:
            body = json.loads(environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"])))
            n = len(body["inputs"])
            response = Response(json.dumps({"outputs": {"embedding": [[1.0, 0.0]] * n}}),
                                content_type="application/json")
        return response(environ, start_response)

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_retries_on_503(flaky_stub):
    url, state = flaky_stub
    client = Client(url, "m", version=3, max_retries=3, backoff=0.01)
    got = client.embed([b"a", b"b", b"c"])
    np.testing.assert_array_equal(got, [[1.0, 0.0]] * 3)
    assert state["calls"] == 3
    assert state["paths"][-1] == "/v1/models/m/versions/3:predict"


def test_gives_up_after_max_retries(flaky_stub):
    url, state = flaky_stub
    state["failures"] = 100
    with pytest.raises(ServingError) as info:
        Client(url, "m", max_retries=2, backoff=0.01).embed([b"a"])
    assert info.value.status_code == 503 and state["calls"] == 3


@pytest.fixture
def limited_stub():
    """A loopback server answering 413 above `limit` bytes, else one row per input.

    The row is `[mean of the pixels, 0]` or `[number of decoded bytes, 0]`.
    """
    import base64

    state = {"limit": 40_000, "sizes": []}

    def app(environ, start_response):
        raw = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
        state["sizes"].append(len(raw))
        if len(raw) > state["limit"]:
            response = Response(json.dumps({"error": "Request body exceeds the limit"}), 413,
                                content_type="application/json")
        else:
            rows = []
            for value in json.loads(raw)["inputs"]:
                if isinstance(value, dict):
                    rows.append([float(len(base64.b64decode(value["b64"]))), 0.0])
                else:
                    rows.append([float(np.mean(np.asarray(value, np.float64))), 0.0])
            response = Response(json.dumps({"outputs": {"embedding": rows}}),
                                content_type="application/json")
        return response(environ, start_response)

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_batches_are_split_to_fit_max_request_bytes(limited_stub):
    url, state = limited_stub
    rng = np.random.RandomState(0)
    pixels = rng.uniform(0, 255, (7, 16, 16, 3)).astype(np.float32)  # ~15 KB of JSON each
    blobs = [bytes(rng.randint(0, 256, n, dtype=np.uint8)) for n in (9000, 100, 12000, 7000)]
    client = Client(url, "m", batch_size=32, max_request_bytes=state["limit"])
    got = client.embed([blobs[0], pixels[0], blobs[1], *pixels[1:], blobs[2], blobs[3]])
    want_pixels = pixels.astype(np.float64).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(got[:, 0], [9000, want_pixels[0], 100, *want_pixels[1:],
                                           12000, 7000], rtol=1e-6)
    assert max(state["sizes"]) <= state["limit"], state["sizes"]
    assert len(state["sizes"]) >= 4  # ~38 KB of b64, then ~100 KB of pixels: split

    # The old single request of everything would not have fit.
    state["sizes"].clear()
    with pytest.raises(ServingError) as info:
        Client(url, "m", max_request_bytes=10**9, max_retries=2).embed(pixels)
    assert info.value.status_code == 413 and len(state["sizes"]) == 1  # 413 is not retried


def test_image_over_max_request_bytes_goes_alone(limited_stub):
    url, state = limited_stub
    state["limit"] = 2000
    with pytest.raises(ServingError) as info:
        Client(url, "m", max_request_bytes=2000).embed([b"a", b"x" * 3000, b"b"])
    assert info.value.status_code == 413
    assert len(state["sizes"]) == 2 and state["sizes"][1] > 2000 > state["sizes"][0]


def test_invalid_max_request_bytes():
    with pytest.raises(ValueError, match="max_request_bytes=0"):
        Client("http://127.0.0.1:1", "m", max_request_bytes=0)
