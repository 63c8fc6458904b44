"""Training batches for CGD (P×K class-balanced) and MultiGrain (repeated augmentation).

TensorFlow-only module (`tf.data`); the datasets it returns feed `model.fit` on the
TensorFlow and the JAX backends.

Each batch is `(images, {"embedding": ranking_labels, "logits": class_ids})`, matching
the outputs of `keras_cgd.build_model`: `images` is float32 `(B, S, S, 3)` with pixel
values in [0, 255] (not normalised; the model normalises), labels are int32 `(B,)`.

How batches are planned: the batch index plan of an epoch is drawn in NumPy from a
generator seeded with `(seed, epoch)` every time the dataset is iterated (each epoch of
`model.fit`), then images are read, decoded and augmented in parallel by `tf.data`
(`num_parallel_calls=AUTOTUNE`, order kept) and prefetched. Each sample gets its own
stateless random seed `(seed, sample_counter)`, so the pipeline is reproducible for a
given `seed` and two copies of an image are augmented independently. The datasets are
finite with a known cardinality, so `model.fit(batches, epochs=n)` needs no
`steps_per_epoch`.
"""

import collections

import numpy as np
import tensorflow as tf

from keras_cgd.data import augment as aug
from keras_cgd.data.readers import ImageDataset


def _check_positive_int(value, name, minimum=1):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected an int >= {minimum}. "
            f"Received: {name}={value!r}"
        )
    return int(value)


def _as_image_dataset(dataset):
    """Accepts an `ImageDataset` or a finite `tf.data.Dataset` of dicts/tuples."""
    if isinstance(dataset, ImageDataset):
        return dataset
    if not isinstance(dataset, tf.data.Dataset):
        raise TypeError(
            "Invalid type received for argument `dataset`. Expected a "
            "`keras_cgd.data.ImageDataset` (from a reader, `from_arrays` or `load_builtin`) or "
            "a `tf.data.Dataset` of `{'image', 'label'[, 'box']}` dicts or `(image, label)` "
            f"tuples. Received: {type(dataset).__name__}"
        )
    if dataset.cardinality() == tf.data.INFINITE_CARDINALITY:
        raise ValueError("Invalid value received for argument `dataset`: it is infinite. Expected a finite dataset.")
    spec = dataset.element_spec
    if isinstance(spec, dict):
        if "image" not in spec or "label" not in spec:
            raise ValueError(f"Expected dataset elements with keys 'image' and 'label'. Received keys: {sorted(spec)}")
        ds = dataset.map(lambda e: {k: e[k] for k in ("image", "label", "box") if k in e})
    elif isinstance(spec, tuple) and len(spec) == 2:
        ds = dataset.map(lambda x, y: {"image": x, "label": y})
        spec = {"image": spec[0], "label": spec[1]}
    else:
        raise ValueError(f"Expected dataset elements `{{'image', 'label'}}` or `(image, label)`. Received: {spec}")
    cols = _collect_columns(ds)
    labels = cols["label"].astype("int32")
    names = [str(i) for i in range(int(labels.max()) + 1 if labels.size else 0)]
    box = cols.get("box")
    if spec["image"].dtype == tf.string:
        paths = [p.decode("utf-8") if isinstance(p, bytes) else str(p) for p in cols["image"]]
        return ImageDataset(labels, names, paths=paths, boxes=box, root="<tf.data.Dataset>")
    return ImageDataset(labels, names, images=cols["image"].astype("uint8"), boxes=box, root="<tf.data.Dataset>")


