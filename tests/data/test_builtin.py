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
