"""A run interrupted after an epoch and resumed trains exactly as an uninterrupted one,
on both backends: weights, optimizer slots, BN statistics and the margin loss's
negative-sampling random state all travel through the checkpoint (issue 14, item 4)."""

import keras
import numpy as np
import pytest

from keras_cgd import training


class _Interrupt(Exception):
    pass


def _stop_after_epoch(n, total):
    def log(line):
        if line.startswith(f"epoch {n}/{total} "):
            raise _Interrupt(line)
    return log


@pytest.mark.slow
@pytest.mark.parametrize("preset,extra", [("multigrain_tiny", {}), ("cgd_tiny", {}),
                                          ("multigrain_tiny", {"flip_and_color_in_model": True})],
                         ids=["multigrain_tiny", "cgd_tiny", "multigrain_tiny-flip_and_color_in_model"])
def test_resumed_run_matches_the_uninterrupted_one(preset, extra, tmp_path):
    # flip_and_color_in_model: the colour layer's random state travels through the checkpoint too
    kw = dict(preset=preset, small=True, epochs=3, steps_per_epoch=3, export_dir=None, seed=5, recall_ks=(1,),
              **extra)
    full = training.train(run_dir=str(tmp_path / "full"), log=None, progress=False, **kw)

    with pytest.raises(_Interrupt):
        training.train(run_dir=str(tmp_path / "cut"), log=_stop_after_epoch(1, 3), progress=False, **kw)
    assert training.read_state(str(tmp_path / "cut"))["completed_epochs"] == 1
    lines = []
    resumed = training.train(run_dir=str(tmp_path / "cut"), log=lines.append, progress=False, **kw)
    assert any(line.startswith("resuming ") for line in lines), lines
    assert resumed["initial_epoch"] == 1

    # Epochs 2 and 3 were computed after the reload: their losses equal the uninterrupted ones.
    np.testing.assert_array_equal(resumed["history"], full["history"])
    a, b = full["model"], resumed["model"]
    for va, vb in zip(a.weights, b.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(va), keras.ops.convert_to_numpy(vb), err_msg=va.path)
    for va, vb in zip(a.optimizer.variables, b.optimizer.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(va), keras.ops.convert_to_numpy(vb), err_msg=va.path)
    assert resumed["recall_after"] == full["recall_after"]


def test_margin_state_checkpoint_carries_the_sampling_state(tmp_path):
    """The seed generator of distance-weighted sampling is saved and restored."""
    from keras_cgd.layers.margin_state import MarginState

    inputs = keras.Input((4,))
    layer = MarginState(seed=3, name="margin_state")
    model = keras.Model(inputs, layer(inputs))
    for _ in range(3):
        keras.random.uniform((2,), seed=layer.seed_generator)  # advances the state
    advanced = keras.ops.convert_to_numpy(layer.seed_generator.state)
    assert not np.array_equal(advanced, keras.ops.convert_to_numpy(MarginState(seed=3).seed_generator.state))
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded.get_layer("margin_state").seed_generator.state),
                                  advanced)
