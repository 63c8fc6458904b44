"""Whitening, classifier folding, s*/p* tools; model tests use a tiny model
that follows the MultiGrain contract (layers "gem" and "classifier")."""

import keras
import numpy as np
import pytest
from PIL import Image
from sklearn.decomposition import PCA

from keras_cgd.evaluation import apply_pca_whitening
from keras_cgd.evaluation import embed_images
from keras_cgd.evaluation import fit_model_whitening
from keras_cgd.evaluation import fit_pca_whitening
from keras_cgd.evaluation import fold_whitening_into_classifier
from keras_cgd.evaluation import gem_p_override
from keras_cgd.evaluation import resize_longest_side
from keras_cgd.evaluation import select_gem_p
from keras_cgd.evaluation import whiten_model
from keras_cgd.layers import GeneralizedMeanPooling


def tf_resize(images, size):
    import tensorflow as tf

    return tf.image.resize(np.asarray(images, np.float32), size, method="bilinear", antialias=True).numpy()


def l2n(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def tiny_multigrain(num_classes=5, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(12, 3, activation="relu", name="conv")(x)
    raw = GeneralizedMeanPooling(p=3.0, name="gem")(x)
    emb = keras.layers.UnitNormalization(name="l2")(raw)
    logits = keras.layers.Dense(num_classes, name="classifier")(raw)
    return keras.Model(inputs, {"embedding": emb, "logits": logits})


# ------------------------------------------------------------- NumPy math
@pytest.mark.parametrize("bias_channel", [False, True])
def test_whitening_matches_sklearn_pca(bias_channel):
    rng = np.random.default_rng(0)
    e = rng.normal(size=(300, 6)) * np.arange(1, 7) + 2.0
    w = fit_pca_whitening(e, add_bias_channel=bias_channel)
    x = np.concatenate([e, np.ones((300, 1))], 1) if bias_channel else e
    x = l2n(x)
    pca = PCA(whiten=True).fit(x)
    ref = pca.transform(x)  # (x - mean) V^T / sqrt(var), up to component signs
    phi = apply_pca_whitening(e, w, normalize=False)
    # sign-invariant comparison: Gram matrices
    np.testing.assert_allclose(phi @ phi.T, ref @ ref.T, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.cov(phi.T.astype(np.float64)), np.eye(x.shape[1]), atol=1e-4)
    desc = apply_pca_whitening(e, w)
    np.testing.assert_allclose(np.abs(desc @ desc.T), np.abs(l2n(ref) @ l2n(ref).T), atol=1e-4)


def test_whitening_reduced_dimension():
    rng = np.random.default_rng(1)
    e = rng.normal(size=(200, 8)) * np.arange(1, 9)
    w = fit_pca_whitening(e, dim=3)
    ref = PCA(n_components=3, whiten=True).fit(l2n(e)).transform(l2n(e))
    phi = apply_pca_whitening(e, w, normalize=False)
    np.testing.assert_allclose(np.abs(phi), np.abs(ref), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="full-dimensional"):
        fold_whitening_into_classifier(np.ones((8, 2)), None, w)


def test_whitening_rejects_degenerate_sets():
    with pytest.raises(ValueError, match="variance"):
        fit_pca_whitening(np.random.default_rng(0).normal(size=(5, 10)))
    with pytest.raises(ValueError, match="dim"):
        fit_pca_whitening(np.ones((10, 3)), dim=5)


def test_fold_preserves_logits_up_to_positive_scale():
    rng = np.random.default_rng(2)
    e = np.abs(rng.normal(size=(400, 10))) * 3  # GeM outputs are positive
    W, b = rng.normal(size=(10, 7)), rng.normal(size=7)
    w = fit_pca_whitening(e[:300], add_bias_channel=True)
    W2, b2 = fold_whitening_into_classifier(W, b, w)
    test = e[300:]
    logits = test @ W + b
    new = apply_pca_whitening(test, w, normalize=False).astype(np.float64) @ W2 + b2
    scale = np.linalg.norm(np.concatenate([test, np.ones((100, 1))], 1), axis=1)
    np.testing.assert_allclose(new * scale[:, None], logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(new.argmax(1), logits.argmax(1))


def test_fold_without_bias_channel_needs_zero_bias():
    rng = np.random.default_rng(3)
    e = rng.normal(size=(200, 5))
    w = fit_pca_whitening(e)
    W = rng.normal(size=(5, 3))
    W2, b2 = fold_whitening_into_classifier(W, np.zeros(3), w)
    new = apply_pca_whitening(e, w, normalize=False) @ W2 + b2
    np.testing.assert_allclose(new * np.linalg.norm(e, axis=1)[:, None], e @ W, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="add_bias_channel"):
        fold_whitening_into_classifier(W, np.ones(3), w)


# ------------------------------------------------------------- model level
def test_resize_longest_side():
    img = np.zeros((30, 60, 3), np.uint8)
    assert resize_longest_side(img, 20).shape == (10, 20, 3)
    assert resize_longest_side(np.zeros((7, 3, 3)), 14).shape == (14, 6, 3)
    flat = resize_longest_side(np.full((8, 4, 3), 200, np.uint8), 16)
    np.testing.assert_allclose(flat, 200, atol=1e-3)


@pytest.mark.parametrize("size", [15, 20, 90])
def test_resize_longest_side_matches_pil_antialiased_bilinear(size):
    # PIL's bilinear filter on float ("F") images widens its support when
    # shrinking (antialiasing), like the resize under test.
    img = np.random.default_rng(4).integers(0, 256, size=(30, 45, 3)).astype(np.uint8)
    h, w = round(30 * size / 45), size
    ref = np.stack(
        [np.asarray(Image.fromarray(img[..., c].astype(np.float32), mode="F").resize((w, h), Image.BILINEAR)) for c in range(3)],
        axis=-1,
    )
    got = resize_longest_side(img, size)
    assert got.shape == (h, w, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=1e-3)


def test_embed_images_groups_shapes_and_keeps_order():
    model = tiny_multigrain()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=s + (3,)).astype(np.uint8) for s in [(20, 30), (16, 16), (30, 20), (40, 60)]]
    got = embed_images(model, images, image_size=24, batch_size=2)
    # reference: one image at a time, resized with the same rule, full model
    ref = np.stack(
        [np.asarray(model.predict_on_batch(resize_longest_side(im, 24)[None])["embedding"])[0] for im in images]
    )
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    raw = embed_images(model, images, image_size=24, output="gem")
    np.testing.assert_allclose(l2n(raw), got, rtol=1e-4, atol=1e-5)


def test_gem_p_override_restores_and_changes_output():
    model = tiny_multigrain()
    images = np.random.default_rng(1).integers(0, 256, size=(3, 16, 16, 3)).astype(np.float32)
    base = embed_images(model, images, output="gem")
    with gem_p_override(model, 1.0):
        p1 = embed_images(model, images, output="gem")
    # p=1 is the mean of the (clamped) feature map: compute it independently
    fmap = keras.Model(model.inputs, model.get_layer("conv").output).predict_on_batch(images)
    np.testing.assert_allclose(p1, np.maximum(np.asarray(fmap), 1e-6).mean(axis=(1, 2)), rtol=1e-4, atol=1e-6)
    assert float(keras.ops.convert_to_numpy(model.get_layer("gem").p)) == 3.0
    np.testing.assert_allclose(embed_images(model, images, output="gem"), base, rtol=1e-6)
    with pytest.raises(ValueError, match="`p`"):
        with gem_p_override(model, -1.0):
            pass
    with pytest.raises(RuntimeError):
        with gem_p_override(model, 2.0):
            raise RuntimeError("inside")
    assert float(keras.ops.convert_to_numpy(model.get_layer("gem").p)) == 3.0


def test_select_gem_p_is_a_grid_search():
    model = tiny_multigrain()
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(12, 16, 16, 3)).astype(np.float32)
    labels = np.repeat(np.arange(4), 3)
    candidates = (1.0, 3.0, 6.0)
    best, scores = select_gem_p(model, images, labels, candidates, objective="accuracy")
    expected = {}
    for p in candidates:
        with gem_p_override(model, p):
            logits = np.asarray(model.predict_on_batch(images)["logits"])
        expected[p] = float(np.mean(logits.argmax(1) == labels))
    assert scores == pytest.approx(expected)
    assert best == max(candidates, key=lambda p: (expected[p], -candidates.index(p)))
    assert float(keras.ops.convert_to_numpy(model.get_layer("gem").p)) == 3.0


