"""Training batches for CGD (P×K class-balanced) and MultiGrain (repeated augmentation).

TensorFlow-only module (`tf.data`); the datasets it returns feed `model.fit` on the
TensorFlow and the JAX backends.

Each batch is `(images, {"embedding": ranking_labels, "logits": class_ids})`, matching
the outputs of `keras_cgd.build_model`: `images` is uint8 `(B, S, S, 3)` RGB pixels
(`dtype="float32"` gives the same values as float32); the model normalises them itself
(`keras_cgd.layers.ImageNormalization`), so 4× fewer bytes travel to the accelerator.
Labels are int32 `(B,)`.

How batches are planned: the index plan of an epoch is drawn in NumPy from a generator
seeded with `(seed, epoch)` every time the dataset is iterated (each epoch of
`model.fit`), so the same `seed` gives the same batches epoch after epoch, which is what
resuming a run needs. Consecutive copies of one image in a batch (MultiGrain's repeated
augmentation) form a group: the file is read and decoded **once per batch** for all of
its copies — for a JPEG only the region its crops cover (`tf.io.decode_and_crop_jpeg`)
— and cropped, resized (bilinear, antialiased when shrinking) and flipped per copy.
Each group draws its random numbers from the stateless seed `(seed, position of its
first copy in the epoch stream)`, so two copies are augmented independently and the
pipeline is reproducible. The colour part of MultiGrain's augmentation is one affine
colour map per image (`augment.folded_color_transform`) applied to whole batches by one
XLA-compiled function. Groups are processed in parallel by `tf.data`
(`num_parallel_calls=AUTOTUNE`, `deterministic=True`: batches keep their planned
composition and order) and prefetched. The datasets are finite with a known
cardinality, so `model.fit(batches, epochs=n)` needs no `steps_per_epoch`.
"""

import collections

import numpy as np
import tensorflow as tf

from keras_cgd.data import augment as aug
from keras_cgd.data.readers import ImageDataset


OUTPUT_DTYPES = ("uint8", "float32")


def _check_dtype(dtype):
    if dtype not in OUTPUT_DTYPES:
        raise ValueError(
            f"Invalid value received for argument `dtype`. Expected one of {OUTPUT_DTYPES}. "
            f"Received: dtype={dtype!r}"
        )
    return dtype


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


def _region_of(shape, box):
    """`(y0, x0, h, w)` of the region to augment: the box, or the whole image."""
    if box is None:
        return tf.constant(0), tf.constant(0), shape[0], shape[1]
    return _box_window(shape, box)


def _whole_region(copies):
    """Window function of augmentations that start from the whole region."""

    def windows(seed, h, w):
        del seed
        return tf.tile(tf.stack([0, 0, h, w])[None], [copies, 1])

    return windows


def _read_region(paths, images, boxes, i, windows_fn, seed):
    """Reads image `i` once for all of its crops.

    `windows_fn(seed, h, w) -> (copies, 4)` gives the crop windows `[y, x, h, w]` inside
    the region (the box, or the whole image). Only the bounding rectangle of the windows
    is decoded (`decode_and_crop_jpeg` for JPEG files; other formats are decoded whole).

    Returns:
        `(pixels, windows)`: uint8 `(h', w', 3)` of that rectangle and the windows
        relative to it.
    """
    box = tf.gather(boxes, i) if boxes is not None else None

    def cut(shape):
        y0, x0, h, w = _region_of(shape, box)
        wins = windows_fn(seed, h, w)
        top = tf.reduce_min(wins[:, 0])
        left = tf.reduce_min(wins[:, 1])
        bottom = tf.reduce_max(wins[:, 0] + wins[:, 2])
        right = tf.reduce_max(wins[:, 1] + wins[:, 3])
        rect = tf.stack([y0 + top, x0 + left, bottom - top, right - left])
        return rect, wins - tf.stack([top, left, 0, 0])[None]

    def from_pixels(image):
        rect, wins = cut(tf.shape(image))
        return image[rect[0] : rect[0] + rect[2], rect[1] : rect[1] + rect[3], :], wins

    if images is not None:
        return from_pixels(tf.gather(images, i))
    contents = tf.io.read_file(tf.gather(paths, i))

    def jpeg():
        rect, wins = cut(tf.io.extract_jpeg_shape(contents))
        return tf.io.decode_and_crop_jpeg(contents, rect, channels=3), wins

    def other():
        return from_pixels(tf.io.decode_image(contents, channels=3, expand_animations=False))

    pixels, wins = tf.cond(tf.io.is_jpeg(contents), jpeg, other)
    pixels.set_shape([None, None, 3])
    return pixels, wins


