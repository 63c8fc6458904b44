import keras
import numpy as np
import pytest

from keras_cgd.layers import GeneralizedMeanPooling
from tests.testing import run_layer_saving_test
from tests.testing import run_serialization_test
from tests.testing import to_numpy


def gem_numpy(x, p, eps=1e-6):
    x = np.maximum(x.astype(np.float64), eps)
    return np.mean(x**p, axis=(1, 2)) ** (1.0 / p)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, 4.5])
def test_matches_numpy_formula(p):
    x = np.random.rand(3, 5, 6, 4).astype("float32") * 4
    out = to_numpy(GeneralizedMeanPooling(p=p)(x))
    np.testing.assert_allclose(out, gem_numpy(x, p), rtol=1e-5)


def test_p1_is_mean_and_inf_is_max():
    x = np.random.rand(2, 4, 4, 3).astype("float32") + 0.1
    np.testing.assert_allclose(
        to_numpy(GeneralizedMeanPooling(p=1.0)(x)), x.mean(axis=(1, 2)), rtol=1e-6
    )
    np.testing.assert_allclose(
        to_numpy(GeneralizedMeanPooling(p=float("inf"))(x)), x.max(axis=(1, 2)), rtol=0
    )
    # Large p approaches the max (closed form: bounded by max and mean^(1/p)).
    out = to_numpy(GeneralizedMeanPooling(p=60.0)(x))
    assert np.all(out <= x.max(axis=(1, 2)) + 1e-5)
    assert np.all(out >= x.max(axis=(1, 2)) * (1.0 / 16) ** (1.0 / 60) - 1e-5)


def test_negative_and_zero_inputs_are_clamped_not_nan():
    x = -np.random.rand(2, 3, 3, 5).astype("float32")
    x[0, 0, 0, 0] = 0.0
    out = to_numpy(GeneralizedMeanPooling(p=3.0)(x))
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, 1e-6, rtol=1e-3)


def test_any_spatial_size_and_channels_first():
    layer = GeneralizedMeanPooling(p=3.0)
    inputs = keras.Input((None, None, 4))
    model = keras.Model(inputs, layer(inputs))
    for h, w in [(3, 5), (9, 2)]:
        x = np.random.rand(2, h, w, 4).astype("float32")
        np.testing.assert_allclose(model.predict(x, verbose=0), gem_numpy(x, 3.0), rtol=1e-5)
    x = np.random.rand(2, 4, 3, 5).astype("float32")  # (N, C, H, W)
    out = to_numpy(GeneralizedMeanPooling(p=3.0, data_format="channels_first")(x))
    np.testing.assert_allclose(out, gem_numpy(np.transpose(x, (0, 2, 3, 1)), 3.0), rtol=1e-5)
    keep = GeneralizedMeanPooling(p=3.0, keepdims=True)(np.random.rand(2, 4, 4, 3))
    assert tuple(keep.shape) == (2, 1, 1, 3)


def test_weights_trainable_p_and_p_star_override():
    fixed = GeneralizedMeanPooling(p=3.0)
    fixed.build((None, 4, 4, 2))
    assert len(fixed.trainable_weights) == 0 and len(fixed.non_trainable_weights) == 1
    learn = GeneralizedMeanPooling(p=3.0, trainable_p=True)
    learn.build((None, 4, 4, 2))
    assert len(learn.trainable_weights) == 1
    mac = GeneralizedMeanPooling(p=float("inf"))
    mac.build((None, 4, 4, 2))
    assert len(mac.weights) == 0
    # A test-time p* is an assignment of the weight.
    x = np.random.rand(2, 4, 4, 2).astype("float32")
    fixed.p.assign(5.0)
    np.testing.assert_allclose(to_numpy(fixed(x)), gem_numpy(x, 5.0), rtol=1e-5)


