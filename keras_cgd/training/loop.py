"""`train`: the training loop with per-epoch checkpoints, resume, evaluation and export."""

import contextlib
import copy
import dataclasses
import os
import time

from keras_cgd.training.config import BOX_DATASETS
from keras_cgd.training.config import TrainConfig
from keras_cgd.training.config import resolve_settings
from keras_cgd.training.config import run_dir_for
from keras_cgd.training.config import training_args
from keras_cgd.training.datasets import resolve_dataset
from keras_cgd.training.run_state import STATE_FILENAME
from keras_cgd.training.run_state import _atomic_write_json
from keras_cgd.training.run_state import _save_checkpoint
from keras_cgd.training.run_state import load_checkpoint
from keras_cgd.training.run_state import read_state
from keras_cgd.training.scoring import evaluate
from keras_cgd.training.scoring import format_metrics


def _batches(splits, settings, epoch, seed):
    """The batches of epoch `epoch` (0-based) of a run seeded `seed`: those of the epoch-th
    iteration of one multi-epoch dataset, however often `fit` iterates this one (on JAX
    the first `fit` of a model reads an extra iterator), so that a resumed epoch trains
    on the batches of the uninterrupted run."""
    from keras_cgd import data

    if settings["batching"] == "pk":
        return data.class_balanced_batches(
            splits.train, settings["classes_per_batch"], settings["images_per_class"],
            image_size=settings["image_size"], augmentation=settings["augmentation"],
            steps_per_epoch=settings["steps_per_epoch"], seed=int(seed), epoch=int(epoch),
            antialias=settings["antialias"],
        )
    return data.repeated_augmentation_batches(
        splits.train, settings["batch_size"], settings["repeats"], image_size=settings["image_size"],
        augmentation=settings["augmentation"], epoch_length_factor=settings["epoch_length_factor"],
        steps_per_epoch=settings["steps_per_epoch"], seed=int(seed), epoch=int(epoch),
        antialias=settings["antialias"], flip_and_color=not settings["flip_and_color_in_model"],
    )


def boxes_line(splits, settings):
    """The line `train` prints about bounding boxes for CUB-200 / CARS196 (else None)."""
    if splits.name not in BOX_DATASETS:
        return None
    used = splits.train.boxes is not None
    return (f"bounding boxes: {'images cropped to their boxes' if used else 'not used (uncropped images)'} "
            f"({settings['crop_to_box_source']})")


