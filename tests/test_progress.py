"""Progress bars: drawn on a terminal or in Jupyter, never into a pipe or under --quiet; and
`keras-cgd train` on a terminal shows step progress and no TensorFlow log line."""

import io
import os
import pty
import re
import select
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_cgd import training
from keras_cgd.training import progress

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self._tty = tty

    def isatty(self):
        if self.closed:
            raise ValueError("I/O operation on closed file")  # what real streams do
        return self._tty


def test_is_interactive():
    assert progress.is_interactive(_Stream(True))
    assert not progress.is_interactive(_Stream(False))
    closed = _Stream(True)
    closed.close()
    assert not progress.is_interactive(closed)
    kernel_stream = type("OutStream", (io.StringIO,), {"__module__": "ipykernel.iostream"})()
    assert progress.is_interactive(kernel_stream)  # Jupyter: not a tty, still watched


def test_resolve_progress(capsys):
    assert progress.resolve_progress("auto") is False  # pytest captures stdout: not a terminal
    assert progress.resolve_progress(True) is True and progress.resolve_progress(False) is False
    with pytest.raises(ValueError, match=r"progress=.yes.") as e:
        progress.resolve_progress("yes")
    assert "'auto'" in str(e.value)


def test_num_batches():
    assert progress.num_batches(np.zeros((10, 2)), 4) == 3
    assert progress.num_batches(np.zeros((8, 2)), 4) == 2
    assert progress.num_batches(tf.data.Dataset.range(10).batch(3), 1) == 4
    assert progress.num_batches(tf.data.Dataset.range(10).repeat(), 1) is None
    assert progress.num_batches(tf.data.Dataset.range(10).filter(lambda x: x > 2), 1) is None


def _tiny_model():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="sgd", loss="mse")
    return model


def test_keras_progress_draws_one_bar_per_fit_and_predict(capsys):
    model = _tiny_model()
    x, y = np.ones((8, 3), "float32"), np.zeros((8, 1), "float32")
    model.fit(x, y, batch_size=2, epochs=1, verbose=0, callbacks=[progress.keras_progress("epoch 1/1", 4)])
    out = capsys.readouterr().out
    assert "epoch 1/1" in out and "/4" in out and "batch" in out
    model.predict(x, batch_size=2, verbose=0, callbacks=[progress.keras_progress("embedding 8 images", 4)])
    assert "embedding 8 images" in capsys.readouterr().out
    model.fit(x, y, batch_size=2, epochs=1, verbose=0,
              callbacks=[progress.keras_progress("epoch 1/1", 4, enabled=False)])
    model.predict(x, verbose=0, callbacks=[progress.keras_progress("embedding", 1, enabled=False)])
    assert capsys.readouterr().out == ""


class _RecordingBar:
    """Stands in for the tqdm bar: records the updates a callback makes."""

    def __init__(self, *args, **kwargs):
        self.n, self.updates, self.disable = 0, [], False

    def update(self, k):
        self.updates.append(k)
        self.n += k

    def set_postfix_str(self, *args, **kwargs):
        pass

    def close(self):
        _RecordingBar.last = self


@pytest.mark.parametrize("steps_per_execution,batches", [(1, 6), (3, 6), (4, 6)])
def test_keras_progress_counts_batches_with_steps_per_execution(monkeypatch, steps_per_execution, batches):
    monkeypatch.setattr(progress, "bar", _RecordingBar)
    model = _tiny_model()
    model.steps_per_execution = steps_per_execution
    x, y = np.ones((2 * batches, 3), "float32"), np.zeros((2 * batches, 1), "float32")
    model.fit(x, y, batch_size=2, epochs=1, verbose=0, callbacks=[progress.keras_progress("epoch", batches)])
    bar = _RecordingBar.last
    # one callback per compiled call (ceil(batches / N)), and the bar reaches every batch
    assert bar.n == batches and len(bar.updates) == -(-batches // steps_per_execution)


def test_busy_shows_elapsed_time_only_when_enabled(capsys):
    with progress.busy("exporting to here", True, interval=0.05):
        time.sleep(0.3)
    out = capsys.readouterr().out
    assert "exporting to here 00:00" in out
    with progress.busy("exporting to here", False):
        time.sleep(0.1)
    assert capsys.readouterr().out == ""


def _read_pty(cmd, env, cwd, timeout=600):
    """Runs `cmd` with stdout and stderr on a pseudo-terminal; returns everything it wrote."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=env, cwd=cwd,
                            close_fds=True)
    os.close(follower)
    chunks = []
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            ready, _, _ = select.select([leader], [], [], 1.0)
            if ready:
                try:
                    data = os.read(leader, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(leader)
    return proc.returncode, b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.slow
def test_train_on_a_terminal_shows_step_progress_and_no_tensorflow_log(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env.update(PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""), KERAS_BACKEND=keras.backend.backend(),
               COLUMNS="120")
    cmd = [sys.executable, "-m", "keras_cgd.cli", "train", "--small", "--epochs", "2", "--steps-per-epoch", "3",
           "--run-dir", "run"]
    code, out = _read_pty(cmd, env, str(tmp_path))
    assert code == 0, out
    # Bars redraw in place (carriage returns) and count the steps of each epoch.
    assert "\r" in out
    for epoch in (1, 2):
        assert re.search(rf"epoch {epoch}/2:\s+\d+%.*\b[0-3]/3 \[", out), out
    splits = training.resolve_dataset(training.resolve_settings(training.TrainConfig(small=True))["dataset"],
                                      32, small=True)
    assert f"embedding {len(splits.test)} test images" in out
    if splits.query is not None:
        assert f"embedding {len(splits.query)} query images" in out
    assert f"exporting a SavedModel to savedmodels/{training.DEFAULT_PRESET}" in out
    # What stays on screen: the log lines, with no TensorFlow log line among them.
    screen = out.replace("\r\n", "\n")  # the terminal's newline translation
    final = [line.rsplit("\r", 1)[-1].strip() for line in screen.split("\n")]
    final = [line for line in final if line]
    epochs = [line for line in final if line.startswith("epoch ")]
    assert len(epochs) == 2 and all(
        re.fullmatch(rf"epoch {e}/2  loss \d+\.\d{{4}}  lr \S+  \d+\.\d s", line) for e, line in zip((1, 2), epochs)), final
    assert f"SavedModel: savedmodels/{training.DEFAULT_PRESET}/1" in final, final
    tf_log = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d|absl::InitializeLog|cuInit|cudart_stub|tensorflow/")
    assert not [line for line in out.split("\n") if tf_log.search(line)], out