def _collect_columns(ds):
    """Reads a finite dataset of dicts into NumPy columns `{key: (N, ...) array}`.

    Images of unknown static shape are read one by one and must all have one shape
    (an `ImageDataset` holds in-memory images as one `(N, H, W, 3)` array).
    """
    if ds.element_spec["image"].shape.is_fully_defined():
        cols = {k: [] for k in ds.element_spec}
        for batch in ds.batch(8192).as_numpy_iterator():
            for k, v in batch.items():
                cols[k].append(v)
        return {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in cols.items()}
    rows = list(ds.as_numpy_iterator())
    if ds.element_spec["image"].dtype != tf.string:
        shapes = sorted({tuple(int(d) for d in r["image"].shape) for r in rows})
        if len(shapes) > 1:
            shown = ", ".join(str(sh) for sh in shapes[:5]) + (" ..." if len(shapes) > 5 else "")
            raise ValueError(
                "Invalid value received for argument `dataset`. Expected decoded images that all have "
                "one shape (H, W, 3): resize them in the dataset, or give file paths instead of "
                f"decoded images. Received: {len(shapes)} different image shapes: {shown}"
            )
    return {k: np.stack([r[k] for r in rows]) if rows else np.zeros((0,)) for k in ds.element_spec}


def _box_window(shape, box):
    """`(y0, x0, height, width)` of `box = [x0, y0, x1, y1]` (pixels) inside an image of `shape`.

    The box is widened to whole pixels (floor of the start, ceil of the end) and clipped
    to the image, keeping at least one pixel.
    """
    x0 = tf.clip_by_value(tf.cast(tf.floor(box[0]), tf.int32), 0, shape[1] - 1)
    y0 = tf.clip_by_value(tf.cast(tf.floor(box[1]), tf.int32), 0, shape[0] - 1)
    x1 = tf.clip_by_value(tf.cast(tf.math.ceil(box[2]), tf.int32), x0 + 1, shape[1])
    y1 = tf.clip_by_value(tf.cast(tf.math.ceil(box[3]), tf.int32), y0 + 1, shape[0])
    return y0, x0, y1 - y0, x1 - x0


def _crop_to_box(image, box):
    """Crops a `(H, W, 3)` image to `box = [x0, y0, x1, y1]` (None: the whole image)."""
    if box is None:
        return image
    y0, x0, h, w = _box_window(tf.shape(image), box)
    return image[y0 : y0 + h, x0 : x0 + w, :]


def _decode_region(contents, box):
    """Decodes an image file (any of JPEG/PNG/GIF/BMP) to uint8 RGB, cropped to `box`."""
    return _crop_to_box(tf.io.decode_image(contents, channels=3, expand_animations=False), box)


def _multigrain_from_file(contents, box, seed, size, antialias):
    """RandomResizedCrop decoding only the crop window of JPEGs, then the rest of "full"."""
    s_crop, s_rest = tf.unstack(tf.random.experimental.stateless_split(seed, 2))

    def region_of(shape):
        if box is None:
            return tf.constant(0), tf.constant(0), shape[0], shape[1]
        return _box_window(shape, box)

    def jpeg():
        y0, x0, h, w = region_of(tf.io.extract_jpeg_shape(contents))
        win = aug.random_resized_crop_window(s_crop, h, w)
        window = tf.stack([win[0] + y0, win[1] + x0, win[2], win[3]])
        return tf.io.decode_and_crop_jpeg(contents, window, channels=3)

    def other():
        image = tf.io.decode_image(contents, channels=3, expand_animations=False)
        y0, x0, h, w = region_of(tf.shape(image))
        win = aug.random_resized_crop_window(s_crop, h, w)
        return tf.slice(image, [win[0] + y0, win[1] + x0, 0], [win[2], win[3], 3])

    crop = tf.cond(tf.io.is_jpeg(contents), jpeg, other)
    crop.set_shape([None, None, 3])
    return aug.multigrain_after_crop(crop, s_rest, size, antialias)


def _augment_image(image, seed, augmentation, size, antialias):
    """Applies a named or callable augmentation to a decoded uint8 image."""
    if callable(augmentation):
        return tf.cast(augmentation(image, seed, size), tf.float32)
    if augmentation == "cgd":
        return aug.cgd_train_augment(image, seed, size, antialias)
    if augmentation == "multigrain":
        return aug.multigrain_train_augment(image, seed, size, antialias)
    image = tf.image.resize(tf.cast(image, tf.float32), size, antialias=antialias)
    if augmentation == "flip":
        image = aug.random_flip(image, seed)
    return image


