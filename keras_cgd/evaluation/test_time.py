"""MultiGrain test-time tools: resolution s*, GeM exponent p*, and its choice.

MultiGrain trains at 224 and evaluates at `s*` in {224, 500, 800} with the
longest side resized to `s*` and no crop, using a GeM exponent `p*` (3-5)
chosen on a validation set, without retraining (papers.md §1.7).
"""

import contextlib

import keras
import numpy as np

from keras_cgd.evaluation.metrics import map_at_r
from keras_cgd.evaluation.metrics import recall_at_k


def resize_longest_side(image, size):
    """Resizes an `(H, W, 3)` image so that `max(H, W) == size` (no crop).

    Bilinear with antialiasing; the aspect ratio is kept (sides rounded, at
    least 1 pixel). Returns float32 pixels on the input's scale ([0, 255]).
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"Expected an (H, W, C) image. Received: image.shape={image.shape}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(
            "Invalid value received for argument `size`. Expected a positive "
            f"int. Received: size={size!r}"
        )
    h, w = image.shape[:2]
    scale = size / max(h, w)
    new = (max(1, int(round(h * scale))), max(1, int(round(w * scale))))
    if new == (h, w):
        return image.astype(np.float32)
    out = keras.ops.image.resize(
        image.astype(np.float32), new, interpolation="bilinear", antialias=True
    )
    return np.asarray(keras.ops.convert_to_numpy(out), np.float32)


def _is_model_output(model, name):
    return name in getattr(model, "output_names", []) or isinstance(model.output, dict) and name in model.output


def _output_model(model, names):
    """A model with dict outputs holding `names` (output keys or layer names)."""
    if all(_is_model_output(model, name) for name in names):
        return model
    outputs = {
        # get_layer raises a ValueError listing the layer names if one is absent.
        name: model.output[name] if _is_model_output(model, name) else model.get_layer(name).output
        for name in names
    }
    return keras.Model(model.inputs, outputs)


def _as_image_list(images):
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    images = list(images)
    if not images:
        raise ValueError("Expected at least one image. Received: 0 images.")
    return images


def _predict_outputs(model, images, names, gem_p=None, batch_size=32, gem_layer="gem"):
    """`{name: (N, ...) array}` from one forward pass per batch of same-shape images."""
    submodel = _output_model(model, names)
    groups = {}
    for i, im in enumerate(images):
        groups.setdefault(np.shape(im), []).append(i)
    results = {name: [None] * len(images) for name in names}
    context = gem_p_override(model, gem_p, gem_layer) if gem_p is not None else contextlib.nullcontext()
    with context:
        for shape, members in groups.items():
            for s in range(0, len(members), batch_size):
                batch_ids = members[s : s + batch_size]
                batch = np.stack([np.asarray(images[i], np.float32) for i in batch_ids])
                out = submodel.predict_on_batch(batch)
                for name in names:
                    values = keras.ops.convert_to_numpy(out[name])
                    for j, i in enumerate(batch_ids):
                        results[name][i] = values[j]
    return {name: np.stack(values) for name, values in results.items()}


def embed_images(model, images, image_size=None, output="embedding", gem_p=None, batch_size=32, gem_layer="gem"):
    """Model outputs for images of any sizes, at test resolution s*.

    Images are resized so that their longest side is `image_size` (no crop;
    `None` keeps them as they are), grouped by resulting shape and run in
    batches of one shape; results come back in the input order.

    Args:
        model: a Keras model with dict outputs; for images of several sizes
            build it with `input_shape=(None, None, 3)`.
        images: `(N, H, W, 3)` array or a list of `(H, W, 3)` arrays, RGB in
            [0, 255] (normalisation happens inside the model).
        image_size: s*, the longest side (e.g. 500), or None.
        output: an output key (`"embedding"`, `"logits"`) or a layer name
            (`"gem"` for MultiGrain's raw embedding).
        gem_p: optional p* used during this call (see `gem_p_override`).
        batch_size: images per forward pass.

    Returns:
        NumPy array `(N, ...)`.

    Reference: MultiGrain (Berman et al. 2019) `evaluate.py --input-crop rect`.
    """
    images = _as_image_list(images)
    if image_size is not None:
        images = [resize_longest_side(im, image_size) for im in images]
    return _predict_outputs(model, images, [output], gem_p, batch_size, gem_layer)[output]


@contextlib.contextmanager
def gem_p_override(model, p, layer_name="gem"):
    """Temporarily sets the GeM exponent of a trained model (p*), then restores it.

    Example:
    >>> with gem_p_override(model, 4.0):  # doctest: +SKIP
    ...     emb = embed_images(model, images, image_size=500)
    """
    layer = model.get_layer(layer_name)
    variable = getattr(layer, "p", None)
    if variable is None or not hasattr(variable, "assign"):
        raise ValueError(
            f"Layer {layer_name!r} has no assignable `p` variable (a GeM layer "
            "with p=inf has none). Expected a GeneralizedMeanPooling layer."
        )
    if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)) or not np.isfinite(p) or p <= 0:
        raise ValueError(
            "Invalid value received for argument `p`. Expected a finite float > 0. "
            f"Received: p={p!r}"
        )
    old = keras.ops.convert_to_numpy(variable)
    variable.assign(np.asarray(p, dtype=old.dtype))
    try:
        yield model
    finally:
        variable.assign(old)


def select_gem_p(
    model,
    images,
    labels,
    candidates=(1.0, 2.0, 3.0, 4.0, 5.0, 6.0),
    image_size=None,
    objective="recall@1",
    batch_size=32,
    gem_layer="gem",
):
    """Chooses p* by grid search on a validation set (no retraining).

    The images are resized once; for each candidate p the model is run once
    (one forward pass per batch gives every output needed) with
    `gem_p_override` and scored;
    the best score wins (ties: the earlier candidate). The model's p is
    restored afterwards.

    Args:
        model, images, image_size, batch_size, gem_layer: as `embed_images`.
        labels: `(N,)` class (or instance) ids of the images.
        candidates: p values to try.
        objective: `"recall@1"` or `"map@r"` on the embeddings (images search
            each other), `"accuracy"` (top-1 of `logits` against `labels`), or
            a callable `(outputs: dict of arrays, labels) -> float`.

    Returns:
        `(best_p, {p: score})`.

    Reference: MultiGrain (Berman et al. 2019) §1.7: p* cross-validated on a
    proxy task (s*=224 -> 3, 500 -> 4, 800 -> 4-5 for models trained with p=3).
    """
    labels = np.asarray(labels)
    valid = ("recall@1", "map@r", "accuracy")
    if not callable(objective) and objective not in valid:
        raise ValueError(
            "Invalid value received for argument `objective`. Expected one of "
            f"{valid} or a callable. Received: objective={objective!r}"
        )
    candidates = list(candidates)
    if not candidates:
        raise ValueError("Invalid value received for argument `candidates`. Expected at least one p. Received: []")
    keys = ["embedding", "logits"] if callable(objective) else ["logits" if objective == "accuracy" else "embedding"]
    # A callable objective also gets the logits when the model has them.
    keys = [key for key in keys if key != "logits" or objective == "accuracy" or _is_model_output(model, "logits")]
    images = _as_image_list(images)
    if image_size is not None:
        images = [resize_longest_side(im, image_size) for im in images]
    scores = {}
    for p in candidates:
        outputs = _predict_outputs(model, images, keys, gem_p=p, batch_size=batch_size, gem_layer=gem_layer)
        if callable(objective):
            score = objective(outputs, labels)
        elif objective == "accuracy":
            score = float(np.mean(np.argmax(outputs["logits"], axis=1) == labels))
        elif objective == "map@r":
            score = map_at_r(outputs["embedding"], labels)
        else:
            score = recall_at_k(outputs["embedding"], labels, ks=(1,))[1]
        scores[float(p)] = float(score)
    best = max(scores, key=lambda p: (scores[p], -list(scores).index(p)))
    return best, scores
