"""Dataset specifications of `keras-cgd train` and their train/test splits."""

import os

from keras_cgd.training.errors import usage_error as _usage_error

BUILTIN_DATASETS = ("photo_copies", "photo_views", "digits")
STANDARD_DATASETS = ("cub200", "cars196", "sop", "inshop")


class DatasetSplits:
    """Train and test splits of a retrieval dataset (disjoint classes).

    Attributes:
        name: short name of the dataset (for run and model names).
        train: `ImageDataset` of the training classes.
        test: `ImageDataset` evaluated as a gallery where every item queries the rest,
            or the gallery when `query` is given.
        query: optional `ImageDataset` of queries (In-shop; copy detection), else None.
        task: "retrieval", or "copy_detection" (queries are attacked copies of the
            `test` references; scored by Recall@K and copy-detection mAP).
    """

    def __init__(self, name, train, test, query=None, task="retrieval"):
        self.name = name
        self.train = train
        self.test = test
        self.query = query
        self.task = task

    @property
    def num_train_classes(self):
        return int(self.train.num_classes)

    def __repr__(self):
        return f"DatasetSplits({self.name!r}, train={self.train!r}, test={self.test!r})"


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


def resolve_dataset(spec="photo_views", image_size=64, small=False, seed=0, crop_to_box=True):
    """Reads a dataset given as on the command line into train/test `DatasetSplits`.

    Args:
        spec: "photo_copies" / "photo_views" / "digits" (built-in, offline), `"cub200:PATH"`,
            `"cars196:PATH"`, `"sop:PATH"`, `"inshop:PATH"`, a folder holding one of
            those layouts (detected from its index files), or an image folder:
            `root/train/<class>/*` + `root/test/<class>/*`, or `root/<class>/*` whose
            classes (sorted) are split in halves, the first for training.
        image_size: side of the built-in images.
        small: fewer built-in images (test-sized).
        seed: rendering seed of the built-in images.
        crop_to_box: crop CUB-200 / CARS196 images (both splits) to their bounding
            boxes (True: the protocol of the CGD paper's numbers); ignored by datasets
            without boxes (`DatasetSplits.train.boxes` tells whether boxes are used).

    Returns:
        `DatasetSplits`.
    """
    from keras_cgd import data

    kind, value = check_dataset_spec(spec)
    if kind == "builtin":
        small_sizes = {"photo_copies": (3, 2)}.get(value, (8, 4))
        sizes = {"train_per_class": small_sizes[0], "test_per_class": small_sizes[1]} if small else {}
        b = data.load_builtin(value, image_size=int(image_size), seed=seed, **sizes)
        held_out = b.class_names[b.num_train_classes:]
        test = data.ImageDataset(b.test_labels - b.num_train_classes, held_out,
                                 images=b.test_images, root=f"<builtin {value}>")
        train = data.ImageDataset(b.train_labels, b.class_names[: b.num_train_classes],
                                  images=b.train_images, root=f"<builtin {value}>")
        query = None
        if b.query_images is not None:
            query = data.ImageDataset(b.query_labels - b.num_train_classes, held_out,
                                      images=b.query_images, root=f"<builtin {value}>")
        return DatasetSplits(value, train, test, query=query, task=b.task)
    if kind == "folder":
        train, test = _folder_splits(value)
        return DatasetSplits(os.path.basename(os.path.normpath(value)) or "folder", train, test)
    if kind == "inshop":
        return DatasetSplits(kind, data.inshop_clothes(value, "train"), data.inshop_clothes(value, "gallery"),
                             query=data.inshop_clothes(value, "query"))
    if kind in ("cub200", "cars196"):
        reader = data.cub200 if kind == "cub200" else data.cars196
        crop = bool(crop_to_box)
        return DatasetSplits(kind, reader(value, "train", crop_to_box=crop), reader(value, "test", crop_to_box=crop))
    reader = data.stanford_online_products
    return DatasetSplits(kind, reader(value, "train"), reader(value, "test"))
