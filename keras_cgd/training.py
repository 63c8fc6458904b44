"""Train, evaluate, resume and export: the logic behind `keras-cgd` and the notebooks.

TensorFlow is needed for the input pipelines (`tf.data`); the model trains on whichever
Keras backend is active (TensorFlow or JAX).

A training run lives in a run directory (default `runs/<preset>-<dataset>-<hash>`, the
hash taken from the arguments that change training) holding

    state.json              {"completed_epochs", "epochs", "args", "checkpoint", ...}
    epoch-0003.keras        model + optimizer state after the last completed epoch

Both are written atomically (temporary file + `os.replace`; the checkpoint first, then
the state that names it), so a run killed at any moment resumes from its last completed
epoch. Epoch `e` trains on batches planned from `(seed, e)` alone, so a resumed epoch
sees exactly the batches it would have seen without the interruption.

Example:

>>> from keras_cgd import training
>>> result = training.train(training.TrainConfig(epochs=1, small=True))
>>> result["recall_after"], result["export_path"]
"""

import copy
import dataclasses
import hashlib
import json
import os
import time

import numpy as np

BUILTIN_DATASETS = ("photo_views", "digits")
STANDARD_DATASETS = ("cub200", "cars196", "sop", "inshop")
SMALL_ENV = "KERAS_CGD_SMALL"
STATE_FILENAME = "state.json"

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
        dataset: built-in name ("photo_views", "digits"), a standard dataset
            `"cub200:PATH"`, `"cars196:PATH"`, `"sop:PATH"`, `"inshop:PATH"`, a folder
            holding one of those layouts (detected), or an image folder (see
            `resolve_dataset`).
        preset: preset name (`keras_cgd.list_presets()`); None with `model` set builds
            that family with its defaults.
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

    dataset: str = "photo_views"
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


class DatasetSplits:
    """Train and test splits of a retrieval dataset (disjoint classes).

    Attributes:
        name: short name of the dataset (for run and model names).
        train: `ImageDataset` of the training classes.
        test: `ImageDataset` evaluated as a gallery where every item queries the rest,
            or the gallery when `query` is given.
        query: optional `ImageDataset` of queries (In-shop), else None.
    """

    def __init__(self, name, train, test, query=None):
        self.name = name
        self.train = train
        self.test = test
        self.query = query

    @property
    def num_train_classes(self):
        return int(self.train.num_classes)

    def __repr__(self):
        return f"DatasetSplits({self.name!r}, train={self.train!r}, test={self.test!r})"


def _usage_error(arg, expected, value):
    return ValueError(f"Invalid value received for argument `{arg}`. Expected {expected}. Received: {arg}={value!r}")


def dataset_choices():
    """Human-readable list of the accepted dataset specifications."""
    return list(BUILTIN_DATASETS) + [f"{n}:PATH" for n in STANDARD_DATASETS] + ["an image folder"]


def _detect_layout(path):
    """Standard dataset name whose index files are in `path`, else None."""
    checks = (
        ("cub200", ("images.txt", os.path.join("CUB_200_2011", "images.txt"))),
        ("cars196", ("cars_annos.mat", os.path.join("CARS196", "cars_annos.mat"))),
        ("sop", ("Ebay_train.txt", os.path.join("Stanford_Online_Products", "Ebay_train.txt"))),
        ("inshop", (os.path.join("Eval", "list_eval_partition.txt"), "list_eval_partition.txt")),
    )
    for name, files in checks:
        if any(os.path.isfile(os.path.join(path, f)) for f in files):
            return name
    return None


