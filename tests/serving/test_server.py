"""The reference server, point by point against the TF Serving REST contract.

(`reference/ecosystem.md` §5 and the checklist of §7.) Loopback only; the
server subprocess is started and always terminated by the `server` fixture.
"""

import base64
import json
import os
import shutil
import time

import numpy as np
import pytest
import requests
import tensorflow as tf

from tests.export.test_saved_model import huge_jpeg
from tests.export.test_saved_model import huge_png
from tests.serving.conftest import MAX_REQUEST_BYTES


def b64(data):
    return {"b64": base64.b64encode(data).decode("ascii")}


def reference_embedding(model, contents):
    """Independent reference: tf decode + bilinear antialiased resize, then predict."""
    batch = []
    for c in contents:
        image = tf.io.decode_image(c, channels=3, expand_animations=False)
        batch.append(tf.image.resize(tf.cast(image, tf.float32), (64, 64), antialias=True))
    return model.predict(np.stack(batch), verbose=0)


def check_error(response, status, fragment):
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"], body
    assert fragment in body["error"], body["error"]


def post(url, path, payload=None, data=None):
    if data is None:
        data = json.dumps(payload)
    return requests.post(url + path, data=data, timeout=60)


# --- status and metadata -------------------------------------------------------


def test_model_status(server):
    r = requests.get(server + "/v1/models/cgd", timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    assert r.json() == {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE",
             "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    for path in ("/v1/models/cgd/versions/1", "/v1/models/cgd/labels/stable"):
        assert requests.get(server + path, timeout=10).json() == r.json()


@pytest.mark.parametrize(
    "path, status, fragment",
    [
        ("/v1/models/nope", 404, "Could not find any versions of model nope"),
        ("/v1/models/cgd/versions/7", 404, "Could not find version 7 of model cgd"),
        ("/v1/models/cgd/labels/canary", 400, "Unrecognized servable version label: canary"),
        ("/v1/models", 400, "Missing model name in request."),
        ("/v1/foo", 400, "Malformed request: GET /v1/foo"),
        ("/v1/models/cgd:predict", 400, "Malformed request: GET /v1/models/cgd:predict"),
        ("/v1/models/cgd/version/1:predict", 400, "Malformed request"),
        ("/v1/models/cgd/versions/99999999999999999999", 400, "Failed to convert version"),
        ("/v1/models/nope/metadata", 404, "Servable not found for request: Latest(nope)"),
    ],
)
def test_get_errors(server, path, status, fragment):
    check_error(requests.get(server + path, timeout=10), status, fragment)


def test_metadata(server):
    r = requests.get(server + "/v1/models/cgd/versions/1/metadata", timeout=10)
    assert r.status_code == 200
    body = r.json()
    assert body["model_spec"] == {"name": "cgd", "signature_name": "", "version": "1"}
    sigs = body["metadata"]["signature_def"]["signature_def"]
    default = sigs["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    assert default["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
    assert default["inputs"]["image_bytes"]["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]
    assert default["outputs"]["embedding"]["dtype"] == "DT_FLOAT"
    dims = [d["size"] for d in sigs["serving_pixels"]["inputs"]["images"]["tensor_shape"]["dim"]]
    assert dims == ["-1", "64", "64", "3"]


def test_not_v1_path_is_404_json(server):
    check_error(requests.get(server + "/statuspage", timeout=10), 404, "Not found")


# --- predict ---------------------------------------------------------------------


def test_predict_row_b64(server, exported, images):
    model, _ = exported
    contents = [images["png"], images["jpeg"], images["png_rect"]]
    r = post(server, "/v1/models/cgd:predict", {"instances": [b64(c) for c in contents]})
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert len(predictions) == 3 and set(predictions[0]) == {"embedding", "logits"}
    got = np.array([p["embedding"] for p in predictions], np.float32)
    want = reference_embedding(model, contents)
    np.testing.assert_allclose(got, want["embedding"], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_predict_columnar_named_versions_labels_case(server, exported, images):
    model, _ = exported
    want = reference_embedding(model, [images["png"]])["embedding"]
    requests_ = [
        ("/v1/models/cgd:predict", {"inputs": [b64(images["png"])]}),
        ("/v1/models/cgd/versions/1:predict", {"inputs": {"image_bytes": [b64(images["png"])]}}),
        ("/v1/models/cgd/labels/stable:predict",
         {"signature_name": "serving_default", "inputs": [b64(images["png"])]}),
        ("/V1/MODELS/%63gd:PREDICT", {"inputs": [b64(images["png"])]}),  # case, %-escape
    ]
    for path, payload in requests_:
        r = post(server, path, payload)
        assert r.status_code == 200, (path, r.text)
        outputs = r.json()["outputs"]
        np.testing.assert_allclose(np.array(outputs["embedding"], np.float32), want, atol=1e-5)
    r = post(server, "/v1/models/cgd:predict", {"instances": [{"image_bytes": b64(images["png"])}]})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose([r.json()["predictions"][0]["embedding"]], want, atol=1e-5)


def test_predict_pixels_signature_floats_round_trip(server, exported):
    model, _ = exported
    x = np.random.RandomState(3).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    want = model.predict(x, verbose=0)["embedding"]
    r = post(server, "/v1/models/cgd:predict",
             {"signature_name": "serving_pixels", "inputs": x.tolist()})
    assert r.status_code == 200, r.text
    got = np.array(r.json()["outputs"]["embedding"], np.float32)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # Integers are accepted for float inputs; rows format.
    ints = np.round(x[:1]).astype(int)
    r = post(server, "/v1/models/cgd:predict",
             {"signature_name": "serving_pixels", "instances": ints.tolist()})
    assert r.status_code == 200, r.text
    want = model.predict(ints.astype(np.float32), verbose=0)["embedding"]
    np.testing.assert_allclose([r.json()["predictions"][0]["embedding"]], want, atol=1e-5)


def test_float_output_is_shortest_float32_repr(server, images):
    r = post(server, "/v1/models/cgd:predict", {"inputs": [b64(images["png"])]})
    text = r.text
    values = np.array(r.json()["outputs"]["embedding"][0], np.float32)
    for v in values[:10]:
        assert str(v) in text  # NumPy prints the shortest float32 repr


@pytest.mark.parametrize(
    "payload, status, fragment",
    [
        (b"", 400, "JSON Parse error: The document is empty"),
        (b"{\"instances\": [", 400, "JSON Parse error"),
        (b"[1, 2]", 400, "Is not object"),
        (b"\xff\xfe", 400, "JSON Parse error"),
        ({"signature_name": 3, "instances": [1]}, 400,
         "'signature_name' key must be a string value."),
        ({"signature_name": "nope", "instances": [1]}, 400,
         'Serving signature name: "nope" not found in signature def'),
        ({"instances": ["x"], "inputs": ["x"]}, 400,
         "expecting only one of 'inputs' or 'instances' keys to exist"),
        ({"signature_name": "serving_default"}, 400, "Missing 'inputs' or 'instances' key"),
        ({"instances": {"b64": "aGk="}}, 400, "Expecting 'instances' to be an list/array"),
        ({"instances": []}, 400, "No values in 'instances' array"),
        ({"instances": [{"b64": "@@not base64@@"}]}, 400, "Unable to base64 decode"),
        ({"instances": [{"wrong_key": "aGk="}]}, 400, "keys must be equal to: image_bytes"),
        ({"signature_name": "serving_pixels", "instances": [{"b64": "aGk="}]}, 400,
         "is not of expected type: float"),
        ({"signature_name": "serving_pixels", "inputs": [[["a"]]]}, 400,
         "Type: String is not of expected type: float"),
        ({"signature_name": "serving_pixels", "inputs": [[[1.0, 2.0, 3.0]]]}, 400,
         "Invalid shape for input 'images'"),
        ({"signature_name": "serving_pixels", "instances": [[1.0], [1.0, 2.0]]}, 400,
         "Expecting shape [1] but got: [2]"),
        ({"inputs": {"other": 1}}, 400, "Missing named input: image_bytes in 'inputs' object."),
        (b'{"signature_name": "serving_pixels", "inputs": [' + b"7" * 5000 + b"]}", 400,
         "JSON Parse error: Number too big"),
        ({"signature_name": "serving_pixels", "inputs": [[[[10**400, 1.0, 2.0]]]]}, 400,
         "JSON Value out of range for type: float"),
    ],
)
def test_predict_request_errors(server, payload, status, fragment):
    data = payload if isinstance(payload, bytes) else json.dumps(payload)
    check_error(post(server, "/v1/models/cgd:predict", data=data), status, fragment)


def test_bad_images_are_400_and_server_survives(server, images):
    cases = {
        "not an image": b"hello, this is not an image at all",
        "truncated": images["png"][:60],
        "huge png": huge_png(),
        "huge jpeg": huge_jpeg(),
    }
    for name, data in cases.items():
        r = post(server, "/v1/models/cgd:predict", {"instances": [b64(images["png"]), b64(data)]})
        assert r.status_code == 400, (name, r.text)
        assert list(r.json()) == ["error"]
        message = r.json()["error"]
        assert "instance 1 of input 'image_bytes'" in message, r.text
        assert "Graph execution" not in message and "node" not in message, r.text
        if name.startswith("huge"):
            assert "20000 × 20000 = 400000000 pixels" in message, r.text
            assert "max_image_pixels=25000000" in message, r.text
        if name == "not an image":
            assert "only JPEG and PNG images are accepted" in message, r.text
        if name == "truncated":
            assert "cannot be decoded" in message and "PNG" in message, r.text
    r = post(server, "/v1/models/cgd:predict", {"inputs": [b64(images["png"])]})
    assert r.status_code == 200


def test_request_pixel_budget_is_400_before_decoding(server, images):
    # 13 tiny PNGs declaring 16 MP each: each passes max_image_pixels (25 MP) but
    # together they exceed the default max_request_pixels (200 MP).
    huge = [b64(huge_png(4000, 4000)) for _ in range(13)]
    r = post(server, "/v1/models/cgd:predict", {"instances": [b64(images["png"])] + huge})
    check_error(r, 400, "max_request_pixels=200000000")
    assert f"cost {13 * 4000 * 4000 + 64 * 64} pixels" in r.json()["error"]
    assert "max_image_pixels" not in r.json()["error"]
    r = post(server, "/v1/models/cgd:predict", {"inputs": [b64(images["png"])]})
    assert r.status_code == 200


def test_broken_newer_version_keeps_older_serving(exported, tmp_path, monkeypatch):
    """A v2 that fails to load leaves v1 in service; v2 loads once it is complete."""
    from keras_cgd.serving import server as server_lib

    _, base = exported
    good = os.path.join(base, "cgd", "1")
    model_dir = tmp_path / "cgd"
    shutil.copytree(good, model_dir / "1")
    v2 = model_dir / "2"
    v2.mkdir()
    shutil.copy(os.path.join(good, "saved_model.pb"), v2)  # variables/ not there yet

    loads = []
    real = server_lib._LoadedVersion

    def counting(path, version):
        loads.append(version)
        return real(path, version)

    monkeypatch.setattr(server_lib, "_LoadedVersion", counting)
    repo = server_lib.ModelRepository(str(tmp_path))
    repo.poll()
    assert loads == [2, 1]
    assert repo.get("cgd").version == 1
    states = repo.status("cgd")["model_version_status"]
    assert [(s["version"], s["state"]) for s in states] == [("2", "END"), ("1", "AVAILABLE")]
    assert states[0]["status"]["error_message"].startswith("Failed to load")
    repo.poll()  # nothing changed: no retry, v1 still served
    assert loads == [2, 1] and repo.get("cgd").version == 1

    for child in os.listdir(good):  # the rest of v2 arrives (saved_model.pb untouched)
        source = os.path.join(good, child)
        if os.path.isdir(source):
            shutil.copytree(source, v2 / child)
        elif child != "saved_model.pb":
            shutil.copy2(source, v2 / child)
    repo.poll()
    assert loads == [2, 1, 2]
    assert repo.get("cgd").version == 2
    states = repo.status("cgd")["model_version_status"]
    assert [(s["version"], s["state"]) for s in states] == [("2", "AVAILABLE"), ("1", "END")]
    with pytest.raises(server_lib.rest.RestError, match=r"Specific\(cgd, 1\)"):
        repo.get("cgd", version=1)


@pytest.mark.parametrize(
    "path, status, fragment",
    [
        ("/v1/models/nope:predict", 404, "Servable not found for request: Latest(nope)"),
        ("/v1/models/cgd/versions/9:predict", 404,
         "Servable not found for request: Specific(cgd, 9)"),
        ("/v1/models/cgd/labels/canary:predict", 400, "Unrecognized servable version label"),
        ("/v1/models/cgd/metadata", 400, "Malformed request: POST /v1/models/cgd/metadata"),
        ("/v1/models", 400, "Malformed request"),
        ("/v1/models/cgd/versions/1/labels/x:predict", 400, "Malformed request"),
        ("/v1/models/cgd:classify", 400, "Expected classification signature method_name"),
        ("/v1/models/cgd:regress", 400, "Expected regression signature method_name"),
    ],
)
def test_predict_path_errors(server, path, status, fragment):
    check_error(post(server, path, {"instances": [1]}), status, fragment)


def test_request_size_limit(server):
    body = json.dumps({"instances": [{"b64": "A" * (MAX_REQUEST_BYTES + 8)}]})
    check_error(post(server, "/v1/models/cgd:predict", data=body), 413, "exceeds the limit")
    assert requests.get(server + "/v1/models/cgd", timeout=10).status_code == 200


def test_new_version_is_picked_up_without_restart(server, exported, images):
    """Runs last in this module: it moves the served version to 2."""
    _, base = exported
    tmp = os.path.join(base, "cgd", ".tmp-2-copy")
    shutil.copytree(os.path.join(base, "cgd", "1"), tmp)
    os.rename(tmp, os.path.join(base, "cgd", "2"))  # the atomic step of an export
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = requests.get(server + "/v1/models/cgd", timeout=10).json()
        states = {s["version"]: s["state"] for s in status["model_version_status"]}
        if states.get("2") == "AVAILABLE" and states.get("1") == "END":
            break
        time.sleep(0.2)
    assert states == {"2": "AVAILABLE", "1": "END"}
    meta = requests.get(server + "/v1/models/cgd/metadata", timeout=10).json()
    assert meta["model_spec"]["version"] == "2"
    check_error(post(server, "/v1/models/cgd/versions/1:predict", {"inputs": [b64(images["png"])]}),
                404, "Specific(cgd, 1)")
    r = post(server, "/v1/models/cgd/versions/2:predict", {"inputs": [b64(images["png"])]})
    assert r.status_code == 200