def _flips(seed, copies):
    """Left-right flips of the `copies` crops of a group, bool `(copies,)` (p = 1/2)."""
    s_flip = tf.unstack(tf.random.experimental.stateless_split(seed, 3))[0]
    return tf.random.stateless_uniform([copies], s_flip) < 0.5


def _augment_copies(pixels, wins, seed, augmentation, size, copies, antialias):
    """The `copies` augmented crops of one decoded region, uint8 `(copies, H, W, 3)`.

    "multigrain": each window resized to `size` (its flip, drawn here, and its colour are
    applied later, per batch); "cgd": the region resized once to round(S * 252 / 224),
    then a random `size` crop and a flip per copy; "flip"/"none": resized once, flipped
    per copy / not; a callable is called once per copy with its own seed.
    """
    _, s_crop, s_call = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    flips = _flips(seed, copies)
    if callable(augmentation):
        seeds = tf.unstack(tf.random.experimental.stateless_split(s_call, copies))
        outs = []
        for j in range(copies):
            out = tf.cast(augmentation(pixels, seeds[j], size), tf.float32)
            outs.append(aug._round_to_uint8(tf.ensure_shape(out, [size[0], size[1], 3])))
        return tf.stack(outs)
    if augmentation == "multigrain":
        outs = []
        for j in range(copies):
            w = wins[j]
            crop = pixels[w[0] : w[0] + w[2], w[1] : w[1] + w[3], :]
            outs.append(aug._round_to_uint8(aug.resize_bilinear(crop, size, antialias)))
    elif augmentation == "cgd":
        resize = (aug.cgd_resize_size(size[0]), aug.cgd_resize_size(size[1]))
        full = aug._round_to_uint8(aug.resize_bilinear(pixels, resize, antialias))
        u = tf.random.stateless_uniform([copies, 2], s_crop)
        oy = tf.cast(tf.floor(u[:, 0] * (resize[0] - size[0] + 1)), tf.int32)
        ox = tf.cast(tf.floor(u[:, 1] * (resize[1] - size[1] + 1)), tf.int32)
        outs = [full[oy[j] : oy[j] + size[0], ox[j] : ox[j] + size[1], :] for j in range(copies)]
    else:
        outs = [aug._round_to_uint8(aug.resize_bilinear(pixels, size, antialias))] * copies
    if augmentation not in ("none", "multigrain"):
        outs = [
            tf.cond(flips[j], lambda o=o: tf.reverse(o, axis=[1]), lambda o=o: o) for j, o in enumerate(outs)
        ]
    return tf.ensure_shape(tf.stack(outs), [copies, size[0], size[1], 3])


def _check_augmentation(augmentation):
    if not callable(augmentation) and augmentation not in aug.TRAIN_AUGMENTATIONS:
        raise ValueError(
            "Invalid value received for argument `augmentation`. Expected one of "
            f"{aug.TRAIN_AUGMENTATIONS} or a callable `(image, seed, (height, width)) -> image`. "
            f"Received: augmentation={augmentation!r}"
        )


