"""Readers for MultiGrain's retrieval benchmarks: INRIA Holidays, UKBench, Copydays.

TensorFlow-only module (files are validated with `tf.io.decode_image`, as by the other
readers in `keras_cgd.data.readers`).

Every reader returns a `RetrievalBenchmark`: an `ImageDataset` (labels = groups of
images of the same scene/object) plus the indices of the queries in it, so that the
metrics of `keras_cgd.evaluation` apply directly:

| reader | layout | groups | queries | metric |
|---|---|---|---|---|
| `holidays` | `root/jpg/NNNNNN.jpg` (1,491 images) | id // 100 (500 groups) | first image of each group (id % 100 == 0) | `mean_average_precision(..., query_indices=...)` |
| `ukbench` | `root/full/ukbenchNNNNN.jpg` (10,200 images) | NNNNN // 4 (2,550 groups) | every image | `ukbench_score` (top-4 N-S score, /4) |
| `copydays` | `root/original/NNNNNN.jpg` (157) + `root/strong/` (229), `root/jpegqual/<q>/`, `root/crops/<pct>/` | id // 100 | the attacked copies | `copy_detection_map` (CD10k: "strong" + 10k distractors) |

Unreadable files are dropped, listed in `dataset.skipped` and announced with a
`UserWarning`, exactly as by the other readers; the query/reference indices refer to
the images that were kept. The query set is fixed by the file list (the protocol), so a
group whose query file is unreadable keeps its other images in the gallery but has no
query.

Reference: Jegou, Douze, Schmid, "Hamming embedding and weak geometric consistency for
large scale image search", ECCV 2008 (Holidays, Copydays); Nister, Stewenius, "Scalable
recognition with a vocabulary tree", CVPR 2006 (UKBench); MultiGrain (Berman et al.
2019), Table 4: Holidays mAP, UKB N-S score, CD10k mAP.
"""

import os
import re
import warnings

import numpy as np

from keras_cgd.data.readers import IMAGE_EXTENSIONS
from keras_cgd.data.readers import _finish

DISTRACTOR_CLASS = "<distractor>"
COPYDAYS_SUBSETS = (
    "strong",
    *(f"jpegqual/{q}" for q in (3, 5, 8, 10, 15, 20, 30, 50, 75)),
    *(f"crops/{c}" for c in (10, 15, 20, 30, 40, 50, 60, 70, 80)),
)


class RetrievalBenchmark:
    """An `ImageDataset` with the roles of its images in a retrieval benchmark.

    Attributes:
        dataset: the `ImageDataset` (labels are group ids, `class_names` their names).
        query_indices: int64 `(Q,)` indices of the query images in `dataset`.
        reference_indices: int64 indices of the database images: every image for
            Holidays and UKBench, the originals for Copydays.
        distractor_indices: int64 indices of distractor images (Copydays; empty
            otherwise). Their label is the extra class `"<distractor>"`.
        subsets: `(N,)` array of str naming the part of the benchmark each image comes
            from (`"jpg"`, `"full"`, `"original"`, `"strong"`, `"crops/10"`, ...,
            `"distractor"`).
        rotations: int32 `(N,)` clockwise rotation in degrees that makes each image
            upright (Holidays' manual corrections; zeros otherwise). Already applied
            when the reader wrote upright copies (`rotated_dir`).
        name: "holidays", "ukbench" or "copydays".

    Example:
        >>> bench = holidays("/data/holidays")
        >>> emb = embed_images(model, bench.dataset)           # (1491, D)
        >>> mean_average_precision(emb, bench.dataset.labels,
        ...                        query_indices=bench.query_indices)
    """

    def __init__(self, name, dataset, query_indices, reference_indices, distractor_indices, subsets, rotations=None):
        self.name = name
        self.dataset = dataset
        self.query_indices = np.asarray(query_indices, dtype="int64")
        self.reference_indices = np.asarray(reference_indices, dtype="int64")
        self.distractor_indices = np.asarray(distractor_indices, dtype="int64")
        self.subsets = np.asarray(subsets, dtype=object)
        n = len(dataset)
        self.rotations = np.zeros(n, "int32") if rotations is None else np.asarray(rotations, "int32")

    @property
    def labels(self):
        """The dataset's int32 group labels `(N,)`."""
        return self.dataset.labels

    def __len__(self):
        return len(self.dataset)

    def __repr__(self):
        return (
            f"RetrievalBenchmark({self.name!r}: {len(self)} images, {len(self.query_indices)} queries, "
            f"{len(self.reference_indices)} references, {len(self.distractor_indices)} distractors, "
            f"{len(self.dataset.skipped)} skipped)"
        )