def test_trainable_p_is_learned():
    inputs = keras.Input((4, 4, 2))
    pool = GeneralizedMeanPooling(p=2.0, trainable_p=True)
    model = keras.Model(inputs, pool(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    x = np.random.rand(32, 4, 4, 2).astype("float32") + 0.05
    target = x.max(axis=(1, 2))  # reachable only by increasing p
    model.fit(x, target, epochs=5, verbose=0)
    assert float(to_numpy(pool.p)) > 2.0


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_power_in_float32(policy):
    keras.config.set_dtype_policy(policy)
    layer = GeneralizedMeanPooling(p=3.0)
    # 300^3 overflows float16 (max 65504) unless the power runs in float32.
    x = np.full((1, 4, 4, 2), 300.0, "float32")
    out = to_numpy(layer(x)).astype("float32")
    assert layer.p.dtype == "float32"
    np.testing.assert_allclose(out, 300.0, rtol=1e-2)


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match=r"Received: p=-1"):
        GeneralizedMeanPooling(p=-1)
    with pytest.raises(TypeError, match=r"Received: p='3'"):
        GeneralizedMeanPooling(p="3")
    with pytest.raises(ValueError, match="data_format"):
        GeneralizedMeanPooling(data_format="nhwc")


def test_serialization_and_saving(tmp_path):
    for p in (3.0, float("inf"), 1.0):
        run_serialization_test(GeneralizedMeanPooling(p=p, trainable_p=True))
    layer = GeneralizedMeanPooling(p=3.0, trainable_p=True)
    x = np.random.rand(2, 5, 5, 3).astype("float32")
    layer.build(x.shape)
    layer.p.assign(4.2)
    restored = run_layer_saving_test(layer, x, tmp_path)
    assert float(to_numpy(restored.layers[-1].p)) == pytest.approx(4.2)


def gem_unclamped_numpy(x, p):
    """leftthomas/CGD: sign(m) |m|^(1/p), m = mean(x^p) (p=1: the plain mean)."""
    m = np.mean(x.astype(np.float64) ** p, axis=(1, 2))
    return np.sign(m) * np.abs(m) ** (1.0 / p)


def input_gradient(layer, x, w):
    """d sum(w * layer(x)) / dx with the backend's autodiff."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            loss = tf.reduce_sum(layer(xt) * w)
        return tape.gradient(loss, xt).numpy()
    if backend == "jax":
        import jax

        return np.asarray(jax.grad(lambda v: (layer(v) * w).sum())(x))
    pytest.skip(f"no input gradient helper for backend {backend}")


def gem_gradient_numpy(x, p, w, eps=1e-6, clamp=True):
    """Closed form: d f_c / d x_u = x_u^(p-1) m^(1/p - 1) / |Ω| (0 where clamped)."""
    x = x.astype(np.float64)
    xc = np.maximum(x, eps) if clamp else x
    n = x.shape[1] * x.shape[2]
    m = np.mean(xc**p, axis=(1, 2), keepdims=True)
    root = np.abs(m) ** (1.0 / p - 1.0)  # d (sign(m)|m|^(1/p)) / dm = |m|^(1/p - 1) / p
    g = xc ** (p - 1) * root / n * w[:, None, None, :]
    return np.where(x > eps, g, 0.0) if clamp else g


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, 4.0])
@pytest.mark.parametrize("clamp", [True, False])
def test_fixed_integer_p_outputs_and_gradients_match_closed_form(p, clamp):
    rng = np.random.default_rng(int(p) + 10 * clamp)
    x = rng.normal(0.5, 1.0, (2, 4, 5, 3)).astype("float32")  # negatives: the clamp matters
    if p % 2 == 0 and not clamp:
        x = np.abs(x) + 0.05  # m > 0 for even p; keep the gradient away from |m| = 0
    w = rng.normal(size=(2, 3)).astype("float32")
    fast = GeneralizedMeanPooling(p=p, clamp=clamp)  # fixed p: the fast path
    general = GeneralizedMeanPooling(p=p, clamp=clamp, trainable_p=True) if clamp else None
    want = gem_numpy(x, p) if clamp else gem_unclamped_numpy(x, p)
    np.testing.assert_allclose(to_numpy(fast(x)), want, rtol=2e-5, atol=1e-6)
    want_grad = gem_gradient_numpy(x, p, w, clamp=clamp)
    np.testing.assert_allclose(input_gradient(fast, x, w), want_grad, rtol=2e-4, atol=1e-6)
    if general is not None:  # the general (power) path gives the same
        np.testing.assert_allclose(to_numpy(general(x)), want, rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(input_gradient(general, x, w), want_grad, rtol=2e-4, atol=1e-6)


def test_p_assigned_after_compiling_predict_is_used():
    # The fast path is chosen at run time: a p* assigned after `predict` compiled its
    # function must still be the p the model uses.
    x = np.random.rand(3, 4, 4, 2).astype("float32") + 0.1
    inputs = keras.Input((4, 4, 2))
    pool = GeneralizedMeanPooling(p=3.0)
    model = keras.Model(inputs, pool(inputs))
    np.testing.assert_allclose(model.predict(x, verbose=0), gem_numpy(x, 3.0), rtol=1e-5)
    pool.p.assign(4.5)
    np.testing.assert_allclose(model.predict(x, verbose=0), gem_numpy(x, 4.5), rtol=1e-5)
    pool.p.assign(3.0)
    np.testing.assert_allclose(model.predict(x, verbose=0), gem_numpy(x, 3.0), rtol=1e-5)


def test_spoc_without_clamp_is_the_plain_mean_of_negative_maps():
    x = np.random.default_rng(3).normal(-0.5, 1.0, (2, 3, 4, 5)).astype("float32")
    out = to_numpy(GeneralizedMeanPooling(p=1.0, clamp=False)(x))
    np.testing.assert_allclose(out, x.mean(axis=(1, 2)), rtol=1e-5, atol=1e-7)
    clamped = to_numpy(GeneralizedMeanPooling(p=1.0)(x))  # default clamp=True: mean of max(x, 1e-6)
    np.testing.assert_allclose(clamped, np.maximum(x, 1e-6).mean(axis=(1, 2)), rtol=1e-5)


def test_clamp_false_needs_a_fixed_integer_p():
    with pytest.raises(ValueError, match=r"clamp=False with p=2.5"):
        GeneralizedMeanPooling(p=2.5, clamp=False)
    with pytest.raises(ValueError, match=r"trainable_p=True"):
        GeneralizedMeanPooling(p=3.0, clamp=False, trainable_p=True)
    with pytest.raises(TypeError, match=r"Received: clamp='no'"):
        GeneralizedMeanPooling(p=3.0, clamp="no")
    GeneralizedMeanPooling(p=float("inf"), clamp=False)  # MAC never clamps
    run_serialization_test(GeneralizedMeanPooling(p=3.0, clamp=False))
