import os

import keras
import numpy as np
import pytest

import keras_cgd
from keras_cgd.layers import FrozenBatchNormalization
from keras_cgd.models import build_backbone
from tests.testing import run_model_saving_test
from tests.testing import to_numpy


def tiny_cgd(**kw):
    args = dict(num_classes=4, backbone="tiny_convnet", input_shape=(32, 32, 3), embedding_dim=24)
    args.update(kw)
    return keras_cgd.build_model("cgd", **args)


def tiny_multigrain(**kw):
    args = dict(num_classes=4, backbone="tiny_convnet", input_shape=(32, 32, 3), learning_rate=0.01)
    args.update(kw)
    return keras_cgd.build_model("multigrain", **args)


def images(n=8, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype("uint8")


def test_cgd_outputs_and_classifier_on_raw_first_descriptor():
    model = tiny_cgd(descriptors="MG")
    x = images()
    out = model.predict(x, verbose=0)
    assert set(out) == {"embedding", "logits"}
    assert out["embedding"].shape == (8, 24) and out["logits"].shape == (8, 4)
    assert out["embedding"].dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out["embedding"], axis=1), 1.0, rtol=1e-5)
    # logits = Dense(BN(MAC(feature map))): recompute from the layers' weights.
    normalized = model.get_layer("normalization")(x)
    fmap = to_numpy(model.layers[2](normalized))
    mac = fmap.max(axis=(1, 2))
    bn = model.get_layer("classifier_bn")
    g, b, mu, var = (to_numpy(w) for w in (bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance))
    h = (mac - mu) / np.sqrt(var + bn.epsilon) * g + b
    dense = model.get_layer("classifier")
    expected = h @ to_numpy(dense.kernel) + to_numpy(dense.bias)
    np.testing.assert_allclose(out["logits"], expected, rtol=1e-4, atol=1e-4)


def test_normalization_inside_model_matches_numpy():
    model = tiny_cgd()
    x = images(2)
    got = to_numpy(model.get_layer("normalization")(x))
    mean = np.array(model.preprocessing["mean"]) * 255
    std = np.array(model.preprocessing["std"]) * 255
    np.testing.assert_allclose(got, (x - mean) / std, rtol=1e-5, atol=1e-5)
    assert model.preprocessing["image_size"] == [32, 32]


def test_multigrain_outputs_are_gem_and_normalised_gem():
    model = tiny_multigrain()
    x = images()
    out = model.predict(x, verbose=0)
    gem = model.get_layer("gem")
    fmap = to_numpy(model.layers[2](model.get_layer("normalization")(x)))
    raw = np.mean(np.maximum(fmap, 1e-6) ** 3, axis=(1, 2)) ** (1 / 3)
    np.testing.assert_allclose(
        out["embedding"], raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-4, atol=1e-5
    )
    dense = model.get_layer("classifier")
    np.testing.assert_allclose(
        out["logits"], raw @ to_numpy(dense.kernel) + to_numpy(dense.bias), rtol=1e-4, atol=1e-4
    )
    assert float(to_numpy(gem.p)) == 3.0


@pytest.mark.parametrize("builder", [tiny_cgd, tiny_multigrain])
def test_models_round_trip_through_keras_files(builder, tmp_path):
    model = builder()
    x = images()
    y = np.repeat(np.arange(4), 2).astype("int32")
    model.fit(x, {"embedding": y, "logits": y}, epochs=1, batch_size=8, verbose=0)
    restored = run_model_saving_test(model, x, tmp_path)
    assert restored.get_config() == model.get_config()
    # the restored model is compiled with the same recipe and trains on
    restored.fit(x, {"embedding": y, "logits": y}, epochs=1, batch_size=8, verbose=0)