def check_dataset_spec(spec):
    """Validates a dataset specification without reading it; returns `(kind, value)`.

    kind is "builtin", one of `STANDARD_DATASETS`, or "folder". Raises `ValueError`
    naming the value and the valid choices.
    """
    if not isinstance(spec, str) or not spec:
        raise _usage_error("dataset", f"one of {dataset_choices()}", spec)
    if spec in BUILTIN_DATASETS:
        return "builtin", spec
    kind, sep, path = spec.partition(":")
    if sep and kind in STANDARD_DATASETS:
        if not os.path.isdir(path):
            raise _usage_error("dataset", f"an existing {kind} folder after '{kind}:'", spec)
        return kind, path
    if os.path.isdir(spec):
        return _detect_layout(spec) or "folder", spec
    raise _usage_error(
        "dataset", f"one of {list(BUILTIN_DATASETS)}, {[n + ':PATH' for n in STANDARD_DATASETS]} or an existing image folder", spec
    )


def _folder_splits(root):
    """`root/{train,test}/<class>/...` or `root/<class>/...` split by classes (first half train)."""
    from keras_cgd import data

    if os.path.isdir(os.path.join(root, "train")) and os.path.isdir(os.path.join(root, "test")):
        return data.image_folder(os.path.join(root, "train")), data.image_folder(os.path.join(root, "test"))
    full = data.image_folder(root)
    if full.num_classes < 2:
        raise ValueError(
            f"Invalid value received for argument `dataset`. An image folder needs at least 2 class "
            f"sub-folders (first half train, second half test) or train/ and test/ sub-folders. "
            f"Received: dataset={root!r} with {full.num_classes} class(es)"
        )
    cut = (full.num_classes + 1) // 2
    parts = []
    for keep_train in (True, False):
        mask = full.labels < cut if keep_train else full.labels >= cut
        offset = 0 if keep_train else cut
        names = full.class_names[:cut] if keep_train else full.class_names[cut:]
        skipped = [(p, r) for p, r in full.skipped if os.path.relpath(p, root).split(os.sep)[0] in names]
        parts.append(data.ImageDataset(full.labels[mask] - offset, names, paths=full.paths[mask], skipped=skipped,
                                       root=root))
    return parts[0], parts[1]


def resolve_dataset(spec="photo_views", image_size=64, small=False, seed=0):
    """Reads a dataset given as on the command line into train/test `DatasetSplits`.

    Args:
        spec: "photo_views" / "digits" (built-in, offline), `"cub200:PATH"`,
            `"cars196:PATH"`, `"sop:PATH"`, `"inshop:PATH"`, a folder holding one of
            those layouts (detected from its index files), or an image folder:
            `root/train/<class>/*` + `root/test/<class>/*`, or `root/<class>/*` whose
            classes (sorted) are split in halves, the first for training.
        image_size: side of the built-in images.
        small: fewer built-in images (test-sized).
        seed: rendering seed of the built-in images.

    Returns:
        `DatasetSplits`.
    """
    from keras_cgd import data

    kind, value = check_dataset_spec(spec)
    if kind == "builtin":
        sizes = {"train_per_class": 8, "test_per_class": 4} if small else {}
        b = data.load_builtin(value, image_size=int(image_size), seed=seed, **sizes)
        test = data.ImageDataset(b.test_labels - b.num_train_classes, b.class_names[b.num_train_classes:],
                                 images=b.test_images, root=f"<builtin {value}>")
        train = data.ImageDataset(b.train_labels, b.class_names[: b.num_train_classes],
                                  images=b.train_images, root=f"<builtin {value}>")
        return DatasetSplits(value, train, test)
    if kind == "folder":
        train, test = _folder_splits(value)
        return DatasetSplits(os.path.basename(os.path.normpath(value)) or "folder", train, test)
    if kind == "inshop":
        return DatasetSplits(kind, data.inshop_clothes(value, "train"), data.inshop_clothes(value, "gallery"),
                             query=data.inshop_clothes(value, "query"))
    reader = {"cub200": data.cub200, "cars196": data.cars196, "sop": data.stanford_online_products}[kind]
    return DatasetSplits(kind, reader(value, "train"), reader(value, "test"))


# ------------------------------------------------------------------------- model settings


