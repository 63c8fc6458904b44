"""Replays of the probe's serving findings (issue 14, items 1, 6 and 7) against `keras-cgd serve`.

Each test sends what the probe sent and checks the answer: a 4xx `{"error": ...}` in
plain words (or a closed connection), quickly, with the server still serving. Every
bound is reached with the small limits of the `server` fixture (see conftest).
"""

import base64
import json
import socket
import threading
import time

import numpy as np
import pytest
import requests
import tensorflow as tf

from tests.reliability.conftest import MAX_BATCH_SIZE
from tests.reliability.conftest import MAX_DECODED_BYTES
from tests.reliability.conftest import MAX_REQUEST_PIXELS
from tests.reliability.conftest import REQUEST_TIMEOUT_S
from tests.reliability.conftest import SIZE
from tests.reliability.conftest import encode
from tests.reliability.conftest import jpeg_declaring
from tests.reliability.conftest import tf_backend_only

pytestmark = tf_backend_only

PREDICT = "/v1/models/cgd:predict"
GRAPH_TEXT = ("Graph execution", "Detected at node", "{{node", "[Op:", "function_node")


def b64(data):
    return {"b64": base64.b64encode(data).decode("ascii")}


def tiny_png():
    return encode(np.full((1, 1, 3), 7, np.uint8))


def check_4xx(response, status, *fragments):
    assert response.status_code == status, response.text[:500]
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"], body
    for fragment in fragments:
        assert fragment in body["error"], body["error"]
    for text in GRAPH_TEXT:
        assert text not in body["error"], body["error"]
    return body["error"]


def still_serving(url):
    r = requests.post(url + PREDICT, json={"instances": [b64(tiny_png())]}, timeout=30)
    assert r.status_code == 200, r.text[:300]


