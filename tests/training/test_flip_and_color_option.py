"""`flip_and_color` (issue 15): repeated-augmentation batches without their flip and colour,
left to the model (`MultiGrainColorAugmentation`); `TrainConfig.flip_and_color_in_model` /
`keras-cgd train --flip-and-color-in-model`; a run of its own; bad values refused."""

import numpy as np
import pytest

from keras_cgd import cli
from keras_cgd import data as kdata
from keras_cgd import training


def _photos():
    import tensorflow as tf
    from skimage import data as skdata

    photos = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket()]
    small = np.stack([tf.image.resize(p, (64, 64), antialias=True).numpy() for p in photos])
    return (60 + small / 2).round().astype(np.uint8)  # [60, 188]: no jitter step clips


def _affine_residual(raw, coloured):
    """RMS residual of the least-squares affine colour map raw → coloured (unclipped pixels)."""
    x = raw.reshape(-1, 3).astype(float)
    y = coloured.reshape(-1, 3).astype(float)
    keep = ((y > 3) & (y < 252)).all(1)
    a = np.c_[x[keep], np.ones(keep.sum())]
    w, *_ = np.linalg.lstsq(a, y[keep], rcond=None)
    return float(np.sqrt(np.mean((a @ w - y[keep]) ** 2)))


def test_batches_without_flip_and_color_are_those_before_the_colour_map():
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("backend-independent (tf.data only): runs in the TensorFlow pass only")
    train = kdata.from_arrays(_photos(), np.arange(4))
    kw = dict(batch_size=6, repeats=3, image_size=32, steps_per_epoch=2, seed=3, epoch=0)
    coloured = list(kdata.repeated_augmentation_batches(train, **kw).as_numpy_iterator())
    raw = list(kdata.repeated_augmentation_batches(train, flip_and_color=False, **kw).as_numpy_iterator())
    flipped = 0
    for (xc, yc), (xr, yr) in zip(coloured, raw):
        np.testing.assert_array_equal(yc["embedding"], yr["embedding"])  # the same images, same order
        assert xr.dtype == np.uint8 and xr.shape == xc.shape
        for c, r in zip(xc, xr):
            straight, mirrored = _affine_residual(r, c), _affine_residual(r[:, ::-1], c)
            # each coloured crop is an affine colour map of the raw crop or of its mirror (rounded)
            assert min(straight, mirrored) < 0.75 and max(straight, mirrored) > 1.5, (straight, mirrored)
            flipped += mirrored < straight
        assert np.abs(xc.astype(float) - xr).mean() > 3  # the colour is really left out
    assert 0 < flipped < 12


@pytest.mark.parametrize("kw", [dict(flip_and_color="no"), dict(flip_and_color=False, augmentation="cgd")])
def test_pipeline_refuses_what_it_cannot_leave_out(kw):
    train = kdata.from_arrays(_photos(), np.arange(4))
    with pytest.raises(ValueError, match="flip_and_color.*Received: flip_and_color="):
        kdata.repeated_augmentation_batches(train, batch_size=6, repeats=3, image_size=32, **kw)


def test_the_option_builds_the_layer_is_a_run_of_its_own_and_reaches_the_config(monkeypatch):
    off_config = training.TrainConfig(preset="multigrain_tiny")
    on_config = training.TrainConfig(preset="multigrain_tiny", flip_and_color_in_model=True)
    off, on = training.resolve_settings(off_config), training.resolve_settings(on_config)
    assert on["model_kwargs"]["flip_and_color"] is True and "flip_and_color" not in off["model_kwargs"]
    assert "flip_and_color_in_model" not in training.training_args(off_config, off)  # earlier runs keep their dirs
    assert training.training_args(on_config, on)["flip_and_color_in_model"] is True
    assert training.run_dir_for(on_config, on, "photo_views") != training.run_dir_for(off_config, off, "photo_views")
    seen = []
    monkeypatch.setattr(training, "train", lambda config, log: seen.append(config) or {"seconds": 0, "checkpoint": ""})
    assert cli.main(["train", "--preset", "multigrain_tiny", "--flip-and-color-in-model", "--no-export"]) == 0
    assert cli.main(["train", "--preset", "multigrain_tiny", "--no-export"]) == 0
    assert [c.flip_and_color_in_model for c in seen] == [True, False]


@pytest.mark.parametrize("kw", [dict(preset="cgd_tiny"), dict(preset="multigrain_tiny", batching="pk"),
                                dict(preset="multigrain_tiny", augmentation="flip")])
def test_the_option_is_refused_where_there_is_no_multigrain_colour(kw):
    with pytest.raises(ValueError, match="flip_and_color_in_model.*Received: flip_and_color_in_model=True"):
        training.resolve_settings(training.TrainConfig(flip_and_color_in_model=True, **kw))


@pytest.mark.parametrize("bad", [1, "yes", None])
def test_the_option_must_be_a_bool(bad):
    with pytest.raises(ValueError, match="flip_and_color_in_model.*Received: flip_and_color_in_model="):
        training.resolve_settings(training.TrainConfig(preset="multigrain_tiny", flip_and_color_in_model=bad))