def resolve_settings(config):
    """The full training settings of `config`: preset, model kwargs, batching, schedule.

    Returns a dict with `family`, `model_kwargs`, `image_size`, `epochs`, `batching`
    ("pk"/"ra"), its sizes, `epoch_length_factor` (repeated augmentation; preset, else
    2.0 as MultiGrain), `learning_rate`, `drops`, `drop_factor`, `augmentation`,
    `recall_ks`, `small`, `name`. Raises `ValueError` for unknown presets or options.
    """
    from keras_cgd.models.presets import MODEL_FAMILIES
    from keras_cgd.models.presets import get_preset
    from keras_cgd.models.presets import list_presets

    small = small_from_env() if config.small is None else bool(config.small)
    if config.preset is None and config.model is None:
        preset_name = "cgd_tiny"
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
    """Validates CGD descriptor letters ("S", "M", "G", each at most once)."""
    if family != "cgd":
        raise _usage_error("descriptors", "no descriptors for a MultiGrain model (it uses GeM)", descriptors)
    if (
        not isinstance(descriptors, str)
        or not descriptors
        or any(c not in "SMG" for c in descriptors)
        or len(set(descriptors)) != len(descriptors)
    ):
        raise _usage_error("descriptors", "distinct letters from 'S' (SPoC), 'M' (MAC), 'G' (GeM), e.g. 'SMG' or 'SG'", descriptors)
    return descriptors


def run_dir_for(config, settings, dataset_name):
    """Default run directory: `runs/<name>-<dataset>-<hash of the training arguments>`."""
    digest = hashlib.sha1(json.dumps(training_args(config, settings), sort_keys=True).encode()).hexdigest()[:8]
    return os.path.join("runs", f"{settings['name']}-{dataset_name}-{digest}")


def training_args(config, settings):
    """The JSON-able arguments a resumed run must match."""
    args = {k: getattr(config, k) for k in _TRAINING_KEYS}
    args["small"] = settings["small"]
    args["epochs"] = settings["epochs"]
    return json.loads(json.dumps(args))


# ------------------------------------------------------------------------- run state


def _atomic_write_json(path, obj):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_state(run_dir):
    """The saved state of a run directory (`state.json`), or None."""
    path = os.path.join(run_dir, STATE_FILENAME)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _save_checkpoint(model, run_dir, epoch, state):
    """Writes `epoch-XXXX.keras` atomically, then the state naming it; drops older ones."""
    name = f"epoch-{epoch:04d}.keras"
    tmp = os.path.join(run_dir, f".tmp-{os.getpid()}-{name}")
    model.save(tmp)
    os.replace(tmp, os.path.join(run_dir, name))
    state = dict(state, completed_epochs=epoch, checkpoint=name)
    _atomic_write_json(os.path.join(run_dir, STATE_FILENAME), state)
    for f in os.listdir(run_dir):
        if f.endswith(".keras") and f != name and (f.startswith("epoch-") or f.startswith(".tmp-")):
            try:
                os.remove(os.path.join(run_dir, f))
            except OSError:
                pass
    return state


def load_model(path):
    """Loads a `.keras` file, or the last checkpoint of a run directory."""
    import keras

    import keras_cgd.models  # noqa: F401  (registers the custom classes)

    if os.path.isdir(path):
        state = read_state(path)
        if not state or not state.get("checkpoint"):
            raise _usage_error("model", "a .keras file or a run directory with a checkpoint", path)
        path = os.path.join(path, state["checkpoint"])
    if not (os.path.isfile(path) and path.endswith(".keras")):
        raise _usage_error("model", "an existing .keras file or run directory", path)
    return keras.saving.load_model(path)


# ------------------------------------------------------------------------- evaluation


def embed(model, dataset, image_size=None, batch_size=64):
    """`(N, D)` embeddings of an `ImageDataset` (in-memory arrays or files)."""
    from keras_cgd import data

    size = image_size or model.input_shape[1]
    if dataset.images is not None and dataset.images.shape[1:3] == (size, size):
        return np.asarray(model.predict(dataset.images, batch_size=batch_size, verbose=0)["embedding"])
    batches = data.inference_batches(dataset, batch_size, image_size=size)
    return np.asarray(model.predict(batches.map(lambda x, y: x), verbose=0)["embedding"])


