"""`build_model`: one entry point for both papers and every preset."""

import inspect

import keras

from keras_cgd.models.cgd import CGDModel
from keras_cgd.models.multigrain import MultiGrainModel
from keras_cgd.models.presets import MODEL_FAMILIES
from keras_cgd.models.presets import PRESETS
from keras_cgd.models.presets import list_presets

_CLASSES = {"cgd": CGDModel, "multigrain": MultiGrainModel}


def build_model(name="cgd", compile=True, **kwargs):
    """Build a CGD or MultiGrain model, compiled with the paper's recipe.

    Args:
        name: "cgd", "multigrain" or a preset name (`list_presets()`).
        compile: compile with the paper recipe (CGD: Adam 1e-4, smoothed and
            tempered cross-entropy + batch-hard triplet; MultiGrain: SGD
            momentum 0.9, λ·CE + (1−λ)·margin loss). Pass False to compile
            yourself.
        **kwargs: constructor arguments of `CGDModel` / `MultiGrainModel`
            (`num_classes`, `backbone`, `weights`, `input_shape`,
            `descriptors`, `embedding_dim`, ...), overriding the preset.
            For a preset with published weights (`multigrain_resnet50_joint_*`,
            `cgd_leftthomas_*`: those with a "checkpoint" entry), `weights` is
            the checkpoint: a local file, a URL (downloaded by
            `keras.utils.get_file`, verified against the preset's pinned hash),
            or "published" (the preset's URL); None builds the architecture
            with random weights. See `keras_cgd.models.from_checkpoint`.

    Returns:
        A functional `keras.Model` with outputs `{"embedding", "logits"}`.

    Example:

    >>> model = keras_cgd.build_model("cgd", num_classes=100,
    ...     backbone="tiny_convnet", input_shape=(64, 64, 3), embedding_dim=96)
    >>> out = model.predict(np.zeros((2, 64, 64, 3), "uint8"), verbose=0)
    >>> out["embedding"].shape, out["logits"].shape
    ((2, 96), (2, 100))
    """
    if not isinstance(name, str):
        raise TypeError(f"Expected a model or preset name (str). Received: name={name!r}")
    if name in PRESETS and PRESETS[name].get("checkpoint") and kwargs.get("weights") is not None:
        from keras_cgd.models.checkpoints import build_preset_with_weights

        return build_preset_with_weights(name, kwargs.pop("weights"), compile=compile, **kwargs)
    if name in PRESETS:
        preset = PRESETS[name]
        family = preset["model"]
        config = {**preset["config"], **kwargs}
    elif name in MODEL_FAMILIES:
        family = name
        config = dict(kwargs)
    else:
        raise ValueError(
            "Unknown model. Expected one of "
            f"{list(MODEL_FAMILIES) + list_presets()}. Received: name={name!r}"
        )
    cls = _CLASSES[family]
    valid = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "kwargs")]
    unknown = sorted(k for k in config if k not in valid and k not in ("name", "dtype"))
    if unknown:
        raise TypeError(
            f"Unknown argument(s) {unknown} for build_model({name!r}). "
            f"Valid arguments: {valid}"
        )
    if "num_classes" not in config:
        raise ValueError(
            f"build_model({name!r}) needs `num_classes` (the number of training "
            "classes), or num_classes=None for an embedding-only model."
        )
    model = cls(**config)
    if compile:
        model.compile()
    return model


_DROP_CONVENTIONS = ("multistep", "multigrain")


def step_decay_epochs(epochs, drop_epochs_fraction):
    """The drop epochs `int(f · epochs)` of each fraction f (as `int(0.6 * E)` in leftthomas/CGD)."""
    return [int(f * epochs) for f in drop_epochs_fraction]


def step_decay_schedule(initial_learning_rate, epochs, drop_epochs_fraction=(0.6, 0.8), factor=0.1,
                        convention="multistep"):
    """A `LearningRateScheduler` callback multiplying the rate by `factor` at each drop.

    With drop epochs `d_k = int(f_k · epochs)` and Keras' 0-based epoch index `e`:

        "multistep":  lr(e) = lr0 · factor^#{k : e >= d_k}
        "multigrain": lr(e) = lr0 · factor^#{k : e >  d_k}

    "multistep" is PyTorch's `MultiStepLR(milestones=d)` stepped after every epoch, as
    leftthomas/CGD trains (20 epochs: epochs 0–11 at 1e-4, 12–15 at 1e-5, 16–19 at
    1e-6). "multigrain" is `set_learning_rate` of MultiGrain's `scripts/train.py`
    (`if epoch > drop`, 0-based): with drops 30/60/90 of 120, epochs 0–30 run at 0.2,
    31–60 at 0.02, 61–90 at 0.002 and 91–119 at 0.0002.

    Args:
        initial_learning_rate: lr0.
        epochs: total epochs E.
        drop_epochs_fraction: fractions f_k of E (CGD: 0.6, 0.8; MultiGrain: 0.25,
            0.5, 0.75 = 30/60/90 of 120).
        factor: multiplier per drop (0.1).
        convention: "multistep" (default, CGD) or "multigrain".

    Returns:
        `keras.callbacks.LearningRateScheduler`.
    """
    if convention not in _DROP_CONVENTIONS:
        raise ValueError(
            "Invalid value received for argument `convention`. Expected one of "
            f"{list(_DROP_CONVENTIONS)}. Received: convention={convention!r}"
        )
    drops = step_decay_epochs(epochs, drop_epochs_fraction)
    strict = convention == "multigrain"

    def schedule(epoch, lr):
        passed = sum((epoch > d) if strict else (epoch >= d) for d in drops)
        return float(initial_learning_rate * factor**passed)

    return keras.callbacks.LearningRateScheduler(schedule)
