"""Scores that can be thresholded: `whiten_model(model, images)` (one call) centres or
whitens the embeddings of any keras-cgd model; on the built-in data it moves
non-matching pairs from ≈ 0.97 to ≈ 0 while matching pairs stay high."""

import keras
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import keras_cgd
from keras_cgd.data import load_builtin
from keras_cgd.evaluation import embed_images
from keras_cgd.evaluation import fit_model_whitening
from keras_cgd.evaluation import fit_pca_whitening
from keras_cgd.evaluation import whiten_model
from tests.evaluation.test_multigrain_tools import tiny_multigrain


def l2n(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def pair_scores(embeddings, labels):
    """Cosine of every unordered pair and whether both images share a class (brute force)."""
    e = l2n(np.asarray(embeddings, np.float64))
    i, j = np.triu_indices(len(labels), 1)
    return np.sum(e[i] * e[j], axis=1), labels[i] == labels[j]


@pytest.fixture(scope="module")
def cgd_and_data():
    data = load_builtin("photo_views", image_size=32, train_per_class=8, test_per_class=6)
    keras.utils.set_random_seed(0)
    model = keras_cgd.build_model("cgd_tiny", num_classes=data.num_train_classes, input_shape=(32, 32, 3))
    return model, data


def test_centring_separates_matching_and_non_matching_scores(cgd_and_data):
    model, data = cgd_and_data
    raw = model.predict(data.test_images, verbose=0)
    s_raw, same = pair_scores(raw["embedding"], data.test_labels)
    # the narrow cone: unrelated photos score close to 1, a gap of a few thousandths
    assert s_raw[~same].mean() > 0.9
    assert s_raw[same].mean() - s_raw[~same].mean() < 0.05
    centred = whiten_model(model, data.train_images, power=0.0)  # fit on other classes
    out = centred.predict(data.test_images, verbose=0)
    # independent computation: L2(L2(e) - mean of the training-class L2 embeddings)
    train = l2n(model.predict(data.train_images, verbose=0)["embedding"].astype(np.float64))
    np.testing.assert_allclose(out["embedding"], l2n(l2n(raw["embedding"]) - train.mean(axis=0)), atol=1e-4)
    s, same = pair_scores(out["embedding"], data.test_labels)
    assert abs(s[~same].mean()) < 0.15
    assert s[same].mean() - s[~same].mean() > 0.25
    # ranking all pairs with one threshold is as good as before (AUC kept)
    assert roc_auc_score(same, s) >= roc_auc_score(same, s_raw) - 0.03
    # CGD's classifier does not see the embedding: its logits are passed through
    np.testing.assert_allclose(out["logits"], raw["logits"], rtol=1e-5, atol=1e-5)


def test_full_whitening_of_a_cgd_embedding_matches_numpy(cgd_and_data):
    model, data = cgd_and_data
    white = whiten_model(model, data.train_images)  # power 0.5: MultiGrain's PCA whitening
    e_train = l2n(model.predict(data.train_images, verbose=0)["embedding"].astype(np.float64))
    mean = e_train.mean(axis=0)
    _, sv, vt = np.linalg.svd(e_train - mean, full_matrices=False)
    var = sv**2 / (len(e_train) - 1)
    e_test = l2n(model.predict(data.test_images[:8], verbose=0)["embedding"].astype(np.float64))
    expected = l2n((e_test - mean) @ vt.T / np.sqrt(var))
    np.testing.assert_allclose(white.predict(data.test_images[:8], verbose=0)["embedding"], expected, atol=2e-3)


def test_one_call_on_multigrain_fits_and_folds_the_classifier():
    model = tiny_multigrain(num_classes=4)
    rng = np.random.default_rng(0)
    fit_set = rng.integers(0, 256, size=(40, 16, 16, 3)).astype(np.float32)
    test = rng.integers(0, 256, size=(5, 16, 16, 3)).astype(np.float32)
    one_call = whiten_model(model, fit_set)
    two_calls = whiten_model(model, fit_model_whitening(model, fit_set, add_bias_channel=True))
    a, b = one_call.predict_on_batch(test), two_calls.predict_on_batch(test)
    np.testing.assert_allclose(np.asarray(a["embedding"]), np.asarray(b["embedding"]), atol=1e-5)
    # centring keeps the classifier's logits up to the positive scale 1/|[x, 1]|
    centred = whiten_model(model, fit_set, power=0.0)
    raw = embed_images(model, test, output="gem")
    scale = np.linalg.norm(np.concatenate([raw, np.ones((5, 1))], 1), axis=1)
    np.testing.assert_allclose(np.asarray(centred.predict_on_batch(test)["logits"]) * scale[:, None],
                               np.asarray(model.predict_on_batch(test)["logits"]), rtol=1e-3, atol=1e-4)


def test_centring_needs_no_more_images_than_dimensions():
    x = np.random.default_rng(0).normal(size=(5, 12)) + 3.0
    w = fit_pca_whitening(x, power=0.0)
    xn = l2n(x)
    np.testing.assert_allclose(w["mean"], xn.mean(axis=0))
    np.testing.assert_allclose(w["projection"], np.eye(12))
    with pytest.raises(ValueError, match="dim=12"):
        fit_pca_whitening(x)  # full whitening of 12 dimensions from 5 points
    with pytest.raises(ValueError, match=r"Received: power=1"):
        fit_pca_whitening(x, power=1)
