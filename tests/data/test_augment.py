import numpy as np
import pytest
import tensorflow as tf

from keras_cgd.data import augment


def _image(h=50, w=70, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_cgd_resize_sizes_scale_with_image_size():
    assert augment.cgd_resize_size(224) == 252
    assert augment.cgd_resize_size(64) == round(64 * 252 / 224)


def test_cgd_train_augment_is_crop_of_resized_or_its_flip():
    img = _image()
    resized = tf.image.resize(tf.cast(img, tf.float32), (72, 72)).numpy()
    flips = set()
    for s in range(8):
        out = augment.cgd_train_augment(img, tf.constant([s, 1]), 64).numpy()
        assert out.shape == (64, 64, 3)
        found = None
        for y in range(72 - 64 + 1):
            for x in range(72 - 64 + 1):
                win = resized[y : y + 64, x : x + 64]
                if np.allclose(out, win, atol=1e-3):
                    found = "plain"
                elif np.allclose(out, win[:, ::-1], atol=1e-3):
                    found = "flip"
        assert found is not None
        flips.add(found)
    assert flips == {"plain", "flip"}


def test_random_resized_crop_window_respects_scale_and_ratio():
    h, w = 120, 200
    areas, ratios = [], []
    for s in range(200):
        y, x, ch, cw = augment.random_resized_crop_window(tf.constant([s, 9]), h, w).numpy()
        assert 0 <= y and y + ch <= h and 0 <= x and x + cw <= w and ch > 0 and cw > 0
        areas.append(ch * cw / (h * w))
        ratios.append(cw / ch)
    areas, ratios = np.array(areas), np.array(ratios)
    assert areas.min() >= 0.08 * 0.9 and areas.max() <= 1.0
    assert ratios.min() >= 0.75 * 0.9 and ratios.max() <= 4 / 3 * 1.1
    assert areas.std() > 0.1  # varies over the range


def test_pca_lighting_matches_numpy_formula():
    img = np.random.default_rng(1).random((6, 5, 3)).astype("float32") * 0.5 + 0.2
    seed = tf.constant([4, 2])
    out = augment.pca_lighting(tf.constant(img), seed, 0.1).numpy()
    alpha = tf.random.stateless_normal([3], seed, stddev=0.1).numpy()
    eigval = np.array([0.2175, 0.0188, 0.0045])
    eigvec = np.array([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])
    rgb = eigvec @ (alpha * eigval)
    np.testing.assert_allclose(out, np.clip((img + rgb) / 1.1, 0, 1), atol=1e-6)


def _numpy_color_jitter(img, seed, a=0.3):
    """Reference: same random draws (seed split into order/brightness/contrast/saturation), NumPy ops."""
    s_order, s_b, s_c, s_s = tf.random.experimental.stateless_split(tf.constant(seed), 4).numpy()
    fb, fc, fs = (float(tf.random.stateless_uniform([], s, 1 - a, 1 + a)) for s in (s_b, s_c, s_s))
    order = np.argsort(tf.random.stateless_uniform([3], s_order).numpy())
    gray = lambda x: (x * np.array([0.299, 0.587, 0.114])).sum(-1, keepdims=True)  # noqa: E731
    ops = [
        lambda x: np.clip(x * fb, 0, 1),
        lambda x: np.clip(fc * x + (1 - fc) * gray(x).mean(), 0, 1),
        lambda x: np.clip(fs * x + (1 - fs) * gray(x), 0, 1),
    ]
    x = img.astype("float64")
    for k in order:
        x = ops[k](x)
    return x


def test_color_jitter_stays_in_range_and_varies():
    img = np.random.default_rng(2).random((8, 8, 3)).astype("float32")
    outs = [augment.color_jitter(tf.constant(img), tf.constant([s, 0])).numpy() for s in range(5)]
    for s, o in enumerate(outs):
        assert o.min() >= 0 and o.max() <= 1
        np.testing.assert_allclose(o, _numpy_color_jitter(img, [s, 0]), atol=1e-5)
    assert np.abs(outs[0] - outs[1]).max() > 1e-3


def test_multigrain_train_augment_shape_range():
    out = augment.multigrain_train_augment(_image(), tf.constant([0, 0]), 32).numpy()
    assert out.shape == (32, 32, 3) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 255 and out.std() > 1


def test_resize_for_test_modes():
    img = _image(300, 200)
    assert augment.resize_for_test(img, longest_side=150).shape == (150, 100, 3)
    assert augment.resize_for_test(img, image_size=(40, 30)).shape == (40, 30, 3)
    sq = augment.resize_for_test(img, image_size=64, center_crop=True)
    assert sq.shape == (64, 64, 3)
    # square mode = shorter side to int(256/224*64) = 73, then centre crop
    ref = tf.image.resize(tf.cast(img, tf.float32), (round(300 * 73 / 200), 73), antialias=True).numpy()
    top = (ref.shape[0] - 64) // 2
    left = (73 - 64) // 2
    np.testing.assert_allclose(sq.numpy(), ref[top : top + 64, left : left + 64], atol=1e-3)
    with pytest.raises(ValueError, match="Exactly one"):
        augment.resize_for_test(img)
    with pytest.raises(ValueError, match="longest_side"):
        augment.resize_for_test(img, longest_side=-3)
