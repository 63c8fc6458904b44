"""Embedding a dataset and scoring Recall@K / MAP@R on its held-out classes."""

import numpy as np


def model_image_size(model):
    """The square side a model embeds at: its fixed input height, else (variable-size
    models, e.g. MultiGrain) `model.preprocessing["image_size"]`, else 224."""
    size = model.input_shape[1]
    if size is None:
        size = (getattr(model, "preprocessing", None) or {}).get("image_size", [None])[0]
    return int(size or 224)


def embed(model, dataset, image_size=None, batch_size=64, progress=False, desc=None):
    """`(N, D)` embeddings of an `ImageDataset` (in-memory arrays or files).

    Args:
        model: a Keras model or a `SavedModelEmbedder` (see `load_embedder`).
        dataset: `keras_cgd.data.ImageDataset`.
        image_size: side the images are resized to (default `model_image_size(model)`).
        batch_size: images per forward pass.
        progress: True draws a bar over the batches (see `progress.resolve_progress`).
        desc: the bar's label (default "embedding N images").
    """
    from keras_cgd import data
    from keras_cgd.training.progress import keras_progress
    from keras_cgd.training.progress import num_batches

    size = image_size or model_image_size(model)
    desc = desc or f"embedding {len(dataset)} images"
    if dataset.images is not None and dataset.images.shape[1:3] == (size, size):
        x = dataset.images
    else:
        x = data.inference_batches(dataset, batch_size, image_size=size).map(lambda x, y: x)
    callbacks = [keras_progress(desc, num_batches(x, batch_size), enabled=bool(progress))] if progress else []
    return np.asarray(model.predict(x, batch_size=batch_size, verbose=0, callbacks=callbacks)["embedding"])


def evaluate(model, splits, ks=(1, 2, 4, 8), with_map=False, progress=False):
    """Recall@K (and MAP@R, or mAP for copy detection) of `model` on the held-out classes.

    Every test image queries the rest of the test set (self excluded), or, with a
    separate query split (In-shop, copy detection), queries search the gallery. For a
    copy-detection split (`splits.task == "copy_detection"`) R@K is the fraction of
    attacked copies whose original is among the first K references, and `with_map` adds
    the copy-detection mAP (`keras_cgd.evaluation.copy_detection_map`). `progress=True` draws a
    bar while the images are embedded.

    Returns:
        dict `{"recall": {k: r}, "map_at_r": float}` (with_map, retrieval) or
        `{"recall": {k: r}, "map": float}` (with_map, copy detection).
    """
    from keras_cgd.evaluation import copy_detection_map
    from keras_cgd.evaluation import map_at_r
    from keras_cgd.evaluation import recall_at_k

    need = 1 if splits.query is not None else 2
    if len(splits.test) < need:
        raise ValueError(
            f"Invalid value received for argument `splits`. Recall@K needs at least {need} test image(s) "
            f"({'a gallery to search' if need == 1 else 'a query and another image'}); the test split of "
            f"{getattr(splits, 'name', 'the dataset')!r} has {len(splits.test)}. Received: "
            f"{len(splits.test)} test image(s)"
        )
    gallery = embed(model, splits.test, progress=progress, desc=f"embedding {len(splits.test)} test images")
    kwargs = {}
    if splits.query is not None:
        kwargs = {"query_embeddings": embed(model, splits.query, progress=progress,
                                            desc=f"embedding {len(splits.query)} query images"),
                  "query_labels": splits.query.labels}
    available = len(splits.test) - (0 if splits.query is not None else 1)
    ks = [k for k in ks if k <= available] or [1]
    out = {"recall": recall_at_k(gallery, splits.test.labels, ks, **kwargs)}
    if with_map and getattr(splits, "task", "retrieval") == "copy_detection":
        out["map"] = copy_detection_map(kwargs["query_embeddings"], kwargs["query_labels"], gallery,
                                        splits.test.labels)
    elif with_map:
        out["map_at_r"] = map_at_r(gallery, splits.test.labels, **kwargs)
    return out


def format_metrics(result):
    """`R@1 0.417  R@2 0.552 ...` followed by `mAP 0.512` (copy detection) or `(MAP@R 0.301)`."""
    text = format_recall(result["recall"])
    if result.get("map") is not None:
        text += f"  mAP {result['map']:.3f}"
    elif result.get("map_at_r") is not None:
        text += f"  (MAP@R {result['map_at_r']:.3f})"
    return text


def format_recall(recall):
    """`R@1 0.417  R@2 0.552 ...`."""
    return "  ".join(f"R@{k} {v:.3f}" for k, v in recall.items())