def test_select_gem_p_callable_objective_resizes_once_and_predicts_once(monkeypatch):
    from keras_cgd.evaluation import test_time

    model = tiny_multigrain()
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, size=(12, 20, 20, 3)).astype(np.float32)
    labels = np.repeat(np.arange(4), 3)
    candidates = (1.0, 3.0, 6.0)

    def objective(out, y):  # needs both outputs
        return float(np.mean(out["logits"].argmax(1) == y)) - abs(float(out["embedding"][0, 0]))

    expected = {}
    for p in candidates:  # independent: full model on images resized by TF
        small = tf_resize(images, (16, 16))
        with gem_p_override(model, p):
            out = model.predict_on_batch(small)
        expected[p] = objective({k: np.asarray(v) for k, v in out.items()}, labels)

    calls = {"resize": 0, "predict": 0}
    real_resize, real_predict = test_time.resize_longest_side, model.predict_on_batch

    def counting_resize(*args, **kwargs):
        calls["resize"] += 1
        return real_resize(*args, **kwargs)

    def counting_predict(*args, **kwargs):
        calls["predict"] += 1
        return real_predict(*args, **kwargs)

    monkeypatch.setattr(test_time, "resize_longest_side", counting_resize)
    monkeypatch.setattr(model, "predict_on_batch", counting_predict)
    best, scores = select_gem_p(model, images, labels, candidates, image_size=16, objective=objective, batch_size=32)
    assert set(scores) == set(candidates)
    for p in candidates:
        assert scores[p] == pytest.approx(expected[p], rel=1e-5, abs=1e-6)
    assert best == max(candidates, key=lambda p: (expected[p], -candidates.index(p)))
    assert calls == {"resize": len(images), "predict": len(candidates)}
    assert float(keras.ops.convert_to_numpy(model.get_layer("gem").p)) == 3.0


def test_whiten_model_keeps_argmax_and_whitens_embedding():
    model = tiny_multigrain(num_classes=6)
    rng = np.random.default_rng(3)
    whiten_set = rng.integers(0, 256, size=(40, 16, 16, 3)).astype(np.float32)
    w = fit_model_whitening(model, whiten_set, add_bias_channel=True)
    assert w["projection"].shape == (13, 13)
    new = whiten_model(model, w)
    test = rng.integers(0, 256, size=(5, 16, 16, 3)).astype(np.float32)
    out, new_out = model.predict_on_batch(test), new.predict_on_batch(test)
    raw = embed_images(model, test, output="gem")
    scale = np.linalg.norm(np.concatenate([raw, np.ones((5, 1))], 1), axis=1)
    np.testing.assert_allclose(np.asarray(new_out["logits"]) * scale[:, None], np.asarray(out["logits"]), rtol=1e-3, atol=1e-4)
    np.testing.assert_array_equal(np.argmax(new_out["logits"], 1), np.argmax(out["logits"], 1))
    np.testing.assert_allclose(np.asarray(new_out["embedding"]), apply_pca_whitening(raw, w), atol=1e-3)
