"""`TrainConfig` and the settings it resolves to (preset, model, batching, schedule)."""

import dataclasses
import hashlib
import json
import os

from keras_cgd.training.errors import usage_error as _usage_error

SMALL_ENV = "KERAS_CGD_SMALL"
# `keras-cgd train` with no arguments: fine-tune ImageNet EfficientNet-Lite0 for copy
# detection on held-out photos (the preset names its dataset, "photo_copies").
DEFAULT_PRESET = "multigrain_lite0_copydetect"
# The dataset of a preset that names none.
DEFAULT_DATASET = "photo_views"

# The arguments that change what training computes (a resumed run must match them).
_TRAINING_KEYS = (
    "dataset", "preset", "model", "backbone", "descriptors", "embedding_dim", "image_size",
    "weights", "epochs", "batching", "classes_per_batch", "images_per_class", "batch_size",
    "repeats", "steps_per_epoch", "learning_rate", "augmentation", "seed", "small",
)


def small_from_env():
    """True when the environment variable `KERAS_CGD_SMALL` asks for test-sized settings."""
    return os.environ.get(SMALL_ENV, "").strip().lower() not in ("", "0", "false", "no")


@dataclasses.dataclass
class TrainConfig:
    """Arguments of `train` (the options of `keras-cgd train`).

    Args:
        dataset: None (the preset's dataset: "photo_copies" for the default preset,
            else "photo_views"), a built-in name ("photo_copies", "photo_views",
            "digits"), a standard dataset
            `"cub200:PATH"`, `"cars196:PATH"`, `"sop:PATH"`, `"inshop:PATH"`, a folder
            holding one of those layouts (detected), or an image folder (see
            `resolve_dataset`).
        preset: preset name (`keras_cgd.list_presets()`); None: `DEFAULT_PRESET`
            ("multigrain_lite0_copydetect"), or with `model` set that family with the
            defaults of its tiny preset.
        model: "cgd" or "multigrain" (overrides the preset's family when no preset).
        backbone, descriptors, embedding_dim, image_size, weights: model options
            overriding the preset.
        epochs: training epochs (default: the preset's).
        batching: "pk" (P×K class-balanced) or "ra" (repeated augmentation); default
            the preset's layout.
        classes_per_batch, images_per_class: P and K of "pk" batches.
        batch_size, repeats: "ra" batches.
        steps_per_epoch: batches per epoch (default: the dataset size / batch size).
        learning_rate: initial rate (default: the preset's), dropped by the preset's
            step schedule.
        augmentation: training augmentation (default: the preset's).
        seed: seed of the batch plans and the model initialisation.
        small: test-sized settings (32 px, few images and steps); default from
            `KERAS_CGD_SMALL`.
        run_dir: run directory (default `runs/<preset>-<dataset>-<hash>`).
        fresh: ignore (and overwrite) a saved run state.
        export_dir: SavedModel base directory (`savedmodels`); None: no export.
        model_name: name under `export_dir` (default: the preset or family name).
        recall_ks: K values of Recall@K (default: the preset's, else 1, 2, 4, 8).
    """

    dataset: str = None
    preset: str = None
    model: str = None
    backbone: str = None
    descriptors: str = None
    embedding_dim: int = None
    image_size: int = None
    weights: str = None
    epochs: int = None
    batching: str = None
    classes_per_batch: int = None
    images_per_class: int = None
    batch_size: int = None
    repeats: int = None
    steps_per_epoch: int = None
    learning_rate: float = None
    augmentation: str = None
    seed: int = 0
    small: bool = None
    run_dir: str = None
    fresh: bool = False
    export_dir: str = "savedmodels"
    model_name: str = None
    recall_ks: tuple = None


