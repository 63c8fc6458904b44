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


def _gem_p_variable(model, layer_name):
    """The assignable exponent `p` of the GeM layer `layer_name` (ValueError otherwise)."""
    variable = getattr(model.get_layer(layer_name), "p", None)
    if variable is None or not hasattr(variable, "assign"):
        raise ValueError(
            f"Layer {layer_name!r} has no assignable `p` variable (a GeM layer with p=inf has "
            "none). Expected a GeneralizedMeanPooling layer with a finite p."
        )
    return variable


@contextlib.contextmanager
def gem_p_override(model, p, layer_name="gem"):
    """Temporarily sets the GeM exponent of a trained model (p*), then restores it.

    Example:
    >>> with gem_p_override(model, 4.0):  # doctest: +SKIP
    ...     emb = embed_images(model, images, image_size=500)
    """
    variable = _gem_p_variable(model, layer_name)
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


# --- p* fine-tuning (MultiGrain Appendix E) -------------------------------------------


def _dataset_images_and_labels(dataset, image_size):
    """`(list of (H, W, 3) float32 images at longest side image_size, labels)` of an
    `ImageDataset` (files or arrays, cropped to its boxes) or an `(images, labels)` pair."""
    if isinstance(dataset, (tuple, list)) and len(dataset) == 2:
        images, labels = dataset
        images = _as_image_list(images)
        if image_size is not None:
            images = [resize_longest_side(im, image_size) for im in images]
        return images, np.asarray(labels)
    if not hasattr(dataset, "labels") or not hasattr(dataset, "paths"):
        raise TypeError(
            "Invalid type received for argument `dataset`. Expected a "
            "keras_cgd.data.ImageDataset or an (images, labels) pair. "
            f"Received: dataset of type {type(dataset).__name__}"
        )
    from keras_cgd import data

    if image_size is None:
        if dataset.images is None:
            raise ValueError("`image_size` (s*) is needed to read a dataset of image files.")
        return [np.asarray(im, np.float32) for im in dataset.images], np.asarray(dataset.labels)
    batches = data.inference_batches(dataset, 1, longest_side=int(image_size))
    images = [np.asarray(x)[0] for x, _ in batches.as_numpy_iterator()]
    return images, np.asarray(dataset.labels)


def _gem_and_classifier(model, gem_layer, classifier_layer):
    gem = model.get_layer(gem_layer)
    dense = model.get_layer(classifier_layer)
    p = _gem_p_variable(model, gem_layer)
    if not isinstance(dense, keras.layers.Dense) or dense.activation not in (None, keras.activations.linear):
        raise ValueError(
            f"Layer {classifier_layer!r} must be a Dense layer without activation applied to the "
            f"output of {gem_layer!r} (MultiGrain's classifier). Received: {type(dense).__name__}"
        )
    if dense.input is not gem.output:
        raise ValueError(
            f"Layer {classifier_layer!r} does not take the output of {gem_layer!r} as its input; "
            "p* fine-tuning needs the classifier on the raw GeM embedding (MultiGrain's layout)."
        )
    weights = dense.get_weights()
    kernel = np.asarray(weights[0], np.float64)
    bias = np.asarray(weights[1], np.float64) if len(weights) > 1 else np.zeros(kernel.shape[1])
    return gem, kernel, bias


def gem_p_loss_and_gradient(feature_maps, labels, p, kernel, bias, epsilon=1e-6):
    r"""Cross-entropy of `softmax(GeM_p(x) W + b)` and its derivative in p (closed form).

    With `m_c = mean_u max(x_cu, ε)^p` and `f_c = m_c^(1/p)`:

        ∂f_c/∂p = f_c · ( −ln m_c / p² + mean_u(x^p ln x) / (p · m_c) )
        ∂CE/∂p  = mean_i Σ_c [W (softmax(z_i) − onehot(y_i))]_c · ∂f_ic/∂p

    Args:
        feature_maps: list of `(H_i, W_i, C)` arrays (one per image; sizes may differ).
        labels: `(N,)` class ids.
        p: float > 0.
        kernel, bias: the classifier `(C, K)`, `(K,)`.
        epsilon: GeM clamp.

    Returns:
        `(mean cross-entropy, d mean cross-entropy / dp)` as floats.
    """
    pooled, dpooled = [], []
    for fmap in feature_maps:
        x = np.maximum(np.asarray(fmap, np.float64), epsilon).reshape(-1, np.shape(fmap)[-1])
        logx = np.log(x)
        xp = np.exp(p * logx)
        m = xp.mean(axis=0)
        f = np.exp(np.log(m) / p)
        pooled.append(f)
        dpooled.append(f * (-np.log(m) / p**2 + (xp * logx).mean(axis=0) / (p * m)))
    f = np.stack(pooled)
    z = f @ kernel + bias
    z = z - z.max(axis=1, keepdims=True)
    prob = np.exp(z)
    prob /= prob.sum(axis=1, keepdims=True)
    labels = np.asarray(labels).astype(int)
    rows = np.arange(len(labels))
    loss = float(np.mean(-np.log(np.maximum(prob[rows, labels], 1e-300))))
    delta = prob.copy()
    delta[rows, labels] -= 1.0
    grad = float(np.mean(np.sum((delta @ kernel.T) * np.stack(dpooled), axis=1)))
    return loss, grad