def raw_exchange(port, data, read_timeout=10.0, pause_after_send=None):
    """Send raw bytes; return `(response bytes, seconds until the server answered or closed)`."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as s:
        start = time.monotonic()
        if data:
            s.sendall(data)
        if pause_after_send:
            time.sleep(pause_after_send)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks), time.monotonic() - start


def parse_raw(response):
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, head.decode("latin-1"), json.loads(body)


def reference_embeddings(model, contents):
    """Independent reference: tf decode + bilinear antialiased resize, then predict."""
    images = [
        tf.image.resize(tf.cast(tf.io.decode_image(c, channels=3, expand_animations=False),
                                tf.float32), (SIZE, SIZE), antialias=True)
        for c in contents
    ]
    return model.predict(np.stack(images), verbose=0)["embedding"]


# --- item 1: one request's work is bounded before decoding -----------------------------


def test_twenty_thousand_tiny_pngs_are_refused_before_decoding(server):
    """Item 1: 20,000 × 1×1 PNG (2 MB) grew the server by 0.4 MB an image and killed it."""
    body = json.dumps({"instances": [b64(tiny_png())] * 20000})
    assert len(body) < 3_000_000
    r = requests.post(server.url + PREDICT, data=body, timeout=20)
    check_4xx(r, 400, "20000 instances", "max_instances=256")
    still_serving(server.url)
    assert server.alive()


def test_tiny_images_cost_the_model_image_size(server):
    """Item 1: each image costs at least 64 × 64 pixels, so 101 1×1 PNGs pass the budget."""
    per_image = SIZE * SIZE
    count = MAX_REQUEST_PIXELS // per_image + 1  # 101, well under max_instances
    r = requests.post(server.url + PREDICT, json={"instances": [b64(tiny_png())] * count},
                      timeout=30)
    check_4xx(r, 400, f"max_request_pixels={MAX_REQUEST_PIXELS}",
              f"cost {count * per_image} pixels", f"at least {per_image}")
    r = requests.post(server.url + PREDICT,
                      json={"instances": [b64(tiny_png())] * (count - 1)}, timeout=60)
    assert r.status_code == 200, r.text[:300]
    assert len(r.json()["predictions"]) == count - 1


def test_decoded_bytes_are_bounded_before_decoding(server):
    payload = b"\x00" * (MAX_DECODED_BYTES + 3)
    r = requests.post(server.url + PREDICT, json={"instances": [b64(payload)]}, timeout=30)
    check_4xx(r, 400, f"max_decoded_bytes={MAX_DECODED_BYTES}")


def test_model_runs_in_chunks_with_the_same_results(server, exported):
    """A request of 2.5 × max_batch_size images equals the model on all of them at once."""
    model, _ = exported
    rng = np.random.RandomState(5)
    contents = [encode(rng.randint(0, 256, (20 + i % 7, 30, 3), dtype=np.uint8))
                for i in range(int(2.5 * MAX_BATCH_SIZE))]
    r = requests.post(server.url + PREDICT, json={"instances": [b64(c) for c in contents]},
                      timeout=60)
    assert r.status_code == 200, r.text[:300]
    got = np.array([p["embedding"] for p in r.json()["predictions"]], np.float32)
    np.testing.assert_allclose(got, reference_embeddings(model, contents), atol=1e-5)


# --- item 6: plain-words 4xx for every client error -------------------------------------


def test_webp_and_non_utf8_bytes_name_the_instance(server):
    """Item 6: WebP got `'utf-8' codec can't decode byte ...`."""
    rng = np.random.RandomState(0)
    webp = encode(rng.randint(0, 256, (32, 32, 3), dtype=np.uint8), "WEBP")
    good = encode(rng.randint(0, 256, (32, 32, 3), dtype=np.uint8))
    r = requests.post(server.url + PREDICT, json={"instances": [b64(good), b64(webp)]},
                      timeout=30)
    check_4xx(r, 400, "instance 1 of input 'image_bytes'", "WebP",
              "only JPEG and PNG images are accepted")
    garbage = bytes([0xFF, 0xFE, 0x80, 0x81, 0xC3, 0x28]) * 10
    r = requests.post(server.url + PREDICT,
                      json={"inputs": [b64(good), b64(good), b64(garbage)]}, timeout=30)
    check_4xx(r, 400, "instance 2 of input 'image_bytes'", "not an image",
              "only JPEG and PNG images are accepted")


def test_corrupt_image_error_has_no_graph_text(server):
    """Item 6: a decode failure leaked `Graph execution error: Detected at node ...`."""
    rng = np.random.RandomState(1)
    jpeg = encode(rng.randint(0, 256, (48, 48, 3), dtype=np.uint8), "JPEG")
    truncated = jpeg[: len(jpeg) // 3]
    png = encode(rng.randint(0, 256, (48, 48, 3), dtype=np.uint8))
    for bad, kind in ((truncated, "JPEG"), (png[:60], "PNG")):
        instances = [b64(png)] * 3 + [b64(bad)]
        r = requests.post(server.url + PREDICT, json={"instances": instances}, timeout=30)
        check_4xx(r, 400, "instance 3 of input 'image_bytes'", "cannot be decoded", kind)


def test_jpeg_declaring_7000_by_7000_is_refused(server):
    """Item 6: a 633-byte JPEG declaring 7000 × 7000 (49 MP) was decoded."""
    data = jpeg_declaring(7000, 7000)
    assert len(data) < 1000
    r = requests.post(server.url + PREDICT, json={"instances": [b64(data)]}, timeout=30)
    check_4xx(r, 400, "instance 0", "7000 × 7000 = 49000000 pixels", "max_image_pixels=25000000")


@pytest.mark.parametrize("method, path", [
    ("GET", "/v1/models/cgd/versions/" + "9" * 5000),
    ("POST", "/v1/models/cgd/versions/" + "9" * 5000 + ":predict"),
    ("GET", "/v1/models/cgd/versions/9223372036854775808"),
])
def test_huge_version_is_400(server, method, path):
    """Item 6: a 5,000-digit version gave 500 with Python's int() error."""
    r = requests.request(method, server.url + path, json={"instances": [1]}, timeout=30)
    check_4xx(r, 400, "Failed to convert version")


