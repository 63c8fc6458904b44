"""`TrainConfig.antialias` (`keras-cgd train --no-antialias`, issue 15): training crops
resized with plain bilinear instead of the antialiased kernel, a separate run identity,
and bad values refused."""

import types

import numpy as np
import pytest

from keras_cgd import cli
from keras_cgd import data as kdata
from keras_cgd import training
from keras_cgd.training import loop


def _numpy_bilinear(image, out_h, out_w):
    """Plain bilinear resize with half-pixel centres (no antialiasing), in float64."""
    def axis(n_in, n_out):
        pos = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
        low = np.floor(pos)
        frac = pos - low
        return np.clip(low, 0, n_in - 1).astype(int), np.clip(low + 1, 0, n_in - 1).astype(int), frac

    y0, y1, fy = axis(image.shape[0], out_h)
    x0, x1, fx = axis(image.shape[1], out_w)
    img = image.astype(np.float64)
    rows = img[y0] * (1 - fy)[:, None, None] + img[y1] * fy[:, None, None]
    return rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


@pytest.mark.parametrize("batching", ["pk", "ra"])
def test_no_antialias_trains_on_plain_bilinear_crops(batching):
    images = np.random.default_rng(3).integers(0, 256, (8, 64, 48, 3), dtype=np.uint8)  # noise: aliasing shows
    splits = types.SimpleNamespace(train=kdata.from_arrays(images, np.arange(8) % 4))
    settings = {}
    for antialias in (True, False):
        config = training.TrainConfig(preset="cgd_tiny", batching=batching, augmentation="none", small=True,
                                      classes_per_batch=2, images_per_class=2, batch_size=4, repeats=2,
                                      steps_per_epoch=2, antialias=antialias)
        settings[antialias] = training.resolve_settings(config)
    assert settings[False]["antialias"] is False and settings[True]["antialias"] is True
    size = settings[False]["image_size"]
    want = np.stack([_numpy_bilinear(im, size, size) for im in images])
    for antialias, close in ((False, True), (True, False)):
        for x, y in loop._batches(splits, settings[antialias], epoch=0, seed=1).as_numpy_iterator():
            index = y["embedding"] if batching == "ra" else None
            if index is None:  # P×K: find each crop's source image by the nearest reference
                index = [int(np.argmin(np.abs(want - xi.astype(float)).mean(axis=(1, 2, 3)))) for xi in x]
            diff = np.abs(x.astype(float) - want[index])
            if close:
                assert diff.max() <= 0.5 + 1e-6  # rounding of the plain bilinear values
            else:
                assert diff.mean() > 5  # the antialiased kernel differs on noise


def test_no_antialias_is_a_run_of_its_own_and_reaches_the_config(tmp_path, monkeypatch):
    on_config = training.TrainConfig(preset="cgd_tiny")
    off_config = training.TrainConfig(preset="cgd_tiny", antialias=False)
    on, off = training.resolve_settings(on_config), training.resolve_settings(off_config)
    assert "antialias" not in training.training_args(on_config, on)  # runs made before keep their directories
    assert training.training_args(off_config, off)["antialias"] is False
    assert training.run_dir_for(on_config, on, "photo_views") != training.run_dir_for(off_config, off, "photo_views")
    seen = []
    monkeypatch.setattr(training, "train", lambda config, log: seen.append(config) or {"seconds": 0, "checkpoint": ""})
    assert cli.main(["train", "--no-antialias", "--no-export"]) == 0
    assert cli.main(["train", "--no-export"]) == 0
    assert [c.antialias for c in seen] == [False, True]


@pytest.mark.parametrize("bad", [0, 1, "no", None])
def test_antialias_must_be_a_bool(bad):
    with pytest.raises(ValueError, match=r"antialias.*Received: antialias="):
        training.resolve_settings(training.TrainConfig(antialias=bad))
