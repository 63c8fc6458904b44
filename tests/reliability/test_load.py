"""Bounded load test (issue 14 acceptance): 16 well-behaved clients keep getting answers
while one client sends the 20,000-image request and malformed bodies.

Against `keras-cgd serve` on 127.0.0.1 (the `server` fixture). Bounded in count (16 × 6
requests; the attacker's list once) and in time (every socket has a timeout, every
thread is joined with a deadline); it checks answers, not times (the latency figures
are in `benchmarks/serving_attack.py`).
"""

import base64
import json
import socket
import threading
import time

import numpy as np
import requests

from tests.reliability.conftest import encode
from tests.reliability.conftest import tf_backend_only

pytestmark = tf_backend_only

CLIENTS = 16
REQUESTS_PER_CLIENT = 6
PREDICT = "/v1/models/cgd:predict"


def _b64(data):
    return {"b64": base64.b64encode(data).decode("ascii")}


def _raw(port, data, timeout=60.0):
    """Send raw bytes and read until the server closes; returns the status (None: closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        response = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                response += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/") else None


def attacks(port, url):
    """`(name, callable returning an HTTP status or None)` of the attacker, in order."""
    tiny = encode(np.zeros((1, 1, 3), np.uint8))
    flood = json.dumps({"instances": [_b64(tiny)] * 20000})
    webp = encode(np.zeros((16, 16, 3), np.uint8), "WEBP")

    def post(body):
        return lambda: requests.post(url + PREDICT, data=body, timeout=120).status_code

    head = b"POST /v1/models/cgd:predict HTTP/1.1\r\nHost: x\r\n"
    return [
        ("20000 tiny PNGs", post(flood)),
        ("broken JSON", post(b'{"instances": [')),
        ("WebP", post(json.dumps({"instances": [_b64(webp)]}))),
        ("not base64", post(json.dumps({"instances": [{"b64": "@@@"}]}))),
        ("20000 tiny PNGs again", post(flood)),
        ("5000-digit version", lambda: requests.get(
            url + "/v1/models/cgd/versions/" + "9" * 5000, timeout=120).status_code),
        ("bad chunk header", lambda: _raw(port, head + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n")),
        ("short body", lambda: _raw(port, head + b"Content-Length: 900\r\n\r\n{\"inst")),
        ("garbage request line", lambda: _raw(port, b"\x16\x03\x01\x02\x00\x01\x00\r\n\r\n")),
        ("20000 tiny PNGs a third time", post(flood)),
    ]


def test_sixteen_clients_unharmed_by_an_attacker(server):
    rng = np.random.RandomState(0)
    payloads = [
        json.dumps({"instances": [_b64(encode(rng.randint(0, 256, (48, 48, 3), dtype=np.uint8),
                                              "JPEG")) for _ in range(4)]})
        for _ in range(4)
    ]
    errors, answered = [], []
    lock = threading.Lock()
    start = threading.Barrier(CLIENTS + 1)

    def client(i):
        session = requests.Session()
        start.wait(timeout=60)
        for k in range(REQUESTS_PER_CLIENT):
            try:
                r = session.post(server.url + PREDICT, data=payloads[(i + k) % 4], timeout=120)
                ok = r.status_code == 200 and len(r.json()["predictions"]) == 4
                problem = None if ok else f"{r.status_code} {r.text[:200]}"
            except requests.RequestException as e:
                problem = repr(e)
            with lock:
                (errors.append(problem) if problem else answered.append(i))

    attack_results = []

    def attacker():
        start.wait(timeout=60)
        for name, send in attacks(server.port, server.url):
            try:
                attack_results.append((name, send()))
            except requests.RequestException as e:
                attack_results.append((name, repr(e)))

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    threads.append(threading.Thread(target=attacker, daemon=True))
    for t in threads:
        t.start()
    deadline = time.monotonic() + 240
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "the load test did not finish in time"

    assert errors == []
    assert len(answered) == CLIENTS * REQUESTS_PER_CLIENT
    statuses = dict(attack_results)
    assert len(statuses) == len(attacks(server.port, server.url))
    for name, status in statuses.items():
        if name == "short body":
            assert status in (408, None), (name, status)  # 408, or closed at the deadline
        else:
            assert isinstance(status, int) and 400 <= status < 500, (name, status)
    assert server.alive()
    assert requests.get(server.url + "/v1/models/cgd", timeout=10).status_code == 200
    assert "Traceback" not in server.log_text()
