"""Readers for image folders and the four standard retrieval datasets.

TensorFlow-only module (`tf.data`, `tf.io`).

Every reader returns an `ImageDataset`: the list of image files with their int32 class
labels (contiguous ids 0..C-1 in the order of `class_names`), optional bounding boxes,
and the report of the files that were skipped because they cannot be decoded.
`ImageDataset.to_tf_dataset()` gives the `tf.data.Dataset` of
`{"image": path, "label": class_id, "instance_id": index[, "box": x0 y0 x1 y1]}`;
images are decoded lazily by the batchers (`class_balanced_batches`,
`repeated_augmentation_batches`, `inference_batches`).

Standard splits (as in CGD / `leftthomas/CGD`, Song et al. 2016, Liu et al. 2016):

| reader | layout | splits |
|---|---|---|
| `image_folder` | `root/<class>/<image>` | — |
| `cub200` | `CUB_200_2011/{images.txt, image_class_labels.txt, classes.txt, bounding_boxes.txt, images/}` | train = classes 1–100, test = 101–200 |
| `cars196` | `{cars_annos.mat, car_ims/}` | train = classes 1–98, test = 99–196 |
| `stanford_online_products` | `Stanford_Online_Products/{Ebay_train.txt, Ebay_test.txt, <super>_final/}` | train, test |
| `inshop_clothes` | `{Eval/list_eval_partition.txt, img/}` | train, query, gallery |

Corrupt files (truncated JPEGs, non-images with image names, missing listed files) are
found once when the reader is built: every file is decoded with `tf.io.decode_image`
(the decoder the pipelines use) in parallel; unreadable files are dropped together with
their labels (labels of the other files never shift), listed in `ImageDataset.skipped`
as `(path, reason)` and announced with a `UserWarning`. So are files whose name is not
valid UTF-8 (TensorFlow cannot open them), even with `validate=False`. Grey-scale,
palette and RGBA images are kept: they are decoded to RGB (alpha dropped). A dataset without any readable
image raises `ValueError` naming the root.
"""

import os
import warnings

import numpy as np
import tensorflow as tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


class ImageDataset:
    """A list of images (files or an in-memory array) with class labels.

    Attributes:
        paths: `(N,)` array of file paths (str), or None for in-memory images.
        images: `(N, H, W, 3)` uint8 array, or None for files.
        labels: `(N,)` int32 class ids in `[0, len(class_names))`.
        class_names: list of class names; `class_names[label]` names a label.
        boxes: `(N, 4)` float32 boxes `[x0, y0, x1, y1]` in pixels (0-based, x1/y1
            exclusive) to crop each image to before augmentation, or None.
        skipped: list of `(path, reason)` of files that were left out as unreadable.
        root: the folder that was read (or a description).

    The instance id of an image is its index in this dataset.

    Example:
        >>> ds = image_folder("photos/")              # photos/<class>/<image>.jpg
        >>> len(ds), ds.num_classes, ds.skipped
        >>> batches = class_balanced_batches(ds, 8, 4, image_size=224)
    """

    def __init__(self, labels, class_names, paths=None, images=None, boxes=None, skipped=(), root=None):
        labels = np.asarray(labels)
        if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
            raise ValueError(
                "Invalid value received for argument `labels`. Expected a 1-D array of int "
                f"class ids. Received: labels with shape {labels.shape} and dtype {labels.dtype}"
            )
        if (paths is None) == (images is None):
            raise ValueError("Exactly one of `paths` and `images` must be given.")
        n = len(labels)
        if paths is not None:
            paths = np.asarray([str(p) for p in paths], dtype=object)
            if len(paths) != n:
                raise ValueError(
                    f"`paths` and `labels` must have the same length. Received: {len(paths)} paths "
                    f"and {n} labels"
                )
        else:
            images = np.asarray(images)
            if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] != n:
                raise ValueError(
                    "Invalid value received for argument `images`. Expected a uint8 array of shape "
                    f"(N, H, W, 3) with N = len(labels) = {n}. Received: images.shape={images.shape}"
                )
            if images.dtype != np.uint8:
                raise TypeError(
                    "Invalid dtype received for argument `images`. Expected uint8 pixel values in "
                    f"[0, 255]. Received: images.dtype={images.dtype}"
                )
        if boxes is not None:
            boxes = np.asarray(boxes, dtype="float32")
            if boxes.shape != (n, 4):
                raise ValueError(
                    f"Invalid value received for argument `boxes`. Expected shape ({n}, 4). "
                    f"Received: boxes.shape={boxes.shape}"
                )
        class_names = [str(c) for c in class_names]
        if n and (labels.min() < 0 or labels.max() >= len(class_names)):
            raise ValueError(
                "Invalid value received for argument `labels`. Expected ids in "
                f"[0, {len(class_names)}). Received: min={labels.min()}, max={labels.max()}"
            )
        self.paths = paths
        self.images = images
        self.labels = labels.astype("int32")
        self.class_names = class_names
        self.boxes = boxes
        self.skipped = list(skipped)
        self.root = root

    def __len__(self):
        return len(self.labels)

    @property
    def num_classes(self):
        """Number of classes (`len(class_names)`), the size of the classifier."""
        return len(self.class_names)

    def __repr__(self):
        kind = "files" if self.paths is not None else "arrays"
        return (
            f"ImageDataset({len(self)} images ({kind}), {self.num_classes} classes, "
            f"{len(self.skipped)} skipped, root={self.root!r})"
        )

    def to_tf_dataset(self):
        """The `tf.data.Dataset` of elements `{"image", "label", "instance_id"[, "box"]}`.

        `image` is the file path (tf.string) for file datasets and the uint8 image for
        in-memory ones; `label` and `instance_id` are int32.
        """
        elements = {
            "image": self.paths.astype(str) if self.paths is not None else self.images,
            "label": self.labels,
            "instance_id": np.arange(len(self), dtype="int32"),
        }
        if self.boxes is not None:
            elements["box"] = self.boxes
        return tf.data.Dataset.from_tensor_slices(elements)


