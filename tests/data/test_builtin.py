import numpy as np
import pytest

from keras_cgd import data as kdata


def test_photo_views_disjoint_deterministic():
    d = kdata.load_builtin("photo_views", image_size=32, train_per_class=3, test_per_class=2)
    assert d.train_images.dtype == np.uint8 and d.train_images.shape[1:] == (32, 32, 3)
    assert len(d.train_images) == 3 * d.num_train_classes
    assert set(d.train_labels.tolist()) == set(range(d.num_train_classes))
    test_classes = set(d.test_labels.tolist())
    assert min(test_classes) >= d.num_train_classes and len(test_classes) == len(d.class_names) - d.num_train_classes
    train_photos = {d.class_names[c].split("/")[0] for c in set(d.train_labels.tolist())}
    test_photos = {d.class_names[c].split("/")[0] for c in test_classes}
    assert not train_photos & test_photos  # split by photo
    again = kdata.load_builtin("photo_views", image_size=32, train_per_class=3, test_per_class=2)
    np.testing.assert_array_equal(d.train_images, again.train_images)
    # views of a class differ (random views), images are not blank
    assert np.abs(d.train_images[0].astype(int) - d.train_images[1].astype(int)).mean() > 2
    assert d.train.num_classes == len(d.class_names)
    assert "photo_views" in kdata.list_builtin()
    with pytest.raises(ValueError, match="name"):
        kdata.load_builtin("imagenet")


def test_digits_split():
    d = kdata.load_builtin("digits", image_size=16)
    assert set(d.train_labels.tolist()) == {0, 1, 2, 3, 4} and set(d.test_labels.tolist()) == {5, 6, 7, 8, 9}
    assert d.train_images.shape[1:] == (16, 16, 3)
    assert len(d.train_images) + len(d.test_images) == 1797


def test_copy_detection_set():
    c = kdata.load_copy_detection(image_size=32)
    m = len(c.database_names)
    assert c.database_images.shape == (m, 32, 32, 3) and m >= 10
    assert len(c.query_images) == len(c.query_ids) == len(c.query_attacks)
    assert set(c.query_ids.tolist()) == set(range(m))
    assert {"jpeg_q10", "crop_50", "rotate_10", "scale_0.25", "colour_gray", "strong"} <= set(c.query_attacks)
    # a JPEG q75 copy is close to its original, farther from the others (on average)
    q = np.array([a == "jpeg_q75" for a in c.query_attacks])
    qi = c.query_images[q].astype(float)
    d = ((qi[:, None] - c.database_images[None].astype(float)) ** 2).mean(axis=(2, 3, 4))
    assert (d.argmin(axis=1) == c.query_ids[q]).mean() > 0.9


def test_photo_copies_regions_of_held_out_photos():
    from PIL import Image

    from keras_cgd.data.builtin import _photo
    from keras_cgd.data.builtin import package_photo_paths

    d = kdata.load_builtin("photo_copies", image_size=32, train_per_class=3, test_per_class=2)
    assert d.task == "copy_detection" and "photo_copies" in kdata.list_builtin()
    photos = package_photo_paths()
    held_out = {"chelsea", "flower", "ihc", "coins", "grass", "cell"} & set(photos)
    names = [n.split("/")[0] for n in d.class_names]
    assert d.num_train_classes == 9 * (len(photos) - len(held_out))
    assert set(names[d.num_train_classes:]) == held_out and not held_out & set(names[: d.num_train_classes])
    # training: per region the clean region then 2 attacked copies, labelled by region
    np.testing.assert_array_equal(d.train_labels, np.repeat(np.arange(d.num_train_classes), 3))
    # references: one clean region per held-out region; queries: 2 copies of each
    np.testing.assert_array_equal(d.test_labels, np.arange(d.num_train_classes, len(d.class_names)))
    np.testing.assert_array_equal(d.query_labels, np.repeat(d.test_labels, 2))
    assert d.query_images.shape == (2 * len(d.test_labels), 32, 32, 3) and d.query.num_classes == len(d.class_names)
    # the clean view of region (1, 2) of the first training photo, cut and resized here
    first = names[0]
    image = _photo(photos[first])
    h, w = image.shape[:2]
    ys, xs = np.linspace(0, h, 4).astype(int), np.linspace(0, w, 4).astype(int)
    region = image[ys[1]:ys[2], xs[2]:xs[3]]
    expected = np.asarray(Image.fromarray(region).resize((32, 32), Image.BILINEAR))
    label = d.class_names.index(f"{first}/1,2")
    np.testing.assert_array_equal(d.train_images[3 * label], expected)
    # attacked copies differ from the clean region; the rendering is deterministic
    assert np.abs(d.train_images[3 * label + 1].astype(int) - expected).mean() > 5
    again = kdata.load_builtin("photo_copies", image_size=32, train_per_class=3, test_per_class=2)
    np.testing.assert_array_equal(d.query_images, again.query_images)
    other = kdata.load_builtin("photo_copies", image_size=32, train_per_class=3, test_per_class=2, seed=1)
    assert not np.array_equal(d.query_images, other.query_images)


def test_strong_attack_is_a_function_of_the_generator():
    from keras_cgd.data.builtin import strong_attack

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    a = strong_attack(image, np.random.default_rng(5), 24)
    b = strong_attack(image, np.random.default_rng(5), 24)
    c = strong_attack(image, np.random.default_rng(6), 24)
    assert a.dtype == np.uint8 and a.shape == (24, 24, 3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