# ---------------------------------------------------------------------------- helpers


def _image_files(folder):
    """Sorted non-hidden files with an image extension directly in `folder`."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Expected a folder of images. Not found: {str(folder)!r}")
    exts = tuple(IMAGE_EXTENSIONS)
    return sorted(
        f
        for f in os.listdir(folder)
        if not f.startswith(".") and f.lower().endswith(exts) and os.path.isfile(os.path.join(folder, f))
    )


def _image_folder_of(root, sub):
    """`root/sub` if it exists, else `root` (archives extracted without their folder)."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"Invalid value received for argument `root`: not a folder. Received: root={str(root)!r}")
    candidate = os.path.join(root, sub)
    return candidate if os.path.isdir(candidate) else root


def _ids(folder, files, pattern, what):
    """Parses the integer id of every file; raises on a name off the convention."""
    ids = []
    for f in files:
        m = re.fullmatch(pattern, f, flags=re.IGNORECASE)
        if m is None:
            raise ValueError(
                f"Unexpected file name in {str(folder)!r}: {f!r}. Expected {what}. Move other files "
                "out of the benchmark folder."
            )
        ids.append(int(m.group(1)))
    return np.asarray(ids, dtype="int64")


def _kept_mask(paths, dataset):
    """Which of `paths` survived validation (the dataset keeps them in order)."""
    kept = set(dataset.paths.tolist())
    return np.array([str(p) in kept for p in paths], dtype=bool)


def _parse_rotations(rotations):
    """Returns {filename: clockwise degrees} from a mapping or a yaml/json file."""
    if rotations is None:
        return {}
    if isinstance(rotations, (str, os.PathLike)):
        with open(rotations, encoding="utf-8") as f:
            text = f.read()
        pairs = re.findall(r"""["']?([^\s"':{},]+)["']?\s*:\s*(-?\d+)""", text)
        if not pairs and text.strip() not in ("", "{}"):
            raise ValueError(
                "Invalid value received for argument `rotations`. Expected a yaml/json file of "
                f"`\"NNNNNN.jpg\": degrees` entries. Received: rotations={str(rotations)!r} with no entry"
            )
        rotations = {name: int(deg) for name, deg in pairs}
    if not hasattr(rotations, "items"):
        raise TypeError(
            "Invalid type received for argument `rotations`. Expected a mapping {filename: degrees} "
            f"or the path of a yaml/json file. Received: rotations={rotations!r}"
        )
    out = {}
    for name, deg in rotations.items():
        if isinstance(deg, bool) or not isinstance(deg, (int, np.integer)) or deg % 90:
            raise ValueError(
                "Invalid value received for argument `rotations`. Expected multiples of 90 degrees. "
                f"Received: rotations[{name!r}]={deg!r}"
            )
        out[os.path.basename(str(name))] = int(deg) % 360
    return out