def from_arrays(images, labels, class_names=None):
    """Wraps in-memory uint8 images `(N, H, W, 3)` and labels as an `ImageDataset`.

    Args:
        images: uint8 array `(N, H, W, 3)` of RGB pixels in [0, 255].
        labels: int array `(N,)` of class ids in `[0, C)`.
        class_names: optional list of C names (default: "0".."C-1").

    Example:
        >>> data = load_builtin("photo_views")
        >>> train = from_arrays(data.train_images, data.train_labels)
    """
    labels = np.asarray(labels)
    if class_names is None:
        class_names = [str(i) for i in range(int(labels.max()) + 1 if labels.size else 0)]
    return ImageDataset(labels, class_names, images=images, root="<arrays>")


# ---------------------------------------------------------------------------- validation


def _decode_error(path):
    try:
        tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    except Exception as e:  # noqa: BLE001 - we report any decoder/IO error as text
        msg = str(e).strip().splitlines()
        return msg[0] if msg else type(e).__name__
    return "unreadable"


def validate_image_files(paths):
    """Decodes every file once; returns `(ok_mask, shapes (N, 2), reasons {index: str})`.

    Uses `tf.io.decode_image(channels=3)` in a parallel `tf.data` pipeline, so a file
    accepted here decodes in the training pipelines too.
    """
    paths = np.asarray(paths, dtype=object).astype(str)
    n = len(paths)
    shapes = np.zeros((n, 2), dtype="int64")
    ok = np.zeros(n, dtype=bool)
    if n == 0:
        return ok, shapes, {}

    def check(i, p):
        img = tf.io.decode_image(tf.io.read_file(p), channels=3, expand_animations=False)
        return i, tf.shape(img)[:2]

    ds = tf.data.Dataset.from_tensor_slices((np.arange(n, dtype="int64"), paths))
    ds = ds.map(check, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    ds = ds.ignore_errors().batch(4096)
    for idx, shp in ds.as_numpy_iterator():
        ok[idx] = True
        shapes[idx] = shp
    ok &= shapes.min(axis=1) > 0
    reasons = {int(i): _decode_error(paths[i]) for i in np.flatnonzero(~ok)}
    return ok, shapes, reasons


def _utf8_name_error(path):
    """The reason a path cannot reach TensorFlow (not UTF-8), or None."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return (
            f"file name is not valid UTF-8 ({os.fsencode(path)!r}); TensorFlow cannot open "
            "it, rename the file"
        )
    return None


def _finish(root, paths, labels, class_names, boxes=None, validate=True):
    """Validates files, drops and reports the unreadable ones, builds the dataset."""
    paths = np.asarray(paths, dtype=object)
    labels = np.asarray(labels, dtype="int32")
    skipped = []
    # A name that is not UTF-8 (os.listdir's surrogate escapes) cannot become a
    # tf.string: skip and report it like an unreadable file, whatever `validate`.
    bad_names = {i: _utf8_name_error(p) for i, p in enumerate(paths)}
    bad_names = {i: reason for i, reason in bad_names.items() if reason}
    if bad_names:
        keep = np.ones(len(paths), dtype=bool)
        keep[list(bad_names)] = False
        skipped = [(str(paths[i]), bad_names[i]) for i in sorted(bad_names)]
        paths, labels = paths[keep], labels[keep]
        if boxes is not None:
            boxes = np.asarray(boxes, dtype="float32")[keep]
    if validate and len(paths):
        ok, shapes, reasons = validate_image_files(paths)
        skipped += [(str(paths[i]), reasons[i]) for i in sorted(reasons)]
        if boxes is not None:
            boxes = np.asarray(boxes, dtype="float32").copy()
            h = shapes[:, 0].astype("float32")
            w = shapes[:, 1].astype("float32")
            boxes[:, 0] = np.clip(boxes[:, 0], 0, np.maximum(w - 1, 0))
            boxes[:, 1] = np.clip(boxes[:, 1], 0, np.maximum(h - 1, 0))
            boxes[:, 2] = np.clip(boxes[:, 2], boxes[:, 0] + 1, np.maximum(w, 1))
            boxes[:, 3] = np.clip(boxes[:, 3], boxes[:, 1] + 1, np.maximum(h, 1))
            boxes = boxes[ok]
        paths, labels = paths[ok], labels[ok]
    if len(paths) == 0:
        raise ValueError(
            f"No readable image found under root={str(root)!r} "
            f"({len(skipped)} unreadable file(s) skipped"
            + (f", e.g. {skipped[0][0]!r}: {skipped[0][1]}" if skipped else "")
            + ")."
        )
    if skipped:
        shown = "; ".join(f"{p!r} ({r})" if _utf8_name_error(p) else f"{p} ({r})"
                          for p, r in skipped[:5])
        warnings.warn(
            f"keras_cgd.data: skipped {len(skipped)} unreadable image file(s) under "
            f"{str(root)!r}: {shown}{' ...' if len(skipped) > 5 else ''}. "
            "The full list is in the dataset's `.skipped` attribute.",
            stacklevel=3,
        )
    return ImageDataset(labels, class_names, paths=paths, boxes=boxes, skipped=skipped, root=str(root))


def _check_split(split, valid):
    if split not in valid:
        raise ValueError(
            f"Invalid value received for argument `split`. Expected one of {valid}. Received: split={split!r}"
        )


def _locate(root, filename, subfolders):
    """Returns the folder among root and root/<sub> that holds `filename`."""
    for sub in ("",) + tuple(subfolders):
        folder = os.path.join(root, sub) if sub else root
        if os.path.isfile(os.path.join(folder, filename)):
            return folder
    tried = [os.path.join(str(root), s, filename) if s else os.path.join(str(root), filename) for s in ("",) + tuple(subfolders)]
    raise FileNotFoundError(f"Could not find {filename!r} under root={str(root)!r}. Looked for: {tried}")


def _read_rows(path, skip=0):
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()[skip:]
    return [line.split() for line in lines if line.strip()]


def _class_split(ids, split, first_test):
    ids = np.asarray(ids)
    return ids < first_test if split == "train" else ids >= first_test


# --------------------------------------------------------------------------------- readers


def image_folder(root, validate=True, extensions=IMAGE_EXTENSIONS):
    """Reads `root/<class_name>/<image>` (one sub-folder per class, searched recursively).

    Classes are the sub-folder names sorted alphabetically (label i = `class_names[i]`).
    Files whose extension is not in `extensions` (case-insensitive) and hidden files are
    not images and are ignored; files with an image extension that cannot be decoded are
    skipped and reported (see module docstring).

    Args:
        root: folder with one sub-folder per class.
        validate: decode every file once and skip unreadable ones (recommended; with
            False a corrupt file makes the pipeline raise when it is reached).
        extensions: file name endings taken as images.

    Returns:
        `ImageDataset`.

    Example:
        >>> ds = image_folder("my_products/")
        >>> ds.class_names[:3], len(ds)
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"Invalid value received for argument `root`: not a folder. Received: root={str(root)!r}")
    exts = tuple(e.lower() for e in extensions)
    class_names = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    paths, labels = [], []
    for label, name in enumerate(class_names):
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, name)):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fn in sorted(filenames):
                if not fn.startswith(".") and fn.lower().endswith(exts):
                    paths.append(os.path.join(dirpath, fn))
                    labels.append(label)
    return _finish(root, paths, labels, class_names, validate=validate)


