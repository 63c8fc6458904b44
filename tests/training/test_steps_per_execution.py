"""`TrainConfig.steps_per_execution` (`keras-cgd train --steps-per-execution N`, issue 15):
N batches per compiled call train as N calls of one batch, and bad values are refused."""

import keras
import numpy as np
import pytest

from keras_cgd import training


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["multigrain_tiny", "cgd_tiny"])
def test_steps_per_execution_trains_as_one_batch_per_call(preset, tmp_path, monkeypatch):
    used = []
    fit = keras.Model.fit

    def recording_fit(self, *args, **kwargs):
        used.append(self.steps_per_execution)
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", recording_fit)
    kw = dict(preset=preset, small=True, epochs=2, steps_per_epoch=3, export_dir=None, seed=5, recall_ks=(1,),
              log=None, progress=False)
    one = training.train(run_dir=str(tmp_path / "one"), **kw)
    two = training.train(run_dir=str(tmp_path / "two"), steps_per_execution=2, **kw)
    assert used == [1, 1, 2, 2]  # one fit per epoch; evaluation and export run with 1 again
    assert two["model"].steps_per_execution == 1
    # 3 batches per epoch with 2 per call: one full call and one partial call each epoch
    np.testing.assert_allclose(two["history"], one["history"], rtol=1e-5)
    for a, b in zip(one["model"].weights, two["model"].weights):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(b), keras.ops.convert_to_numpy(a), rtol=1e-4,
                                   atol=1e-6, err_msg=a.path)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "8"])
def test_steps_per_execution_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match=r"steps_per_execution.*Received: steps_per_execution="):
        training.resolve_settings(training.TrainConfig(steps_per_execution=bad))