def rotate_upright(image, degrees):
    """Rotates an image `(H, W, C)` clockwise by `degrees` (a multiple of 90).

    This is the correction of Holidays' `rotations` (MultiGrain applies
    `PIL.Image.rotate(-degrees, expand=True)`, i.e. clockwise).

    Args:
        image: array `(H, W, C)` (or `(H, W)`).
        degrees: int multiple of 90.

    Returns:
        the rotated array, `(W, H, C)` for 90 and 270.

    Example:
        >>> rotate_upright(np.arange(6).reshape(2, 3), 90).tolist()
        [[3, 0], [4, 1], [5, 2]]
    """
    if isinstance(degrees, bool) or not isinstance(degrees, (int, np.integer)) or degrees % 90:
        raise ValueError(
            f"Invalid value received for argument `degrees`. Expected a multiple of 90. Received: degrees={degrees!r}"
        )
    return np.rot90(np.asarray(image), k=-(int(degrees) // 90) % 4, axes=(0, 1))


def _write_upright(paths, rotations, rotated_dir):
    """Writes upright PNG copies of the rotated images; returns the new paths."""
    from PIL import Image

    os.makedirs(rotated_dir, exist_ok=True)
    out = np.asarray(paths, dtype=object).copy()
    for i in np.flatnonzero(rotations):
        with Image.open(paths[i]) as im:
            arr = np.asarray(im.convert("RGB"))
        stem = os.path.splitext(os.path.basename(paths[i]))[0]
        target = os.path.join(rotated_dir, f"{stem}.png")
        Image.fromarray(np.ascontiguousarray(rotate_upright(arr, int(rotations[i])))).save(target)
        out[i] = target
    return out


# ---------------------------------------------------------------------------- readers


def holidays(root, rotations=None, rotated_dir=None, validate=True):
    """Reads INRIA Holidays: 1,491 images in 500 groups, 500 queries.

    Layout (official `jpg1.tar.gz` + `jpg2.tar.gz`): `root/jpg/NNNNNN.jpg` (or the
    `NNNNNN.jpg` files directly in `root`), a 6-digit image id. The group of an image
    is `id // 100`; the query of a group is its image with the smallest id (the
    `NN..00.jpg` file). Labels are the groups in increasing id order, class names the
    group ids ("1000", "1001", ...). An image file with another name raises
    `ValueError`.

    Some Holidays images are stored sideways; MultiGrain evaluates on manually
    corrected images (its `holidays-rotate.yaml`, 228 entries, not shipped here).

    Args:
        root: dataset folder.
        rotations: optional clockwise corrections: a mapping `{"100600.jpg": 90, ...}`
            or the path of a yaml/json file of `"NNNNNN.jpg": degrees` entries
            (MultiGrain's `holidays-rotate.yaml` reads as is). Degrees are multiples
            of 90; a name that is not in the folder raises `ValueError`. Recorded in
            `RetrievalBenchmark.rotations`.
        rotated_dir: optional folder where upright PNG copies of the rotated images
            are written (losslessly); the dataset then points to them, so every
            pipeline sees upright images. Without it, apply `rotate_upright` yourself.
        validate: decode every file once and skip unreadable ones (see `image_folder`).

    Returns:
        `RetrievalBenchmark` (queries: `query_indices`; gallery: the whole dataset,
        each query excluded from its own ranking).

    Example:
        >>> bench = holidays("/data/holidays", rotations="holidays-rotate.yaml",
        ...                  rotated_dir="/tmp/holidays_upright")
        >>> mean_average_precision(emb, bench.labels, query_indices=bench.query_indices)

    Reference: Jegou et al. ECCV 2008; MultiGrain (Berman et al. 2019) reports Holidays
    mAP with the rotation corrections.
    """
    folder = _image_folder_of(root, "jpg")
    files = _image_files(folder)
    ids = _ids(folder, files, r"(\d{6})\.jpe?g", "a 6-digit Holidays image id such as '100000.jpg'")
    order = np.argsort(ids, kind="stable")
    files = [files[i] for i in order]
    ids = ids[order]
    rot = _parse_rotations(rotations)
    unknown = sorted(set(rot) - set(files))
    if unknown:
        raise ValueError(
            "Invalid value received for argument `rotations`. Expected names of files in "
            f"{str(folder)!r}. Received unknown names: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}"
        )
    groups = ids // 100
    group_ids, labels = np.unique(groups, return_inverse=True)
    is_query = np.r_[True, groups[1:] != groups[:-1]] if len(groups) else np.zeros(0, bool)
    paths = np.array([os.path.join(folder, f) for f in files], dtype=object)
    rotation = np.array([rot.get(f, 0) for f in files], dtype="int32")
    dataset = _finish(root, paths, labels, [str(g) for g in group_ids], None, validate)
    keep = _kept_mask(paths, dataset)
    rotation = rotation[keep]
    if rotated_dir is not None and rotation.any():
        dataset.paths = _write_upright(dataset.paths, rotation, rotated_dir)
    return RetrievalBenchmark(
        "holidays",
        dataset,
        np.flatnonzero(is_query[keep]),
        np.arange(len(dataset)),
        np.zeros(0),
        np.full(len(dataset), "jpg", dtype=object),
        rotation,
    )


def ukbench(root, validate=True):
    """Reads UKBench: 10,200 images, 2,550 objects of 4 views each; every image a query.

    Layout (official `ukbench.zip`): `root/full/ukbenchNNNNN.jpg` (or the files
    directly in `root`), `NNNNN` from 00000 to 10199. The group of an image is
    `NNNNN // 4` (taken from the name, not from the position, so a missing file never
    shifts the groups); labels are the groups in increasing order, class names their
    numbers. An image file with another name raises `ValueError`.

    Args:
        root: dataset folder.
        validate: see `image_folder`.

    Returns:
        `RetrievalBenchmark` whose queries and references are every image.

    Example:
        >>> bench = ukbench("/data/ukbench")
        >>> ukbench_score(embed_images(model, bench.dataset), bench.labels)  # in [0, 4]

    Reference: Nister & Stewenius, CVPR 2006; MultiGrain (Berman et al. 2019) reports
    the N-S score (/4).
    """
    folder = _image_folder_of(root, "full")
    files = _image_files(folder)
    ids = _ids(folder, files, r"ukbench(\d{5})\.jpe?g", "a UKBench name such as 'ukbench00000.jpg'")
    order = np.argsort(ids, kind="stable")
    files = [files[i] for i in order]
    groups = ids[order] // 4
    group_ids, labels = np.unique(groups, return_inverse=True)
    paths = np.array([os.path.join(folder, f) for f in files], dtype=object)
    dataset = _finish(root, paths, labels, [str(g) for g in group_ids], None, validate)
    n = len(dataset)
    return RetrievalBenchmark(
        "ukbench", dataset, np.arange(n), np.arange(n), np.zeros(0), np.full(n, "full", dtype=object)
    )


def copydays(
    root,
    subsets=("strong",),
    distractors_dir=None,
    max_distractors=None,
    originals_dir="original",
    validate=True,
):
    """Reads Copydays: 157 original photos and their attacked copies (+ distractors).

    Layout (the extracted `copydays_{original,strong,jpeg,crop}.tar.gz`, as used by
    SSCD/VISSL): `root/original/NNNNNN.jpg` (157 originals), `root/strong/` (229
    strong attacks), `root/jpegqual/<q>/` (q = 3 ... 75) and `root/crops/<pct>/`
    (pct = 10 ... 80), 157 images each. Every file is named by a 6-digit id; an
    attacked copy shares its original's group `id // 100` (the first 4 digits), e.g.
    `strong/200001.jpg` is a copy of `original/200000.jpg`. Labels are the groups in
    increasing order; distractors get the extra last class `"<distractor>"`.

    The dataset holds the originals, then the queries subset by subset (in the order
    of `subsets`), then the distractors. MultiGrain's CD10k is `subsets=("strong",)`
    with 10k YFCC100M distractors.

    Args:
        root: dataset folder.
        subsets: attacked subsets used as queries, relative to `root` (each a folder of
            `NNNNNN.jpg`): names from `COPYDAYS_SUBSETS`, `"jpegqual"` / `"crops"` for
            every level found, or any folder following the naming convention.
        distractors_dir: optional folder of distractor images, searched recursively
            (files sorted by path; any name).
        max_distractors: keep only the first `max_distractors` distractor files (sorted
            by path); default all. Reported in the result size, never silent.
        originals_dir: folder of the originals relative to `root` (or absolute).
        validate: see `image_folder`.

    Returns:
        `RetrievalBenchmark`: `reference_indices` are the originals, `query_indices`
        the copies, `distractor_indices` the distractors; `subsets` names each image's
        folder (`"original"`, `"strong"`, `"jpegqual/10"`, ..., `"distractor"`).

    Example:
        >>> b = copydays("/data/copydays", distractors_dir="/data/yfcc10k")
        >>> e, y = embed_images(model, b.dataset), b.labels
        >>> copy_detection_map(e[b.query_indices], y[b.query_indices],
        ...                    e[b.reference_indices], y[b.reference_indices],
        ...                    e[b.distractor_indices])

    Reference: Jegou et al. ECCV 2008 (Copydays); MultiGrain (Berman et al. 2019),
    CD10k mAP.
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"Invalid value received for argument `root`: not a folder. Received: root={str(root)!r}")
    if isinstance(subsets, str):
        subsets = (subsets,)
    expanded = []
    for s in subsets:
        s = str(s).strip("/")
        folder = os.path.join(root, s)
        if s in ("jpegqual", "crops") and os.path.isdir(folder):
            levels = [d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d))]
            expanded += [f"{s}/{d}" for d in sorted(levels, key=lambda d: (not d.isdigit(), int(d) if d.isdigit() else 0, d))]
        elif os.path.isdir(folder):
            expanded.append(s)
        else:
            raise ValueError(
                f"Invalid value received for argument `subsets`. Expected folders under root={str(root)!r} "
                f"such as {COPYDAYS_SUBSETS[:3]} (+ 'jpegqual', 'crops'). Received: {s!r} (not found)"
            )
    if max_distractors is not None and (
        isinstance(max_distractors, bool) or not isinstance(max_distractors, (int, np.integer)) or max_distractors < 0
    ):
        raise ValueError(
            "Invalid value received for argument `max_distractors`. Expected a non-negative integer or None. "
            f"Received: max_distractors={max_distractors!r}"
        )
    pattern, what = r"(\d{6})\.jpe?g", "a 6-digit Copydays image id such as '200000.jpg'"
    orig_folder = os.path.join(root, originals_dir)
    orig_files = _image_files(orig_folder)
    orig_groups = _ids(orig_folder, orig_files, pattern, what) // 100
    paths = [os.path.join(orig_folder, f) for f in orig_files]
    groups = list(orig_groups)
    roles = ["original"] * len(orig_files)
    for s in expanded:
        folder = os.path.join(root, s)
        files = _image_files(folder)
        groups += list(_ids(folder, files, pattern, what) // 100)
        paths += [os.path.join(folder, f) for f in files]
        roles += [s] * len(files)
    orphan = sorted({int(g) for g, r in zip(groups, roles) if r != "original"} - {int(g) for g in orig_groups})
    if orphan:
        warnings.warn(
            f"keras_cgd.data.copydays: {len(orphan)} copy group(s) have no original in {str(orig_folder)!r} "
            f"(e.g. {orphan[0] * 100:06d}); their queries have no relevant item and score 0.",
            stacklevel=2,
        )
    group_ids, labels = np.unique(np.asarray(groups, "int64"), return_inverse=True)
    class_names = [str(g) for g in group_ids]
    labels = list(labels)
    if distractors_dir is not None:
        if not os.path.isdir(distractors_dir):
            raise FileNotFoundError(
                f"Invalid value received for argument `distractors_dir`: not a folder. Received: {str(distractors_dir)!r}"
            )
        dfiles = []
        for dirpath, dirnames, filenames in os.walk(distractors_dir):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            dfiles += [
                os.path.join(dirpath, f)
                for f in filenames
                if not f.startswith(".") and f.lower().endswith(tuple(IMAGE_EXTENSIONS))
            ]
        dfiles = sorted(dfiles)[:max_distractors]
        paths += dfiles
        labels += [len(class_names)] * len(dfiles)
        roles += ["distractor"] * len(dfiles)
        class_names.append(DISTRACTOR_CLASS)
    paths = np.asarray(paths, dtype=object)
    roles = np.asarray(roles, dtype=object)
    dataset = _finish(root, paths, np.asarray(labels, "int32"), class_names, None, validate)
    roles = roles[_kept_mask(paths, dataset)]
    return RetrievalBenchmark(
        "copydays",
        dataset,
        np.flatnonzero((roles != "original") & (roles != "distractor")),
        np.flatnonzero(roles == "original"),
        np.flatnonzero(roles == "distractor"),
        roles,
    )


__all__ = [
    "COPYDAYS_SUBSETS",
    "DISTRACTOR_CLASS",
    "RetrievalBenchmark",
    "copydays",
    "holidays",
    "rotate_upright",
    "ukbench",
]