def cub200(root, split="train", crop_to_box=False, validate=True):
    """Reads CUB-200-2011 with the retrieval split: classes 1–100 train, 101–200 test.

    Layout (official archive `CUB_200_2011.tgz`): `root` or `root/CUB_200_2011` holds
    `images.txt` (`<image_id> <relative path>`), `image_class_labels.txt`
    (`<image_id> <class_id>`), `classes.txt` (`<class_id> <name>`),
    `bounding_boxes.txt` (`<image_id> <x> <y> <width> <height>`, pixels) and `images/`.

    Args:
        root: dataset folder.
        split: "train" or "test".
        crop_to_box: crop each image to its bounding box ("cropped" setting of CGD).
        validate: see `image_folder`.

    Returns:
        `ImageDataset` with labels 0..99 mapped from the split's class ids in order.

    Reference: Wah et al. 2011; split as in Song et al. 2016 and CGD.
    """
    _check_split(split, ("train", "test"))
    base = _locate(root, "images.txt", ["CUB_200_2011"])
    images = {r[0]: r[1] for r in _read_rows(os.path.join(base, "images.txt"))}
    cls = {r[0]: int(r[1]) for r in _read_rows(os.path.join(base, "image_class_labels.txt"))}
    names = {int(r[0]): " ".join(r[1:]) for r in _read_rows(os.path.join(base, "classes.txt"))}
    boxes_txt = {}
    if crop_to_box:
        for r in _read_rows(os.path.join(base, "bounding_boxes.txt")):
            x, y, w, h = map(float, r[1:5])
            boxes_txt[r[0]] = (x, y, x + w, y + h)
    ids = [i for i in images if _class_split([cls[i]], split, 101)[0]]
    class_ids = sorted({cls[i] for i in ids})
    mapping = {c: k for k, c in enumerate(class_ids)}
    paths = [os.path.join(base, "images", images[i]) for i in ids]
    labels = [mapping[cls[i]] for i in ids]
    boxes = np.array([boxes_txt[i] for i in ids], "float32").reshape(-1, 4) if crop_to_box else None
    return _finish(root, paths, labels, [names.get(c, str(c)) for c in class_ids], boxes, validate)