def finetune_gem_p(
    model,
    dataset,
    image_size=500,
    learning_rate=0.005,
    momentum=0.9,
    power=0.9,
    batch_size=4,
    epochs=1,
    p_init=None,
    seed=0,
    assign=True,
    gem_layer="gem",
    classifier_layer="classifier",
):
    r"""Fine-tunes the GeM exponent p* for a test resolution s* (MultiGrain Appendix E).

    Only p is learned; the network is frozen (BatchNorm in inference mode), and the loss
    is the classifier's cross-entropy on training images resized so that their longest
    side is s* (no crop, "rect"). SGD with momentum and a polynomial decay per batch k
    of K:

        lr_k = lr · (1 − k/K)^power,    b = μ b + ∂CE/∂p,    p ← p − lr_k b

    Since only p moves, each image goes once through the frozen trunk and the gradient
    in p is exact in closed form on its feature map (`gem_p_loss_and_gradient`); images
    of different sizes share a batch as with MultiGrain's `list_collate`.

    Args:
        model: a model whose `classifier_layer` (Dense) takes the output of the GeM
            layer `gem_layer`, e.g. `build_model("multigrain", input_shape=(None,
            None, 3))`.
        dataset: a `keras_cgd.data.ImageDataset` (the paper: 50 ImageNet training
            images per class) or an `(images, labels)` pair; labels are the
            classifier's class ids.
        image_size: s*, the longest side (500); None keeps the images' sizes.
        learning_rate: 0.005. momentum: 0.9. power: polynomial decay power (0.9).
        batch_size: 4. epochs: passes over the data (1).
        p_init: start value (default: the model's p).
        seed: shuffling seed.
        assign: set the GeM layer's p to the result.

    Returns:
        dict `{"p": p*, "p_history": [p after each step], "loss_history": [...]}`.

    Example:

    >>> result = finetune_gem_p(model, (train_images, train_labels), image_size=500)  # doctest: +SKIP
    >>> result["p"]  # e.g. 4.0 for a model trained with p = 3

    Reference: Berman et al. 2019 (MultiGrain), Appendix E and `scripts/finetune_p.py`;
    Table E.1 (SENet154 at s* = 450: p* = 1.6, top-1 81.3 → 83.1).
    """
    gem, kernel, bias = _gem_and_classifier(model, gem_layer, classifier_layer)
    for name, value, ok in (
        ("learning_rate", learning_rate, isinstance(learning_rate, (int, float)) and learning_rate > 0),
        ("momentum", momentum, isinstance(momentum, (int, float)) and 0 <= momentum < 1),
        ("power", power, isinstance(power, (int, float)) and power >= 0),
        ("batch_size", batch_size, isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= 1),
        ("epochs", epochs, isinstance(epochs, int) and not isinstance(epochs, bool) and epochs >= 1),
    ):
        if not ok:
            raise ValueError(f"Invalid value received for argument `{name}`. Received: {name}={value!r}")
    images, labels = _dataset_images_and_labels(dataset, image_size)
    if len(images) != len(labels):
        raise ValueError(f"Expected as many labels as images. Received: {len(images)} images, {len(labels)} labels")
    num_classes = kernel.shape[1]
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"Invalid value received for argument `dataset`. Expected class ids in [0, {num_classes}). "
            f"Received: labels in [{labels.min()}, {labels.max()}]"
        )
    epsilon = float(getattr(gem, "epsilon", 1e-6))
    p = float(keras.ops.convert_to_numpy(gem.p)) if p_init is None else float(p_init)
    trunk = keras.Model(model.input, gem.input)
    rng = np.random.default_rng(seed)
    orders = [rng.permutation(len(images)) for _ in range(epochs)]
    steps = [order[s : s + batch_size] for order in orders for s in range(0, len(order), batch_size)]
    buffer, p_history, loss_history = 0.0, [], []
    for k, ids in enumerate(steps):
        fmaps = _predict_feature_maps(trunk, [images[i] for i in ids])
        loss, grad = gem_p_loss_and_gradient(fmaps, labels[ids], p, kernel, bias, epsilon)
        lr = learning_rate * (1.0 - k / len(steps)) ** power
        buffer = momentum * buffer + grad
        p = max(p - lr * buffer, 1e-3)
        p_history.append(p)
        loss_history.append(loss)
    if assign:
        gem.p.assign(np.asarray(p, "float32"))
    return {"p": p, "p_history": p_history, "loss_history": loss_history}


