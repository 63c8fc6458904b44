"""`TrainConfig` and the settings it resolves to (preset, model, batching, schedule)."""

import dataclasses
import hashlib
import json
import math
import numbers
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

# Bounds of the command line's sizes and counts (an unbounded --image-size ran a machine
# out of memory): a training side in pixels, and batch sizes / counts / epochs.
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 1024
MAX_BATCH_COUNT = 100_000

# Datasets whose readers have bounding boxes (`crop_to_box`).
BOX_DATASETS = ("cub200", "cars196")


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
        crop_to_box: crop CUB-200 / CARS196 images (train and test) to their bounding
            boxes; None: the preset's choice (True: the CGD paper's numbers are
            bbox-cropped). True with a dataset without boxes is an error.
        seed: seed of the batch plans and the model initialisation.
        small: test-sized settings (32 px, few images and steps); default from
            `KERAS_CGD_SMALL`.
        run_dir: run directory (default `runs/<preset>-<dataset>-<hash>`).
        fresh: ignore (and overwrite) a saved run state.
        export_dir: SavedModel base directory (`savedmodels`); None: no export.
        model_name: name under `export_dir` (default: the preset or family name).
        recall_ks: K values of Recall@K (default: the preset's, else 1, 2, 4, 8).
        steps_per_execution: training batches run by one compiled call (Keras'
            `compile(steps_per_execution=...)`; default 1). On a GPU or TPU a value
            such as 8–32 removes the per-step dispatch from the host; the results are
            those of 1 (it is not part of the run's identity, so a run may resume
            with another value).
        antialias: resize training crops with the antialiased bilinear kernel (default
            True: PIL's, as in both papers' code, and what evaluation uses). False:
            plain bilinear, which roughly halves the CPU time of a repeated-augmentation
            batch (`python benchmarks/input_pipeline.py`, `ra_plain_bilinear`) at a
            mean difference of ~0.6 grey levels from PIL's resize on natural photos.
            Evaluation and export always antialias.
        flip_and_color_in_model: MultiGrain's flip and colour augmentation done by the
            model on the accelerator (`keras_cgd.layers.MultiGrainColorAugmentation`,
            the same map) instead of the CPU pipeline (default False). For a
            repeated-augmentation run with the "multigrain" augmentation; it takes
            ~0.65 ms of CPU per 224 px image off the pipeline, and the layer does
            nothing at inference or in the exported SavedModel.
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
    crop_to_box: bool = None
    seed: int = 0
    small: bool = None
    run_dir: str = None
    fresh: bool = False
    export_dir: str = "savedmodels"
    model_name: str = None
    recall_ks: tuple = None
    steps_per_execution: int = 1
    antialias: bool = True
    flip_and_color_in_model: bool = False


def resolve_settings(config):
    """The full training settings of `config`: preset, model kwargs, batching, schedule.

    Returns a dict with `dataset`, `family`, `model_kwargs`, `image_size`, `epochs`, `batching`
    ("pk"/"ra"), its sizes, `epoch_length_factor` (repeated augmentation; preset, else
    2.0 as MultiGrain), `learning_rate`, `drops`, `drop_factor`, `augmentation`,
    `recall_ks`, `small`, `name`, `learning_rate_note` (MultiGrain: the preset's SGD
    rate scaled linearly when the batch differs from the preset's, unless
    `learning_rate` is given), `crop_to_box` (and `crop_to_box_source`, the preset
    or the option that decided it), `lr_drop_convention`. A variable-size model
    (MultiGrain: `input_shape=(None, None, 3)`) stays variable-size and trains at
    `image_size`. Raises `ValueError` for unknown presets or options.
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
    shape = tuple(kwargs.get("input_shape", (None, None, 3) if family == "multigrain" else (224, 224, 3)))
    variable_size = shape[0] is None or shape[1] is None
    image_size = int(config.image_size or ((kwargs.get("image_size") or 224) if variable_size else shape[0]))
    if small and config.image_size is None:
        image_size = min(image_size, 32)
    if variable_size:  # any size at test time (s*); batches are image_size x image_size
        kwargs["input_shape"] = (None, None, 3)
        kwargs["image_size"] = image_size
    else:
        kwargs["input_shape"] = (image_size, image_size, 3)
        kwargs.pop("image_size", None)
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise _usage_error("image_size", f"an int in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}] (pixels per side; a "
                           "larger training size needs the library API and the memory for it)", config.image_size)
    if config.learning_rate is not None and (
            isinstance(config.learning_rate, bool) or not isinstance(config.learning_rate, numbers.Real)
            or not math.isfinite(config.learning_rate) or config.learning_rate <= 0):
        raise _usage_error("learning_rate", "a finite number > 0", config.learning_rate)
    from keras_cgd.data.augment import TRAIN_AUGMENTATIONS

    if config.augmentation is not None and config.augmentation not in TRAIN_AUGMENTATIONS:
        raise _usage_error("augmentation", f"one of {list(TRAIN_AUGMENTATIONS)}", config.augmentation)
    for key in ("classes_per_batch", "images_per_class", "batch_size", "repeats", "steps_per_epoch", "epochs",
                "steps_per_execution"):
        value = getattr(config, key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)
                                  or not 1 <= value <= MAX_BATCH_COUNT):
            raise _usage_error(key, f"an int in [1, {MAX_BATCH_COUNT}]", value)
    training = preset["training"]
    batching = config.batching or ("ra" if training.get("batching") == "repeated_augmentation" else "pk")
    if batching not in ("pk", "ra"):
        raise _usage_error("batching", "one of ['pk', 'ra']", batching)
    if config.crop_to_box not in (None, True, False):
        raise _usage_error("crop_to_box", "True, False or None (the preset's choice)", config.crop_to_box)
    if not isinstance(config.antialias, bool):
        raise _usage_error("antialias", "True or False", config.antialias)
    if config.crop_to_box is None:
        crop_to_box = bool(training.get("crop_to_box", True))
        crop_source = f"preset {preset_name}" if preset_name and "crop_to_box" in training else "default"
    else:
        crop_to_box = bool(config.crop_to_box)
        crop_source = "--crop-to-box" if crop_to_box else "--no-crop-to-box"
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
        "lr_drop_convention": training.get("lr_drop_convention", "multigrain" if family == "multigrain" else "multistep"),
        "crop_to_box": crop_to_box,
        "crop_to_box_source": crop_source,
        "augmentation": config.augmentation or _default_augmentation(training, batching),
        "recall_ks": [int(k) for k in (config.recall_ks or training.get("recall_ks", (1, 2, 4, 8)))],
        "steps_per_execution": int(config.steps_per_execution or 1),
        "antialias": config.antialias,
        "flip_and_color_in_model": config.flip_and_color_in_model,
        "small": small,
        "name": config.model_name or preset_name or family,
    }
    if small and config.classes_per_batch is None and batching == "pk":
        settings["classes_per_batch"] = min(settings["classes_per_batch"], 8)
    if small and config.batch_size is None and batching == "ra":
        settings["batch_size"] = min(settings["batch_size"], 24)
    if not isinstance(config.flip_and_color_in_model, bool):
        raise _usage_error("flip_and_color_in_model", "True or False", config.flip_and_color_in_model)
    if config.flip_and_color_in_model:
        if family != "multigrain" or batching != "ra" or settings["augmentation"] != "multigrain":
            raise _usage_error(
                "flip_and_color_in_model",
                "False unless a MultiGrain model trains on repeated-augmentation batches with the "
                f"'multigrain' augmentation (here: model {family!r}, batching {batching!r}, augmentation "
                f"{settings['augmentation']!r})", True)
        kwargs["flip_and_color"] = True
    settings["learning_rate_note"] = None
    preset_batch = training.get("batch_size")
    if (config.learning_rate is None and family == "multigrain" and batching == "ra" and preset_batch
            and settings["batch_size"] != preset_batch):
        # SGD's rate goes with the batch (linear scaling, Goyal et al. 2017): MultiGrain's
        # 0.2 is for 512 images; kept at a batch of 12 it diverges in one step.
        base = settings["learning_rate"]
        settings["learning_rate"] = base * settings["batch_size"] / preset_batch
        settings["learning_rate_note"] = (
            f"{base:g} x {settings['batch_size']}/{preset_batch}, scaled with the batch size; "
            "--learning-rate sets it"
        )
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
    args = training_args(config, settings, dataset_name)
    digest = hashlib.sha1(json.dumps(args, sort_keys=True).encode()).hexdigest()[:8]
    return os.path.join("runs", f"{settings['name']}-{dataset_name}-{digest}")


def training_args(config, settings, dataset_name=None):
    """The JSON-able arguments a resumed run must match (with the resolved `crop_to_box`
    for a dataset with boxes, `BOX_DATASETS`)."""
    args = {k: getattr(config, k) for k in _TRAINING_KEYS}
    args["dataset"] = settings["dataset"]
    args["small"] = settings["small"]
    args["epochs"] = settings["epochs"]
    if dataset_name in BOX_DATASETS:
        args["crop_to_box"] = settings["crop_to_box"]
    if not config.antialias:  # only when off: runs made before the option keep their identity
        args["antialias"] = False
    if config.flip_and_color_in_model:  # likewise only when on
        args["flip_and_color_in_model"] = True
    return json.loads(json.dumps(args))
