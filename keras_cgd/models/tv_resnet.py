"""torchvision-layout ResNets (`tv_resnet50`, `tv_resnet101`) that hold PyTorch weights.

torchvision, timm, both papers' reference code and MultiGrain's published checkpoints use one
ResNet layout ("ResNet v1.5"): the stride of a stage's first Bottleneck sits on its 3×3
`conv2` (and on the 1×1 `downsample.0` shortcut), not on the first 1×1 conv as in Caffe's v1
(`keras.applications.ResNet50`), so their weights only fit this layout. Padding is symmetric
(PyTorch `padding=3` for the stem, `padding=1` for 3×3 convs and the max pool), which differs
from Keras `"same"` at stride 2, so it is explicit here.

    conv1 7×7/2 (pad 3) → bn1 → ReLU → maxpool 3×3/2 (pad 1) → layer1 … layer4

Each Keras layer is named after its torchvision tensor with "." → "_" (`layer3_0_conv2`,
`layer3_0_downsample_0`), so `tv_resnet_weight_table` maps a torchvision state dict one to one
through `keras_cgd.weights.port_weights` (the same table, renamed, serves MultiGrain's
`features.*` and CGD's `features.{0..7}.*` checkpoints).

Per-stage strides are settable: `(1, 2, 2, 2)` is torchvision; `(1, 2, 2, 1)` removes the last
downsampling (`last_stride=1`, the CGD paper: 14×14 maps at 224 px); `(1, 2, 1, 2)` is the CGD
reference reimplementation (leftthomas/CGD `resnet.py`), whose checkpoints need it.
"""

import keras

BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
WIDTHS = (64, 128, 256, 512)
EXPANSION = 4
TORCHVISION_STRIDES = (1, 2, 2, 2)
# PyTorch BatchNorm: eps 1e-5, momentum 0.1 (Keras counts momentum the other way: 0.9).
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9


def check_strides(strides):
    """Validate per-stage strides: four ints, each 1 or 2. Returns a tuple."""
    try:
        values = tuple(strides)
    except TypeError:
        values = None
    if values is None or len(values) != 4 or any(
        isinstance(s, bool) or s not in (1, 2) for s in values
    ):
        raise ValueError(
            "Invalid value received for argument `strides`. Expected four per-stage strides "
            "(layer1..layer4), each 1 or 2, e.g. (1, 2, 2, 2) as torchvision, (1, 2, 2, 1) "
            f"for last_stride=1, (1, 2, 1, 2) as leftthomas/CGD. Received: strides={strides!r}"
        )
    return tuple(int(s) for s in values)


def _check_depth(depth):
    if depth not in BLOCKS:
        raise ValueError(
            "Invalid value received for argument `depth`. Expected one of "
            f"{sorted(BLOCKS)}. Received: depth={depth!r}"
        )


def _conv(filters, kernel, stride, name):
    """A bias-free conv with PyTorch's symmetric padding (kernel // 2)."""
    layers = []
    pad = kernel // 2
    if pad and stride > 1:
        layers.append(keras.layers.ZeroPadding2D(pad, name=f"{name}_pad"))
        padding = "valid"
    else:
        padding = "same"  # stride 1: "same" pads kernel // 2 on both sides, as PyTorch
    layers.append(
        keras.layers.Conv2D(
            filters, kernel, strides=stride, padding=padding, use_bias=False, name=name
        )
    )
    return layers


def _apply(layers, x):
    for layer in layers:
        x = layer(x)
    return x


def _bn(name, frozen=False):
    if frozen:
        from keras_cgd.layers.frozen_batch_normalization import FrozenBatchNormalization

        cls = FrozenBatchNormalization
    else:
        cls = keras.layers.BatchNormalization
    return cls(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)


