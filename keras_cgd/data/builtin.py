"""Built-in offline datasets made of real images that installed packages ship (no download).

Sources: scikit-image's `skimage/data` photographs, scikit-learn's `china.jpg` and
`flower.jpg`, matplotlib's `grace_hopper.jpg`, and scikit-learn's digits.

- `"photo_views"` (default; far from saturated: `cgd_tiny` trained from scratch for 8
  CPU epochs with MultiGrain augmentation raises held-out Recall@1 from about 0.61 to
  0.70–0.72; 4 epochs with flips only is not enough): each class is one fixed region (a quadrant) of one real photo; its
  images are random views of that region (random crop of 35–100 % of the area, aspect
  3/4–4/3, flip, brightness/contrast/saturation jitter ±25 %) rendered deterministically
  from `seed` at `image_size`. Train and test classes come from DISJOINT photos, so no
  test photo is seen in training. Quadrants of one photo share colours and texture,
  which keeps the task far from saturated.
- `"digits"`: scikit-learn's 8×8 digits upscaled to RGB `image_size`; classes 0–4
  train, 5–9 test. Too easy for evidence (an untrained CNN reaches Recall@1 ≈ 0.9), fine
  for smoke tests.
- `load_copy_detection()`: Copydays-style copy detection: originals are the photos,
  queries are attacked copies (crops, JPEG quality, rotation, scaling, colour changes).

Images are uint8 RGB `(N, S, S, 3)`, not normalised. Generation needs NumPy and Pillow
only; `BuiltinDataset.train` / `.test` wrap the arrays for the `tf.data` batchers.
"""

import functools
import importlib.util
import io
import os

import numpy as np

# (package, relative path, name). Grey-scale photos are converted to RGB.
_PHOTOS = (
    ("skimage", "data/astronaut.png", "astronaut"),
    ("skimage", "data/coffee.png", "coffee"),
    ("skimage", "data/rocket.jpg", "rocket"),
    ("skimage", "data/motorcycle_left.png", "motorcycle"),
    ("skimage", "data/hubble_deep_field.jpg", "hubble"),
    ("skimage", "data/retina.jpg", "retina"),
    ("sklearn", "datasets/images/china.jpg", "china"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "grace_hopper"),
    ("skimage", "data/camera.png", "camera"),
    ("skimage", "data/moon.png", "moon"),
    ("skimage", "data/brick.png", "brick"),
    ("skimage", "data/gravel.png", "gravel"),
    ("skimage", "data/clock_motion.png", "clock"),
    ("skimage", "data/text.png", "text"),
    # test photos (disjoint from the above)
    ("skimage", "data/chelsea.png", "chelsea"),
    ("sklearn", "datasets/images/flower.jpg", "flower"),
    ("skimage", "data/ihc.png", "ihc"),
    ("skimage", "data/coins.png", "coins"),
    ("skimage", "data/grass.png", "grass"),
    ("skimage", "data/cell.png", "cell"),
)
_TEST_PHOTOS = ("chelsea", "flower", "ihc", "coins", "grass", "cell")

_BUILTIN = {
    "photo_views": "random views of quadrants of real photos; train/test classes from disjoint photos",
    "digits": "scikit-learn digits upscaled to RGB; classes 0-4 train, 5-9 test (easy)",
}


class BuiltinDataset:
    """Arrays of a built-in dataset with disjoint train and test classes.

    Attributes:
        train_images, test_images: uint8 `(N, S, S, 3)`.
        train_labels, test_labels: int32; train labels in `[0, num_train_classes)`, test
            labels in `[num_train_classes, len(class_names))` (disjoint classes).
        class_names: names of all classes (train first).
        num_train_classes: size of the classifier to train.
        name: dataset name.
    """

    def __init__(self, name, train_images, train_labels, test_images, test_labels, class_names, num_train_classes):
        self.name = name
        self.train_images = train_images
        self.train_labels = train_labels.astype("int32")
        self.test_images = test_images
        self.test_labels = test_labels.astype("int32")
        self.class_names = list(class_names)
        self.num_train_classes = int(num_train_classes)

    @property
    def train(self):
        """Training split as an `ImageDataset` for the batchers."""
        from keras_cgd.data.readers import ImageDataset

        return ImageDataset(self.train_labels, self.class_names, images=self.train_images, root=f"<builtin {self.name}>")

    @property
    def test(self):
        """Test split (held-out classes) as an `ImageDataset`."""
        from keras_cgd.data.readers import ImageDataset

        return ImageDataset(self.test_labels, self.class_names, images=self.test_images, root=f"<builtin {self.name}>")

    def __repr__(self):
        return (
            f"BuiltinDataset({self.name!r}, train={self.train_images.shape}, test={self.test_images.shape}, "
            f"train classes={self.num_train_classes}, test classes={len(self.class_names) - self.num_train_classes})"
        )


def list_builtin():
    """Names and descriptions of the built-in retrieval datasets (`load_builtin`)."""
    return dict(_BUILTIN)