def _predict_feature_maps(trunk, images):
    """Feature maps of images (grouped by shape, inference mode), in input order."""
    out = [None] * len(images)
    groups = {}
    for i, im in enumerate(images):
        groups.setdefault(np.shape(im), []).append(i)
    for members in groups.values():
        batch = np.stack([np.asarray(images[i], np.float32) for i in members])
        values = keras.ops.convert_to_numpy(trunk(batch, training=False))
        for j, i in enumerate(members):
            out[i] = values[j]
    return out


def build_p_star_proxy_set(dataset, images_per_class=2, augmentations=5, image_size=224, seed=0):
    """The proxy set on which MultiGrain chooses p*: a few training images per class, each
    augmented several times (2 per class × 5 augmentations = 10,000 ImageNet images).

    The first `images_per_class` images of each class (dataset order, as
    `finetune_p.py` selects its subset) are each augmented `augmentations` times with
    MultiGrain's "full" training augmentation (RandomResizedCrop, flip, colour jitter,
    lighting) at `image_size` (use s*). Copies of one image share an instance id, so the
    set scores retrieval (copies find each other) and classification (class ids).

    Args:
        dataset: a `keras_cgd.data.ImageDataset` or an `(images, labels)` pair.
        images_per_class: 2. augmentations: 5. image_size: side of the augmented images.
        seed: augmentation seed.

    Returns:
        dict `{"images": (M, S, S, 3) float32 in [0, 255], "labels": (M,) class ids,
        "instance_ids": (M,) source image index}`, M = classes × images_per_class ×
        augmentations.

    Example:

    >>> proxy = build_p_star_proxy_set(train, image_size=500)  # doctest: +SKIP
    >>> p_ret, _ = select_gem_p(model, proxy["images"], proxy["instance_ids"], objective="recall@1")
    >>> p_cls, _ = select_gem_p(model, proxy["images"], proxy["labels"], objective="accuracy")

    Reference: Berman et al. 2019 (MultiGrain) §3.5 / Appendix E: "2,000 ImageNet train
    images (2 per class), 5 augmentations each", keeping a p* good for both tasks.
    """
    import tensorflow as tf

    from keras_cgd.data.augment import multigrain_train_augment

    for name, value in (("images_per_class", images_per_class), ("augmentations", augmentations)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"Invalid value received for argument `{name}`. Expected a positive int. Received: {name}={value!r}")
    if isinstance(dataset, (tuple, list)) and len(dataset) == 2:
        images, labels = list(dataset[0]), np.asarray(dataset[1])
        boxes, paths = None, None
    else:
        labels = np.asarray(dataset.labels)
        images = None if dataset.images is None else list(dataset.images)
        paths, boxes = dataset.paths, dataset.boxes
    chosen = []
    for c in np.unique(labels):
        chosen.extend(np.flatnonzero(labels == c)[:images_per_class].tolist())
    out_images, out_labels, out_ids = [], [], []
    for k, i in enumerate(chosen):
        if images is not None:
            image = np.asarray(images[i])
        else:
            image = tf.io.decode_image(tf.io.read_file(str(paths[i])), channels=3, expand_animations=False).numpy()
        if boxes is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in boxes[i])
            image = image[y0:y1, x0:x1]
        for a in range(augmentations):
            s = tf.constant([int(seed), k * augmentations + a], tf.int64)
            out_images.append(multigrain_train_augment(tf.constant(image), s, image_size).numpy())
            out_labels.append(int(labels[i]))
            out_ids.append(int(i))
    return {
        "images": np.stack(out_images).astype(np.float32),
        "labels": np.asarray(out_labels, np.int32),
        "instance_ids": np.asarray(out_ids, np.int32),
    }
