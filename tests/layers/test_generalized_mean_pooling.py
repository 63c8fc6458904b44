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