def test_bad_chunk_header_is_400(server):
    """Item 6: a bad chunk header gave 500 `Internal error: OSError: Invalid chunk header`."""
    request = (b"POST /v1/models/cgd:predict HTTP/1.1\r\nHost: x\r\n"
               b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n")
    response, _ = raw_exchange(server.port, request)
    status, _, body = parse_raw(response)
    assert status == 400 and "Malformed chunked request body" in body["error"], body


def test_malformed_request_line_is_json_400(server):
    response, _ = raw_exchange(server.port, b"GARBAGE\r\n\r\n")
    status, head, body = parse_raw(response)
    assert status == 400 and "application/json" in head and list(body) == ["error"]


def test_client_disconnects_are_not_logged_as_500(server):
    """Item 6: a client that closed mid-body was logged as a 500 with a traceback."""
    before = server.log_text()
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall(b"POST /v1/models/cgd:predict HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Length: 5000\r\n\r\n{\"instances\": [")
        with socket.create_connection(("127.0.0.1", server.port)) as s:  # reset mid-body
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.sendall(b"POST /v1/models/cgd:predict HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Length: 5000\r\n\r\n{\"in")
    still_serving(server.url)
    time.sleep(0.5)
    new = server.log_text()[len(before):]
    assert "Traceback" not in new and "Internal error" not in new, new[-3000:]


# --- item 7: socket timeouts and bounded threads -------------------------------------


def test_idle_connection_is_closed(server):
    """Item 7: an idle connection stayed open indefinitely."""
    response, elapsed = raw_exchange(server.port, b"", read_timeout=10 * REQUEST_TIMEOUT_S)
    assert response == b"" and elapsed < 5 * REQUEST_TIMEOUT_S, (response, elapsed)


def test_short_body_gets_408_within_the_timeout(server):
    """Item 7: a Content-Length larger than the body held a thread until the client gave up."""
    request = (b"POST /v1/models/cgd:predict HTTP/1.1\r\nHost: x\r\n"
               b"Content-Length: 1000\r\n\r\n{\"instances\": [")
    response, elapsed = raw_exchange(server.port, request, read_timeout=10 * REQUEST_TIMEOUT_S)
    status, _, body = parse_raw(response)
    assert status == 408 and "request timeout" in body["error"], body
    assert elapsed < 5 * REQUEST_TIMEOUT_S, elapsed


def test_slow_headers_cannot_hold_a_thread(server):
    """One header byte at a time, each within the per-read timeout, still ends at the deadline."""
    closed = threading.Event()

    def trickle():
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
            s.sendall(b"GET /v1/models/cgd HTTP/1.1\r\n")
            try:
                for _ in range(int(20 * REQUEST_TIMEOUT_S / 0.2)):
                    s.sendall(b"X")
                    time.sleep(0.2)
            except OSError:  # the server closed the connection
                closed.set()

    start = time.monotonic()
    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert closed.is_set(), "the server kept a trickling connection open"
    assert time.monotonic() - start < 10 * REQUEST_TIMEOUT_S


def test_full_pool_answers_503_with_retry_after(exported):
    """Bounded threads: one thread and a queue of one; the third connection gets 503 at once."""
    from keras_cgd.serving.server import make_server

    _, base = exported
    server, _ = make_server(str(base), port=0, num_threads=1, queue_size=1, request_timeout=20)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    port = server.server_port

    def wait_for(active, queued):
        deadline = time.monotonic() + 30
        while ((server._active, server._queue.qsize()) != (active, queued)
               and time.monotonic() < deadline):
            time.sleep(0.02)
        assert (server._active, server._queue.qsize()) == (active, queued)

    holders = []
    try:
        holders.append(socket.create_connection(("127.0.0.1", port)))
        wait_for(1, 0)  # the first is taken by the thread (it waits for a request line) ...
        holders.append(socket.create_connection(("127.0.0.1", port)))
        wait_for(1, 1)  # ... and the second waits in the queue
        response, elapsed = raw_exchange(port, b"GET /v1/models/cgd HTTP/1.1\r\nHost: x\r\n\r\n")
        status, head, body = parse_raw(response)
        assert status == 503 and "Retry-After: 1" in head, head
        assert "Server busy" in body["error"] and elapsed < 5, (body, elapsed)
    finally:
        for s in holders:
            s.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the thread is free again once the holders close
        r = requests.get(f"http://127.0.0.1:{port}/v1/models/cgd", timeout=10)
        if r.status_code == 200:
            break
        time.sleep(0.1)
    assert r.status_code == 200, r.text
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.mark.parametrize("port", [-1, 99999, 2**16])
def test_serve_port_out_of_range_is_a_clear_error(exported, port, capsys):
    """Item 8 (serve): `--port -1` gave a traceback and `--port 99999` bound a random port."""
    from keras_cgd.serving import server as server_lib

    _, base = exported
    with pytest.raises(ValueError, match=rf"argument `port`. Expected an int in \[0, 65535\].*"
                                         rf"Received: port={port}"):
        server_lib.make_server(str(base), port=port)
    assert server_lib.main([str(base), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"Received: port={port}" in err, err
