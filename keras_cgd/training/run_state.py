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


def _cannot_resume(run_dir, why):
    return ValueError(
        f"Cannot resume the run in {run_dir!r}: {why}. Pass --fresh to start this run over "
        "(it replaces the saved state) or choose another --run-dir."
    )


def read_state(run_dir):
    """The saved state of a run directory (`state.json`), or None when there is none.

    Raises:
        ValueError: `state.json` exists but is not a JSON object (a corrupt or foreign
            file), naming the file and the way out (`--fresh`).
    """
    path = os.path.join(run_dir, STATE_FILENAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _cannot_resume(run_dir, f"{path} is not a valid run state ({e})") from None
    if not isinstance(state, dict) or not isinstance(state.get("completed_epochs", 0), int):
        raise _cannot_resume(run_dir, f"{path} is not a valid run state (received {str(state)[:80]!r})")
    return state


def load_checkpoint(run_dir, state):
    """The model saved after the last completed epoch of a run, or None if none completed.

    Never silently restarts: a state naming a checkpoint that is missing or unreadable
    (e.g. truncated by a full disk) raises `ValueError` naming the file and `--fresh`.
    """
    name = state.get("checkpoint")
    done = int(state.get("completed_epochs") or 0)
    if not name:
        if done:
            raise _cannot_resume(run_dir, f"its state says {done} epoch(s) completed but names no checkpoint")
        return None
    path = os.path.join(run_dir, name)
    if not os.path.isfile(path):
        raise _cannot_resume(run_dir, f"its state names checkpoint {path!r} (after epoch {done}), which is missing")
    try:
        return load_model(path)
    except Exception as e:  # noqa: BLE001 - any failure to read it means the same to the user
        detail = " ".join(str(e).split())[:200]
        raise _cannot_resume(
            run_dir, f"checkpoint {path!r} cannot be read, it may be truncated ({type(e).__name__}: {detail})"
        ) from None


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

    kind, target = describe_model_path(path)
    if kind != "keras":
        raise _usage_error("model", "a .keras file or a run directory (a SavedModel can be evaluated and "
                           "searched, not loaded as a Keras model)", path)
    return keras.saving.load_model(target)


def _saved_model_version(path):
    """The SavedModel directory `path` names (itself, or its highest version), else None."""
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    versions = sorted(
        int(d) for d in os.listdir(path)
        if d.isdigit() and os.path.isfile(os.path.join(path, d, "saved_model.pb"))
    )
    return os.path.join(path, str(versions[-1])) if versions else None


def describe_model_path(path):
    """What `load_embedder(path)` loads: `("keras", file)` or `("saved_model", version_dir)`.

    Raises `ValueError` naming the value and the accepted kinds.
    """
    expected = ("a .keras file, a run directory (with state.json), a SavedModel version directory "
                "(with saved_model.pb) or a model base directory (<version>/saved_model.pb)")
    path = os.fspath(path)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, STATE_FILENAME)):
            state = read_state(path)
            if not state or not state.get("checkpoint"):
                raise _usage_error("model", "a run directory with a checkpoint (it has no completed epoch)", path)
            return "keras", os.path.join(path, state["checkpoint"])
        version_dir = _saved_model_version(path)
        if version_dir is not None:
            return "saved_model", version_dir
        raise _usage_error("model", expected, path)
    if os.path.isfile(path) and path.endswith(".keras"):
        return "keras", path
    raise _usage_error("model", expected, path)


def load_embedder(path):
    """Loads what embeds images: a Keras model or an exported SavedModel.

    Args:
        path: a `.keras` file, a run directory (its last checkpoint), a SavedModel
            version directory (`savedmodels/<name>/<version>`) or a model base
            directory (`savedmodels/<name>`: its highest version, as TF Serving).

    Returns:
        A Keras model, or a `SavedModelEmbedder`; both have `input_shape` and
        `predict(x)["embedding"]`.
    """
    kind, target = describe_model_path(path)
    if kind == "keras":
        return load_model(target)
    from keras_cgd.training.saved_model_embedder import SavedModelEmbedder

    return SavedModelEmbedder(target)
