"""Paper-fidelity facts of the recipes: learning-rate drops, the CGD head's BatchNorm, the
MultiGrain preset at any test resolution (and its SavedModel)."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_cgd
from keras_cgd.evaluation import embed_images
from keras_cgd.models import step_decay_schedule
from tests.testing import to_numpy


def fitted_learning_rates(schedule, epochs):
    """The learning rate each epoch of a real `fit` ran with."""
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
    seen = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda e, logs: seen.append(float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)))
    )
    model.fit(np.zeros((2, 2)), np.zeros((2, 1)), epochs=epochs, verbose=0, callbacks=[schedule, record])
    return seen


_TORCH_MULTISTEP = """
import json, torch
p = torch.nn.Parameter(torch.zeros(1))
opt = torch.optim.Adam([p], lr=1e-4)
sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[int(0.6 * 20), int(0.8 * 20)], gamma=0.1)
lrs = []
for epoch in range(1, 21):   # leftthomas/CGD train.py: train the epoch, then sched.step()
    lrs.append(opt.param_groups[0]["lr"])
    opt.step()
    sched.step()
print(json.dumps(lrs))
"""


def test_cgd_schedule_is_multisteplr_stepped_after_each_epoch():
    # Hand-computed: milestones int(0.6·20) = 12, int(0.8·20) = 16; epochs 1-12 at 1e-4.
    expected = [1e-4] * 12 + [1e-5] * 4 + [1e-6] * 4
    preset = keras_cgd.get_preset("cgd_resnet50_cub200")["training"]
    assert preset["lr_drop_convention"] == "multistep"
    cb = step_decay_schedule(1e-4, 20, preset["lr_drop_epochs_fraction"], 0.1, convention="multistep")
    np.testing.assert_allclose([cb.schedule(e, None) for e in range(20)], expected, rtol=1e-9)
    np.testing.assert_allclose(fitted_learning_rates(cb, 20), expected, rtol=1e-6)
    try:
        import importlib.util

        have_torch = importlib.util.find_spec("torch") is not None
    except ValueError:
        have_torch = False
    if have_torch:  # the reference library, in its own process (torch next to TF can crash)
        done = subprocess.run([sys.executable, "-c", _TORCH_MULTISTEP], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        np.testing.assert_allclose(json.loads(done.stdout.strip().splitlines()[-1]), expected, rtol=1e-9)


def test_multigrain_schedule_drops_after_epochs_30_60_90():
    # multigrain scripts/train.py: factor *= 0.1 for each drop with `epoch > drop` (0-based).
    expected = [0.2] * 31 + [0.02] * 30 + [0.002] * 30 + [0.0002] * 29
    preset = keras_cgd.get_preset("multigrain_resnet50")["training"]
    assert preset["lr_drop_convention"] == "multigrain" and preset["epochs"] == 120
    cb = step_decay_schedule(0.2, 120, preset["lr_drop_epochs_fraction"], 0.1, convention="multigrain")
    np.testing.assert_allclose([cb.schedule(e, None) for e in range(120)], expected, rtol=1e-9)
    # a short run under `fit`: drops at int(0.25·8) = 2 and int(0.5·8) = 4
    cb = step_decay_schedule(1.0, 8, [0.25, 0.5], 0.1, convention="multigrain")
    np.testing.assert_allclose(fitted_learning_rates(cb, 8), [1, 1, 1, 0.1, 0.1, 0.01, 0.01, 0.01], rtol=1e-6)
    with pytest.raises(ValueError, match=r"Received: convention='torch'"):
        step_decay_schedule(0.2, 120, convention="torch")


def test_cgd_head_batchnorm_uses_pytorch_defaults():
    model = keras_cgd.build_model("cgd", num_classes=3, backbone="tiny_convnet", input_shape=(32, 32, 3),
                                  descriptors="S", embedding_dim=8)
    bn = model.get_layer("classifier_bn")
    assert (bn.momentum, bn.epsilon) == (0.9, 1e-5)
    # One training-mode call on small-variance features, against BatchNorm1d written out.
    x = (np.random.default_rng(0).normal(size=(16, bn.gamma.shape[0])) * 0.01 + 0.5).astype("float32")
    out = to_numpy(bn(x, training=True))
    mean, var = x.mean(axis=0), x.var(axis=0)
    np.testing.assert_allclose(out, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(to_numpy(bn.moving_mean), 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(to_numpy(bn.moving_variance), 0.9 + 0.1 * var, rtol=1e-5)
    # still an argument, saved with the model
    keras_defaults = keras_cgd.build_model("cgd", num_classes=3, backbone="tiny_convnet", input_shape=(32, 32, 3),
                                           descriptors="S", embedding_dim=8, classifier_bn_momentum=0.99,
                                           classifier_bn_epsilon=1e-3, compile=False)
    assert keras_defaults.get_config()["classifier_bn_epsilon"] == 1e-3
    assert keras_defaults.get_layer("classifier_bn").momentum == 0.99
    with pytest.raises(ValueError, match=r"classifier_bn_momentum=1.5"):
        keras_cgd.build_model("cgd", num_classes=3, backbone="tiny_convnet", input_shape=(32, 32, 3),
                              classifier_bn_momentum=1.5)


def test_multigrain_preset_embeds_at_224_and_500():
    """The paper's preset (ResNet-50, trained at 224) embeds at s* = 224 and 500 px."""
    model = keras_cgd.build_model("multigrain_resnet50", num_classes=5, compile=False)
    assert model.input_shape == (None, None, None, 3)
    assert model.preprocessing["image_size"] == [224, 224]
    photo = np.random.default_rng(0).integers(0, 256, (300, 400, 3)).astype("uint8")
    e224, e500 = (embed_images(model, [photo], image_size=s) for s in (224, 500))
    assert e224.shape == e500.shape == (1, 2048)
    # different resolutions give different (normalised) embeddings of the same photo
    np.testing.assert_allclose(np.linalg.norm(e500, axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(e224, e500, atol=1e-4)


def test_multigrain_savedmodel_accepts_any_size(tmp_path):
    import io

    from PIL import Image

    tf = pytest.importorskip("tensorflow")
    model = keras_cgd.build_model("multigrain_resnet50", num_classes=3, backbone="tiny_convnet", compile=False)
    path = keras_cgd.export.export_saved_model(model, str(tmp_path / "mg"))
    facts = json.load(open(f"{path}/assets.extra/keras_cgd.json"))
    assert facts["preprocessing"]["image_size"] == [224, 224]
    assert facts["signatures"]["serving_pixels"]["inputs"]["images"] == "float32 [None, None, None, 3]"
    loaded = tf.saved_model.load(path)
    for s in (224, 500):
        x = np.random.default_rng(s).integers(0, 256, (1, s, s, 3)).astype("float32")
        served = loaded.signatures["serving_pixels"](images=tf.constant(x))["embedding"].numpy()
        np.testing.assert_allclose(served, model.predict(x, verbose=0)["embedding"], atol=1e-4)
    # the bytes signature takes files of any size and resizes them to 224 x 224
    files, arrays = [], []
    for size in ((500, 375), (224, 224)):
        arrays.append(np.random.default_rng(1).integers(0, 256, size[::-1] + (3,)).astype("uint8"))
        buf = io.BytesIO()
        Image.fromarray(arrays[-1]).save(buf, "PNG")
        files.append(buf.getvalue())
    emb = loaded.signatures["serving_default"](image_bytes=tf.constant(files))["embedding"].numpy()
    assert emb.shape == (2, 256)
    np.testing.assert_allclose(emb[1], model.predict(arrays[1][None], verbose=0)["embedding"][0], atol=1e-4)