def cars196(root, split="train", crop_to_box=False, validate=True):
    """Reads CARS196 with the retrieval split: classes 1–98 train, 99–196 test.

    Layout (official `car_ims.tgz` + `cars_annos.mat`): `root` holds `cars_annos.mat` and
    `car_ims/`. The .mat file has a struct array `annotations` with fields
    `relative_im_path` ("car_ims/000001.jpg"), `bbox_x1`, `bbox_y1`, `bbox_x2`,
    `bbox_y2` (1-based inclusive pixel coordinates), `class` (1..196) and `test`,
    and a cell array `class_names`. The `test` flag (classification split) is not used.

    Args:
        root: dataset folder.
        split: "train" or "test".
        crop_to_box: crop each image to its bounding box.
        validate: see `image_folder`.

    Reference: Krause et al. 2013; split as in Song et al. 2016 and CGD.
    """
    import scipy.io

    _check_split(split, ("train", "test"))
    base = _locate(root, "cars_annos.mat", ["CARS196", "cars196"])
    mat = scipy.io.loadmat(os.path.join(base, "cars_annos.mat"), squeeze_me=True)
    ann = np.atleast_1d(mat["annotations"])
    names = [str(n) for n in np.atleast_1d(mat["class_names"])] if "class_names" in mat else []
    rel = [str(a["relative_im_path"]) for a in ann]
    cls = np.array([int(a["class"]) for a in ann])
    keep = _class_split(cls, split, 99)
    class_ids = sorted(set(cls[keep].tolist()))
    mapping = {c: k for k, c in enumerate(class_ids)}
    paths = [os.path.join(base, r) for r, k in zip(rel, keep) if k]
    labels = [mapping[c] for c in cls[keep]]
    boxes = None
    if crop_to_box:
        b = np.array([[float(a["bbox_x1"]), float(a["bbox_y1"]), float(a["bbox_x2"]), float(a["bbox_y2"])] for a in ann])
        b[:, :2] -= 1.0  # 1-based inclusive -> 0-based, exclusive end
        boxes = b[keep].astype("float32")
    class_names = [names[c - 1] if c - 1 < len(names) else str(c) for c in class_ids]
    return _finish(root, paths, labels, class_names, boxes, validate)


