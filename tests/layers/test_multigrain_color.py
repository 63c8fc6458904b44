"""`MultiGrainColorAugmentation` (issue 15): MultiGrain's flip and colour on the
accelerator, the map of the CPU pipelines, checked against a NumPy step-by-step
ColorJitter + Lighting; identity at inference; its random state saved with the weights."""

import keras
import numpy as np
import pytest

from keras_cgd import models
from keras_cgd.layers import MultiGrainColorAugmentation
from tests.data.test_augment import _step_by_step_colour
from tests.data.test_augment import assert_multigrain_colour_params
from tests.testing import to_numpy

# One batch shape and one draw size for the whole module: eager JAX compiles each op per
# shape, so shared shapes keep this file fast.
SHAPE = (40, 6, 5, 3)


@pytest.fixture(scope="module")
def draws():
    params, flips = MultiGrainColorAugmentation(seed=7).draw(3000)
    return to_numpy(params), to_numpy(flips)


def test_the_map_is_step_by_step_colour_jitter_and_lighting_where_nothing_clips(draws):
    params, flips = draws[0][:40], draws[1][:40]
    # mid-grey images: no jitter step leaves [0, 255], so the folded map is exact
    imgs = np.random.default_rng(0).uniform(90, 160, SHAPE).astype("float32")
    out = to_numpy(MultiGrainColorAugmentation().transform(imgs, params, flips))
    for img, p, f, o in zip(imgs, params, flips, out):
        want = np.floor(_step_by_step_colour(img[:, ::-1] if f else img, p) + 0.5)
        assert np.abs(o - want).max() <= 1.0  # whole grey levels; float32 vs float64 at a .5
    assert 0 < flips.mean() < 1  # both flipped and unflipped images were drawn


def test_it_is_the_map_of_the_cpu_pipelines(draws):
    import tensorflow as tf

    from keras_cgd.data import augment

    params, flips = draws[0][40:80], draws[1][40:80]
    imgs = np.random.default_rng(1).integers(0, 256, SHAPE).astype("float32")  # clips too
    ours = to_numpy(MultiGrainColorAugmentation().transform(imgs, params, flips))
    cpu = augment.folded_color_transform_uint8(imgs.astype(np.uint8), tf.constant(params), flips=tf.constant(flips)).numpy()
    assert np.mean(ours != cpu) < 0.01 and np.abs(ours - cpu).max() <= 1  # rounding ties only


def test_draws_follow_multigrain_distributions(draws):
    params, flips = draws
    assert_multigrain_colour_params(params)  # the checks of the CPU pipelines' draws
    np.testing.assert_allclose(flips.mean(), 0.5, atol=0.04)
    assert not to_numpy(MultiGrainColorAugmentation(flip=False, seed=7).draw(3000)[1]).any()


def test_training_only_float32_under_mixed_precision_and_new_draws_each_call():
    x = np.random.default_rng(2).integers(0, 256, SHAPE, dtype=np.uint8)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        layer = MultiGrainColorAugmentation(seed=3)
        same = to_numpy(layer(x))  # inference: the input unchanged, still uint8
        a, b = to_numpy(layer(x, training=True)), to_numpy(layer(x, training=True))
    finally:
        keras.config.set_dtype_policy(previous)
    assert same.dtype == np.uint8 and np.array_equal(same, x)
    assert a.dtype == np.float32 and a.shape == x.shape
    assert np.array_equal(a, np.floor(a)) and 0 <= a.min() and a.max() <= 255
    assert not np.array_equal(a, b)


def test_a_model_with_it_predicts_and_exports_as_one_without_and_keeps_its_random_state(tmp_path):
    kw = dict(num_classes=3, backbone="tiny_convnet", image_size=32, seed=4)
    with_layer = models.MultiGrainModel(flip_and_color=True, **kw)
    plain = models.MultiGrainModel(**kw)
    assert [w.shape for w in with_layer.weights] == [w.shape for w in plain.weights]  # no weights of its own
    plain.set_weights(with_layer.get_weights())
    x = np.random.default_rng(3).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(with_layer.predict(x, verbose=0)["embedding"], plain.predict(x, verbose=0)["embedding"],
                               rtol=1e-5, atol=1e-6)
    import tensorflow as tf

    from keras_cgd.export import export_saved_model

    exported = tf.saved_model.load(export_saved_model(with_layer, str(tmp_path / "sm" / "mg")))
    served = exported.signatures["serving_pixels"](images=tf.constant(x.astype("float32")))["embedding"].numpy()
    np.testing.assert_allclose(served, plain.predict(x, verbose=0)["embedding"], rtol=1e-5, atol=1e-6)  # inert
    layer = with_layer.get_layer("flip_and_color")
    layer(x, training=True)  # advance its random state
    path = str(tmp_path / "m.keras")
    with_layer.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(to_numpy(loaded.get_layer("flip_and_color").seed_generator.state),
                                  to_numpy(layer.seed_generator.state))
    np.testing.assert_array_equal(to_numpy(loaded.get_layer("flip_and_color")(x, training=True)),
                                  to_numpy(layer(x, training=True)))


@pytest.mark.parametrize("kw", [{"flip": 1}, {"jitter": 1.0}, {"jitter": -0.1}, {"lighting": "0.1"}])
def test_bad_arguments_are_refused(kw):
    name = next(iter(kw))
    with pytest.raises(ValueError, match=f"`{name}`.*Received: {name}="):
        MultiGrainColorAugmentation(**kw)
    with pytest.raises(ValueError, match="flip_and_color.*Received: flip_and_color='yes'"):
        models.MultiGrainModel(num_classes=3, backbone="tiny_convnet", flip_and_color="yes")
