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