def _bottleneck(x, width, stride, downsample, name, frozen=False):
    """torchvision `Bottleneck`: 1×1 → 3×3 (stride) → 1×1 (4× width), + shortcut, ReLU."""
    shortcut = x
    y = _apply(_conv(width, 1, 1, f"{name}_conv1"), x)
    y = keras.layers.ReLU(name=f"{name}_relu1")(_bn(f"{name}_bn1", frozen)(y))
    y = _apply(_conv(width, 3, stride, f"{name}_conv2"), y)
    y = keras.layers.ReLU(name=f"{name}_relu2")(_bn(f"{name}_bn2", frozen)(y))
    y = _apply(_conv(width * EXPANSION, 1, 1, f"{name}_conv3"), y)
    y = _bn(f"{name}_bn3", frozen)(y)
    if downsample:
        shortcut = keras.layers.Conv2D(
            width * EXPANSION, 1, strides=stride, use_bias=False, name=f"{name}_downsample_0"
        )(x)
        shortcut = _bn(f"{name}_downsample_1", frozen)(shortcut)
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def tv_resnet(
    depth=50,
    input_shape=(None, None, 3),
    strides=TORCHVISION_STRIDES,
    weights=None,
    name=None,
    freeze_bn_statistics=False,
):
    """A headless torchvision-layout ResNet (feature map of `layer4`).

    Args:
        depth: 50 or 101.
        input_shape: `(H, W, 3)` of normalised images (torchvision: RGB, ImageNet mean/std);
            `(None, None, 3)` for any size.
        strides: strides of layer1..layer4, each 1 or 2 (torchvision `(1, 2, 2, 2)`).
        weights: None, a torchvision-format state dict file (`.pth`, `.safetensors`,
            `.npz`), or a mapping `{name: array}`. `fc.*` is ignored; any other unknown,
            missing or misshapen tensor raises `WeightMappingError` naming it.
        name: model name (default `tv_resnet{depth}`).
        freeze_bn_statistics: build with `FrozenBatchNormalization` (moving statistics
            fixed in training, gamma/beta trainable: PyTorch's `bn.eval()`).

    Returns:
        A functional `keras.Model`: `(batch, H, W, 3)` → `(batch, h, w, 2048)`, with
        `h = ceil(H / 2**(2 + number of stride-2 stages))` (7 at 224 px with torchvision
        strides, 14 with one stage at stride 1).

    Example:

    >>> net = tv_resnet(50, input_shape=(64, 64, 3), strides=(1, 2, 2, 1))
    >>> net.output_shape
    (None, 4, 4, 2048)

    Reference: He et al. 2016; torchvision `resnet50`/`resnet101` (v1.5 layout).
    """
    _check_depth(depth)
    strides = check_strides(strides)
    inputs = keras.Input(tuple(input_shape), name="images")
    x = keras.layers.ZeroPadding2D(3, name="conv1_pad")(inputs)
    x = keras.layers.Conv2D(64, 7, strides=2, use_bias=False, name="conv1")(x)
    x = keras.layers.ReLU(name="relu")(_bn("bn1", freeze_bn_statistics)(x))
    # PyTorch pads the max pool with -inf; after a ReLU zeros give the same maxima.
    x = keras.layers.ZeroPadding2D(1, name="maxpool_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="maxpool")(x)
    for stage, (blocks, width, stride) in enumerate(zip(BLOCKS[depth], WIDTHS, strides), start=1):
        for b in range(blocks):
            x = _bottleneck(
                x, width, stride if b == 0 else 1, downsample=b == 0, name=f"layer{stage}_{b}",
                frozen=freeze_bn_statistics,
            )
    model = keras.Model(inputs, x, name=name or f"tv_resnet{depth}")
    if weights is not None:
        load_tv_resnet_weights(model, weights, depth)
    return model


def tv_resnet50(input_shape=(None, None, 3), strides=TORCHVISION_STRIDES, weights=None, name=None,
                freeze_bn_statistics=False):
    """`tv_resnet(50, ...)`: torchvision's `resnet50` layout (timm's `tv_resnet50`)."""
    return tv_resnet(50, input_shape, strides, weights, name, freeze_bn_statistics)


def tv_resnet101(input_shape=(None, None, 3), strides=TORCHVISION_STRIDES, weights=None, name=None,
                 freeze_bn_statistics=False):
    """`tv_resnet(101, ...)`: torchvision's `resnet101` layout (timm's `tv_resnet101`)."""
    return tv_resnet(101, input_shape, strides, weights, name, freeze_bn_statistics)


def tv_resnet_weight_table(depth=50):
    """The `WeightTable` from torchvision ResNet tensor names to `tv_resnet` layers.

    Rows: `conv1.weight`, `bn1.*`, `layer{s}.{b}.{conv,bn}{1,2,3}.*` and, in block 0,
    `layer{s}.{b}.downsample.{0,1}.*` (`fc.*` is not in the table: headless).

    Example:

    >>> table = tv_resnet_weight_table(50)
    >>> len(table)  # 53 convs and 53 BNs x 4 tensors
    265
    """
    from keras_cgd.weights import WeightTable

    _check_depth(depth)
    table = WeightTable().conv("conv1", "conv1").batch_norm("bn1", "bn1")
    for stage, blocks in enumerate(BLOCKS[depth], start=1):
        for b in range(blocks):
            src, dst = f"layer{stage}.{b}", f"layer{stage}_{b}"
            for i in (1, 2, 3):
                table.conv(f"{src}.conv{i}", f"{dst}_conv{i}")
                table.batch_norm(f"{src}.bn{i}", f"{dst}_bn{i}")
            if b == 0:
                table.conv(f"{src}.downsample.0", f"{dst}_downsample_0")
                table.batch_norm(f"{src}.downsample.1", f"{dst}_downsample_1")
    return table


def read_tensors(weights, argument="weights"):
    """`(tensors, source)`: a state dict from a file path (via
    `keras_cgd.weights.readers.read_state_dict`) or a mapping `{name: array}`."""
    import os

    if isinstance(weights, dict):
        return weights, f"the given `{argument}` mapping"
    if isinstance(weights, (str, os.PathLike)):
        from keras_cgd.weights.readers import read_state_dict

        return read_state_dict(os.fspath(weights)), os.fspath(weights)
    raise TypeError(
        f"Invalid type received for argument `{argument}`. Expected None, a state dict file "
        f"path (.pth, .safetensors, .npz) or a dict of arrays. Received: {argument}={weights!r}"
    )


def load_tv_resnet_weights(model, weights, depth=50):
    """Load a torchvision ResNet state dict (file or mapping) into a `tv_resnet` model.

    `fc.*` (the ImageNet classifier) is ignored; a state dict of another architecture
    (e.g. resnet18's into resnet50) fails with the missing/unexpected/misshapen tensors named.
    Returns the number of variables assigned.
    """
    from keras_cgd.weights import port_weights

    tensors, source = read_tensors(weights)
    return port_weights(model, tensors, tv_resnet_weight_table(depth), ignore=("fc.",), source=source)
