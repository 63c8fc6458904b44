"""Embedding a dataset and scoring Recall@K / MAP@R on its held-out classes."""

import numpy as np


def model_image_size(model):
    """The square side a model embeds at: its fixed input height, else (variable-size
    models, e.g. MultiGrain) `model.preprocessing["image_size"]`, else 224."""
    size = model.input_shape[1]
    if size is None:
        size = (getattr(model, "preprocessing", None) or {}).get("image_size", [None])[0]
    return int(size or 224)


def embed(model, dataset, image_size=None, batch_size=64):
    """`(N, D)` embeddings of an `ImageDataset` (in-memory arrays or files), resized
    to `image_size` (default `model_image_size(model)`)."""
    from keras_cgd import data

    size = image_size or model_image_size(model)
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
