"""tv_resnet50/101 against torchvision's own forward pass with the same random weights."""

import copy

import numpy as np
import pytest

from keras_cgd.models import backbone_preprocessing
from keras_cgd.models import build_backbone
from keras_cgd.models import list_backbones
from keras_cgd.models.backbones import supports_last_stride
from keras_cgd.models.tv_resnet import tv_resnet
from keras_cgd.models.tv_resnet import tv_resnet_weight_table
from keras_cgd.weights import WeightMappingError

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

SIZE = 64


def randomize(net, seed=0):
    """Random conv weights (torchvision init) and random BN affine/statistics, in eval mode."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def numpy_state_dict(net):
    return {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}


def patched(net, strides):
    """A copy of a torchvision ResNet whose stage strides are `strides` (block 0's conv2
    and downsample.0 carry them, as in torchvision)."""
    net = copy.deepcopy(net)
    for stage, stride in enumerate(strides, start=1):
        block = getattr(net, f"layer{stage}")[0]
        block.conv2.stride = (stride, stride)
        block.downsample[0].stride = (stride, stride)
    return net


def torch_feature_map(net, x):
    trunk = torch.nn.Sequential(*list(net.children())[:-2])  # without avgpool, fc
    with torch.no_grad():
        out = trunk(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    return out.numpy().transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def resnet50():
    return randomize(torchvision.models.resnet50())


@pytest.fixture(scope="module")
def state50(resnet50):
    return numpy_state_dict(resnet50)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).normal(size=(2, SIZE, SIZE, 3)).astype("float32")


VARIANTS = {
    "torchvision": ({}, (1, 2, 2, 2)),
    "last_stride_1": ({"last_stride": 1}, (1, 2, 2, 1)),
    "stage3_stride_1": ({"strides": (1, 2, 1, 2)}, (1, 2, 1, 2)),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_tv_resnet50_matches_torchvision(variant, resnet50, state50, images):
    kwargs, strides = VARIANTS[variant]
    model = build_backbone("tv_resnet50", input_shape=(SIZE, SIZE, 3), weights=state50, **kwargs)
    got = np.asarray(model.predict(images, verbose=0))
    expected = torch_feature_map(patched(resnet50, strides), images)
    stride_two_stages = sum(s == 2 for s in strides)
    side = SIZE // 2 ** (2 + stride_two_stages)
    assert got.shape == expected.shape == (2, side, side, 2048)
    scale = np.abs(expected).max()
    assert scale > 0
    assert np.abs(got - expected).max() <= 1e-4 * scale


def test_tv_resnet101_matches_torchvision():
    net = randomize(torchvision.models.resnet101(), seed=1)
    x = np.random.default_rng(1).normal(size=(1, 32, 32, 3)).astype("float32")
    model = tv_resnet(101, input_shape=(32, 32, 3), weights=numpy_state_dict(net))
    got = np.asarray(model.predict(x, verbose=0))
    expected = torch_feature_map(net, x)
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_table_covers_every_torchvision_tensor_but_fc(state50):
    table = set(tv_resnet_weight_table(50).sources)
    expected = {k for k in state50 if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    assert table == expected


def test_registry_and_preprocessing():
    assert {"tv_resnet50", "tv_resnet101"} <= set(list_backbones())
    assert supports_last_stride("tv_resnet50") and supports_last_stride("tv_resnet101")
    prep = backbone_preprocessing("tv_resnet50")
    np.testing.assert_allclose(prep["mean"], [0.485, 0.456, 0.406])
    np.testing.assert_allclose(prep["std"], [0.229, 0.224, 0.225])
    assert prep["channel_order"] == "rgb"


def test_another_architecture_is_named(state50):
    resnet18 = numpy_state_dict(torchvision.models.resnet18())
    model = tv_resnet(50, input_shape=(SIZE, SIZE, 3))
    with pytest.raises(WeightMappingError) as e:
        model_weights = model.get_weights()
        tv_resnet(50, input_shape=(SIZE, SIZE, 3), weights=resnet18)
    msg = str(e.value)
    # ResNet-18's BasicBlocks have no conv3; its conv1 of layer1.0 is 3x3, not 1x1.
    assert "missing tensors" in msg and "layer1.0.conv3.weight" in msg
    assert "misshapen tensors" in msg and "layer1.0.conv1.weight (64, 64, 3, 3)" in msg
    for a, b in zip(model.get_weights(), model_weights):
        np.testing.assert_array_equal(a, b)


def test_missing_tensor_is_named(state50):
    broken = dict(state50)
    del broken["layer2.1.bn2.running_var"]
    with pytest.raises(WeightMappingError, match=r"missing tensors: layer2\.1\.bn2\.running_var"):
        tv_resnet(50, input_shape=(SIZE, SIZE, 3), weights=broken)


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
