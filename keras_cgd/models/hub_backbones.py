"""keras-hub image backbones as keras-cgd backbones: `backbone="keras_hub:<preset>"`.

Any keras-hub image backbone preset works: a built-in name (`"resnet_50_imagenet"`,
`"dinov2_base"`, ...; keras-hub downloads it, e.g. on Colab), a Kaggle/Hugging Face handle,
or a local preset directory written by `Backbone.save_to_preset` (offline). The backbone's
output becomes the feature map the global descriptors pool:

- a 4-D map `(batch, h, w, C)` (CNNs such as `ResNetBackbone`) is used as it is;
- a token sequence `(batch, N, C)` (ViTs such as DINOv2) keeps its last `h·w` tokens, the
  patch tokens (class and register tokens come first), reshaped to the `(h, w)` patch grid
  (`PatchTokenGrid`), so GeM/SPoC/MAC pool patches as they pool CNN positions.

The preset's `ImageConverter` (x·scale + offset on 0–255 pixels) gives the normalisation
(`std = 1 / (255·scale)`, `mean = −offset·std`); a preset without one gets the ImageNet
mean/std. keras-hub is an optional dependency (`pip install "keras-cgd[hub]"`), imported
only when such a backbone is built.
"""

import os

import keras

from keras_cgd.api_export import keras_cgd_export

PREFIX = "keras_hub:"
_PRESET_WEIGHTS = ("preset", "imagenet")


def is_hub_backbone(backbone):
    """Whether `backbone` names a keras-hub preset (`"keras_hub:<preset>"`)."""
    return isinstance(backbone, str) and backbone.startswith(PREFIX)


def _preset(backbone):
    preset = backbone[len(PREFIX):]
    if not preset:
        raise ValueError(
            "Invalid value received for argument `backbone`. Expected 'keras_hub:<preset>' "
            "with a keras-hub preset name (e.g. 'keras_hub:resnet_50_imagenet') or a local "
            f"preset directory. Received: backbone={backbone!r}"
        )
    return preset


def import_keras_hub():
    """Import keras-hub, or raise an ImportError saying how to install it."""
    try:
        import keras_hub
    except ImportError as e:
        raise ImportError(
            "backbone='keras_hub:<preset>' needs the optional dependency keras-hub: "
            "pip install 'keras-cgd[hub]' (or pip install keras-hub)."
        ) from e
    return keras_hub


def hub_preprocessing(backbone, default):
    """`{"mean", "std", "channel_order"}` from the preset's ImageConverter (else `default`)."""
    keras_hub = import_keras_hub()
    try:
        converter = keras_hub.layers.ImageConverter.from_preset(_preset(backbone))
    except (FileNotFoundError, ValueError):
        return dict(default)
    scale, offset = converter.scale, converter.offset
    if scale is None and offset is None:
        # Pixels go in unchanged: mean 0, std 1/255 maps x/255 back to x.
        return {"mean": [0.0] * 3, "std": [1.0 / 255.0] * 3, "channel_order": "rgb"}
    scale = _per_channel(1.0 if scale is None else scale)
    offset = _per_channel(0.0 if offset is None else offset)
    std = [1.0 / (255.0 * s) for s in scale]
    mean = [-o * s for o, s in zip(offset, std)]
    return {"mean": mean, "std": std, "channel_order": "rgb"}


def _per_channel(value):
    if isinstance(value, (int, float)):
        return [float(value)] * 3
    values = [float(v) for v in value]
    return values * 3 if len(values) == 1 else values


@keras_cgd_export
class PatchTokenGrid(keras.layers.Layer):
    """ViT tokens `(batch, N, C)` → patch grid `(batch, h, w, C)`.

    Keeps the last `h·w` tokens (keras-hub ViTs put the class and register tokens first)
    and reshapes them row-major, as the patches were flattened.

    Args:
        grid_height, grid_width: the patch grid (image side // patch size).

    Example:

    >>> tokens = np.zeros((2, 1 + 16, 8), "float32")  # [CLS] + 4×4 patches
    >>> PatchTokenGrid(4, 4)(tokens).shape
    (2, 4, 4, 8)
    """

    def __init__(self, grid_height, grid_width, **kwargs):
        super().__init__(**kwargs)
        self.grid_height = int(grid_height)
        self.grid_width = int(grid_width)

    def call(self, tokens):
        n = self.grid_height * self.grid_width
        patches = tokens[:, -n:, :]
        return keras.ops.reshape(patches, (-1, self.grid_height, self.grid_width, tokens.shape[-1]))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.grid_height, self.grid_width, input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update({"grid_height": self.grid_height, "grid_width": self.grid_width})
        return config


def build_hub_backbone(backbone, input_shape=(None, None, 3), weights="preset"):
    """Load a keras-hub image backbone preset as a feature-map model.

    Args:
        backbone: `"keras_hub:<preset>"` (preset name, handle or local directory).
        input_shape: `(H, W, 3)`; token backbones (ViTs) need a fixed `H` and `W`
            (multiples of the patch size), CNNs accept `(None, None, 3)`.
        weights: "preset" (or "imagenet") loads the preset's weights; None builds the
            preset's architecture with random weights (what a reload from `.keras` does).

    Returns:
        A functional `keras.Model` `(batch, H, W, 3)` → `(batch, h, w, C)` wrapping the
        keras-hub backbone.
    """
    preset = _preset(backbone)
    if weights is not None and weights not in _PRESET_WEIGHTS:
        raise ValueError(
            "Invalid value received for argument `weights`. Expected 'preset' (the keras-hub "
            f"preset's weights; 'imagenet' is accepted too) or None for keras-hub backbones. "
            f"Received: weights={weights!r}"
        )
    keras_hub = import_keras_hub()
    load_weights = weights is not None
    input_shape = tuple(input_shape)
    try:
        net = keras_hub.models.Backbone.from_preset(
            preset, load_weights=load_weights, image_shape=input_shape
        )
    except TypeError:
        # A backbone class without an `image_shape` argument: its own input shape.
        net = keras_hub.models.Backbone.from_preset(preset, load_weights=load_weights)
    inputs = keras.Input(input_shape, name="images")
    feed = {"images": inputs} if isinstance(net.input, dict) else inputs
    x = net(feed)
    if isinstance(x, dict) or len(x.shape) not in (3, 4):
        raise ValueError(
            f"The keras-hub backbone {preset!r} ({type(net).__name__}) does not output a "
            "feature map (batch, h, w, C) or tokens (batch, N, C); it cannot feed global "
            f"descriptors. Received output: {x!r}"
        )
    if len(x.shape) == 3:
        patch = getattr(net, "patch_size", None)
        patch = patch[0] if isinstance(patch, (tuple, list)) else patch
        h, w = input_shape[0], input_shape[1]
        if patch is None or h is None or w is None:
            raise ValueError(
                f"The keras-hub backbone {preset!r} outputs tokens; turning them into a patch "
                "grid needs a fixed input_shape and the backbone's `patch_size`. Expected e.g. "
                f"input_shape=(224, 224, 3). Received: input_shape={input_shape}, "
                f"patch_size={patch}"
            )
        x = PatchTokenGrid(h // int(patch), w // int(patch), name="patch_token_grid")(x)
    name = os.path.basename(os.path.normpath(preset)) or "preset"
    safe = "".join(c if c.isalnum() or c in "_-" else "_" for c in name)
    return keras.Model(inputs, x, name=f"keras_hub_{safe}")