def _sources(data):
    """`(paths, images, boxes)` constants of an `ImageDataset` (None where absent)."""
    boxes = tf.constant(data.boxes) if data.boxes is not None else None
    if data.images is not None:
        return None, tf.constant(data.images), boxes
    return tf.constant(data.paths.astype(str)), None, boxes


def plan_groups(plan, batch_size, copies):
    """Cuts a flat index plan into groups decoded once: `(starts, counts)` int arrays.

    A group is a run of equal consecutive indices inside one batch, at most `copies`
    long (the static number of crops a decode serves). Groups never cross a batch
    boundary, so a repeated-augmentation triple that straddles two batches is two
    groups, one per batch.
    """
    plan = np.asarray(plan)
    total = len(plan)
    if total == 0:
        return np.zeros(0, "int64"), np.zeros(0, "int64")
    pos = np.arange(total)
    new_run = np.ones(total, bool)
    new_run[1:] = plan[1:] != plan[:-1]
    new_run |= pos % batch_size == 0
    run_start = np.flatnonzero(new_run)[np.cumsum(new_run) - 1]
    starts = np.flatnonzero((pos - run_start) % copies == 0)
    counts = np.diff(np.append(starts, total))
    return starts.astype("int64"), counts.astype("int64")


def _pipeline(data, plan_fn, steps, batch_size, size, augmentation, seed, ranking, antialias, copies, dtype,
              fixed_epoch=None, flip_and_color=True):
    """Builds the tf.data pipeline from a per-epoch plan function `plan_fn(rng) -> indices`.

    `copies` is the largest number of consecutive copies of one image that are decoded
    together (the repeats m of RA batches; 1 for P×K). `fixed_epoch`: see `epoch` of
    `class_balanced_batches`. `flip_and_color=False`: "multigrain" crops are left
    unflipped and uncoloured (for a model that does both, `MultiGrainColorAugmentation`).
    """
    base_seed = int(np.random.SeedSequence().entropy % (2**31)) if seed is None else int(seed)
    if fixed_epoch is not None:
        if isinstance(fixed_epoch, bool) or not isinstance(fixed_epoch, (int, np.integer)) or fixed_epoch < 0:
            raise ValueError(
                "Invalid value received for argument `epoch`. Expected None or an int >= 0. "
                f"Received: epoch={fixed_epoch!r}"
            )
    state = {"epoch": 0}
    total = steps * batch_size

    def plan_arrays():
        epoch = state["epoch"] if fixed_epoch is None else int(fixed_epoch)
        state["epoch"] += 1
        rng = np.random.default_rng([base_seed, epoch])
        idx = np.asarray(plan_fn(rng), dtype="int64")
        starts, counts = plan_groups(idx, batch_size, copies)
        return idx[starts].astype("int32"), counts.astype("int32"), starts + np.int64(epoch) * total

    # The plan reaches tf.data as whole arrays, once per iteration: constant tensors, or
    # one `numpy_function` call. A `from_generator` source yielding the same arrays
    # doubled the CPU per image of the whole pipeline (benchmarks/pipeline_overhead.py).
    if fixed_epoch is not None:
        groups = tf.data.Dataset.from_tensors(tuple(tf.constant(a) for a in plan_arrays()))
    else:
        def planned(_):
            out = tf.numpy_function(plan_arrays, [], (tf.int32, tf.int32, tf.int64), stateful=True)
            return tuple(tf.ensure_shape(a, [None]) for a in out)

        groups = tf.data.Dataset.from_tensors(0).map(planned)
    groups = groups.unbatch()
    labels = tf.constant(data.labels)
    paths, images, boxes = _sources(data)
    seed_t = tf.constant(base_seed, tf.int64)
    colour = augmentation == "multigrain" and flip_and_color
    if augmentation == "multigrain":
        windows_fn = lambda s, h, w: aug.random_resized_crop_windows(s, copies, h, w)  # noqa: E731
    else:
        windows_fn = _whole_region(copies)

    def group(i, count, counter):
        s_read, s_aug, s_col = tf.unstack(
            tf.random.experimental.stateless_split(tf.stack([seed_t, counter]), 3)
        )
        pixels, wins = _read_region(paths, images, boxes, i, windows_fn, s_read)
        crops = _augment_copies(pixels, wins, s_aug, augmentation, size, copies, antialias)[:count]
        cls = tf.gather(labels, i)
        rank = cls if ranking == "class" else i
        out = (crops, tf.fill([count], rank), tf.fill([count], cls))
        if colour:
            out += (aug.multigrain_color_params(s_col, copies)[:count], _flips(s_aug, copies)[:count])
        return out

    ds = groups.map(group, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()
    ds = ds.batch(batch_size, drop_remainder=True)
    if colour:
        ds = ds.map(
            lambda x, r, c, p, f: (aug.folded_color_transform_uint8(x, p, flips=f), r, c),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    ds = ds.map(lambda x, r, c: (tf.cast(x, dtype), {"embedding": r, "logits": c}))
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
    epoch=None,
    antialias=True,
    dtype="uint8",
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
        seed: int for a reproducible pipeline: the same seed gives the same batches
            (None: random).
        epoch: None (default): the k-th iteration of the dataset (epoch k of
            `model.fit(epochs=...)`) yields epoch k's batches. An int: every iteration
            yields epoch `epoch`'s batches, exactly those the k = `epoch` iteration
            gives with None, e.g. for a loop that builds one dataset per epoch and
            resumes at any epoch (however often `fit` iterates the dataset: on JAX its
            first call reads an extra iterator).
        antialias: antialiased bilinear resizing when shrinking (default True, as
            evaluation and PIL's resize in the papers' code; False: plain bilinear).
        dtype: "uint8" (default) or "float32" (the same values, 4× the bytes).

    Returns:
        `tf.data.Dataset` of `(images (B, S, S, 3) uint8 in [0, 255],
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
    _check_dtype(dtype)
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

    return _pipeline(data, plan, steps, p * k, size, augmentation, seed, "class", antialias, 1, dtype, epoch)


def repeated_augmentation_stream(num_images, batch_size, repeats, steps, rng):
    """Index plan of `steps` repeated-augmentation batches (NumPy), `(steps * batch_size,)`.

    As MultiGrain's `RASampler`: images are taken from successive random permutations of
    all images (each image once per pass), each repeated `repeats` times consecutively,
    and the stream is cut into batches of `batch_size`. When `batch_size` is not a
    multiple of `repeats`, the group that reaches past the end of a batch continues at
    the start of the next one (a straddling image has some of its copies in each). No
    image is drawn twice among the groups of one batch (a permutation's last images are
    held back when a new pass starts inside a batch that already holds them).
    """
    total = steps * batch_size
    num_groups = -(-total // repeats)
    out = np.empty(num_groups * repeats, dtype="int64")
    queue = collections.deque(rng.permutation(num_images).tolist())
    taken = set()
    for g in range(num_groups):
        start = g * repeats
        if start % batch_size == 0:
            taken = set()
        if not queue:
            perm = rng.permutation(num_images).tolist()
            queue = collections.deque([i for i in perm if i not in taken] + [i for i in perm if i in taken])
        image = queue.popleft()
        out[start : start + repeats] = image
        if (start + repeats - 1) // batch_size > start // batch_size:  # straddles into the next batch
            taken = {image}
        else:
            taken.add(image)
    return out[:total]


def repeated_augmentation_plan(num_images, distinct_per_batch, repeats, steps, rng):
    """`repeated_augmentation_stream` with batches of `distinct_per_batch * repeats`.

    Each batch then holds `distinct_per_batch` distinct images, each repeated `repeats`
    times consecutively; `(steps * distinct_per_batch * repeats,)`.
    """
    return repeated_augmentation_stream(num_images, distinct_per_batch * repeats, repeats, steps, rng)


def _max_distinct_per_batch(batch_size, repeats, steps):
    """Largest number of groups (distinct images) that overlap one batch of the stream."""
    most = 0
    for t in range(min(steps, repeats)):  # t * batch_size mod repeats has period <= repeats
        first = (t * batch_size) // repeats
        last = ((t + 1) * batch_size - 1) // repeats
        most = max(most, last - first + 1)
    return most


def repeated_augmentation_batches(
    dataset,
    batch_size=512,
    repeats=3,
    image_size=224,
    augmentation="multigrain",
    epoch_length_factor=2.0,
    steps_per_epoch=None,
    seed=None,
    epoch=None,
    antialias=True,
    dtype="uint8",
    flip_and_color=True,
):
    """MultiGrain repeated-augmentation (RA) batches: each image `repeats` times in a row.

    The stream of the epoch is that of MultiGrain's `RASampler`: each image of a random
    permutation repeated `repeats` (m) times consecutively, cut into batches of
    `batch_size` (B). Each copy is augmented independently; the copies are the
    positives of the ranking loss, identified by their instance id (the image's index
    in the dataset), so no instance labels are needed. When B is a multiple of m every
    batch holds B / m whole groups. Otherwise a batch holds about ⌈B / m⌉ distinct
    images and the last group of a batch may **straddle** into the next one, as in the
    reference (B = 512, m = 3: 170 whole triples plus one or two partial groups per
    batch): its copies before the cut are positives of each other in the first batch and
    the rest in the second; a single straddling copy has no positive in its batch and
    acts as a negative only. No image appears in two groups of one batch.

    Each image is decoded once per batch for all of its copies (see the module doc).

    Epoch: `int(N * epoch_length_factor)` samples (MultiGrain's `--epoch-len-factor`,
    default 2.0), i.e. `steps = max(1, int(N * factor) // batch_size)` batches unless
    `steps_per_epoch` is given. Images are drawn from successive random permutations.

    Args:
        dataset: as in `class_balanced_batches`.
        batch_size: B (paper: 512), >= repeats; a batch needs at most about B / m + 1
            distinct images, which must not exceed N.
        repeats: m (paper: 3).
        image_size: output size S.
        augmentation: "multigrain" (default, "full"), "cgd", "flip", "none" or a callable.
        epoch_length_factor: samples per epoch / N (paper: 2.0).
        steps_per_epoch: overrides the epoch length in batches.
        seed: int for a reproducible pipeline: the same seed gives the same batches
            (None: random).
        epoch: None (default): the k-th iteration of the dataset (epoch k of
            `model.fit(epochs=...)`) yields epoch k's batches. An int: every iteration
            yields epoch `epoch`'s batches, exactly those the k = `epoch` iteration
            gives with None, e.g. for a loop that builds one dataset per epoch and
            resumes at any epoch (however often `fit` iterates the dataset: on JAX its
            first call reads an extra iterator).
        antialias: antialiased bilinear resizing when shrinking (default True, as
            evaluation and PIL's resize in the papers' code).
        dtype: "uint8" (default) or "float32" (the same values, 4× the bytes).
        flip_and_color: with "multigrain", flip and colour the crops here (default
            True). False leaves both to the model, on the accelerator: for a model built
            with `flip_and_color=True` (`keras_cgd.layers.MultiGrainColorAugmentation`,
            the same map), it takes ~0.65 ms of CPU per 224 px image off the pipeline.

    Returns:
        `tf.data.Dataset` of `(images (B, S, S, 3) uint8 in [0, 255],
        {"embedding": instance_ids (B,) int32, "logits": class_ids (B,) int32})`.

    Example:
        >>> batches = repeated_augmentation_batches(train, batch_size=512, repeats=3, image_size=224)
        >>> model.fit(batches, epochs=5)

    Reference: Berman et al. 2019 (MultiGrain), §3.3 and `lib/samplers.py` (m = 3, B = 512).
    """
    data = _as_image_dataset(dataset)
    b = _check_positive_int(batch_size, "batch_size")
    m = _check_positive_int(repeats, "repeats")
    size = aug.check_image_size(image_size)
    _check_augmentation(augmentation)
    _check_dtype(dtype)
    if flip_and_color is not True and (flip_and_color is not False or augmentation != "multigrain"):
        raise ValueError(
            "Invalid value received for argument `flip_and_color`. Expected True, or False with "
            "augmentation='multigrain' (the flip and colour a model can take over). "
            f"Received: flip_and_color={flip_and_color!r} with augmentation={augmentation!r}"
        )
    if m > b:
        raise ValueError(
            "Invalid value received for argument `repeats`. Expected repeats <= batch_size="
            f"{b} (the copies of an image span at most two batches). Received: repeats={m}"
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
    distinct = _max_distinct_per_batch(b, m, steps)
    if distinct > len(data):
        raise ValueError(
            f"Invalid value received for argument `batch_size`. A batch of {b} with repeats={m} "
            f"needs up to {distinct} distinct images but the dataset has {len(data)}. "
            f"Received: batch_size={b}"
        )
    n = len(data)

    def plan(rng):
        return repeated_augmentation_stream(n, b, m, steps, rng)

    return _pipeline(data, plan, steps, b, size, augmentation, seed, "instance", antialias, m, dtype, epoch,
                     flip_and_color)


def inference_batches(
    dataset, batch_size=32, image_size=None, longest_side=None, center_crop=False, dtype="uint8"
):
    """Deterministic test-time batches, in dataset order, no augmentation.

    Resizing (see `augment.resize_for_test`, bilinear, antialiased): `image_size` (fixed
    size, CGD test), `image_size` + `center_crop=True` (MultiGrain "square"), or
    `longest_side=s*` (MultiGrain "rect", aspect ratio kept; images then differ in shape,
    so `batch_size` must be 1). Files are decoded in parallel (only the box of JPEGs
    that have one) and batches are prefetched.

    Args:
        dataset: as in `class_balanced_batches`.
        batch_size: images per batch.
        image_size, longest_side, center_crop: the resize (exactly one of the sizes).
        dtype: "uint8" (default: rounded pixel values) or "float32" (the resized values
            before rounding, as the SavedModel's `serving_bytes` signature computes them).

    Returns:
        finite `tf.data.Dataset` of `(images uint8 in [0, 255],
        {"embedding": class_ids, "logits": class_ids})`; the last batch may be smaller.
        `model.predict` uses the images only.

    Example:
        >>> test = keras_cgd.data.cub200("CUB_200_2011", "test")
        >>> out = model.predict(inference_batches(test, 64, image_size=224))
    """
    data = _as_image_dataset(dataset)
    bs = _check_positive_int(batch_size, "batch_size")
    _check_dtype(dtype)
    if longest_side is not None and bs != 1:
        raise ValueError(
            "Invalid value received for argument `batch_size`. With `longest_side` images keep "
            f"their aspect ratio and differ in shape, so batch_size must be 1. Received: batch_size={bs}"
        )
    aug.check_test_resize(image_size, longest_side)
    labels = tf.constant(data.labels)
    paths, images, boxes = _sources(data)
    whole = _whole_region(1)

    def element(i):
        pixels, _ = _read_region(paths, images, boxes, i, whole, None)
        image = aug.resize_for_test(pixels, image_size, longest_side, center_crop)
        if dtype == "uint8":
            image = aug._round_to_uint8(image)
        return image, tf.gather(labels, i)

    ds = tf.data.Dataset.range(len(data)).map(lambda i: tf.cast(i, tf.int32))
    ds = ds.map(element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(bs)
    ds = ds.map(lambda x, c: (x, {"embedding": c, "logits": c}))
    return ds.prefetch(tf.data.AUTOTUNE)
