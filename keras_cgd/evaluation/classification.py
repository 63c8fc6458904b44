"""Top-k classification accuracy of a model's logits on a labelled image folder.

MultiGrain's other half: ImageNet top-1/top-5 at a test resolution s* (longest side = s*,
no crop) with a GeM exponent p* (MultiGrain `evaluate.py --input-crop rect
--pooling-exponent p*`), or with the classic "resize 256/224·s, center-crop s" protocol.
The folder has the ImageNet validation layout `root/<class>/<image>`; class folders map to
the model's classes in sorted order (the standard sorted-synset order of ImageNet's 1000
classes) or through `class_names`.
"""

import os

import numpy as np

from keras_cgd.evaluation.test_time import _predict_outputs
from keras_cgd.evaluation.test_time import resize_longest_side


def _check_ks(ks):
    ks = tuple(ks) if isinstance(ks, (list, tuple)) else (ks,)
    if not ks or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
        raise ValueError(
            "Invalid value received for argument `ks`. Expected positive ints, e.g. (1, 5). "
            f"Received: ks={ks!r}"
        )
    return tuple(sorted(set(int(k) for k in ks)))


def resize_center_crop(image, size, resize_ratio=256 / 224):
    """Resizes the shorter side to `int(resize_ratio · size)` (the longer one in proportion,
    truncated, as torchvision's `Resize(int)`) and crops the central `size × size`
    (torchvision `CenterCrop`): MultiGrain's `crop=True` test transform.

    Bilinear with antialiasing, like `resize_longest_side`. Returns float32 pixels on the
    input's scale.
    """
    import keras

    image = np.asarray(image)
    h, w = image.shape[:2]
    short = int(resize_ratio * size)
    if short < size:
        raise ValueError(
            "Invalid value received for argument `resize_ratio`. Expected >= 1 (the crop lies inside "
            f"the resized image). Received: resize_ratio={resize_ratio}"
        )
    target = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
    resized = image.astype(np.float32)
    if target != (h, w):
        resized = keras.ops.image.resize(resized, target, interpolation="bilinear", antialias=True)
        resized = np.asarray(keras.ops.convert_to_numpy(resized), np.float32)
    top, left = int(round((target[0] - size) / 2.0)), int(round((target[1] - size) / 2.0))
    return resized[top:top + size, left:left + size]


def _read_class_names(class_names):
    if class_names is None:
        return None
    if isinstance(class_names, (str, os.PathLike)):
        with open(class_names, encoding="utf-8") as f:
            return [line.strip().split()[0] for line in f if line.strip()]
    return [str(c) for c in class_names]


def labelled_image_files(folder, class_names=None, num_classes=None):
    """`(paths, labels)` of `folder/<class>/<image>`, labels as model class indices.

    Args:
        folder: one sub-folder per class.
        class_names: the model's classes in logit order (a list or a text file with one
            name per line, e.g. the 1000 ImageNet synsets); folder names are looked up in
            it, so a folder may hold a subset of the classes. None: the sorted folder
            names are the classes, which needs one folder per model class.
        num_classes: the model's number of logits (checked against both).

    Raises:
        ValueError naming the folder names that are not classes, or the mismatch in
        the number of classes.
    """
    from keras_cgd.data.readers import image_folder

    dataset = image_folder(folder, validate=False)
    names = _read_class_names(class_names)
    if names is None:
        if num_classes is not None and dataset.num_classes != num_classes:
            raise ValueError(
                f"{folder!r} has {dataset.num_classes} class folders but the model has {num_classes} "
                "classes; pass `class_names` (the model's classes in logit order, e.g. the sorted "
                "ImageNet synsets) so that folder names map to logits. Received: "
                f"class folders {dataset.class_names[:5]}{' ...' if dataset.num_classes > 5 else ''}"
            )
        return list(dataset.paths), dataset.labels.astype(np.int64)
    if num_classes is not None and len(names) != num_classes:
        raise ValueError(
            f"Invalid value received for argument `class_names`. Expected {num_classes} names (the "
            f"model's logits). Received: {len(names)} names"
        )
    index = {name: i for i, name in enumerate(names)}
    unknown = [c for c in dataset.class_names if c not in index]
    if unknown:
        raise ValueError(
            f"Invalid value received for argument `folder`. Its class folders {unknown[:5]} are not in "
            f"`class_names` ({len(names)} names, e.g. {names[:3]}). Received: folder={folder!r}"
        )
    mapping = np.array([index[c] for c in dataset.class_names], np.int64)
    return list(dataset.paths), mapping[dataset.labels]