def resolve_settings(config):
    """The full training settings of `config`: preset, model kwargs, batching, schedule.

    Returns a dict with `dataset`, `family`, `model_kwargs`, `image_size`, `epochs`, `batching`
    ("pk"/"ra"), its sizes, `epoch_length_factor` (repeated augmentation; preset, else
    2.0 as MultiGrain), `learning_rate`, `drops`, `drop_factor`, `augmentation`,
    `recall_ks`, `small`, `name`. Raises `ValueError` for unknown presets or options.
    """
    from keras_cgd.models.presets import MODEL_FAMILIES
    from keras_cgd.models.presets import get_preset
    from keras_cgd.models.presets import list_presets

    small = small_from_env() if config.small is None else bool(config.small)
    if config.preset is None and config.model is None:
        preset_name = DEFAULT_PRESET
    else:
        preset_name = config.preset
    if preset_name is not None:
        if preset_name not in list_presets():
            raise _usage_error("preset", f"one of {list_presets()}", preset_name)
        preset = get_preset(preset_name)
        if config.model is not None and config.model != preset["model"]:
            raise _usage_error("model", f"{preset['model']!r} (the family of preset {preset_name!r})", config.model)
    else:
        if config.model not in MODEL_FAMILIES:
            raise _usage_error("model", f"one of {list(MODEL_FAMILIES)}", config.model)
        tiny = get_preset(f"{config.model}_tiny")
        preset = {"model": config.model, "config": {}, "training": tiny["training"]}
    family = preset["model"]
    kwargs = dict(preset["config"])
    kwargs.pop("num_classes", None)  # the dataset's training classes decide
    for key in ("backbone", "descriptors", "embedding_dim", "weights"):
        value = getattr(config, key)
        if value is not None:
            kwargs[key] = None if (key == "weights" and value == "none") else value
    if config.descriptors is not None:
        check_descriptors(config.descriptors, family)
    shape = kwargs.get("input_shape", (224, 224, 3))
    image_size = int(config.image_size or shape[0])
    if small and config.image_size is None:
        image_size = min(image_size, 32)
    kwargs["input_shape"] = (image_size, image_size, 3)
    training = preset["training"]
    batching = config.batching or ("ra" if training.get("batching") == "repeated_augmentation" else "pk")
    if batching not in ("pk", "ra"):
        raise _usage_error("batching", "one of ['pk', 'ra']", batching)
    epochs = int(config.epochs or training.get("epochs", 8))
    if epochs < 1:
        raise _usage_error("epochs", "an int >= 1", config.epochs)
    settings = {
        "dataset": config.dataset or training.get("dataset", DEFAULT_DATASET),
        "preset": preset_name,
        "family": family,
        "model_kwargs": kwargs,
        "image_size": image_size,
        "epochs": epochs,
        "batching": batching,
        "classes_per_batch": int(config.classes_per_batch or training.get("classes_per_batch", 8)),
        "images_per_class": int(config.images_per_class or training.get("images_per_class", 4)),
        "batch_size": int(config.batch_size or training.get("batch_size", 48)),
        "repeats": int(config.repeats or training.get("repeats", 3)),
        "epoch_length_factor": float(training.get("epoch_length_factor", 2.0)),  # MultiGrain default
        "steps_per_epoch": config.steps_per_epoch or (4 if small else None),
        "learning_rate": config.learning_rate or kwargs.get("learning_rate") or (1e-4 if family == "cgd" else 0.2),
        "drops": list(training.get("lr_drop_epochs_fraction", [0.6, 0.8])),
        "drop_factor": float(training.get("lr_drop_factor", 0.1)),
        "augmentation": config.augmentation or _default_augmentation(training, batching),
        "recall_ks": [int(k) for k in (config.recall_ks or training.get("recall_ks", (1, 2, 4, 8)))],
        "small": small,
        "name": config.model_name or preset_name or family,
    }
    if small and config.classes_per_batch is None and batching == "pk":
        settings["classes_per_batch"] = min(settings["classes_per_batch"], 8)
    if small and config.batch_size is None and batching == "ra":
        settings["batch_size"] = min(settings["batch_size"], 24)
    return settings


def _default_augmentation(training, batching):
    aug = training.get("augmentation")
    if aug == "full":
        aug = "multigrain"
    if aug is None:
        aug = "cgd" if batching == "pk" else "multigrain"
    return aug


def check_descriptors(descriptors, family="cgd"):
    """Validates CGD descriptor letters ("S", "M", "G", each at most once) for a CGD model."""
    if (
        not isinstance(descriptors, str)
        or not descriptors
        or any(c not in "SMG" for c in descriptors)
        or len(set(descriptors)) != len(descriptors)
    ):
        raise _usage_error("descriptors", "distinct letters from 'S' (SPoC), 'M' (MAC), 'G' (GeM), e.g. 'SMG' or 'SG'", descriptors)
    if family != "cgd":
        raise _usage_error("descriptors", "no descriptors for a MultiGrain model (it uses GeM); descriptors "
                           "apply to CGD presets (e.g. --preset cgd_tiny)", descriptors)
    return descriptors


def run_dir_for(config, settings, dataset_name):
    """Default run directory: `runs/<name>-<dataset>-<hash of the training arguments>`."""
    digest = hashlib.sha1(json.dumps(training_args(config, settings), sort_keys=True).encode()).hexdigest()[:8]
    return os.path.join("runs", f"{settings['name']}-{dataset_name}-{digest}")


def training_args(config, settings):
    """The JSON-able arguments a resumed run must match."""
    args = {k: getattr(config, k) for k in _TRAINING_KEYS}
    args["dataset"] = settings["dataset"]
    args["small"] = settings["small"]
    args["epochs"] = settings["epochs"]
    return json.loads(json.dumps(args))
