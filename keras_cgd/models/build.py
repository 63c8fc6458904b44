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


def step_decay_schedule(initial_learning_rate, epochs, drop_epochs_fraction=(0.6, 0.8), factor=0.1):
    """A `LearningRateScheduler` callback multiplying the rate by `factor` at
    the given fractions of training (CGD: 0.6, 0.8; MultiGrain: 30/60/90 of
    120 epochs)."""
    drops = [int(round(f * epochs)) for f in drop_epochs_fraction]

    def schedule(epoch, lr):
        return float(initial_learning_rate * factor ** sum(epoch >= d for d in drops))

    return keras.callbacks.LearningRateScheduler(schedule)
