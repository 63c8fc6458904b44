"""Shared test helpers in the style of keras-hub's TestCase."""

import json
import os

import keras
import numpy as np


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def run_serialization_test(instance):
    """get_config → from_config → get_config is identical (JSON), and the
    Keras serialize/deserialize round trip gives the same config."""
    config = instance.get_config()
    restored = instance.__class__.from_config(config)
    assert json.dumps(restored.get_config(), sort_keys=True, default=str) == json.dumps(
        config, sort_keys=True, default=str
    )
    ser = keras.saving.serialize_keras_object(instance)
    revived = keras.saving.deserialize_keras_object(json.loads(json.dumps(ser)))
    assert type(revived) is type(instance)
    assert json.dumps(revived.get_config(), sort_keys=True, default=str) == json.dumps(
        config, sort_keys=True, default=str
    )
    return restored


def run_layer_saving_test(layer, input_data, tmp_path, atol=1e-6):
    """A model holding `layer` saves to .keras and reloads with identical
    outputs (weights included)."""
    inputs = keras.Input(input_data.shape[1:])
    outputs = layer(inputs)
    model = keras.Model(inputs, outputs)
    expected = model.predict(input_data, verbose=0)
    path = os.path.join(str(tmp_path), "layer_model.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    actual = restored.predict(input_data, verbose=0)
    for e, a in zip(keras.tree.flatten(expected), keras.tree.flatten(actual)):
        np.testing.assert_allclose(a, e, atol=atol)
    return restored


def run_model_saving_test(model, input_data, tmp_path, atol=1e-6):
    """`model` saves to .keras and reloads as the same class with identical
    outputs."""
    expected = model.predict(input_data, verbose=0)
    path = os.path.join(str(tmp_path), "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored) is type(model)
    actual = restored.predict(input_data, verbose=0)
    assert set(actual) == set(expected)
    for key in expected:
        np.testing.assert_allclose(actual[key], expected[key], atol=atol)
    return restored