def _decode(path):
    import tensorflow as tf

    try:
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    except Exception as e:  # noqa: BLE001 - any decoder or I/O error names the file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"Cannot read image {path!r}: {first}") from None
    return image.numpy()


def classification_accuracy(
    model,
    folder,
    image_size=None,
    gem_p=None,
    ks=(1, 5),
    class_names=None,
    center_crop=False,
    batch_size=32,
    chunk_size=256,
    progress=True,
    gem_layer="gem",
):
    """Top-k accuracy of `model`'s `logits` on a labelled image folder, streamed.

    top-k = (1/N) Σ_i 1[y_i ∈ the k largest logits of image i].

    Images are decoded and resized `chunk_size` at a time (so memory stays bounded on
    ImageNet's 50,000), grouped by shape and run `batch_size` per forward pass; a
    `keras.utils.Progbar` shows the progress.

    Args:
        model: a Keras model with a `logits` output, RGB [0, 255] inputs; build it with
            `input_shape=(None, None, 3)` for longest-side resizing (aspect ratios vary).
        folder: `root/<class>/<image>` (the ImageNet validation layout).
        image_size: s*: the longest side (no crop), or with `center_crop` the crop size;
            None feeds the images at their own size.
        gem_p: p*, the GeM exponent used during the evaluation (layer `gem_layer`), or
            None for the model's own.
        ks: the k of top-k (default (1, 5)).
        class_names: see `labelled_image_files` (None: sorted folder names = classes).
        center_crop: resize the shorter side to 256/224·s and crop s × s (the standard
            224-px protocol) instead of the longest side.
        batch_size, chunk_size: images per forward pass / per decoding chunk.
        progress: show a progress bar.

    Returns:
        `{"top1": float, "top5": float, ..., "num_images": N, "num_classes": C,
        "image_size": s*, "gem_p": p*, "center_crop": bool}` (accuracies in [0, 1]).

    Example:

    >>> model = keras_cgd.models.from_checkpoint("joint_3B_0.5.pth")  # doctest: +SKIP
    >>> classification_accuracy(model, "imagenet/val", image_size=500, gem_p=4.0)  # doctest: +SKIP
    {'top1': 0.786, 'top5': 0.944, ...}   # reported: 78.6 / 94.4 (MultiGrain Table 2)

    Reference: Berman et al. 2019 (MultiGrain), `scripts/evaluate.py`.
    """
    import keras

    ks = _check_ks(ks)
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1):
        raise ValueError(
            "Invalid value received for argument `image_size`. Expected a positive int (s*) or None. "
            f"Received: image_size={image_size!r}"
        )
    if center_crop and image_size is None:
        raise ValueError("`center_crop=True` needs `image_size` (the crop size). Received: image_size=None")
    outputs = model.output if isinstance(model.output, dict) else {}
    if "logits" not in outputs:
        raise ValueError(
            "Invalid value received for argument `model`. Expected a model with a 'logits' output "
            f"(a classifier). Received outputs: {sorted(outputs) or model.output_names}"
        )
    num_classes = int(outputs["logits"].shape[-1])
    if max(ks) > num_classes:
        raise ValueError(f"Invalid value received for argument `ks`. Expected k <= {num_classes} classes. Received: ks={ks}")
    paths, labels = labelled_image_files(folder, class_names, num_classes)
    hits = {k: 0 for k in ks}
    bar = None
    if progress:
        bar = keras.utils.Progbar(len(paths), stateful_metrics=[f"top{k}" for k in ks], unit_name="image")
    for start in range(0, len(paths), chunk_size):
        chunk = range(start, min(start + chunk_size, len(paths)))
        images = []
        for i in chunk:
            image = _decode(paths[i])
            if image_size is not None:
                image = resize_center_crop(image, image_size) if center_crop else resize_longest_side(image, image_size)
            images.append(image)
        logits = _predict_outputs(model, images, ["logits"], gem_p=gem_p, batch_size=batch_size, gem_layer=gem_layer)["logits"]
        truth = labels[list(chunk)]
        # rank of the true class = number of classes with a strictly larger logit
        rank = np.sum(logits > logits[np.arange(len(truth)), truth][:, None], axis=1)
        for k in ks:
            hits[k] += int(np.sum(rank < k))
        if bar is not None:
            bar.update(chunk.stop, values=[(f"top{k}", hits[k] / chunk.stop) for k in ks])
    n = len(paths)
    result = {f"top{k}": hits[k] / n for k in ks}
    result.update(num_images=n, num_classes=num_classes, image_size=image_size, gem_p=gem_p, center_crop=bool(center_crop))
    return result