def evaluate(model, splits, ks=(1, 2, 4, 8), with_map=False):
    """Recall@K (and MAP@R) of `model` on the held-out classes of `splits`.

    Every test image queries the rest of the test set (self excluded), or, with a
    separate query split (In-shop), queries search the gallery.

    Returns:
        dict `{"recall": {k: r}, "map_at_r": float (with_map)}`.
    """
    from keras_cgd.evaluation import map_at_r
    from keras_cgd.evaluation import recall_at_k

    gallery = embed(model, splits.test)
    kwargs = {}
    if splits.query is not None:
        kwargs = {"query_embeddings": embed(model, splits.query), "query_labels": splits.query.labels}
    available = len(splits.test) - (0 if splits.query is not None else 1)
    ks = [k for k in ks if k <= available] or [1]
    out = {"recall": recall_at_k(gallery, splits.test.labels, ks, **kwargs)}
    if with_map:
        out["map_at_r"] = map_at_r(gallery, splits.test.labels, **kwargs)
    return out


def format_recall(recall):
    """`R@1 0.417  R@2 0.552 ...`."""
    return "  ".join(f"R@{k} {v:.3f}" for k, v in recall.items())


# ------------------------------------------------------------------------- training


def _batches(splits, settings, epoch, seed):
    """The batches of one epoch, planned from `(seed, epoch)` only."""
    from keras_cgd import data

    epoch_seed = int(seed) * 100_003 + int(epoch)
    if settings["batching"] == "pk":
        return data.class_balanced_batches(
            splits.train, settings["classes_per_batch"], settings["images_per_class"],
            image_size=settings["image_size"], augmentation=settings["augmentation"],
            steps_per_epoch=settings["steps_per_epoch"], seed=epoch_seed,
        )
    return data.repeated_augmentation_batches(
        splits.train, settings["batch_size"], settings["repeats"], image_size=settings["image_size"],
        augmentation=settings["augmentation"], epoch_length_factor=settings["epoch_length_factor"],
        steps_per_epoch=settings["steps_per_epoch"], seed=epoch_seed,
    )


