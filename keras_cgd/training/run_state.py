"""Run directories: `state.json` and `epoch-XXXX.keras`, written atomically."""

import json
import os

from keras_cgd.training.errors import usage_error as _usage_error

STATE_FILENAME = "state.json"


def _atomic_write_json(path, obj):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_state(run_dir):
    """The saved state of a run directory (`state.json`), or None."""
    path = os.path.join(run_dir, STATE_FILENAME)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _save_checkpoint(model, run_dir, epoch, state):
    """Writes `epoch-XXXX.keras` atomically, then the state naming it; drops older ones."""
    name = f"epoch-{epoch:04d}.keras"
    tmp = os.path.join(run_dir, f".tmp-{os.getpid()}-{name}")
    model.save(tmp)
    os.replace(tmp, os.path.join(run_dir, name))
    state = dict(state, completed_epochs=epoch, checkpoint=name)
    _atomic_write_json(os.path.join(run_dir, STATE_FILENAME), state)
    for f in os.listdir(run_dir):
        if f.endswith(".keras") and f != name and (f.startswith("epoch-") or f.startswith(".tmp-")):
            try:
                os.remove(os.path.join(run_dir, f))
            except OSError:
                pass
    return state


def load_model(path):
    """Loads a `.keras` file, or the last checkpoint of a run directory."""
    import keras

    import keras_cgd.models  # noqa: F401  (registers the custom classes)

    if os.path.isdir(path):
        state = read_state(path)
        if not state or not state.get("checkpoint"):
            raise _usage_error("model", "a .keras file or a run directory with a checkpoint", path)
        path = os.path.join(path, state["checkpoint"])
    if not (os.path.isfile(path) and path.endswith(".keras")):
        raise _usage_error("model", "an existing .keras file or run directory", path)
    return keras.saving.load_model(path)
