"""`port_weights` against hand-written NumPy transposes, and its errors."""

import keras
import numpy as np
import pytest

from keras_cgd.weights import WeightMappingError
from keras_cgd.weights import WeightTable
from keras_cgd.weights import port_weights


def _model():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.DepthwiseConv2D(3, use_bias=False, name="dw")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(5, name="fc")(x)
    return keras.Model(inputs, x)


def _table():
    return WeightTable().conv("c", "conv").batch_norm("b", "bn").depthwise_conv("d", "dw").dense("f", "fc")


def _tensors(rng):
    return {
        "c.weight": rng.normal(size=(4, 3, 3, 3)).astype("float32"),
        "b.weight": rng.normal(size=4).astype("float32"),
        "b.bias": rng.normal(size=4).astype("float32"),
        "b.running_mean": rng.normal(size=4).astype("float32"),
        "b.running_var": rng.uniform(0.5, 2, size=4).astype("float32"),
        "b.num_batches_tracked": np.array(7),
        "d.weight": rng.normal(size=(4, 1, 3, 3)).astype("float32"),
        "f.weight": rng.normal(size=(5, 4)).astype("float32"),
        "f.bias": rng.normal(size=5).astype("float32"),
    }


def test_port_weights_transposes_like_numpy():
    rng = np.random.default_rng(0)
    model, tensors = _model(), _tensors(rng)
    assert port_weights(model, tensors, _table()) == 8
    get = lambda v: keras.ops.convert_to_numpy(v)  # noqa: E731
    c = tensors["c.weight"]
    for o in range(4):
        for i in range(3):
            np.testing.assert_array_equal(get(model.get_layer("conv").kernel)[:, :, i, o], c[o, i])
    d = tensors["d.weight"]
    for ch in range(4):
        np.testing.assert_array_equal(get(model.get_layer("dw").kernel)[:, :, ch, 0], d[ch, 0])
    np.testing.assert_array_equal(get(model.get_layer("fc").kernel), tensors["f.weight"].T)
    np.testing.assert_array_equal(get(model.get_layer("bn").moving_variance), tensors["b.running_var"])


def test_port_weights_names_missing_unexpected_and_misshapen():
    rng = np.random.default_rng(1)
    model = _model()
    before = keras.ops.convert_to_numpy(model.get_layer("conv").kernel).copy()
    t = _tensors(rng)
    del t["b.running_var"]
    t["extra.weight"] = np.zeros(3, "float32")
    t["f.weight"] = np.zeros((6, 4), "float32")
    with pytest.raises(WeightMappingError) as e:
        port_weights(model, t, _table(), source="x.pth")
    msg = str(e.value)
    assert "b.running_var" in msg and "extra.weight" in msg and "f.weight (6, 4)" in msg and "x.pth" in msg
    # nothing was assigned
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.get_layer("conv").kernel), before)
    t = _tensors(rng)
    t["fc_other.weight"] = np.zeros(1)
    port_weights(model, t, _table(), ignore=("fc_other.",))


def test_table_rejects_unknown_transform():
    with pytest.raises(ValueError, match="transform"):
        WeightTable().add("a", "b", "kernel", "flip")
