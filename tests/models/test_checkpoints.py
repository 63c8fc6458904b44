"""`from_checkpoint` and presets with weights against PyTorch forward passes.

`tests/torch_reference.py checkpoints` (a subprocess) writes MultiGrain checkpoints
(`{"model_state": ...}`, with and without whitening) and leftthomas/CGD state dicts
(S, M, G, SMG) with random weights, and their outputs from a PyTorch forward pass written
from the papers' definitions.
"""

import hashlib
import os

import keras
import numpy as np
import pytest

import keras_cgd
from keras_cgd.models import checkpoints
from keras_cgd.models import from_checkpoint
from keras_cgd.models.presets import PRESETS
from keras_cgd.weights import CheckpointError
from keras_cgd.weights import WeightMappingError
from keras_cgd.weights import read_state_dict
from tests.testing import run_model_saving_test
from tests.torch_runner import torch_reference

SIZE = 64
ATOL = 1e-4
CGD_FILE = "car_uncropped_resnet50_{}_1536_0.1_0.5_0.1_128_model.pth"


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    out, refs = torch_reference("checkpoints", tmp_path_factory)
    refs["dir"] = out
    return refs


@pytest.fixture(scope="module")
def loaded(ref):
    """`loaded(name)`: the model of checkpoint `name`, built once per module."""
    cache = {}

    def load(name, **overrides):
        if name not in cache:
            cache[name] = from_checkpoint(file(ref, name), input_shape=(SIZE, SIZE, 3), **overrides)
        return cache[name]

    return load


def file(ref, name):
    stem = CGD_FILE.format(name[4:]) if name.startswith("cgd_") else f"{name}.pth"
    return os.path.join(ref["dir"], stem)


def assert_matches(model, ref, name):
    out = model.predict(ref["images"], verbose=0)
    for key in ("embedding", "logits"):
        expected = ref[f"{name}/{key}"]
        assert out[key].shape == expected.shape
        assert np.abs(out[key] - expected).max() <= ATOL, key


@pytest.mark.parametrize("name", ["multigrain_whitened", "cgd_S", "cgd_M", "cgd_G", "cgd_SMG"])
def test_matches_pytorch(name, ref, loaded):
    model = loaded(name)
    assert_matches(model, ref, name)
    config = model.get_config()
    assert config["backbone"] == "tv_resnet50"
    if name.startswith("cgd_"):
        assert isinstance(model, keras_cgd.models.CGDModel)
        assert config["descriptors"] == name[4:] and config["embedding_dim"] == 1536
        assert config["num_classes"] == 98 and tuple(config["backbone_strides"]) == (1, 2, 1, 2)
        # the recipe of the file name: smoothing 0.1, temperature 0.5, margin 0.1; Adam 1e-4
        assert (config["label_smoothing"], config["temperature"], config["margin"]) == (0.1, 0.5, 0.1)
        assert isinstance(model.optimizer, keras.optimizers.Adam)
        assert np.isclose(float(model.optimizer.learning_rate), 1e-4)
        assert set(model.loss) == {"embedding", "logits"}
    else:
        assert isinstance(model, keras_cgd.models.MultiGrainModel)
        assert config["whitening"] and config["num_classes"] == 1000 and config["gem_p"] == 3.0


def test_loaded_model_round_trips_through_keras_file(loaded, ref, tmp_path):
    model = loaded("multigrain_whitened")
    restored = run_model_saving_test(model, ref["images"], tmp_path, atol=1e-5)
    assert restored.get_config()["whitening"] is True
    assert restored.get_layer("pca_whitening").get_config()["norm_epsilon"] == 1e-6