def test_multigrain_beta_is_trained_saved_and_restored(tmp_path):
    model = tiny_multigrain(beta_lr_multiplier=1.0)
    x = images(12)
    ids = np.repeat(np.arange(4), 3).astype("int32")
    state = model.get_layer("margin_state")
    assert float(to_numpy(state.beta)) == pytest.approx(1.2)
    model.fit(x, {"embedding": ids, "logits": ids}, epochs=3, batch_size=12, verbose=0)
    beta = float(to_numpy(state.beta))
    assert beta != pytest.approx(1.2)
    path = os.path.join(tmp_path, "mg.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert float(to_numpy(restored.get_layer("margin_state").beta)) == pytest.approx(beta)
    # β is excluded from weight decay, other variables are not.
    assert model.optimizer._use_weight_decay(state.beta) is False


def test_beta_lr_multiplier_zero_freezes_beta():
    model = tiny_multigrain(beta_lr_multiplier=0.0, weight_decay=0.0)
    x = images(12)
    ids = np.repeat(np.arange(4), 3).astype("int32")
    model.fit(x, {"embedding": ids, "logits": ids}, epochs=2, batch_size=12, verbose=0)
    assert float(to_numpy(model.get_layer("margin_state").beta)) == pytest.approx(1.2)


def test_resnet_last_stride_and_local_weights_file(tmp_path):
    reference = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(64, 64, 3))
    path = os.path.join(tmp_path, "resnet50_notop.weights.h5")
    reference.save_weights(path)
    stride1 = build_backbone("resnet50", input_shape=(64, 64, 3), weights=path, last_stride=1)
    stride2 = build_backbone("resnet50", input_shape=(64, 64, 3), weights=path, last_stride=None)
    assert tuple(stride1.output.shape)[1:3] == (4, 4)  # 64 / 16
    assert tuple(stride2.output.shape)[1:3] == (2, 2)  # 64 / 32
    names = {l.name: l for l in stride1.layers}
    assert names["conv5_block1_1_conv"].strides == (1, 1)
    assert names["conv5_block1_0_conv"].strides == (1, 1)
    assert names["conv4_block1_1_conv"].strides == (2, 2)
    for a, b in zip(reference.weights, stride1.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    # A whole CGD model takes the same weights file through build_model.
    model = keras_cgd.build_model(
        "cgd", num_classes=3, weights=path, input_shape=(64, 64, 3), embedding_dim=12, compile=False
    )
    backbone = model.get_layer("resnet50")
    np.testing.assert_array_equal(
        to_numpy(backbone.get_layer("conv1_conv").kernel), to_numpy(reference.get_layer("conv1_conv").kernel)
    )


def test_frozen_bn_statistics_keep_moving_stats_but_train_gamma():
    model = tiny_cgd(freeze_bn_statistics=True)
    backbone = model.layers[2]
    bns = [l for l in backbone.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert bns and all(isinstance(l, FrozenBatchNormalization) for l in bns)
    before_mean = to_numpy(bns[0].moving_mean).copy()
    before_gamma = to_numpy(bns[0].gamma).copy()
    x = images(8)
    y = np.repeat(np.arange(4), 2).astype("int32")
    model.fit(x, {"embedding": y, "logits": y}, epochs=2, batch_size=8, verbose=0)
    np.testing.assert_array_equal(to_numpy(bns[0].moving_mean), before_mean)
    assert not np.allclose(to_numpy(bns[0].gamma), before_gamma)
    # without freezing the statistics move
    plain = tiny_cgd()
    bn = [l for l in plain.layers[2].layers if isinstance(l, keras.layers.BatchNormalization)][0]
    m0 = to_numpy(bn.moving_mean).copy()
    plain.fit(x, {"embedding": y, "logits": y}, epochs=1, batch_size=8, verbose=0)
    assert not np.allclose(to_numpy(bn.moving_mean), m0)


def test_other_keras_applications_and_own_backbone():
    model = keras_cgd.build_model(
        "cgd", num_classes=2, backbone="mobilenet_v2", input_shape=(32, 32, 3), embedding_dim=9, compile=False
    )
    assert model.predict(images(2), verbose=0)["embedding"].shape == (2, 9)
    assert model.preprocessing["mean"] == [0.5, 0.5, 0.5]
    inputs = keras.Input((32, 32, 3))
    own = keras.Model(inputs, keras.layers.Conv2D(5, 3, strides=2)(inputs), name="own")
    model = keras_cgd.build_model("multigrain", num_classes=2, backbone=own, input_shape=(32, 32, 3))
    assert model.predict(images(2), verbose=0)["embedding"].shape == (2, 5)


def test_variable_input_size_for_test_time_resolution():
    model = tiny_multigrain(input_shape=(None, None, 3))
    for size in (32, 48):
        assert model.predict(images(2, size), verbose=0)["embedding"].shape == (2, 256)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
@pytest.mark.parametrize("builder", [tiny_cgd, tiny_multigrain])
def test_mixed_precision_training_step(policy, builder):
    keras.config.set_dtype_policy(policy)
    model = builder()
    x = images(8)
    y = np.repeat(np.arange(4), 2).astype("int32")
    hist = model.fit(x, {"embedding": y, "logits": y}, epochs=1, batch_size=8, verbose=0)
    assert np.isfinite(hist.history["loss"][0])
    out = model.predict(x, verbose=0)
    assert out["embedding"].dtype == np.float32 and out["logits"].dtype == np.float32


@pytest.mark.parametrize("name", ["cgd", "multigrain"])
def test_fit_on_tf_data(name):
    import tensorflow as tf

    builder = tiny_cgd if name == "cgd" else tiny_multigrain
    model = builder(descriptors="SMG") if name == "cgd" else builder()
    x = images(16)
    y = np.repeat(np.arange(4), 4).astype("int32")
    ds = tf.data.Dataset.from_tensor_slices((x, {"embedding": y, "logits": y})).batch(8)
    hist = model.fit(ds, epochs=2, verbose=0)
    assert len(hist.history["loss"]) == 2 and np.all(np.isfinite(hist.history["loss"]))


@pytest.mark.parametrize("preset", keras_cgd.list_presets())
def test_every_preset_builds(preset):
    info = keras_cgd.get_preset(preset)
    kwargs = {"weights": None, "input_shape": (64, 64, 3), "compile": False}
    if info["config"].get("num_classes") is None:
        kwargs["num_classes"] = 3
    model = keras_cgd.build_model(preset, **kwargs)
    out = model.predict(images(1, 64), verbose=0)
    assert out["embedding"].shape[0] == 1


def test_build_model_errors_name_the_value():
    with pytest.raises(ValueError, match=r"Received: name='cdg'"):
        keras_cgd.build_model("cdg", num_classes=2)
    with pytest.raises(ValueError, match="num_classes"):
        keras_cgd.build_model("cgd")
    with pytest.raises(TypeError, match=r"\['descriptor'\]"):
        keras_cgd.build_model("cgd", num_classes=2, descriptor="SG")
    with pytest.raises(ValueError, match=r"Received: descriptors='SMX'"):
        tiny_cgd(descriptors="SMX")
    with pytest.raises(ValueError, match=r"Received: backbone='resnet5'"):
        tiny_cgd(backbone="resnet5")
    with pytest.raises(ValueError, match=r"Received: input_shape=\(32, 32\)"):
        tiny_cgd(input_shape=(32, 32))
    with pytest.raises(ValueError, match=r"Received: preset|Received: 'nope'"):
        keras_cgd.get_preset("nope")