def _check_augmentation(augmentation):
    if not callable(augmentation) and augmentation not in aug.TRAIN_AUGMENTATIONS:
        raise ValueError(
            "Invalid value received for argument `augmentation`. Expected one of "
            f"{aug.TRAIN_AUGMENTATIONS} or a callable `(image, seed, (height, width)) -> image`. "
            f"Received: augmentation={augmentation!r}"
        )


def _loader(data, augmentation, size, antialias):
    """Returns `load(index, seed) -> float32 (H, W, 3)` for an `ImageDataset`."""
    boxes = tf.constant(data.boxes) if data.boxes is not None else None
    if data.images is not None:
        images = tf.constant(data.images)

        def load(i, seed):
            box = tf.gather(boxes, i) if boxes is not None else None
            return _augment_image(_crop_to_box(tf.gather(images, i), box), seed, augmentation, size, antialias)

        return load
    paths = tf.constant(data.paths.astype(str))

    def load(i, seed):
        contents = tf.io.read_file(tf.gather(paths, i))
        box = tf.gather(boxes, i) if boxes is not None else None
        if augmentation == "multigrain":
            return _multigrain_from_file(contents, box, seed, size, antialias)
        return _augment_image(_decode_region(contents, box), seed, augmentation, size, antialias)

    return load


def _pipeline(data, plan_fn, steps, batch_size, size, augmentation, seed, ranking, antialias):
    """Builds the tf.data pipeline from a per-epoch plan function `plan_fn(rng) -> indices`."""
    base_seed = int(np.random.SeedSequence().entropy % (2**31)) if seed is None else int(seed)
    state = {"epoch": 0}

    def generate():
        epoch = state["epoch"]
        state["epoch"] += 1
        rng = np.random.default_rng([base_seed, epoch])
        idx = np.asarray(plan_fn(rng), dtype="int32")
        counter = np.arange(len(idx), dtype="int64") + np.int64(epoch) * len(idx)
        yield idx, counter

    plans = tf.data.Dataset.from_generator(
        generate,
        output_signature=(
            tf.TensorSpec([steps * batch_size], tf.int32),
            tf.TensorSpec([steps * batch_size], tf.int64),
        ),
    ).unbatch()
    labels = tf.constant(data.labels)
    load = _loader(data, augmentation, size, antialias)
    seed_t = tf.constant(base_seed, tf.int64)

    def element(i, counter):
        image = load(i, tf.stack([seed_t, counter]))
        image = tf.ensure_shape(image, [size[0], size[1], 3])
        cls = tf.gather(labels, i)
        rank = cls if ranking == "class" else i
        return image, rank, cls

    ds = plans.map(element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.map(lambda x, r, c: (x, {"embedding": r, "logits": c}))
    ds = ds.apply(tf.data.experimental.assert_cardinality(steps))
    return ds.prefetch(tf.data.AUTOTUNE)


def _class_groups(labels, classes):
    """Indices of the images of each class in `classes` (increasing), `[int64 array]`."""
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[order], classes, side="left")
    ends = np.searchsorted(labels[order], classes, side="right")
    return [order[a:b].astype("int64") for a, b in zip(starts, ends)]


def _plan_from_groups(groups, classes_per_batch, images_per_class, steps, rng):
    """P×K plan drawn from precomputed class groups (see `class_balanced_plan`)."""
    out = np.empty((steps, classes_per_batch, images_per_class), dtype="int64")
    for s in range(steps):
        chosen = rng.choice(len(groups), classes_per_batch, replace=False)
        for j, c in enumerate(chosen):
            g = groups[c]
            if len(g) >= images_per_class:
                out[s, j] = rng.choice(g, images_per_class, replace=False)
            else:
                extra = rng.choice(g, images_per_class - len(g), replace=True)
                out[s, j] = np.concatenate([rng.permutation(g), extra])
    return out.reshape(-1)


