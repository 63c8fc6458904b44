"""Progress bars for the long steps: training epochs, embedding extraction, export.

A bar is drawn only where someone watches it: `progress="auto"` (the default of
`keras_cgd.training.train` and of the CLI) shows bars when standard output is a
terminal or a Jupyter kernel, and nothing otherwise (a log file gets the one-line
summaries instead: one line per epoch, one per evaluation, one per export).
`progress=False` (the CLI's `--quiet`) never draws. Bars are plain-text `tqdm` bars on
standard output that clear themselves when done (`leave=False`), so a finished epoch
leaves only its summary line.

Nothing here imports Keras or TensorFlow at module level.

Example:

>>> from keras_cgd.training import progress
>>> show = progress.resolve_progress("auto")     # True on a terminal
>>> cb = progress.keras_progress("epoch 1/8", total=40, enabled=show)
>>> model.fit(batches, verbose=0, callbacks=[cb])  # doctest: +SKIP
"""

import contextlib
import shutil
import sys
import threading
import time

from keras_cgd.training.errors import usage_error as _usage_error

PROGRESS_CHOICES = ("auto", True, False)


def is_interactive(stream=None):
    """True when `stream` (default `sys.stdout`) is a terminal or a Jupyter kernel's output."""
    stream = sys.stdout if stream is None else stream
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        pass
    return type(stream).__module__.split(".")[0] == "ipykernel"


def resolve_progress(progress):
    """`"auto"` -> `is_interactive()`; True / False unchanged; anything else is an error."""
    if isinstance(progress, str) and progress == "auto":
        return is_interactive()
    if isinstance(progress, bool):
        return progress
    raise _usage_error("progress", f"one of {list(PROGRESS_CHOICES)}", progress)


def bar(desc, total=None, enabled=True, unit="step"):
    """A plain-text `tqdm` bar on standard output; a bar that prints nothing unless `enabled`.

    Args:
        desc: what is being done, e.g. "epoch 3/8" or "embedding 288 images".
        total: number of steps, or None when unknown (the bar counts up).
        enabled: False gives a silent bar (same methods, no output).
        unit: name of one step.
    """
    from tqdm import tqdm  # the plain-text bar: it works on terminals and in Jupyter alike

    # The terminal's size; a terminal that reports 0 x 0 (a bare pseudo-terminal) or none
    # (Jupyter) gets 100 x 24: tqdm would draw nothing with 0 rows.
    size = shutil.get_terminal_size((100, 24))
    return tqdm(total=total, desc=desc, unit=unit, leave=False, disable=not enabled, file=sys.stdout,
                ncols=min(size.columns or 100, 120), nrows=size.lines or 24, mininterval=0.25)


def keras_progress(desc, total=None, enabled=True):
    """A Keras callback drawing one bar over the batches of a `fit` or `predict` call.

    Training batches show the running loss. Also accepted by `SavedModelEmbedder.predict`.

    Args:
        desc: the bar's label ("epoch 3/8", "embedding 288 images").
        total: number of batches (None: unknown).
        enabled: False: the callback does nothing.
    """
    import keras

    class _Progress(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self._bar = None

        def _begin(self, logs=None):
            self._bar = bar(desc, total, enabled, unit="batch")

        def _end(self, logs=None):
            if self._bar is not None:
                self._bar.close()
                self._bar = None

        on_train_begin = on_predict_begin = _begin
        on_train_end = on_predict_end = _end

        def on_train_batch_end(self, batch, logs=None):
            if self._bar is None or self._bar.disable:
                return
            if logs and "loss" in logs:
                self._bar.set_postfix_str(f"loss {float(logs['loss']):.4f}", refresh=False)
            self._advance_to(batch)

        def on_predict_batch_end(self, batch, logs=None):
            if self._bar is not None:
                self._advance_to(batch)

        def _advance_to(self, batch):
            # `batch` is the index of the last batch run: with steps_per_execution = N,
            # Keras calls back once per N batches (and may count a last, partial call as N).
            done = int(batch) + 1 if total is None else min(int(batch) + 1, int(total))
            if done > self._bar.n:
                self._bar.update(done - self._bar.n)

    return _Progress()


def num_batches(data, batch_size):
    """Batches in `data`: a NumPy-like array (ceil(N / batch_size)) or a `tf.data.Dataset`."""
    if hasattr(data, "cardinality"):
        n = int(data.cardinality())
        return n if n >= 0 else None  # INFINITE (-1) or UNKNOWN (-2)
    return -(-len(data) // int(batch_size))


@contextlib.contextmanager
def busy(desc, enabled=True, interval=0.5):
    """While the `with` body runs, shows `desc` with the elapsed time (a step without batches).

    Used for the SavedModel export. Does nothing when not `enabled`.
    """
    if not enabled:
        yield
        return
    b = bar(desc, None, True, unit="s")
    b.bar_format = "{desc} {elapsed}"
    stop = threading.Event()

    def tick():
        while not stop.wait(interval):
            b.refresh()

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        b.close()


class Stopwatch:
    """`with Stopwatch() as t: ...; t.seconds`: wall time of a block."""

    def __enter__(self):
        self._start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self._start
        return False
