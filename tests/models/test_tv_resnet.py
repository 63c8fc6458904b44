"""tv_resnet50/101 against torchvision's own forward pass with the same random weights.

The torchvision side runs in a subprocess (`tests/torch_reference.py resnets`), which writes
the state dicts (.pth, .safetensors, .npz) and the reference feature maps.
"""

import os

import numpy as np
import pytest

from keras_cgd.models import backbone_preprocessing
from keras_cgd.models import build_backbone
from keras_cgd.models import list_backbones
from keras_cgd.models.backbones import supports_last_stride
from keras_cgd.models.tv_resnet import load_tv_resnet_weights
from keras_cgd.models.tv_resnet import tv_resnet
from keras_cgd.models.tv_resnet import tv_resnet_weight_table
from keras_cgd.weights import CheckpointError
from keras_cgd.weights import WeightMappingError
from keras_cgd.weights import read_state_dict
from tests.torch_runner import torch_reference

SIZE = 64
VARIANTS = {
    "torchvision": ({}, (1, 2, 2, 2)),
    "last_stride_1": ({"last_stride": 1}, (1, 2, 2, 1)),
    "stage3_stride_1": ({"strides": (1, 2, 1, 2)}, (1, 2, 1, 2)),
}


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    out, refs = torch_reference("resnets", tmp_path_factory)
    refs["dir"] = out
    return refs


def path(ref, name):
    return os.path.join(ref["dir"], name)


def assert_close_to_map(got, expected):
    assert got.shape == expected.shape
    scale = np.abs(expected).max()
    assert scale > 0
    assert np.abs(got - expected).max() <= 1e-4 * scale


@pytest.fixture(scope="module")
def torchvision_model(ref):
    return build_backbone("tv_resnet50", input_shape=(SIZE, SIZE, 3), weights=path(ref, "resnet50.npz"))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_tv_resnet50_matches_torchvision(variant, ref, torchvision_model):
    kwargs, strides = VARIANTS[variant]
    if variant == "torchvision":
        model = torchvision_model
    else:
        model = build_backbone("tv_resnet50", input_shape=(SIZE, SIZE, 3), weights=path(ref, "resnet50.npz"), **kwargs)
    got = np.asarray(model.predict(ref["images50"], verbose=0))
    side = SIZE // 2 ** (2 + sum(s == 2 for s in strides))
    assert got.shape == (2, side, side, 2048)
    assert_close_to_map(got, ref[f"features/{variant}"])


@pytest.mark.parametrize("file_name", ["resnet50.pth", "resnet50.safetensors"])
def test_weights_from_pth_and_safetensors(file_name, ref, torchvision_model):
    for v in torchvision_model.weights:
        v.assign(np.zeros(v.shape, v.dtype))
    n = load_tv_resnet_weights(torchvision_model, path(ref, file_name))
    assert n == len(tv_resnet_weight_table(50)) == 265
    got = np.asarray(torchvision_model.predict(ref["images50"], verbose=0))
    assert_close_to_map(got, ref["features/torchvision"])


def test_tv_resnet101_holds_torchvision_resnet101(ref):
    # Every tensor of torchvision's resnet101 (names and shapes, written by torchvision)
    # finds its variable; the forward pass is the ResNet-50 one with 23 blocks in layer3.
    model = build_backbone("tv_resnet101", input_shape=(32, 32, 3))
    assert load_tv_resnet_weights(model, path(ref, "resnet101.npz"), depth=101) == len(model.weights) == 520
    assert model.output_shape == (None, 1, 1, 2048)


def test_table_covers_every_torchvision_tensor_but_fc(ref):
    names = read_state_dict(path(ref, "resnet50.npz"))
    expected = {k for k in names if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    assert set(tv_resnet_weight_table(50).sources) == expected


def test_registry_and_preprocessing():
    assert {"tv_resnet50", "tv_resnet101"} <= set(list_backbones())
    assert supports_last_stride("tv_resnet50") and supports_last_stride("tv_resnet101")
    prep = backbone_preprocessing("tv_resnet50")
    np.testing.assert_allclose(prep["mean"], [0.485, 0.456, 0.406])
    np.testing.assert_allclose(prep["std"], [0.229, 0.224, 0.225])
    assert prep["channel_order"] == "rgb"


def test_another_architecture_is_named(ref, torchvision_model):
    before = [w.copy() for w in torchvision_model.get_weights()]
    with pytest.raises(WeightMappingError) as e:
        load_tv_resnet_weights(torchvision_model, path(ref, "resnet18.npz"))
    msg = str(e.value)
    # ResNet-18's BasicBlocks have no conv3, and their layer1.0.conv1 is 3x3, not 1x1.
    assert "resnet18.npz" in msg
    assert "missing tensors" in msg and "layer1.0.conv3.weight" in msg
    assert "misshapen tensors" in msg and "layer1.0.conv1.weight (64, 64, 3, 3)" in msg
    for a, b in zip(torchvision_model.get_weights(), before):
        np.testing.assert_array_equal(a, b)  # nothing was assigned


def test_missing_tensor_is_named(ref, tmp_path, torchvision_model):
    tensors = read_state_dict(path(ref, "resnet50.npz"))
    del tensors["layer2.1.bn2.running_var"]
    broken = tmp_path / "broken.npz"
    np.savez(broken, **tensors)
    with pytest.raises(WeightMappingError, match=r"missing tensors: layer2\.1\.bn2\.running_var"):
        load_tv_resnet_weights(torchvision_model, str(broken))


def test_wrong_file_type(tmp_path, torchvision_model):
    from PIL import Image

    image = tmp_path / "photo.pth"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image, format="PNG")
    with pytest.raises(CheckpointError, match="photo.pth"):
        load_tv_resnet_weights(torchvision_model, str(image))
    text = tmp_path / "weights.txt"
    text.write_text("not weights")
    with pytest.raises(ValueError, match=r"weights\.txt"):
        load_tv_resnet_weights(torchvision_model, str(text))


@pytest.mark.parametrize("strides", [(1, 3, 2, 2), (1, 2, 2), "1222", (1, 2, 2, True)])
def test_bad_strides(strides):
    with pytest.raises(ValueError, match="strides"):
        tv_resnet(50, input_shape=(SIZE, SIZE, 3), strides=strides)


def test_bad_arguments():
    with pytest.raises(ValueError, match="depth"):
        tv_resnet(34)
    with pytest.raises(ValueError, match="strides"):
        build_backbone("resnet50", strides=(1, 2, 1, 2))
    with pytest.raises(TypeError, match="weights"):
        tv_resnet(50, input_shape=(SIZE, SIZE, 3), weights=3)