def test_multigrain_preset_from_a_pinned_url(ref, tmp_path, monkeypatch):
    """`build_model(preset, weights=URL)` downloads with get_file, verified by the pinned sha256."""
    path = file(ref, "joint_3B_0.5")
    url = "file://" + os.path.abspath(path)
    with open(path, "rb") as f:
        sha256 = hashlib.sha256(f.read()).hexdigest()
    preset = keras_cgd.get_preset("multigrain_resnet50_joint_3B_0.5")
    preset["checkpoint"].update(url=url, file_hash=sha256, file_name="joint_3B_0.5.pth")
    monkeypatch.setitem(PRESETS, "test_multigrain_local", preset)
    monkeypatch.setattr(checkpoints, "CACHE_DIR", str(tmp_path / "cache"))
    model = keras_cgd.build_model("test_multigrain_local", weights="published")
    assert os.path.isfile(tmp_path / "cache" / "keras_cgd" / "joint_3B_0.5.pth")
    assert_matches(model, ref, "joint_3B_0.5")  # any input size: the MultiGrain default
    config = model.get_config()
    assert config["gem_p"] == 3.0 and config["classification_weight"] == 0.5 and not config["whitening"]
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    # a download that does not match the pinned hash is refused
    bad = dict(preset, checkpoint=dict(preset["checkpoint"], file_hash="0" * 64, file_name="other.pth"))
    monkeypatch.setitem(PRESETS, "test_multigrain_bad_hash", bad)
    with pytest.raises(ValueError, match="(?i)hash|corrupt"):
        keras_cgd.build_model("test_multigrain_bad_hash", weights=url)


def test_multigrain_presets_carry_the_facts():
    for stem, top1 in [("joint_1B_1.0", 76.8), ("joint_3B_1.0", 76.9), ("joint_1B_0.5", 77.0),
                       ("joint_3B_0.5", 77.4), ("joint_3BAA_0.5", 78.2)]:
        preset = keras_cgd.get_preset(f"multigrain_resnet50_{stem}")
        assert "CC BY-NC 4.0" in preset["description"] and preset["license"] == "CC-BY-NC-4.0"
        assert preset["checkpoint"]["url"].endswith(f"/multigrain_models/{stem}.pth")
        assert preset["reported"]["top1@224"] == top1
    preset = keras_cgd.get_preset("multigrain_resnet50_joint_3B_0.5")
    assert preset["test_time"]["p_star"]["500"] == 4.0
    assert (preset["reported"]["top1@500_p4"], preset["reported"]["top5@500_p4"]) == (78.6, 94.4)


def test_cgd_preset_with_the_users_file(ref, loaded):
    # The preset fixes gd_config and the classes; the file name need not carry them.
    preset = keras_cgd.get_preset("cgd_leftthomas_resnet50_cub200_cropped")
    assert preset["config"]["descriptors"] == "MG" and preset["checkpoint"]["url"] is None
    with pytest.raises(CheckpointError, match=r"gd_config='MG' has 2 descriptor\(s\).*holds 1"):
        keras_cgd.build_model("cgd_leftthomas_resnet50_cub200_cropped", weights=file(ref, "cgd_S"))


# --------------------------------------------------------------------------- bad input


def test_another_format_is_named(ref, tmp_path):
    torchvision_like = tmp_path / "resnet50.npz"
    np.savez(torchvision_like, **{"conv1.weight": np.zeros((64, 3, 7, 7), "float32"),
                                  "fc.weight": np.zeros((1000, 2048), "float32")})
    with pytest.raises(CheckpointError, match=r"neither a MultiGrain.*Received tensors: conv1\.weight, fc\.weight"):
        from_checkpoint(torchvision_like)
    with pytest.raises(CheckpointError, match="format='multigrain' was requested but .* is a cgd checkpoint"):
        from_checkpoint(file(ref, "cgd_S"), format="multigrain")
    with pytest.raises(ValueError, match=r"Received: format='mxnet'"):
        from_checkpoint(file(ref, "cgd_S"), format="mxnet")


def test_truncated_file_is_named(ref, tmp_path):
    truncated = tmp_path / CGD_FILE.format("S")
    with open(file(ref, "cgd_S"), "rb") as f:
        truncated.write_bytes(f.read(5_000_000))
    with pytest.raises(CheckpointError, match=str(truncated.name)):
        from_checkpoint(truncated)


