import os

import keras
import numpy as np
import pytest

from keras_cgd.evaluation import EvalCallback
from keras_cgd.evaluation import export_embedding_projector
from keras_cgd.evaluation import plot_recall_curve
from keras_cgd.evaluation import plot_retrieval_grid


def tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(6, name="proj")(keras.layers.Rescaling(1 / 255.0)(x))
    emb = keras.layers.UnitNormalization()(x)
    logits = keras.layers.Dense(3, name="classifier")(x)
    model = keras.Model(inputs, {"embedding": emb, "logits": logits})
    model.compile(
        optimizer=keras.optimizers.SGD(0.5),
        loss={"logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True)},
    )
    return model


def brute_recall1(emb, labels):
    s = emb @ emb.T
    np.fill_diagonal(s, -np.inf)
    nn = np.argsort(-s, axis=1, kind="stable")[:, 0]
    return float(np.mean(labels[nn] == labels))


def test_eval_callback_logs_history_and_keeps_best(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(24, 8, 8, 3)).astype(np.float32)
    y = np.repeat(np.arange(3), 8).astype("int32")
    val_x = rng.integers(0, 256, size=(12, 8, 8, 3)).astype(np.float32)
    val_y = np.repeat(np.arange(4), 3)
    model = tiny_model()
    cb = EvalCallback(val_x, val_y, ks=(1, 2), restore_best_weights=True, log_dir=str(tmp_path))
    history = model.fit(x, {"logits": y}, epochs=3, batch_size=8, verbose=0, callbacks=[cb])
    assert len(history.history["val_recall@1"]) == 3
    assert len(history.history["val_recall@2"]) == 3
    # the logged value is the recall of the weights at that epoch
    assert [h["val_recall@1"] for h in cb.history] == history.history["val_recall@1"]
    best = max(history.history["val_recall@1"])
    assert cb.best_recall == best
    assert cb.best_epoch == history.history["val_recall@1"].index(best)
    # restored weights reproduce the best recall, computed independently
    emb = np.asarray(model.predict(val_x, verbose=0)["embedding"])
    assert brute_recall1(emb, val_y) == pytest.approx(best)
    events = [os.path.join(d, f) for d, _, files in os.walk(tmp_path) for f in files]
    assert any("events.out.tfevents" in f for f in events)
    tf = pytest.importorskip("tensorflow")
    from tensorflow.core.util import event_pb2

    logged = []
    for record in tf.data.TFRecordDataset([f for f in events if "tfevents" in f]):
        event = event_pb2.Event.FromString(record.numpy())
        for value in event.summary.value:
            if value.tag == "epoch_val_recall@1":
                logged.append(float(tf.make_ndarray(value.tensor)))
    np.testing.assert_allclose(logged, history.history["val_recall@1"], rtol=1e-6)


def test_eval_callback_on_a_dataset_with_dict_labels():
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(1)
    val_x = rng.integers(0, 256, size=(10, 8, 8, 3)).astype(np.float32)
    val_y = np.repeat(np.arange(5), 2)
    ds = tf.data.Dataset.from_tensor_slices((val_x, {"embedding": val_y, "logits": val_y})).batch(4)
    model = tiny_model(1)
    cb = EvalCallback(ds, ks=(1,), every_n_epochs=2)
    cb.set_model(model)
    logs = {}
    cb.on_epoch_end(0, logs)
    assert logs == {}  # not an evaluation epoch
    cb.on_epoch_end(1, logs)
    emb = np.asarray(model.predict(val_x, verbose=0)["embedding"])
    assert logs["val_recall@1"] == pytest.approx(brute_recall1(emb, val_y))


def test_eval_callback_validation():
    with pytest.raises(ValueError, match="labels"):
        EvalCallback(np.zeros((2, 8, 8, 3)))
    with pytest.raises(ValueError, match="monitor_k"):
        EvalCallback(np.zeros((2, 8, 8, 3)), [0, 1], ks=(2,), monitor_k=1)


def test_plots_write_pngs(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    gallery = rng.integers(0, 256, size=(6, 16, 16, 3)).astype(np.uint8)
    path = plot_retrieval_grid(
        gallery[:2], [0, 1], gallery, [0, 0, 1, 1, 0, 1], [[1, 2, 3], [3, 0, 5]], str(tmp_path / "grid.png"), k=3
    )
    img = np.asarray(Image.open(path).convert("RGB")).astype(int)
    # green and red borders are both present (correct and wrong results)
    green = ((img[..., 1] > 100) & (img[..., 0] < 60) & (img[..., 2] < 60)).sum()
    red = ((img[..., 0] > 200) & (img[..., 1] < 60) & (img[..., 2] < 60)).sum()
    assert green > 50 and red > 50
    curve = plot_recall_curve({"a": {1: 0.5, 10: 0.8}, "b": {1: 0.4, 10: 0.9}}, str(tmp_path / "r.png"))
    assert Image.open(curve).format == "PNG"


def test_export_embedding_projector(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(5, 4)).astype(np.float32)
    images = rng.integers(0, 256, size=(5, 10, 10, 3)).astype(np.uint8)
    config = export_embedding_projector(
        str(tmp_path), emb, labels=[3, 1, 4, 1, 5], images=images, metadata={"name": list("abcde")}, thumbnail_px=8
    )
    text = open(config).read()
    assert 'tensor_path: "tensors.tsv"' in text and 'metadata_path: "metadata.tsv"' in text
    assert 'image_path: "sprite.png"' in text and text.count("single_image_dim: 8") == 2
    np.testing.assert_allclose(np.loadtxt(tmp_path / "tensors.tsv", delimiter="\t"), emb, rtol=1e-5)
    rows = open(tmp_path / "metadata.tsv").read().splitlines()
    assert rows == ["label\tname", "3\ta", "1\tb", "4\tc", "1\td", "5\te"]
    from PIL import Image

    sprite = Image.open(tmp_path / "sprite.png")
    assert sprite.size == (24, 24)  # 3 x 3 grid of 8 px cells
    cell = np.asarray(sprite)[8:16, 0:8]  # image 3 (row 1, col 0)
    ref = np.asarray(Image.fromarray(images[3]).resize((8, 8), Image.BILINEAR))
    np.testing.assert_array_equal(cell, ref)
