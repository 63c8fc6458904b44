"""Fixtures of the reliability suite: a tiny exported model and `keras-cgd serve` on loopback.

The server runs as `keras-cgd serve` (the CLI entry point) in a subprocess bound to
127.0.0.1 with small limits, so that every bound is reached by a small request:
`--rest_api_timeout_in_ms 1500`, `--max_request_pixels 409600` (100 images of the
model's 64 × 64), `--max_decoded_bytes 1000000`, `--max_batch_size 16`. It is always
terminated; its log is kept for the tests that check what it wrote.
"""

import io
import os
import socket
import struct
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import requests
from PIL import Image

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZE = 64
REQUEST_TIMEOUT_S = 1.5
MAX_REQUEST_PIXELS = 100 * SIZE * SIZE
MAX_DECODED_BYTES = 1_000_000
MAX_BATCH_SIZE = 16

tf_backend_only = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the server is TensorFlow-only and independent of the Keras backend: run once",
)


def encode(array, fmt="PNG", **options):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **options)
    return buf.getvalue()


def jpeg_declaring(width, height):
    """A real 16 × 16 JPEG (~600 bytes) whose SOF0 marker declares width × height."""
    data = bytearray(encode(np.zeros((16, 16, 3), np.uint8), "JPEG"))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p)
    return env


class ServerProcess:
    """A `keras-cgd serve` subprocess: `url`, `port`, `log_text()`, `alive()`."""

    def __init__(self, base_dir, log_path, extra_args=()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "w")
        command = [
            sys.executable, "-c", "import sys; from keras_cgd.cli import main; sys.exit(main())",
            "serve", str(base_dir), "--host", "127.0.0.1", "--port", str(self.port),
            "--poll_interval", "0.5", *extra_args,
        ]
        self.proc = subprocess.Popen(command, env=child_env(), stdout=self._log,
                                     stderr=subprocess.STDOUT, cwd=REPO_ROOT)

    def wait_ready(self, model="cgd", timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log_text()[-3000:]}")
            try:
                if requests.get(f"{self.url}/v1/models/{model}", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"server not ready within {timeout} s:\n{self.log_text()[-3000:]}")

    def alive(self):
        return self.proc.poll() is None

    def log_text(self):
        self._log.flush()
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """`(model, base_dir)`: cgd_tiny (64 × 64) exported as base_dir/cgd/1."""
    import keras_cgd
    from keras_cgd.export import export_saved_model

    keras.utils.set_random_seed(0)
    model = keras_cgd.build_model("cgd_tiny", num_classes=5)
    base = tmp_path_factory.mktemp("reliability_models")
    export_saved_model(model, base / "cgd")
    return model, base


@pytest.fixture(scope="session")
def server(exported, tmp_path_factory):
    """`keras-cgd serve` on 127.0.0.1 with the suite's small limits; always stopped."""
    _, base = exported
    log = tmp_path_factory.mktemp("reliability_logs") / "server.log"
    proc = ServerProcess(base, log, [
        "--rest_api_timeout_in_ms", str(int(REQUEST_TIMEOUT_S * 1000)),
        "--max_request_pixels", str(MAX_REQUEST_PIXELS),
        "--max_decoded_bytes", str(MAX_DECODED_BYTES),
        "--max_batch_size", str(MAX_BATCH_SIZE),
    ])
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()