def train(config=None, log=print, progress="auto", **overrides):
    """Trains (or resumes) a model, evaluates Recall@K before and after, and exports it.

    "Before" is the network as built: for pretrained weights (the default job's ImageNet
    EfficientNet-Lite0) the baseline to beat, GeM of the pretrained feature map with no
    fine-tuning; for a copy-detection dataset the copy-detection mAP is printed too.

    Args:
        config: a `TrainConfig` (default: the default job, `DEFAULT_PRESET` on its
            dataset "photo_copies").
        log: function called with each log line (`print`; None for silence): the
            dataset, the metrics before and after, one line per epoch, where the
            checkpoint and the SavedModel are.
        progress: bars within epochs, while embedding and while exporting: "auto"
            (default: on a terminal or in Jupyter), True or False (see
            `keras_cgd.training.progress`).
        **overrides: `TrainConfig` fields replacing those of `config`.

    Returns:
        dict with `run_dir`, `initial_epoch` (0 for a fresh run), `completed_epochs`,
        `epochs`, `recall_before`, `recall_after` (`{k: recall}` on the test classes),
        `map_at_r` (retrieval) or `map_before` / `map_after` (copy detection, else None),
        `history` (per-epoch loss), `export_path` (or None), `checkpoint`, `model`,
        `seconds`.
    """
    import keras

    import keras_cgd
    from keras_cgd.models import step_decay_schedule
    from keras_cgd.training import progress as _progress

    log = log or (lambda *_: None)
    show = _progress.resolve_progress(progress)
    start = time.time()
    config = dataclasses.replace(copy.copy(config or TrainConfig()), **overrides)
    settings = resolve_settings(config)
    splits = resolve_dataset(settings["dataset"], settings["image_size"], settings["small"], config.seed,
                             crop_to_box=settings["crop_to_box"])
    if config.crop_to_box and splits.name not in BOX_DATASETS:
        raise ValueError(
            "Invalid value received for argument `crop_to_box`. Bounding boxes exist for "
            f"{list(BOX_DATASETS)} only. Received: crop_to_box=True with dataset={settings['dataset']!r}"
        )
    args = training_args(config, settings, splits.name)
    run_dir = config.run_dir or run_dir_for(config, settings, splits.name)
    os.makedirs(run_dir, exist_ok=True)
    state = None if config.fresh else read_state(run_dir)
    if state is not None and state.get("args") != args:
        diff = sorted(k for k in set(args) | set(state.get("args", {})) if args.get(k) != state.get("args", {}).get(k))
        raise ValueError(
            f"Invalid value received for argument `run_dir`. Its saved run has other arguments ({diff}); "
            f"pass --fresh to start over or another --run-dir. Received: run_dir={run_dir!r}"
        )
    held_out = (f"{len(splits.query)} attacked copies (queries) of {len(splits.test)} held-out references"
                if splits.task == "copy_detection" else
                f"{len(splits.test)} test images / {splits.test.num_classes} held-out classes")
    log(f"dataset {splits.name}: {len(splits.train)} train images / {splits.num_train_classes} classes, {held_out}")
    if boxes_line(splits, settings):
        log(boxes_line(splits, settings))
    skipped = [s for part in (splits.train, splits.test, splits.query) if part is not None for s in part.skipped]
    if skipped:
        log(f"skipped {len(skipped)} unreadable image file(s): "
            + "; ".join(f"{p} ({r})" for p, r in skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    keras.utils.set_random_seed(int(config.seed))
    model = load_checkpoint(run_dir, state) if state is not None else None
    if model is not None:
        initial_epoch = int(state["completed_epochs"])
        log(f"resuming {run_dir} after epoch {initial_epoch}/{settings['epochs']}")
    else:
        model = keras_cgd.build_model(settings["family"], num_classes=splits.num_train_classes,
                                      **settings["model_kwargs"])
        initial_epoch = 0
        state = {"args": args, "epochs": settings["epochs"], "completed_epochs": 0, "checkpoint": None,
                 "history": []}
    state["model_name"] = settings["name"]  # `keras-cgd export <run>` writes its next version
    ks = settings["recall_ks"]
    copy_detection = splits.task == "copy_detection"
    if state.get("recall_before") is None:
        before = evaluate(model, splits, ks, with_map=copy_detection, progress=show)
        state["recall_before"] = {str(k): v for k, v in before["recall"].items()}
        state["map_before"] = before.get("map")
        _atomic_write_json(os.path.join(run_dir, STATE_FILENAME), state)
    recall_before = {int(k): v for k, v in state["recall_before"].items()}
    weights = settings["model_kwargs"].get("weights")
    what = (f"pretrained {settings['model_kwargs'].get('backbone')} weights={weights!r}, no fine-tuning"
            if weights is not None else "random initialisation")
    log(f"before training: {format_metrics({'recall': recall_before, 'map': state.get('map_before')})}  ({what})")
    log(f"model {settings['name']} ({settings['family']}, {model.count_params():,} parameters, "
        f"{settings['image_size']} px), {settings['epochs']} epochs, "
        + (f"P×K = {settings['classes_per_batch']}×{settings['images_per_class']}" if settings["batching"] == "pk"
           else f"repeated augmentation {settings['batch_size']}/{settings['repeats']}")
        + ("" if settings["antialias"] else ", plain-bilinear training resize")
        + (", flip and colour in the model" if settings["flip_and_color_in_model"] else "")
        + f", learning rate {settings['learning_rate']:.3g}"
        + (f" ({settings['learning_rate_note']})" if settings.get("learning_rate_note") else "")
        + f", backend {keras.backend.backend()}, run {run_dir}")
    schedule = step_decay_schedule(settings["learning_rate"], settings["epochs"], settings["drops"],
                                   settings["drop_factor"], convention=settings["lr_drop_convention"])
    with _steps_per_execution(model, settings["steps_per_execution"]):  # nothing predicts in the loop
        for epoch in range(initial_epoch, settings["epochs"]):
            t0 = time.time()
            batches = _batches(splits, settings, epoch, config.seed)
            bar = _progress.keras_progress(f"epoch {epoch + 1}/{settings['epochs']}",
                                           _progress.num_batches(batches, 1), enabled=show)
            hist = model.fit(batches, initial_epoch=epoch, epochs=epoch + 1, verbose=0, shuffle=False,
                             callbacks=[schedule, bar])
            loss = float(hist.history["loss"][-1])
            state["history"] = state.get("history", []) + [{"epoch": epoch + 1, "loss": loss}]
            state = _save_checkpoint(model, run_dir, epoch + 1, state)
            log(f"epoch {epoch + 1}/{settings['epochs']}  loss {loss:.4f}  lr {float(model.optimizer.learning_rate):.2g}  "
                f"{time.time() - t0:.1f} s")
    result = evaluate(model, splits, ks, with_map=True, progress=show)
    recall_after = result["recall"]
    log(f"after training:  {format_metrics(result)}")
    state["recall_after"] = {str(k): v for k, v in recall_after.items()}
    state["map_after"] = result.get("map")
    export_path = None
    previous = state.get("export_path")
    if initial_epoch == settings["epochs"] and previous and os.path.isdir(previous):
        export_path = previous
        log(f"SavedModel (already exported by this run): {export_path}")
    elif config.export_dir:
        from keras_cgd.export import export_saved_model

        with _progress.busy(f"exporting a SavedModel to {os.path.join(config.export_dir, settings['name'])}", show):
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
        "map_at_r": result.get("map_at_r"),
        "map_before": state.get("map_before"),
        "map_after": result.get("map"),
        "history": [h["loss"] for h in state.get("history", [])],
        "export_path": export_path,
        "checkpoint": os.path.join(run_dir, state["checkpoint"]) if state.get("checkpoint") else None,
        "model": model,
        "splits": splits,
        "seconds": time.time() - start,
    }


@contextlib.contextmanager
def _steps_per_execution(model, n):
    """Inside, `model.fit` runs `n` batches per compiled call; `n` is set back afterwards.

    Keras reads `model.steps_per_execution` (set by `compile`) when it builds its train
    and predict functions and then keeps them: a predict function built for 1 and run
    after the attribute became 2 returned 64 of 96 outputs (Keras 3.15, JAX). So both
    are rebuilt when `n` changes, on the way in and on the way out.
    """
    if n == model.steps_per_execution:
        yield
        return
    previous = model.steps_per_execution
    model.steps_per_execution = n
    model.train_function = model.predict_function = None
    try:
        yield
    finally:
        model.steps_per_execution = previous
        model.train_function = model.predict_function = None
