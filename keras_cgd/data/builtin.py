"""Built-in offline datasets made of real images that installed packages ship (no download).

Sources: scikit-image's `skimage/data` photographs, scikit-learn's `china.jpg` and
`flower.jpg`, matplotlib's `grace_hopper.jpg`, and scikit-learn's digits.

- `"photo_views"` (`load_builtin`'s default and the tiny presets'; saturated for ImageNet
  features — EfficientNet-Lite0 at 128 px: held-out R@1 0.948 untrained — but far from
  saturated for small scratch-trained models: `cgd_tiny` trained from scratch for 8
  CPU epochs with MultiGrain augmentation raises held-out Recall@1 from about 0.61 to
  0.70–0.72; 4 epochs with flips only is not enough): each class is one fixed region (a quadrant) of one real photo; its
  images are random views of that region (random crop of 35–100 % of the area, aspect
  3/4–4/3, flip, brightness/contrast/saturation jitter ±25 %) rendered deterministically
  from `seed` at `image_size`. Train and test classes come from DISJOINT photos, so no
  test photo is seen in training. Quadrants of one photo share colours and texture,
  which keeps the task far from saturated.
- `"photo_copies"` (copy detection on held-out photos; the default job's dataset): each
  photo is cut into 3 × 3 regions and every region is one instance. Training: the 14
  training photos' 126 regions, each as the clean region plus `train_per_class - 1`
  attacked copies (class = region). Test: the 6 held-out photos' 54 regions are the
  references and `test_per_class` attacked copies of each are the queries; the other
  regions of the same photo, which share its colours, texture and subject, are the hard
  negatives. Attacks (`strong_attack`, Copydays "strong"-like, random per copy): crop of
  25–70 % of the area, rotation up to ±20°, blur by down-scaling, brightness/contrast,
  grey-scale or saturation, JPEG quality 10–40. ImageNet features are far from
  saturated here (EfficientNet-Lite0 at 96 px: R@1 ≈ 0.33, mAP ≈ 0.41).
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
    "photo_copies": "copy detection: strongly attacked copies of 3x3 regions of held-out photos (queries) "
    "among all their regions (references)",
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
        query_images, query_labels: copy detection only ("photo_copies"): the attacked
            copies and the label of the test image (reference) each was made from;
            None for retrieval datasets, whose test images query each other.
        task: "retrieval" (test images query the rest) or "copy_detection" (queries
            search the references `test_images`).
    """

    def __init__(self, name, train_images, train_labels, test_images, test_labels, class_names, num_train_classes,
                 query_images=None, query_labels=None):
        self.name = name
        self.train_images = train_images
        self.train_labels = train_labels.astype("int32")
        self.test_images = test_images
        self.test_labels = test_labels.astype("int32")
        self.class_names = list(class_names)
        self.num_train_classes = int(num_train_classes)
        self.query_images = query_images
        self.query_labels = None if query_labels is None else np.asarray(query_labels).astype("int32")
        self.task = "retrieval" if query_images is None else "copy_detection"

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

    @property
    def query(self):
        """Copy-detection queries as an `ImageDataset` (None for retrieval datasets)."""
        from keras_cgd.data.readers import ImageDataset

        if self.query_images is None:
            return None
        return ImageDataset(self.query_labels, self.class_names, images=self.query_images, root=f"<builtin {self.name}>")

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


def strong_attack(image, rng, size):
    """A random Copydays "strong"-like attack of a uint8 RGB image, rendered at size × size.

    In order: crop of 25–70 % of the area (aspect 3/4–4/3, random position), resize to
    `size`; with probability 1/2 a rotation by U(−20°, 20°) (black corners); with
    probability 1/2 a blur by down-scaling ×U(0.25, 0.6) and back; brightness and
    contrast ×U(0.6, 1.4); grey-scale with probability 1/4, else saturation ×U(0.3, 1.8);
    JPEG at quality U{10..39}.

    Args:
        image: uint8 `(H, W, 3)`.
        rng: `np.random.Generator` (the attack is a function of its state).
        size: output side in pixels.

    Returns:
        uint8 `(size, size, 3)`.

    Reference: Copydays' "strong" attacks (Douze et al. 2009) and the copy-detection
    augmentations of MultiGrain (Berman et al. 2019) — approximations, not their code.
    """
    from PIL import Image, ImageEnhance

    im = Image.fromarray(image)
    w, h = im.size
    area = w * h * rng.uniform(0.25, 0.7)
    ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw = int(min(w, max(1, round(np.sqrt(area * ratio)))))
    ch = int(min(h, max(1, round(np.sqrt(area / ratio)))))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    im = im.crop((x0, y0, x0 + cw, y0 + ch)).resize((size, size), Image.BILINEAR)
    if rng.random() < 0.5:
        im = im.rotate(float(rng.uniform(-20, 20)), resample=Image.BILINEAR)
    if rng.random() < 0.5:
        small = max(4, int(size * rng.uniform(0.25, 0.6)))
        im = im.resize((small, small), Image.BILINEAR).resize((size, size), Image.BILINEAR)
    im = ImageEnhance.Brightness(im).enhance(float(rng.uniform(0.6, 1.4)))
    im = ImageEnhance.Contrast(im).enhance(float(rng.uniform(0.6, 1.4)))
    if rng.random() < 0.25:
        im = im.convert("L").convert("RGB")
    else:
        im = ImageEnhance.Color(im).enhance(float(rng.uniform(0.3, 1.8)))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=int(rng.integers(10, 40)))
    buf.seek(0)
    with Image.open(buf) as out:
        return np.asarray(out.convert("RGB"))


