"""Fixtures: an exported tiny CGD model and `keras-cgd serve` in a subprocess (loopback)."""

import io
import os
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import requests
from PIL import Image

import keras_cgd
from keras_cgd.export import export_saved_model

MAX_REQUEST_BYTES = 1_000_000


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def encode(array, fmt="PNG"):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = keras_cgd.build_model("cgd_tiny", num_classes=5)
    base = tmp_path_factory.mktemp("savedmodels")
    export_saved_model(model, base / "cgd")
    return model, base


@pytest.fixture(scope="session")
def server(exported):
    """URL of a running reference server; always terminated."""
    _, base = exported
    port = free_port()
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    log = open(base / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "keras_cgd.serving", str(base), "--host", "127.0.0.1",
         "--port", str(port), "--poll_interval", "0.2",
         "--max_request_bytes", str(MAX_REQUEST_BYTES), "--version_label", "cgd:stable=1"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {(base / 'server.log').read_text()[-3000:]}")
            try:
                if requests.get(url + "/v1/models/cgd", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start within 120 s")
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="session")
def images():
    rng = np.random.RandomState(0)
    return {
        "png": encode(rng.randint(0, 256, (64, 64, 3), dtype=np.uint8)),
        "png_rect": encode(rng.randint(0, 256, (48, 80, 3), dtype=np.uint8)),
        "jpeg": encode(rng.randint(0, 256, (70, 60, 3), dtype=np.uint8), "JPEG"),
    }