def package_photo_paths():
    """`{name: path}` of the real photos shipped by scikit-image, scikit-learn, matplotlib."""
    out = {}
    for package, rel, name in _PHOTOS:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        path = os.path.join(list(spec.submodule_search_locations)[0], rel)
        if os.path.isfile(path):
            out[name] = path
    return out


@functools.lru_cache(maxsize=4)
def _photo(path):
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _jitter(image, rng, amount):
    """Brightness, contrast, saturation factors in [1 - a, 1 + a] on a float RGB image."""
    x = image.astype("float32")
    fb, fc, fs = rng.uniform(1 - amount, 1 + amount, size=3)
    x = x * fb
    gray = x @ np.array([0.299, 0.587, 0.114], "float32")
    x = fc * x + (1 - fc) * gray.mean()
    gray = x @ np.array([0.299, 0.587, 0.114], "float32")
    x = fs * x + (1 - fs) * gray[..., None]
    return np.clip(np.round(x), 0, 255).astype("uint8")


def _view(region, rng, size, scale=(0.35, 1.0), jitter=0.25):
    from PIL import Image

    h, w = region.shape[:2]
    for _ in range(10):
        area = h * w * rng.uniform(*scale)
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = int(round(np.sqrt(area * ratio))), int(round(np.sqrt(area / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            break
    else:
        cw, ch = w, h
    y = rng.integers(0, h - ch + 1)
    x = rng.integers(0, w - cw + 1)
    crop = Image.fromarray(region[y : y + ch, x : x + cw]).resize((size, size), Image.BILINEAR, reducing_gap=2.0)
    out = np.asarray(crop)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return _jitter(out, rng, jitter)


def _regions(image, grid):
    """The `grid × grid` tiles of `image`, row by row."""
    h, w = image.shape[:2]
    ys = np.linspace(0, h, grid + 1).astype(int)
    xs = np.linspace(0, w, grid + 1).astype(int)
    return [image[ys[i] : ys[i + 1], xs[j] : xs[j + 1]] for i in range(grid) for j in range(grid)]


# Each photo is cut into _GRID × _GRID regions (one class each); views crop
# _SCALE–100 % of a region's area and jitter colours by ±_JITTER.
_GRID = 2
_JITTER = 0.25
_SCALE = 0.35


@functools.lru_cache(maxsize=8)
def _photo_views(image_size, train_per_class, test_per_class, seed):
    photos = package_photo_paths()
    if not photos:
        raise RuntimeError("No package-shipped photo found (scikit-image, scikit-learn or matplotlib missing).")
    train_names = [n for n in photos if n not in _TEST_PHOTOS]
    test_names = [n for n in photos if n in _TEST_PHOTOS]
    sets = {}
    class_names = []
    for split, names, per_class in (("train", train_names, train_per_class), ("test", test_names, test_per_class)):
        images, labels = [], []
        for name in names:
            for q, region in enumerate(_regions(_photo(photos[name]), _GRID)):
                label = len(class_names)
                class_names.append(f"{name}/{q // _GRID},{q % _GRID}")
                rng = np.random.default_rng([seed, label])
                for _ in range(per_class):
                    images.append(_view(region, rng, image_size, scale=(_SCALE, 1.0), jitter=_JITTER))
                    labels.append(label)
        sets[split] = (np.stack(images), np.asarray(labels, "int32"))
    num_train = _GRID * _GRID * len(train_names)
    return sets["train"] + sets["test"] + (tuple(class_names), num_train)


@functools.lru_cache(maxsize=4)
def _digits(image_size):
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    grey = np.clip(d.images * (255.0 / 16.0), 0, 255).astype("uint8")
    big = np.stack([np.asarray(Image.fromarray(g).resize((image_size, image_size), Image.BILINEAR)) for g in grey])
    rgb = np.repeat(big[..., None], 3, axis=-1)
    y = d.target.astype("int32")
    tr = y < 5
    return rgb[tr], y[tr], rgb[~tr], y[~tr], tuple(str(i) for i in range(10)), 5


def load_builtin(name="photo_views", image_size=64, train_per_class=24, test_per_class=12, seed=0):
    """Loads a built-in offline dataset of real images with disjoint train/test classes.

    Args:
        name: "photo_views" (default) or "digits" (see `list_builtin()`).
        image_size: side S of the square images (photo_views default 64; digits 32 is
            typical).
        train_per_class, test_per_class: views rendered per class (photo_views only).
        seed: seed of the rendering (photo_views only); the result is deterministic.

    Returns:
        `BuiltinDataset` with uint8 images `(N, S, S, 3)`. For "photo_views" with the
        defaults: 14 train photos × 4 quadrants = 56 train classes (1,344 images) and 6
        test photos × 4 = 24 test classes (288 images).

    Example:
        >>> data = load_builtin("photo_views", image_size=64)
        >>> batches = class_balanced_batches(data.train, 8, 4, image_size=64, augmentation="flip")
        >>> test = inference_batches(data.test, 64, image_size=64)
    """
    if name not in _BUILTIN:
        raise ValueError(
            f"Invalid value received for argument `name`. Expected one of {sorted(_BUILTIN)}. Received: name={name!r}"
        )
    for arg, value in (("image_size", image_size), ("train_per_class", train_per_class), ("test_per_class", test_per_class)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(
                f"Invalid value received for argument `{arg}`. Expected a positive int. Received: {arg}={value!r}"
            )
    if name == "digits":
        parts = _digits(int(image_size))
    else:
        parts = _photo_views(int(image_size), int(train_per_class), int(test_per_class), int(seed))
    xtr, ytr, xte, yte, names, ntr = parts
    return BuiltinDataset(name, xtr.copy(), ytr.copy(), xte.copy(), yte.copy(), names, ntr)


class CopyDetectionSet:
    """Copydays-style copy detection set.

    Attributes:
        database_images: uint8 `(M, S, S, 3)` originals.
        database_names: the M photo names.
        query_images: uint8 `(Q, S, S, 3)` attacked copies.
        query_ids: int32 `(Q,)` index of each query's original in the database.
        query_attacks: list of Q attack names (e.g. "jpeg_q10", "crop_50", "rotate_10").
    """

    def __init__(self, database_images, database_names, query_images, query_ids, query_attacks):
        self.database_images = database_images
        self.database_names = list(database_names)
        self.query_images = query_images
        self.query_ids = np.asarray(query_ids, "int32")
        self.query_attacks = list(query_attacks)

    def __repr__(self):
        return f"CopyDetectionSet(database={self.database_images.shape}, queries={self.query_images.shape})"


def _attacks():
    """Copydays-style attacks: name -> function(PIL image, size) -> PIL image."""
    from PIL import Image, ImageEnhance

    def crop(frac):
        def f(im, size):
            w, h = im.size
            s = np.sqrt(frac)
            cw, ch = int(w * s), int(h * s)
            return im.crop((0, 0, cw, ch)).resize((size, size), Image.BILINEAR)

        return f

    def jpeg(q):
        def f(im, size):
            buf = io.BytesIO()
            im.resize((size, size), Image.BILINEAR).save(buf, format="JPEG", quality=q)
            buf.seek(0)
            return Image.open(buf).convert("RGB")

        return f

    def rotate(deg):
        def f(im, size):
            return im.resize((size, size), Image.BILINEAR).rotate(deg, resample=Image.BILINEAR)

        return f

    def scale(factor):
        def f(im, size):
            small = im.resize((max(1, int(size * factor)),) * 2, Image.BILINEAR)
            return small.resize((size, size), Image.BILINEAR)

        return f

    def colour(kind):
        def f(im, size):
            im = im.resize((size, size), Image.BILINEAR)
            if kind == "bright":
                return ImageEnhance.Brightness(im).enhance(1.4)
            if kind == "contrast":
                return ImageEnhance.Contrast(im).enhance(0.6)
            if kind == "gray":
                return im.convert("L").convert("RGB")
            return ImageEnhance.Color(im).enhance(1.8)

        return f

    def strong(im, size):
        return jpeg(20)(rotate(5)(crop(0.6)(im, size), size), size)

    table = {}
    for frac in (0.8, 0.5, 0.3):
        table[f"crop_{int(frac * 100)}"] = crop(frac)
    for q in (75, 30, 10):
        table[f"jpeg_q{q}"] = jpeg(q)
    for deg in (5, 10, -10, 90):
        table[f"rotate_{deg}"] = rotate(deg)
    for factor in (0.5, 0.25):
        table[f"scale_{factor}"] = scale(factor)
    for kind in ("bright", "contrast", "gray", "saturate"):
        table[f"colour_{kind}"] = colour(kind)
    table["strong"] = strong
    return table


def load_copy_detection(image_size=128):
    """Copy-detection set from the package-shipped photos with Copydays-style attacks.

    Database: every photo resized to `image_size` × `image_size`. Queries: for each
    photo, 17 attacked copies: crops keeping 80/50/30 % of the area, JPEG quality
    75/30/10, rotations 5/10/−10/90°, down-scaling ×0.5/×0.25, brightness, contrast,
    grey-scale and saturation changes, and one strong combination (crop + rotation +
    JPEG 20). Deterministic.

    Returns:
        `CopyDetectionSet`.

    Reference: Copydays (Douze et al. 2009), as used by MultiGrain for copy detection.
    """
    from PIL import Image

    if not isinstance(image_size, (int, np.integer)) or image_size < 8:
        raise ValueError(
            f"Invalid value received for argument `image_size`. Expected an int >= 8. Received: image_size={image_size!r}"
        )
    photos = package_photo_paths()
    attacks = _attacks()
    db, names, queries, ids, kinds = [], [], [], [], []
    for i, (name, path) in enumerate(photos.items()):
        im = Image.fromarray(_photo(path))
        db.append(np.asarray(im.resize((image_size, image_size), Image.BILINEAR)))
        names.append(name)
        for kind, fn in attacks.items():
            queries.append(np.asarray(fn(im, image_size).convert("RGB")))
            ids.append(i)
            kinds.append(kind)
    return CopyDetectionSet(np.stack(db), names, np.stack(queries), ids, kinds)