def stanford_online_products(root, split="train", validate=True):
    """Reads Stanford Online Products (SOP) with its official split.

    Layout: `root` or `root/Stanford_Online_Products` holds `Ebay_train.txt` and
    `Ebay_test.txt` (header `image_id class_id super_class_id path`, then rows like
    `1 1 1 bicycle_final/111085122871_0.JPG`) and the `<super_class>_final/` folders.
    Train has 11,318 classes (59,551 images), test 11,316 classes (60,502 images).

    Args:
        root: dataset folder.
        split: "train" or "test".
        validate: see `image_folder`.

    Reference: Song et al. 2016.
    """
    _check_split(split, ("train", "test"))
    fname = "Ebay_train.txt" if split == "train" else "Ebay_test.txt"
    base = _locate(root, fname, ["Stanford_Online_Products"])
    rows = _read_rows(os.path.join(base, fname), skip=1)
    cls = [int(r[1]) for r in rows]
    class_ids = sorted(set(cls))
    mapping = {c: k for k, c in enumerate(class_ids)}
    paths = [os.path.join(base, r[3]) for r in rows]
    labels = [mapping[c] for c in cls]
    return _finish(root, paths, labels, [str(c) for c in class_ids], None, validate)


def inshop_clothes(root, split="train", validate=True):
    """Reads DeepFashion In-shop Clothes Retrieval with its official split.

    Layout: `root/Eval/list_eval_partition.txt` (or `root/list_eval_partition.txt`):
    first line the image count, second line the header
    `image_name item_id evaluation_status`, then rows like
    `img/WOMEN/Dresses/id_00000002/02_1_front.jpg id_00000002 train`; the paths are
    relative to `root` (or `root/Img`). Splits: "train" (3,997 items), "query" and
    "gallery" (3,985 items). Query and gallery labels share one mapping, so an item has
    the same label in both.

    Reference: Liu et al. 2016 (DeepFashion).
    """
    _check_split(split, ("train", "query", "gallery"))
    base = None
    for cand in (os.path.join("Eval", "list_eval_partition.txt"), "list_eval_partition.txt"):
        if os.path.isfile(os.path.join(root, cand)):
            base = os.path.join(root, cand)
            break
    if base is None:
        raise FileNotFoundError(
            f"Could not find 'Eval/list_eval_partition.txt' or 'list_eval_partition.txt' under root={str(root)!r}"
        )
    rows = [r for r in _read_rows(base, skip=2) if len(r) >= 3]
    img_root = root
    if rows and not os.path.exists(os.path.join(root, rows[0][0])) and os.path.isdir(os.path.join(root, "Img")):
        img_root = os.path.join(root, "Img")
    if split == "train":
        pool = sorted({r[1] for r in rows if r[2] == "train"})
    else:
        pool = sorted({r[1] for r in rows if r[2] in ("query", "gallery")})
    mapping = {c: k for k, c in enumerate(pool)}
    sel = [r for r in rows if r[2] == split]
    paths = [os.path.join(img_root, r[0]) for r in sel]
    labels = [mapping[r[1]] for r in sel]
    return _finish(root, paths, labels, pool, None, validate)
