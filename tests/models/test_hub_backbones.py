"""`backbone="keras_hub:<preset dir>"`: local presets written by the test (offline)."""

import sys

import keras
import numpy as np
import pytest

import keras_cgd
from keras_cgd.layers import FrozenBatchNormalization
from keras_cgd.models import backbone_preprocessing
from keras_cgd.models import build_backbone
from keras_cgd.models.hub_backbones import PatchTokenGrid

keras_hub = pytest.importorskip("keras_hub")

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def resnet_preset(tmp_path_factory):
    """A tiny keras-hub ResNetBackbone and its ImageConverter (ImageNet mean/std) as a preset."""
    keras.utils.set_random_seed(3)
    net = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 16],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="bottleneck_block",
    )
    directory = str(tmp_path_factory.mktemp("hub_resnet"))
    net.save_to_preset(directory)
    keras_hub.layers.ResNetImageConverter(
        scale=[1 / (255 * s) for s in STD], offset=[-m / s for m, s in zip(MEAN, STD)]
    ).save_to_preset(directory)
    return net, directory


@pytest.fixture(scope="module")
def vit_preset(tmp_path_factory):
    """A tiny DINOv2 (patch 4, 2 register tokens) without an ImageConverter."""
    keras.utils.set_random_seed(4)
    net = keras_hub.models.DINOV2Backbone(
        patch_size=4, num_layers=1, hidden_dim=16, num_heads=2, intermediate_dim=32,
        image_shape=(16, 16, 3), position_embedding_shape=(16, 16, 3), num_register_tokens=2,
    )
    directory = str(tmp_path_factory.mktemp("hub_dinov2"))
    net.save_to_preset(directory)
    return net, directory


def images(size, n=2, seed=0):
    return np.random.default_rng(seed).uniform(-2, 2, (n, size, size, 3)).astype("float32")


def test_resnet_preset_gives_the_hub_feature_map(resnet_preset):
    net, directory = resnet_preset
    backbone = build_backbone(f"keras_hub:{directory}", input_shape=(32, 32, 3), weights="preset")
    x = images(32)
    np.testing.assert_allclose(backbone.predict(x, verbose=0), net.predict(x, verbose=0), atol=1e-6)
    # weights=None: the preset's architecture, not its weights
    fresh = build_backbone(f"keras_hub:{directory}", input_shape=(32, 32, 3), weights=None)
    assert fresh.output_shape == backbone.output_shape
    assert not np.allclose(fresh.predict(x, verbose=0), net.predict(x, verbose=0))


def test_preprocessing_from_the_image_converter(resnet_preset, vit_preset):
    prep = backbone_preprocessing(f"keras_hub:{resnet_preset[1]}")
    np.testing.assert_allclose(prep["mean"], MEAN, rtol=1e-6)
    np.testing.assert_allclose(prep["std"], STD, rtol=1e-6)
    # no image_converter.json in the preset: the ImageNet default
    prep = backbone_preprocessing(f"keras_hub:{vit_preset[1]}")
    np.testing.assert_allclose(prep["std"], STD)


def test_vit_tokens_become_the_patch_grid(vit_preset):
    net, directory = vit_preset
    backbone = build_backbone(f"keras_hub:{directory}", input_shape=(16, 16, 3), weights="preset")
    assert backbone.output_shape == (None, 4, 4, 16)
    x = images(16)
    tokens = net.predict({"images": x}, verbose=0)  # (2, 1 + 2 + 16, 16): CLS, registers, patches
    expected = tokens[:, 3:, :].reshape(2, 4, 4, 16)  # row-major patch order
    np.testing.assert_allclose(backbone.predict(x, verbose=0), expected, atol=1e-5)


def _layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _layers(layer)


def test_cgd_model_on_a_hub_backbone_freezes_bn_and_reloads(resnet_preset, tmp_path):
    _, directory = resnet_preset
    model = keras_cgd.build_model(
        "cgd", backbone=f"keras_hub:{directory}", weights="preset", num_classes=3,
        input_shape=(32, 32, 3), descriptors="SG", embedding_dim=8, freeze_bn_statistics=True,
    )
    bns = [l for l in _layers(model) if isinstance(l, keras.layers.BatchNormalization)]
    frozen = [l for l in bns if isinstance(l, FrozenBatchNormalization)]
    assert len(bns) == 10 and len(frozen) == 9  # every BN of the hub ResNet; not the classifier's
    x = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3)).astype("uint8")
    path = str(tmp_path / "hub.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    a, b = model.predict(x, verbose=0), restored.predict(x, verbose=0)
    np.testing.assert_allclose(a["embedding"], b["embedding"], atol=1e-5)


def test_patch_token_grid_config_round_trip():
    layer = PatchTokenGrid(2, 3)
    restored = PatchTokenGrid.from_config(layer.get_config())
    x = np.arange(2 * 7 * 4, dtype="float32").reshape(2, 7, 4)
    np.testing.assert_array_equal(restored(x), x[:, 1:, :].reshape(2, 2, 3, 4))


def test_bad_hub_arguments(vit_preset, monkeypatch):
    with pytest.raises(ValueError, match="keras_hub:<preset>"):
        build_backbone("keras_hub:")
    with pytest.raises(ValueError, match="weights"):
        build_backbone(f"keras_hub:{vit_preset[1]}", input_shape=(16, 16, 3), weights="imagenet.h5")
    with pytest.raises(ValueError, match="last_stride"):
        build_backbone(f"keras_hub:{vit_preset[1]}", input_shape=(16, 16, 3), last_stride=1)
    monkeypatch.setitem(sys.modules, "keras_hub", None)  # as if not installed
    with pytest.raises(ImportError, match=r"keras-cgd\[hub\]"):
        build_backbone("keras_hub:resnet_50_imagenet")
