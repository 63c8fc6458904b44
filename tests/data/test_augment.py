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


def _step_by_step_colour(img, params, lighting=0.1):
    """NumPy reference of MultiGrain's colour: torchvision ColorJitter steps in the drawn
    order, each clamped to [0, 255], then Lighting ((x + 255 V(alpha*lambda)) / 1.1), clamped."""
    f, order, alpha = params[:3], params[3:6].astype(int), params[6:9]
    w = np.array([0.299, 0.587, 0.114])
    x = img.astype(np.float64)
    gray = lambda v: (v * w).sum(-1, keepdims=True)  # noqa: E731
    for k in order:
        if k == 0:
            x = np.clip(f[0] * x, 0, 255)
        elif k == 1:
            x = np.clip(f[1] * x + (1 - f[1]) * gray(x).mean(), 0, 255)
        else:
            x = np.clip(f[2] * x + (1 - f[2]) * gray(x), 0, 255)
    eigval = np.array([0.2175, 0.0188, 0.0045])
    eigvec = np.array([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])
    return np.clip((x + 255 * (eigvec @ (alpha * eigval))) / (1 + lighting), 0, 255)


def test_folded_colour_equals_step_by_step_where_nothing_clips():
    # mid-grey images: no step of ColorJitter 0.3 leaves [0, 255], so folding is exact
    params = augment.multigrain_color_params(tf.constant([3, 1]), 40).numpy()
    imgs = np.random.default_rng(0).uniform(90, 160, (40, 6, 5, 3)).astype("float32")
    out = augment.folded_color_transform(imgs, params).numpy()
    for img, p, o in zip(imgs, params, out):
        np.testing.assert_allclose(o, _step_by_step_colour(img, p), atol=2e-3)


def test_folded_colour_statistics_match_step_by_step_on_a_photo():
    from skimage import data as skdata

    photo = tf.image.resize(skdata.astronaut(), (48, 48), antialias=True).numpy()
    params = augment.multigrain_color_params(tf.constant([1, 2]), 300).numpy()
    ours = augment.folded_color_transform(np.repeat(photo[None], len(params), 0), params).numpy()
    ref = np.stack([_step_by_step_colour(photo, p) for p in params])
    # measured: mean |difference| 0.18 grey levels; channel means within 0.4, spreads within 0.4
    assert np.abs(ours - ref).mean() < 0.4
    np.testing.assert_allclose(ours.mean(axis=(0, 1, 2)), ref.mean(axis=(0, 1, 2)), atol=1.0)
    np.testing.assert_allclose(ours.std(axis=(0, 1, 2)), ref.std(axis=(0, 1, 2)), atol=1.0)
    np.testing.assert_allclose(np.percentile(ours, [1, 50, 99]), np.percentile(ref, [1, 50, 99]), atol=2.0)
    assert ours.min() >= 0 and ours.max() <= 255


def test_multigrain_colour_params_distribution():
    assert_multigrain_colour_params(augment.multigrain_color_params(tf.constant([7, 7]), 3000).numpy())


def assert_multigrain_colour_params(p):
    """`(N, 9)` colour parameters follow MultiGrain's distributions (N ~ 3000)."""
    n = len(p)
    factors, order, alpha = p[:, :3], p[:, 3:6].astype(int), p[:, 6:]
    assert factors.min() >= 0.7 and factors.max() <= 1.3
    np.testing.assert_allclose(factors.mean(0), 1.0, atol=0.02)
    np.testing.assert_allclose(factors.std(0), 0.6 / np.sqrt(12), atol=0.01)  # U(0.7, 1.3)
    assert (np.sort(order, axis=1) == [0, 1, 2]).all()  # a permutation per image
    _, freq = np.unique(order, axis=0, return_counts=True)
    assert len(freq) == 6 and freq.min() > n / 6 * 0.8
    np.testing.assert_allclose(alpha.std(0), 0.1, atol=0.01)
    np.testing.assert_allclose(alpha.mean(0), 0.0, atol=0.01)


def test_folded_colour_uint8_is_the_float_map_rounded():
    rng = np.random.default_rng(5)
    imgs = rng.integers(0, 256, (4, 9, 7, 3), dtype=np.uint8)
    params = augment.multigrain_color_params(tf.constant([0, 4]), 4)
    out = augment.folded_color_transform_uint8(imgs, params).numpy()
    ref = np.round(np.stack([_step_by_step_colour(i, p) for i, p in zip(imgs.astype(float), params.numpy())]))
    assert out.dtype == np.uint8
    flt = augment.folded_color_transform(imgs, params).numpy()
    assert np.abs(out - np.round(flt)).max() <= 1  # XLA vs step-by-step TF float rounding
    assert np.abs(out.astype(float) - ref).mean() < 2.0  # and near the step-by-step reference


@pytest.mark.parametrize("size", [(40, 48), (64, 30), (150, 170)])
def test_resize_bilinear_matches_pil_antialiased_bilinear(size):
    from PIL import Image
    from skimage import data as skdata

    img = np.ascontiguousarray(skdata.astronaut()[::4, ::4][:100, :120])
    ours = augment.resize_bilinear(img, size).numpy()
    pil = np.asarray(Image.fromarray(img).resize((size[1], size[0]), Image.BILINEAR)).astype("float32")
    # PIL rounds to uint8: within one grey level (plain bilinear is ~10 levels off when shrinking)
    assert np.abs(ours - pil).max() <= 1.01 and np.abs(ours - pil).mean() < 0.4
    plain = augment.resize_bilinear(img, size, antialias=False).numpy()
    if size[0] > 100:  # enlarging: the antialiased kernel is the bilinear one
        np.testing.assert_allclose(ours, plain, atol=1e-3)


def test_random_resized_crop_windows_are_independent_rows():
    wins = augment.random_resized_crop_windows(tf.constant([2, 3]), 300, 90, 160).numpy()
    y, x, h, w = wins.T
    assert (y >= 0).all() and (x >= 0).all() and (y + h <= 90).all() and (x + w <= 160).all()
    area = h * w / (90 * 160)
    assert area.min() >= 0.08 * 0.9 and area.max() <= 1.0 and area.std() > 0.15
    assert len({tuple(r) for r in wins}) > 290  # rows differ
