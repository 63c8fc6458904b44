"""p* fine-tuning (MultiGrain Appendix E) and the proxy set used to choose p*."""

import keras
import numpy as np
import pytest

from keras_cgd.evaluation import build_p_star_proxy_set
from keras_cgd.evaluation import embed_images
from keras_cgd.evaluation import finetune_gem_p
from keras_cgd.evaluation import gem_p_loss_and_gradient
from keras_cgd.evaluation import gem_p_override
from keras_cgd.evaluation import select_gem_p
from tests.evaluation.test_multigrain_tools import tiny_multigrain


def model_cross_entropy(model, images, labels, p):
    """Mean CE of the model's own logits with its GeM exponent set to p (forward passes)."""
    with gem_p_override(model, p):
        logits = embed_images(model, images, output="logits").astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(-np.mean(logp[np.arange(len(labels)), labels]))


def rect_images(n, seed):
    """Images of two aspect ratios (MultiGrain's rect inputs differ in shape)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (20, 28, 3) if i % 2 else (28, 24, 3)).astype(np.float32) for i in range(n)]


def test_closed_form_gradient_matches_finite_differences_of_the_model():
    model = tiny_multigrain(num_classes=4, seed=3)
    images = rect_images(6, 0)
    labels = np.array([0, 1, 2, 3, 0, 1])
    trunk = keras.Model(model.inputs, model.get_layer("gem").input)
    fmaps = [np.asarray(trunk(im[None]))[0] for im in images]
    kernel, bias = (np.asarray(w, np.float64) for w in model.get_layer("classifier").get_weights())
    for p in (1.5, 3.0, 5.0):
        loss, grad = gem_p_loss_and_gradient(fmaps, labels, p, kernel, bias)
        assert loss == pytest.approx(model_cross_entropy(model, images, labels, p), rel=1e-4)
        h = 1e-2
        numeric = (model_cross_entropy(model, images, labels, p + h)
                   - model_cross_entropy(model, images, labels, p - h)) / (2 * h)
        assert grad == pytest.approx(numeric, rel=2e-2, abs=1e-4)


def test_finetuning_moves_p_toward_the_grid_optimum_of_the_loss():
    model = tiny_multigrain(num_classes=3, seed=5)
    images = rect_images(24, 1)
    # labels the model predicts at p = 6 (the random initialisation depends on the backend)
    with gem_p_override(model, 6.0):
        labels = embed_images(model, images, output="logits").argmax(axis=1)
    grid = np.arange(1.0, 10.01, 0.5)
    losses = [model_cross_entropy(model, images, labels, p) for p in grid]
    best = float(grid[int(np.argmin(losses))])
    start = 1.5 if best >= 4.0 else 9.0  # start on the far side of the brute-force optimum
    assert abs(best - start) >= 1.0, (best, losses)
    weights = [w.copy() for w in model.get_weights()]
    result = finetune_gem_p(model, (images, labels), image_size=None, learning_rate=2.0, batch_size=4,
                            epochs=3, p_init=start, seed=0)
    p = result["p"]
    assert abs(p - best) < abs(start - best)
    assert model_cross_entropy(model, images, labels, p) < model_cross_entropy(model, images, labels, start)
    # the result is assigned to the GeM layer; nothing else moved (frozen network)
    assert float(keras.ops.convert_to_numpy(model.get_layer("gem").p)) == pytest.approx(p, rel=1e-6)
    for w0, w1 in zip(weights, model.get_weights()):
        if w0.shape != ():
            np.testing.assert_array_equal(w0, w1)
    assert len(result["p_history"]) == 3 * 6


def test_finetune_schedule_is_sgd_momentum_with_polynomial_decay(monkeypatch):
    # With a constant gradient g the update is written out: b = μb + g, p -= lr(1-k/K)^0.9 b.
    import keras_cgd.evaluation.test_time as tt

    monkeypatch.setattr(tt, "gem_p_loss_and_gradient", lambda *a, **k: (0.0, 0.5))
    model = tiny_multigrain(num_classes=2)
    images = [np.zeros((16, 16, 3), np.float32)] * 10
    result = finetune_gem_p(model, (images, np.zeros(10, int)), image_size=24, assign=False)
    p, b, expected = 3.0, 0.0, []
    for k in range(3):  # 10 images, batch 4: K = 3 steps
        b = 0.9 * b + 0.5
        p -= 0.005 * (1 - k / 3) ** 0.9 * b
        expected.append(p)
    np.testing.assert_allclose(result["p_history"], expected, rtol=1e-12)
    assert float(keras.ops.convert_to_numpy(model.get_layer("gem").p)) == 3.0  # assign=False


def test_finetune_errors_name_the_value():
    model = tiny_multigrain(num_classes=2)
    images = [np.zeros((16, 16, 3), np.float32)] * 2
    with pytest.raises(ValueError, match=r"labels in \[0, 5\]"):
        finetune_gem_p(model, (images, [0, 5]), image_size=None)
    with pytest.raises(ValueError, match=r"Received: batch_size=0"):
        finetune_gem_p(model, (images, [0, 1]), batch_size=0)
    with pytest.raises(ValueError, match="nope.*'gem'"):
        finetune_gem_p(model, (images, [0, 1]), gem_layer="nope")


def test_proxy_set_takes_the_first_images_of_each_class_and_augments_them():
    from keras_cgd.data import from_arrays

    rng = np.random.default_rng(0)
    labels = np.array([2, 0, 1, 0, 2, 1, 0, 2, 1, 0])
    images = rng.integers(0, 256, (10, 40, 30, 3)).astype(np.uint8)
    ds = from_arrays(images, labels)
    proxy = build_p_star_proxy_set(ds, images_per_class=2, augmentations=5, image_size=24, seed=1)
    # brute force: first two indices of each class in dataset order, 5 copies each
    chosen = [i for c in range(3) for i in [j for j in range(10) if labels[j] == c][:2]]
    assert proxy["instance_ids"].tolist() == [i for i in chosen for _ in range(5)]
    assert proxy["labels"].tolist() == [int(labels[i]) for i in chosen for _ in range(5)]
    assert proxy["images"].shape == (30, 24, 24, 3) and proxy["images"].dtype == np.float32
    assert proxy["images"].min() >= 0 and proxy["images"].max() <= 255
    copies = proxy["images"][:5].reshape(5, -1)
    assert len({c.tobytes() for c in copies}) == 5  # independent augmentations
    # reproducible, and usable by select_gem_p for both tasks
    again = build_p_star_proxy_set(ds, image_size=24, seed=1)
    np.testing.assert_array_equal(again["images"], proxy["images"])
    model = tiny_multigrain(num_classes=3)
    best, scores = select_gem_p(model, proxy["images"], proxy["instance_ids"], (1.0, 3.0), objective="recall@1")
    assert best in (1.0, 3.0) and set(scores) == {1.0, 3.0}
    with pytest.raises(ValueError, match=r"Received: augmentations=0"):
        build_p_star_proxy_set(ds, augmentations=0)
