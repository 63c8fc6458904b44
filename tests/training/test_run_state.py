"""Resume never silently restarts: a corrupt state, a missing or truncated checkpoint each
give one error naming the file and the way out (`--fresh`)."""

import json
import os

import pytest

from keras_cgd import training
from keras_cgd.training import run_state


def _config(tmp_path):
    return training.TrainConfig(epochs=2, small=True, run_dir=str(tmp_path / "run"), export_dir=None)


def _write_state(config, **fields):
    settings = training.resolve_settings(config)
    state = {"args": training.training_args(config, settings), "epochs": 2, "completed_epochs": 0,
             "checkpoint": None, "history": []}
    state.update(fields)
    os.makedirs(config.run_dir, exist_ok=True)
    with open(os.path.join(config.run_dir, "state.json"), "w") as f:
        json.dump(state, f)


def test_corrupt_state_names_the_file_and_fresh(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "state.json").write_text('{"completed_epochs": 1, "checkp')
    with pytest.raises(ValueError) as e:
        run_state.read_state(str(run))
    assert str(run / "state.json") in str(e.value) and "--fresh" in str(e.value)
    (run / "state.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a valid run state"):
        run_state.read_state(str(run))


def test_missing_checkpoint_is_an_error_not_a_restart(tmp_path):
    config = _config(tmp_path)
    _write_state(config, completed_epochs=1, checkpoint="epoch-0001.keras")
    before = open(os.path.join(config.run_dir, "state.json")).read()
    with pytest.raises(ValueError) as e:
        training.train(config, log=None)
    assert "epoch-0001.keras" in str(e.value) and "missing" in str(e.value) and "--fresh" in str(e.value)
    # the saved state was not overwritten
    assert open(os.path.join(config.run_dir, "state.json")).read() == before


def test_truncated_checkpoint_is_named(tmp_path):
    config = _config(tmp_path)
    _write_state(config, completed_epochs=1, checkpoint="epoch-0001.keras")
    with open(os.path.join(config.run_dir, "epoch-0001.keras"), "wb") as f:
        f.write(b"PK\x03\x04" + b"\x00" * 40)  # a zip header cut short
    with pytest.raises(ValueError) as e:
        training.train(config, log=None)
    msg = str(e.value)
    assert "epoch-0001.keras" in msg and "truncated" in msg and "--fresh" in msg
    assert "File not found" not in msg.split("(")[0]


def test_state_with_epochs_but_no_checkpoint(tmp_path):
    config = _config(tmp_path)
    _write_state(config, completed_epochs=1, checkpoint=None)
    with pytest.raises(ValueError, match="names no checkpoint"):
        training.train(config, log=None)
