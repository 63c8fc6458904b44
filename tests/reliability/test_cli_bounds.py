"""Issue 14, items 2 and 8: sizes, counts and rates from the command line are bounded and
checked before any work, a one-image test split and a truncated index file are named in one
clear error (each of these used to run the machine out of memory, train, or give a traceback)."""

import types

import numpy as np
import pytest

from keras_cgd import cli
from keras_cgd import training


@pytest.mark.parametrize("argv, named", [
    (["--image-size", "100000"], "image_size=100000"),
    (["--image-size", "8"], "image_size=8"),
    (["--lr", "-1"], "learning_rate=-1.0"),
    (["--lr", "nan"], "learning_rate=nan"),
    (["--lr", "inf"], "learning_rate=inf"),
    (["--augmentation", "evil"], "augmentation='evil'"),
    (["-P", "1000000"], "classes_per_batch=1000000"),
    (["--steps-per-epoch", "1000001"], "steps_per_epoch=1000001"),
])
def test_train_rejects_out_of_bounds_options_before_any_work(argv, named, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = cli.main(["train", "--small", "--no-export", "--run-dir", str(run_dir), *argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and named in err, err
    assert not run_dir.exists()  # refused before the run directory, the dataset or the model


def test_library_config_is_checked_the_same_way():
    with pytest.raises(ValueError, match=r"argument `learning_rate`. Expected a finite number > 0"):
        training.resolve_settings(training.TrainConfig(learning_rate=float("nan")))
    with pytest.raises(ValueError, match=r"argument `image_size`. Expected an int in \[16, 1024\]"):
        training.resolve_settings(training.TrainConfig(image_size=4096))
    settings = training.resolve_settings(training.TrainConfig(image_size=1024, learning_rate=np.float32(0.01)))
    assert settings["image_size"] == 1024 and settings["learning_rate"] == pytest.approx(0.01)


def test_one_image_test_split_is_a_clear_error():
    from keras_cgd import data

    one = data.from_arrays(np.zeros((1, 8, 8, 3), np.uint8), np.zeros(1, "int32"))
    splits = types.SimpleNamespace(name="tiny_folder", test=one, query=None)
    with pytest.raises(ValueError, match=r"at least 2 test image\(s\).*'tiny_folder' has 1"):
        training.evaluate(None, splits)  # refused before the model is used


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated", b"not an archive"])
def test_truncated_index_file_is_named(content, tmp_path):
    from keras_cgd.index import load_index

    path = tmp_path / "gallery.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"gallery.npz.*not a readable keras-cgd index"):
        load_index(str(path))