def train(config=None, log=print, **overrides):
    """Trains (or resumes) a model, evaluates Recall@K before and after, and exports it.

    Args:
        config: a `TrainConfig` (default: the default job on "photo_views").
        log: function called with each progress line (`print`; None for silence).
        **overrides: `TrainConfig` fields replacing those of `config`.

    Returns:
        dict with `run_dir`, `initial_epoch` (0 for a fresh run), `completed_epochs`,
        `epochs`, `recall_before`, `recall_after` (`{k: recall}` on the test classes),
        `map_at_r`, `history` (per-epoch loss), `export_path` (or None), `checkpoint`,
        `model`, `seconds`.
    """
    import keras

    import keras_cgd
    from keras_cgd.models import step_decay_schedule

    log = log or (lambda *_: None)
    start = time.time()
    config = dataclasses.replace(copy.copy(config or TrainConfig()), **overrides)
    settings = resolve_settings(config)
    splits = resolve_dataset(config.dataset, settings["image_size"], settings["small"], config.seed)
    args = training_args(config, settings)
    run_dir = config.run_dir or run_dir_for(config, settings, splits.name)
    os.makedirs(run_dir, exist_ok=True)
    state = None if config.fresh else read_state(run_dir)
    if state is not None and state.get("args") != args:
        diff = sorted(k for k in set(args) | set(state.get("args", {})) if args.get(k) != state.get("args", {}).get(k))
        raise ValueError(
            f"Invalid value received for argument `run_dir`. Its saved run has other arguments ({diff}); "
            f"pass --fresh to start over or another --run-dir. Received: run_dir={run_dir!r}"
        )
    log(f"dataset {splits.name}: {len(splits.train)} train images / {splits.num_train_classes} classes, "
        f"{len(splits.test)} test images / {splits.test.num_classes} held-out classes")
    skipped = [s for part in (splits.train, splits.test, splits.query) if part is not None for s in part.skipped]
    if skipped:
        log(f"skipped {len(skipped)} unreadable image file(s): "
            + "; ".join(f"{p} ({r})" for p, r in skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    keras.utils.set_random_seed(int(config.seed))
    ckpt = state and state.get("checkpoint") and os.path.join(run_dir, state["checkpoint"])
    if ckpt and os.path.isfile(ckpt):
        model = load_model(ckpt)
        initial_epoch = int(state["completed_epochs"])
        log(f"resuming {run_dir} after epoch {initial_epoch}/{settings['epochs']}")
    else:
        model = keras_cgd.build_model(settings["family"], num_classes=splits.num_train_classes,
                                      **settings["model_kwargs"])
        initial_epoch = 0
        state = {"args": args, "epochs": settings["epochs"], "completed_epochs": 0, "checkpoint": None,
                 "history": []}
    ks = settings["recall_ks"]
    if state.get("recall_before") is None:
        state["recall_before"] = {str(k): v for k, v in evaluate(model, splits, ks)["recall"].items()}
        _atomic_write_json(os.path.join(run_dir, STATE_FILENAME), state)
    recall_before = {int(k): v for k, v in state["recall_before"].items()}
    log(f"before training: {format_recall(recall_before)}")
    log(f"model {settings['name']} ({settings['family']}, {model.count_params():,} parameters, "
        f"{settings['image_size']} px), {settings['epochs']} epochs, "
        + (f"P×K = {settings['classes_per_batch']}×{settings['images_per_class']}" if settings["batching"] == "pk"
           else f"repeated augmentation {settings['batch_size']}/{settings['repeats']}")
        + f", backend {keras.backend.backend()}, run {run_dir}")
    schedule = step_decay_schedule(settings["learning_rate"], settings["epochs"], settings["drops"],
                                   settings["drop_factor"])
    for epoch in range(initial_epoch, settings["epochs"]):
        t0 = time.time()
        batches = _batches(splits, settings, epoch, config.seed)
        hist = model.fit(batches, initial_epoch=epoch, epochs=epoch + 1, verbose=0, shuffle=False,
                         callbacks=[schedule])
        loss = float(hist.history["loss"][-1])
        state["history"] = state.get("history", []) + [{"epoch": epoch + 1, "loss": loss}]
        state = _save_checkpoint(model, run_dir, epoch + 1, state)
        log(f"epoch {epoch + 1}/{settings['epochs']}  loss {loss:.4f}  lr {float(model.optimizer.learning_rate):.2g}  "
            f"{time.time() - t0:.1f} s")
    result = evaluate(model, splits, ks, with_map=True)
    recall_after = result["recall"]
    log(f"after training:  {format_recall(recall_after)}  (MAP@R {result['map_at_r']:.3f})")
    state["recall_after"] = {str(k): v for k, v in recall_after.items()}
    export_path = None
    previous = state.get("export_path")
    if initial_epoch == settings["epochs"] and previous and os.path.isdir(previous):
        export_path = previous
        log(f"SavedModel (already exported by this run): {export_path}")
    elif config.export_dir:
        from keras_cgd.export import export_saved_model

        export_path = export_saved_model(model, os.path.join(config.export_dir, settings["name"]))
        state["export_path"] = export_path
        log(f"SavedModel: {export_path}")
    _atomic_write_json(os.path.join(run_dir, STATE_FILENAME), state)
    return {
        "run_dir": run_dir,
        "initial_epoch": initial_epoch,
        "completed_epochs": int(state["completed_epochs"]),
        "epochs": settings["epochs"],
        "recall_before": recall_before,
        "recall_after": recall_after,
        "map_at_r": result["map_at_r"],
        "history": [h["loss"] for h in state.get("history", [])],
        "export_path": export_path,
        "checkpoint": os.path.join(run_dir, state["checkpoint"]) if state.get("checkpoint") else None,
        "model": model,
        "splits": splits,
        "seconds": time.time() - start,
    }