def test_unknown_gd_config_is_named(ref, tmp_path):
    renamed = tmp_path / CGD_FILE.format("SX")
    os.symlink(file(ref, "cgd_S"), renamed)
    with pytest.raises(CheckpointError, match=r"Received: gd_config='SX'"):
        from_checkpoint(renamed)
    anonymous = tmp_path / "my_model.pth"
    os.symlink(file(ref, "cgd_S"), anonymous)
    with pytest.raises(CheckpointError, match="Cannot infer gd_config.*descriptors="):
        from_checkpoint(anonymous)


@pytest.fixture(scope="module")
def cgd_s_tensors(ref):
    return read_state_dict(file(ref, "cgd_S"))


def _write(tmp_path, tensors, gd="S"):
    path = tmp_path / CGD_FILE.format(gd).replace(".pth", ".npz")
    np.savez(path, **tensors)
    return path


def test_missing_and_misshapen_tensors_are_named(cgd_s_tensors, tmp_path):
    tensors = dict(cgd_s_tensors)
    del tensors["features.5.0.bn1.running_var"]
    tensors["auxiliary_module.0.weight"] = np.ones(1024, "float32")
    with pytest.raises(WeightMappingError) as e:
        from_checkpoint(_write(tmp_path, tensors), input_shape=(SIZE, SIZE, 3), compile=False)
    msg = str(e.value)
    assert "missing tensors: features.5.0.bn1.running_var" in msg
    assert "misshapen tensors: auxiliary_module.0.weight (1024,) -> classifier_bn/gamma expects (2048,)" in msg


def test_unsupported_backbones_are_named(cgd_s_tensors, tmp_path):
    resnext = tmp_path / "car_uncropped_resnext50_S_1536_0.1_0.5_0.1_128_model.npz"
    np.savez(resnext, **cgd_s_tensors)
    with pytest.raises(CheckpointError, match="'resnext50'"):
        from_checkpoint(resnext)
    basic = {k: v for k, v in cgd_s_tensors.items() if ".conv3." not in k and ".bn3." not in k}
    with pytest.raises(CheckpointError, match="BasicBlocks"):
        from_checkpoint(_write(tmp_path, basic))


def test_weights_argument_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        keras_cgd.build_model("multigrain_resnet50_joint_3B_0.5", weights=str(tmp_path / "nope.pth"))
    with pytest.raises(ValueError, match="no published download URL"):
        keras_cgd.build_model("cgd_leftthomas_resnet50_sop", weights="published")


# --------------------------------------------------------------------------- export and serve


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="SavedModel export/serving: TF backend")
def test_loaded_model_exports_and_serves_the_same_embeddings(loaded, ref, tmp_path):
    import subprocess
    import sys
    import time

    import requests

    from keras_cgd.export import export_saved_model
    from tests.serving.conftest import encode
    from tests.serving.conftest import free_port
    from tests.serving.test_server import b64

    model = loaded("cgd_G")
    base = tmp_path / "savedmodels"
    export_saved_model(model, base / "cgd")
    port = free_port()
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    with open(tmp_path / "server.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "keras_cgd.cli", "serve", str(base), "--host", "127.0.0.1",
             "--port", str(port), "--poll_interval", "0.2"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}/v1/models/cgd"
            deadline = time.monotonic() + 180
            while True:
                assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
                try:
                    if requests.get(url, timeout=2).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.25)
            images = ref["images"]  # 64 x 64: the serving resize is the identity
            r = requests.post(url + ":predict", json={"instances": [b64(encode(im)) for im in images]}, timeout=120)
            assert r.status_code == 200, r.text
            got = np.array([p["embedding"] for p in r.json()["predictions"]], np.float32)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    np.testing.assert_allclose(got, model.predict(images, verbose=0)["embedding"], atol=1e-5)
    np.testing.assert_allclose(got, ref["cgd_G/embedding"], atol=ATOL)