# photo_copies: each photo is cut into _COPY_GRID × _COPY_GRID regions (one instance each).
_COPY_GRID = 3


@functools.lru_cache(maxsize=4)
def _photo_copies(image_size, train_per_class, test_per_class, seed):
    from PIL import Image

    photos = package_photo_paths()
    if not photos:
        raise RuntimeError("No package-shipped photo found (scikit-image, scikit-learn or matplotlib missing).")
    split_names = ([n for n in photos if n not in _TEST_PHOTOS], [n for n in photos if n in _TEST_PHOTOS])
    class_names = []
    train_x, train_y, refs, ref_y, queries, query_y = [], [], [], [], [], []
    for split, names in enumerate(split_names):
        for name in names:
            for r, region in enumerate(_regions(_photo(photos[name]), _COPY_GRID)):
                label = len(class_names)
                class_names.append(f"{name}/{r // _COPY_GRID},{r % _COPY_GRID}")
                clean = np.asarray(Image.fromarray(region).resize((image_size, image_size), Image.BILINEAR))
                rng = np.random.default_rng([seed, split, label])
                if split == 0:  # training: the clean region and attacked copies, all of class `label`
                    train_x.append(clean)
                    train_x.extend(strong_attack(region, rng, image_size) for _ in range(train_per_class - 1))
                    train_y.extend([label] * train_per_class)
                else:  # held out: the clean region is the reference, attacked copies the queries
                    refs.append(clean)
                    ref_y.append(label)
                    queries.extend(strong_attack(region, rng, image_size) for _ in range(test_per_class))
                    query_y.extend([label] * test_per_class)
    num_train = _COPY_GRID * _COPY_GRID * len(split_names[0])
    return (np.stack(train_x), np.asarray(train_y, "int32"), np.stack(refs), np.asarray(ref_y, "int32"),
            tuple(class_names), num_train, np.stack(queries), np.asarray(query_y, "int32"))


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


# Images rendered per class when `load_builtin` is not told: (train, test).
_PER_CLASS_DEFAULTS = {"photo_views": (24, 12), "photo_copies": (8, 4), "digits": (1, 1)}


def load_builtin(name="photo_views", image_size=64, train_per_class=None, test_per_class=None, seed=0):
    """Loads a built-in offline dataset of real images with disjoint train/test classes.

    Args:
        name: "photo_views" (default), "photo_copies" or "digits" (see `list_builtin()`).
        image_size: side S of the square images (photo_views default 64; digits 32 is
            typical; the default job runs photo_copies at 96).
        train_per_class: photo_views: views rendered per training class (24);
            photo_copies: images per training region, the clean region and
            `train_per_class - 1` attacked copies (8). Unused by digits.
        test_per_class: photo_views: views per test class (12); photo_copies: attacked
            queries per held-out region (4). Unused by digits.
        seed: seed of the rendering (photo_views, photo_copies); deterministic.

    Returns:
        `BuiltinDataset` with uint8 images `(N, S, S, 3)`. For "photo_views" with the
        defaults: 14 train photos × 4 quadrants = 56 train classes (1,344 images) and 6
        test photos × 4 = 24 test classes (288 images). For "photo_copies": 14 × 9 = 126
        training regions (1,008 images), 6 × 9 = 54 references (`test_images`) and 216
        queries (`query_images`, `task == "copy_detection"`).

    Example:
        >>> data = load_builtin("photo_views", image_size=64)
        >>> batches = class_balanced_batches(data.train, 8, 4, image_size=64, augmentation="flip")
        >>> test = inference_batches(data.test, 64, image_size=64)
    """
    if name not in _BUILTIN:
        raise ValueError(
            f"Invalid value received for argument `name`. Expected one of {sorted(_BUILTIN)}. Received: name={name!r}"
        )
    default_train, default_test = _PER_CLASS_DEFAULTS[name]
    train_per_class = default_train if train_per_class is None else train_per_class
    test_per_class = default_test if test_per_class is None else test_per_class
    for arg, value in (("image_size", image_size), ("train_per_class", train_per_class), ("test_per_class", test_per_class)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(
                f"Invalid value received for argument `{arg}`. Expected a positive int. Received: {arg}={value!r}"
            )
    if name == "digits":
        parts = _digits(int(image_size))
    elif name == "photo_copies":
        parts = _photo_copies(int(image_size), int(train_per_class), int(test_per_class), int(seed))
    else:
        parts = _photo_views(int(image_size), int(train_per_class), int(test_per_class), int(seed))
    xtr, ytr, xte, yte, names, ntr = parts[:6]
    queries = [a.copy() for a in parts[6:]] or [None, None]
    return BuiltinDataset(name, xtr.copy(), ytr.copy(), xte.copy(), yte.copy(), names, ntr, *queries)


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
