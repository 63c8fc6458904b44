"""Base class of keras-cgd's functional embedding models."""

import keras

from keras_cgd.layers.image_normalization import ImageNormalization
from keras_cgd.losses.margin import MarginLoss
from keras_cgd.models.backbones import backbone_preprocessing
from keras_cgd.models.backbones import build_backbone


def _check_num_classes(num_classes):
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise ValueError(
            "Invalid value received for argument `num_classes`. Expected a "
            f"positive int, or None for no classifier. Received: "
            f"num_classes={num_classes!r}"
        )


def _check_input_shape(input_shape):
    shape = tuple(input_shape)
    if len(shape) != 3 or shape[-1] != 3 or any(
        d is not None and (not isinstance(d, int) or d < 1) for d in shape
    ):
        raise ValueError(
            "Invalid value received for argument `input_shape`. Expected "
            "(height, width, 3) with positive ints or None. "
            f"Received: input_shape={input_shape!r}"
        )
    return shape


def _flatten_losses(loss):
    if isinstance(loss, dict):
        return list(loss.values())
    if isinstance(loss, (list, tuple)):
        return list(loss)
    return [loss]


class EmbeddingModel(keras.Model):
    """A functional Keras model with outputs `{"embedding", "logits"}`.

    Subclasses (`CGDModel`, `MultiGrainModel`) build their graph in
    `__init__` from plain arguments, return those arguments from
    `get_config`, and are rebuilt from them by `from_config` (the keras-hub
    pattern), so `.keras` files round-trip. `compile()` with no arguments
    uses the paper's recipe; `preprocessing` describes what the model expects
    (RGB pixels in [0, 255]; normalisation happens inside the model).
    """

    @staticmethod
    def _build_trunk(
        backbone,
        input_shape,
        weights,
        last_stride,
        freeze_bn_statistics,
        mean,
        std,
        channel_order,
        backbone_strides=None,
        augmentation=None,
    ):
        """Inputs → [augmentation →] ImageNormalization → backbone feature map.

        `backbone_strides`: per-stage strides of a tv_resnet* backbone (None:
        the backbone's own). `augmentation`: a training-only layer applied to the
        input pixels first (None: none).

        Returns `(inputs, feature_map, normalization)`.
        """
        input_shape = _check_input_shape(input_shape)
        default = backbone_preprocessing(backbone)
        normalization = {
            "mean": list(mean if mean is not None else default["mean"]),
            "std": list(std if std is not None else default["std"]),
            "channel_order": channel_order or default["channel_order"],
        }
        inputs = keras.Input(input_shape, name="images")
        x = inputs if augmentation is None else augmentation(inputs)
        x = ImageNormalization(**normalization, name="normalization")(x)
        net = build_backbone(
            backbone,
            input_shape=input_shape,
            weights=weights,
            last_stride=last_stride,
            freeze_bn_statistics=freeze_bn_statistics,
            strides=None if backbone_strides is None else tuple(backbone_strides),
        )
        feature_map = net(x)
        if len(feature_map.shape) != 4:
            raise ValueError(
                "The backbone must output a 4D feature map (batch, H, W, C). "
                f"Received output shape {feature_map.shape} from "
                f"{getattr(net, 'name', net)!r}."
            )
        return inputs, feature_map, normalization

    @staticmethod
    def _config_from_arguments(arguments):
        """The constructor arguments (from `locals()` taken first thing in a
        subclass `__init__`) as stored by `get_config`. Weights are never
        re-fetched on reload: they come from the saved file."""
        config = {
            k: v for k, v in arguments.items() if k not in ("self", "kwargs", "__class__")
        }
        config["weights"] = None
        config["input_shape"] = tuple(config["input_shape"])
        return config

    def _finish_functional_init(self, inputs, embedding, logits, config, normalization, **kwargs):
        """Wrap the outputs as float32 (whatever the dtype policy), build the
        functional graph and keep the constructor configuration."""
        outputs = {
            "embedding": keras.layers.Activation("linear", dtype="float32", name="embedding")(embedding)
        }
        if logits is not None:
            outputs["logits"] = keras.layers.Activation("linear", dtype="float32", name="logits")(logits)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self._init_config = config
        self._normalization = normalization

    @property
    def preprocessing(self):
        """`{"image_size": [H, W], "mean", "std", "channel_order"}`.

        `image_size` is the input size of a fixed-size model; a variable-size one
        (`input_shape=(None, None, 3)`) reports its `image_size` argument (the
        training resolution, to which `export_saved_model`'s `image_bytes`
        signature resizes), or `[None, None]` without one.
        """
        h, w, _ = self._init_config["input_shape"]
        default = self._init_config.get("image_size")
        if default is not None:
            h = default if h is None else h
            w = default if w is None else w
        return {"image_size": [h, w], **self._normalization}

    # --- training recipe -------------------------------------------------
    def default_compile_arguments(self):
        """`(optimizer, loss, loss_weights, metrics)` of the paper recipe."""
        raise NotImplementedError

    def compile(self, optimizer="auto", loss="auto", loss_weights="auto", metrics="auto", **kwargs):
        """Compile; arguments left at "auto" take the paper's recipe."""
        if any(_is_auto(v) for v in (optimizer, loss, loss_weights, metrics)):
            d_opt, d_loss, d_weights, d_metrics = self.default_compile_arguments()
            optimizer = d_opt if _is_auto(optimizer) else optimizer
            if _is_auto(loss):
                loss = d_loss
                loss_weights = d_weights if _is_auto(loss_weights) else loss_weights
            metrics = d_metrics if _is_auto(metrics) else metrics
        loss_weights = None if _is_auto(loss_weights) else loss_weights
        super().compile(
            optimizer=optimizer, loss=loss, loss_weights=loss_weights, metrics=metrics, **kwargs
        )
        self._bind_margin_losses()

    def get_compile_config(self):
        if self.compiled and hasattr(self, "_compile_config"):
            return self._compile_config.serialize()
        return {}

    def compile_from_config(self, config):
        """Recompile from a saved compile config (used by `load_model`)."""
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    def _bind_margin_losses(self):
        margin_losses = [
            l for l in _flatten_losses(self.loss) if isinstance(l, MarginLoss)
        ]
        if not margin_losses:
            return
        try:
            state = self.get_layer("margin_state")
        except ValueError:
            return
        for l in margin_losses:
            l.bind(state.beta, state.seed_generator)
        opt = self.optimizer
        if opt is not None and getattr(opt, "weight_decay", None) and not opt.built:
            opt.exclude_from_weight_decay(var_list=[state.beta])

    # --- serialization ---------------------------------------------------
    def get_config(self):
        config = {"name": self.name, "trainable": self.trainable}
        config.update(self._init_config)
        backbone = config.get("backbone")
        if isinstance(backbone, keras.Model):
            config["backbone"] = keras.saving.serialize_keras_object(backbone)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("backbone"), dict):
            config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        if "input_shape" in config:
            config["input_shape"] = tuple(config["input_shape"])
        return cls(**config)


def _is_auto(value):
    return isinstance(value, str) and value == "auto"