def class_balanced_plan(labels, classes_per_batch, images_per_class, steps, rng, small_classes="repeat"):
    """Index plan of `steps` P×K batches (NumPy), flattened to `(steps * P * K,)`.

    Each batch: P distinct classes drawn uniformly without replacement from the eligible
    classes; for each, K distinct images drawn without replacement from the class. A
    class with fewer than K images gives all of its images plus random repeats of them
    (`small_classes="repeat"`) or is never drawn (`"drop"`). Batch b holds class blocks
    `plan[b*P*K + j*K : b*P*K + (j+1)*K]`, j = 0..P-1.
    """
    labels = np.asarray(labels)
    groups = _class_groups(labels, np.unique(labels))
    if small_classes == "drop":
        groups = [g for g in groups if len(g) >= images_per_class]
    return _plan_from_groups(groups, classes_per_batch, images_per_class, steps, rng)


def class_balanced_batches(
    dataset,
    classes_per_batch=32,
    images_per_class=4,
    image_size=224,
    augmentation="cgd",
    steps_per_epoch=None,
    small_classes="repeat",
    seed=None,
    antialias=False,
):
    """P×K class-balanced training batches (CGD: 32 classes × 4 images = 128).

    Every batch holds exactly `classes_per_batch` (P) distinct classes with
    `images_per_class` (K) images each, in class blocks (images `j*K .. j*K+K-1` share a
    class). Classes are drawn uniformly; images without replacement within a class.
    Classes with fewer than K images: with `small_classes="repeat"` (default) they give
    all their images topped up with random repeats, each repeat augmented independently
    (so the batch is still exactly P×K, unlike `MPerClassSampler` in `leftthomas/CGD`,
    whose batches come out short); with `"drop"` they are never sampled and a warning
    names how many were left out.

    Epoch: `steps_per_epoch` batches, default `max(1, N // (P*K))` as in `leftthomas/CGD`;
    a new plan is drawn at each epoch.

    Args:
        dataset: `ImageDataset` (from a reader, `from_arrays`, `load_builtin(...).train`)
            or a finite `tf.data.Dataset` of `{"image", "label"[, "box"]}` or
            `(image, label)` elements (image = file path or uint8 image).
        classes_per_batch: P (paper: 32).
        images_per_class: K (paper: 4).
        image_size: output size S (int or (H, W)); CGD resize = round(S * 252 / 224).
        augmentation: "cgd" (default; resize, random crop, flip), "multigrain" (full),
            "flip" (resize + flip), "none" (resize), or a callable
            `(uint8 image, seed (2,), (H, W)) -> image`.
        steps_per_epoch: batches per epoch.
        small_classes: "repeat" or "drop" (see above).
        seed: int for a reproducible pipeline (None: random).
        antialias: antialiased resizing (slower).

    Returns:
        `tf.data.Dataset` of `(images (B, S, S, 3) float32 in [0, 255],
        {"embedding": class_ids (B,) int32, "logits": class_ids (B,) int32})`, B = P*K.

    Example:
        >>> train = keras_cgd.data.cub200("CUB_200_2011", "train")
        >>> batches = class_balanced_batches(train, 32, 4, image_size=224)
        >>> model.fit(batches, epochs=20)

    Reference: Jun et al. 2019 (CGD), batch 128 = 32 classes × 4 images.
    """
    data = _as_image_dataset(dataset)
    p = _check_positive_int(classes_per_batch, "classes_per_batch")
    k = _check_positive_int(images_per_class, "images_per_class")
    size = aug.check_image_size(image_size)
    _check_augmentation(augmentation)
    if small_classes not in ("repeat", "drop"):
        raise ValueError(
            "Invalid value received for argument `small_classes`. Expected one of ('repeat', 'drop'). "
            f"Received: small_classes={small_classes!r}"
        )
    counts = np.bincount(data.labels, minlength=data.num_classes)
    present = counts > 0
    eligible = present & (counts >= k) if small_classes == "drop" else present
    if small_classes == "drop" and (present & ~eligible).any():
        import warnings

        small = np.flatnonzero(present & ~eligible)
        warnings.warn(
            f"class_balanced_batches: {len(small)} class(es) with fewer than images_per_class={k} "
            f"images are never sampled (small_classes='drop'), holding {int(counts[small].sum())} "
            f"images; e.g. classes {[data.class_names[c] for c in small[:5]]}.",
            stacklevel=2,
        )
    if eligible.sum() < p:
        raise ValueError(
            f"Invalid value received for argument `classes_per_batch`. The dataset has only "
            f"{int(eligible.sum())} usable classes (small_classes={small_classes!r}), fewer than "
            f"classes_per_batch. Received: classes_per_batch={p}"
        )
    keep = eligible[data.labels]
    usable = int(keep.sum())
    if steps_per_epoch is None:
        steps = max(1, usable // (p * k))
    else:
        steps = _check_positive_int(steps_per_epoch, "steps_per_epoch")
    groups = _class_groups(data.labels, np.flatnonzero(eligible))  # once, not every epoch

    def plan(rng):
        return _plan_from_groups(groups, p, k, steps, rng)

    return _pipeline(data, plan, steps, p * k, size, augmentation, seed, "class", antialias)


def repeated_augmentation_plan(num_images, distinct_per_batch, repeats, steps, rng):
    """Index plan of `steps` repeated-augmentation batches (NumPy), `(steps * b * m,)`.

    Images are taken from successive random permutations of all images (each image once
    per pass); no image appears twice among the `distinct_per_batch` images of a batch;
    each is repeated `repeats` times consecutively.
    """
    out = []
    queue = collections.deque(rng.permutation(num_images).tolist())
    for _ in range(steps):
        batch = []
        while len(batch) < distinct_per_batch:
            if not queue:
                perm = rng.permutation(num_images).tolist()
                taken = set(batch)
                queue = collections.deque([i for i in perm if i not in taken] + [i for i in perm if i in taken])
            batch.append(queue.popleft())
        out.append(np.repeat(np.asarray(batch, dtype="int64"), repeats))
    return np.concatenate(out)


def repeated_augmentation_batches(
    dataset,
    batch_size=512,
    repeats=3,
    image_size=224,
    augmentation="multigrain",
    epoch_length_factor=2.0,
    steps_per_epoch=None,
    seed=None,
    antialias=False,
):
    """MultiGrain repeated-augmentation (RA) batches: each image `repeats` times per batch.

    A batch holds `batch_size / repeats` distinct images, each repeated `repeats` times
    consecutively, each copy augmented independently; the copies are the positives of
    the ranking loss, identified by their instance id (the image's index in the dataset),
    so no instance labels are needed. Unlike MultiGrain's `RASampler`, which cuts the
    stream so that a group of copies may straddle two batches, all copies of an image are
    kept in the same batch (hence `batch_size` must be a multiple of `repeats`).

    Epoch: `int(N * epoch_length_factor)` samples (MultiGrain's `--epoch-len-factor`,
    default 2.0), i.e. `steps = max(1, int(N * factor) // batch_size)` batches unless
    `steps_per_epoch` is given. Images are drawn from successive random permutations.

    Args:
        dataset: as in `class_balanced_batches`.
        batch_size: B (paper: 512), a multiple of `repeats`, with B / repeats <= N.
        repeats: m (paper: 3).
        image_size: output size S.
        augmentation: "multigrain" (default, "full"), "cgd", "flip", "none" or a callable.
        epoch_length_factor: samples per epoch / N (paper: 2.0).
        steps_per_epoch: overrides the epoch length in batches.
        seed: int for a reproducible pipeline (None: random).
        antialias: antialiased resizing (slower).

    Returns:
        `tf.data.Dataset` of `(images (B, S, S, 3) float32 in [0, 255],
        {"embedding": instance_ids (B,) int32, "logits": class_ids (B,) int32})`.

    Example:
        >>> batches = repeated_augmentation_batches(train, batch_size=48, repeats=3, image_size=224)
        >>> model.fit(batches, epochs=5)

    Reference: Berman et al. 2019 (MultiGrain), §3.3 and `lib/samplers.py` (m = 3, B = 512).
    """
    data = _as_image_dataset(dataset)
    b = _check_positive_int(batch_size, "batch_size")
    m = _check_positive_int(repeats, "repeats")
    size = aug.check_image_size(image_size)
    _check_augmentation(augmentation)
    if b % m:
        raise ValueError(
            "Invalid value received for argument `batch_size`. Expected a multiple of "
            f"repeats={m} so that all copies of an image are in one batch. Received: batch_size={b}"
        )
    distinct = b // m
    if distinct > len(data):
        raise ValueError(
            f"Invalid value received for argument `batch_size`. A batch needs batch_size / repeats = "
            f"{distinct} distinct images but the dataset has {len(data)}. Received: batch_size={b}"
        )
    if not isinstance(epoch_length_factor, (int, float)) or epoch_length_factor <= 0:
        raise ValueError(
            "Invalid value received for argument `epoch_length_factor`. Expected a positive number. "
            f"Received: epoch_length_factor={epoch_length_factor!r}"
        )
    if steps_per_epoch is None:
        steps = max(1, int(len(data) * epoch_length_factor) // b)
    else:
        steps = _check_positive_int(steps_per_epoch, "steps_per_epoch")
    n = len(data)

    def plan(rng):
        return repeated_augmentation_plan(n, distinct, m, steps, rng)

    return _pipeline(data, plan, steps, b, size, augmentation, seed, "instance", antialias)


def inference_batches(dataset, batch_size=32, image_size=None, longest_side=None, center_crop=False):
    """Deterministic test-time batches, in dataset order, no augmentation.

    Resizing (see `augment.resize_for_test`): `image_size` (fixed size, CGD test),
    `image_size` + `center_crop=True` (MultiGrain "square"), or `longest_side=s*`
    (MultiGrain "rect", aspect ratio kept; images then differ in shape, so `batch_size`
    must be 1).

    Returns:
        finite `tf.data.Dataset` of `(images float32 in [0, 255],
        {"embedding": class_ids, "logits": class_ids})`; the last batch may be smaller.
        `model.predict` uses the images only.

    Example:
        >>> test = keras_cgd.data.cub200("CUB_200_2011", "test")
        >>> out = model.predict(inference_batches(test, 64, image_size=224))
    """
    data = _as_image_dataset(dataset)
    bs = _check_positive_int(batch_size, "batch_size")
    if longest_side is not None and bs != 1:
        raise ValueError(
            "Invalid value received for argument `batch_size`. With `longest_side` images keep "
            f"their aspect ratio and differ in shape, so batch_size must be 1. Received: batch_size={bs}"
        )
    aug.check_test_resize(image_size, longest_side)
    labels = tf.constant(data.labels)
    boxes = tf.constant(data.boxes) if data.boxes is not None else None
    if data.images is not None:
        images = tf.constant(data.images)

        def load(i):
            box = tf.gather(boxes, i) if boxes is not None else None
            return _crop_to_box(tf.gather(images, i), box)

    else:
        paths = tf.constant(data.paths.astype(str))

        def load(i):
            box = tf.gather(boxes, i) if boxes is not None else None
            return _decode_region(tf.io.read_file(tf.gather(paths, i)), box)

    def element(i):
        image = aug.resize_for_test(load(i), image_size, longest_side, center_crop)
        return image, tf.gather(labels, i)

    ds = tf.data.Dataset.range(len(data)).map(lambda i: tf.cast(i, tf.int32))
    ds = ds.map(element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(bs)
    ds = ds.map(lambda x, c: (x, {"embedding": c, "logits": c}))
    return ds.prefetch(tf.data.AUTOTUNE)
