"""Versioned, atomic SavedModel export with TF Serving signatures.

TensorFlow-only module: the SavedModel is always written by the TensorFlow
backend. A model living on another backend (JAX) is saved to `.keras` and
exported by a subprocess started with `KERAS_BACKEND=tensorflow`; the weights
travel through the `.keras` file, so the export is the same graph whichever
backend trained the model.

Layout written (what TensorFlow Serving reads, `reference/ecosystem.md` §5.7):

    model_dir/<version>/saved_model.pb
    model_dir/<version>/variables/...
    model_dir/<version>/assets.extra/keras_cgd.json   (preprocessing facts)

The version directory appears in one `os.rename` of a hidden temporary
directory `model_dir/.tmp-<version>-<random>`, so a server polling `model_dir`
never sees a half-written version (TF Serving ignores non-numeric children).
Each export holds an exclusive `flock` on its temporary directory while it
runs and first removes the `.tmp-*` directories that nobody holds and that
are over a minute old (left by a crashed export; `remove_stale_temporaries`).
From JAX, the `.keras` copy and the child's output live in the same kind of
hidden directory, and only the parent publishes: a child whose parent died
(even by `kill -9`) removes the directory and exits.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import keras

from keras_cgd.serving.rest import INT64_MAX

METADATA_FILENAME = "keras_cgd.json"
"""Name of the preprocessing-facts file under `<version>/assets.extra/`."""

DEFAULT_MAX_IMAGE_PIXELS = 25_000_000
"""Largest width × height an exported `image_bytes` signature decodes (25 MP).

A 6000 × 4000 camera photo passes; a 7000 × 7000 header (49 MP, ~147 MB of
decoded pixels, whatever the file size) is refused before decoding.
"""

DEFAULT_MAX_REQUEST_PIXELS = 200_000_000
"""Largest sum of image costs in one `image_bytes` call (200 MP).

An image costs `max(height × width from its header, H × W of image_size)`.
"""

TEMP_PREFIX = ".tmp-"
"""Name prefix of an export's hidden temporary directories inside the model base path."""

STALE_TEMPORARY_SECONDS = 60.0
"""Age after which an unlocked `.tmp-*` directory counts as left by a crashed export."""

_STALE_WITHOUT_LOCKS_SECONDS = 24 * 3600.0

_VERSION_RE = re.compile(r"[0-9]+")


def list_versions(model_dir):
    """Sorted integer versions present in `model_dir` (numeric children only).

    Args:
        model_dir: a TF Serving model base path, e.g. `"savedmodels/cgd"`.

    Returns:
        A sorted list of ints; `[]` when `model_dir` does not exist.
    """
    return sorted(version_dirs(model_dir))


def version_dirs(model_dir):
    """`{version: path}` of the numeric (ASCII digits) child directories of `model_dir`.

    The implementation behind `list_versions`, also used by `keras-cgd serve`,
    which needs the directory names (`"007"` is version 7, as in TF Serving).
    `{}` when `model_dir` does not exist.
    """
    if not os.path.isdir(model_dir):
        return {}
    found = {}
    for name in os.listdir(model_dir):
        path = os.path.join(model_dir, name)
        if _VERSION_RE.fullmatch(name) and os.path.isdir(path):
            found[int(name)] = path
    return found


def _check_version(version):
    if version is None:
        return None
    if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version <= INT64_MAX:
        raise ValueError(
            "Invalid value received for argument `version`. Expected None (next "
            "version) or a non-negative int (TF Serving parses version directory names "
            f"as int64). Received: version={version!r}"
        )
    return version


def _check_image_size(image_size):
    size = list(image_size) if isinstance(image_size, (list, tuple)) else None
    if (
        size is None
        or len(size) != 2
        or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in size)
    ):
        raise ValueError(
            "Invalid value received for argument `image_size`. Expected [height, width] "
            "with positive ints (the `image_bytes` signature resizes every image to it). "
            f"Received: image_size={image_size!r}"
        )
    return size


def _check_max_pixels(value, name="max_image_pixels"):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a positive "
            f"int. Received: {name}={value!r}"
        )
    return value


def _preprocessing_of(model, image_size):
    pre = dict(getattr(model, "preprocessing", None) or {})
    if image_size is None:
        image_size = pre.get("image_size")
        if image_size is None:
            shape = getattr(model, "input_shape", None)
            image_size = list(shape[1:3]) if shape is not None and len(shape) == 4 else None
    pre["image_size"] = _check_image_size(image_size)
    return pre


def _pixel_input_size(model, image_size):
    """`[H, W]` of the `serving_pixels` signature: None where the model takes any size
    (`input_shape=(None, None, 3)`, e.g. MultiGrain at s*), else `image_size`."""
    shape = getattr(model, "input_shape", None)
    if shape is not None and len(shape) == 4 and shape[1] is None and shape[2] is None:
        return [None, None]
    return list(image_size)


def export_saved_model(
    model,
    model_dir,
    version=None,
    image_size=None,
    max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS,
    antialias=True,
    verbose=False,
    max_request_pixels=DEFAULT_MAX_REQUEST_PIXELS,
):
    """Export `model` as `model_dir/<version>/` for TensorFlow Serving.

    Signatures (method `tensorflow/serving/predict`, tag `serve`):

    - `serving_default`: input `image_bytes`, a `[None]` `tf.string` of JPEG or
      PNG files. Each is decoded with core TF ops (3 channels), resized to
      `image_size` exactly as evaluation does
      (`tf.image.resize(float32(image), image_size, "bilinear", antialias=True)`,
      see `keras_cgd.data.resize_for_test`) and fed to the model, which
      normalises inside. An image whose header declares more than
      `max_image_pixels` pixels, a truncated file or bytes that are not an image
      fail with `InvalidArgument` (HTTP 400 in TF Serving), before any large
      allocation; so does a call whose images cost more than
      `max_request_pixels` pixels in all (an image costs its header's
      width × height, at least `image_size`'s). Images are decoded one at a
      time.
    - `serving_pixels`: input `images`, float32 `(None, H, W, 3)` RGB pixels in
      [0, 255]; for a variable-size model (`input_shape=(None, None, 3)`, e.g.
      MultiGrain) any H, W (one size per call), so clients can send images
      resized to the test resolution s* (longest side, no crop) themselves.
      `serving_default` always resizes to the square `image_size` (a
      variable-size model's `preprocessing["image_size"]`, its training size).

    Both return float32 `embedding` `(N, D)` (and `logits` `(N, C)` when the
    model has a classifier), whatever the mixed-precision policy.

    On a backend other than TensorFlow, the model is saved to a temporary
    `.keras` file (in a hidden `model_dir/.tmp-export-*/` directory) and
    exported by `python -m keras_cgd.export` in a subprocess with
    `KERAS_BACKEND=tensorflow` (TensorFlow must be installed); this process
    publishes the result, and the subprocess stops without publishing if this
    process dies.

    Args:
        model: a Keras model taking `(N, H, W, 3)` pixels and returning a dict
            with an `"embedding"` key (or a single embedding tensor), e.g.
            `keras_cgd.build_model(...)`.
        model_dir: the model base path; created if missing.
        version: int version directory to write; `None` (default) takes the
            highest existing version + 1 (1 for an empty directory).
        image_size: `[H, W]` for the `image_bytes` signature; defaults to
            `model.preprocessing["image_size"]`.
        max_image_pixels: the decoder refuses images declaring more than this
            many pixels (width × height) in their header.
        antialias: antialiasing of the bilinear resize (evaluation's default is
            True).
        verbose: print Keras' export summary.
        max_request_pixels: the decoder refuses a call whose images cost more
            than this many pixels in all (each `max(height × width, H × W)`;
            images over `max_image_pixels` fail on their own), before decoding
            any.

    Returns:
        The path of the written version directory.

    Example:

    >>> model = keras_cgd.build_model("cgd_tiny", num_classes=5)
    >>> path = keras_cgd.export.export_saved_model(model, "savedmodels/cgd")
    >>> # savedmodels/cgd/1/saved_model.pb; serve with tensorflow/serving
    """
    version = _check_version(version)
    max_image_pixels = _check_max_pixels(max_image_pixels)
    max_request_pixels = _check_max_pixels(max_request_pixels, "max_request_pixels")
    if not isinstance(model_dir, (str, os.PathLike)):
        raise TypeError(
            "Invalid type received for argument `model_dir`. Expected a path. "
            f"Received: model_dir={model_dir!r} of type {type(model_dir).__name__}"
        )
    model_dir = os.fspath(model_dir)
    existing = os.path.abspath(model_dir)
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)  # the nearest part of the path that exists
    if not os.path.isdir(existing):
        which = "which is a file" if existing == os.path.abspath(model_dir) else (
            f"inside {existing!r}, which is a file")
        raise ValueError(
            "Invalid value received for argument `model_dir`. Expected a directory. "
            f"Received: model_dir={model_dir!r}, {which}"
        )
    preprocessing = _preprocessing_of(model, image_size)
    if version is not None:
        _resolve_version(model_dir, version)  # refuse an existing version before any work
    if keras.backend.backend() != "tensorflow":
        return _export_in_subprocess(
            model, model_dir, version, preprocessing, max_image_pixels, antialias, verbose,
            max_request_pixels,
        )
    return _export_tensorflow(
        model, model_dir, version, preprocessing, max_image_pixels, antialias, verbose,
        max_request_pixels,
    )


def _resolve_version(model_dir, version):
    existing = list_versions(model_dir)
    if version is None:
        return existing[-1] + 1 if existing else 1
    if os.path.exists(os.path.join(model_dir, str(version))):
        raise ValueError(
            "Invalid value received for argument `version`. Version directory "
            f"{os.path.join(model_dir, str(version))!r} already exists; versions are "
            f"immutable, pick a new one. Received: version={version!r} "
            f"(existing versions: {existing})"
        )
    return version


def _temp_dir(model_dir, tag):
    """A new hidden `model_dir/.tmp-<tag>-<random>/`, locked while the export runs.

    Returns `(path, lock)`; `lock` is an open descriptor holding an exclusive
    `flock` on the directory (None where the platform or file system has no
    such locks), so `remove_stale_temporaries` never removes a running
    export's directory. Close it with `_release`.
    """
    path = tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{tag}-", dir=model_dir)
    # mkdtemp makes it 0700; a published version gets the mode of a plain mkdir.
    umask = os.umask(0o022)
    os.umask(umask)
    os.chmod(path, 0o777 & ~umask)
    try:
        lock = _lock_dir(path)
    except OSError:  # e.g. a file system without flock: only the age protects it
        lock = None
    return path, lock


def _lock_dir(path):
    """Open `path` and take an exclusive, non-blocking `flock`; returns the descriptor.

    None without `fcntl` (Windows). Raises `BlockingIOError` when another
    process holds the lock, `OSError` when the file system refuses locks.
    """
    try:
        import fcntl
    except ImportError:
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _release(lock):
    if lock is not None:
        os.close(lock)


def remove_stale_temporaries(model_dir, min_age=STALE_TEMPORARY_SECONDS):
    """Remove the hidden `.tmp-*` directories that crashed exports left in `model_dir`.

    A directory is stale when no running export holds its lock (every export
    keeps an exclusive `flock` on its temporary directory until it is
    published or removed) and it was last modified more than `min_age`
    seconds ago. Where locks are unavailable, only directories older than a
    day are removed. Every export calls this first; published versions and
    anything not named `.tmp-*` are never touched.

    Args:
        model_dir: a model base path.
        min_age: seconds since the last change before an unlocked directory
            counts as stale (default 60).

    Returns:
        The sorted names of the directories removed.

    Example:

    >>> remove_stale_temporaries("savedmodels/cgd")  # doctest: +SKIP
    ['.tmp-3-1a2b3c4d']
    """
    removed = []
    try:
        names = os.listdir(model_dir)
    except OSError:
        return removed
    for name in sorted(names):
        path = os.path.join(model_dir, name)
        if not name.startswith(TEMP_PREFIX) or os.path.islink(path) or not os.path.isdir(path):
            continue
        try:
            age = time.time() - os.stat(path).st_mtime
        except OSError:
            continue
        if age < min_age:
            continue
        try:
            lock = _lock_dir(path)
        except BlockingIOError:
            continue  # a running export holds it
        except OSError:
            lock = None
        if lock is None and age < _STALE_WITHOUT_LOCKS_SECONDS:
            continue
        try:
            shutil.rmtree(path, ignore_errors=True)
        finally:
            _release(lock)
        if not os.path.exists(path):
            removed.append(name)
    return removed


def _publish(tmp, model_dir, version):
    """Rename the complete version directory `tmp` to `model_dir/<version>` (atomic)."""
    final = os.path.join(model_dir, str(version))
    if os.path.exists(final):  # appeared while we were writing
        raise ValueError(
            f"Version directory {final!r} appeared during the export (another "
            f"writer?). Received: version={version!r}"
        )
    os.rename(tmp, final)
    return final


def _export_tensorflow(model, model_dir, version, preprocessing, max_image_pixels, antialias,
                       verbose, max_request_pixels):
    os.makedirs(model_dir, exist_ok=True)
    remove_stale_temporaries(model_dir)
    version = _resolve_version(model_dir, version)
    tmp, lock = _temp_dir(model_dir, str(version))
    try:
        _write_version(model, tmp, preprocessing, max_image_pixels, antialias, verbose,
                       max_request_pixels)
        return _publish(tmp, model_dir, version)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _release(lock)


def _write_version(model, out_dir, preprocessing, max_image_pixels, antialias, verbose,
                   max_request_pixels):
    """Write the SavedModel and its `assets.extra` facts into `out_dir` (TF backend)."""
    import tensorflow as tf

    from keras_cgd.export.signatures import make_serving_functions

    archive = keras.export.ExportArchive()
    archive.track(model)
    fns = make_serving_functions(
        model, preprocessing["image_size"], max_image_pixels, antialias, max_request_pixels,
    )
    # The first endpoint becomes `serving_default` in TF Serving; register it
    # under that name explicitly.
    archive.add_endpoint(
        "serving_default",
        fns["serving_default"],
        input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")],
    )
    h, w = _pixel_input_size(model, preprocessing["image_size"])
    archive.add_endpoint(
        "serving_pixels",
        fns["serving_pixels"],
        input_signature=[tf.TensorSpec([None, h, w, 3], tf.float32, name="images")],
    )
    archive.write_out(out_dir, verbose=verbose)
    out_spec = fns["output_dims"]
    facts = {
        "format": "keras_cgd.saved_model/1",
        "preprocessing": preprocessing,
        "input": "RGB pixels in [0, 255]; the model normalises inside",
        "resize": {"method": "bilinear", "antialias": bool(antialias)},
        "max_image_pixels": max_image_pixels,
        "max_request_pixels": max_request_pixels,
        "image_formats": ["jpeg", "png"],
        "signatures": {
            "serving_default": {"inputs": {"image_bytes": "string [None]"}},
            "serving_pixels": {"inputs": {"images": f"float32 [None, {h}, {w}, 3]"}},
            "outputs": {k: f"float32 [None, {d}]" for k, d in out_spec.items()},
        },
        "model_class": type(model).__name__,
        "model_name": model.name,
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
    }
    os.makedirs(os.path.join(out_dir, "assets.extra"), exist_ok=True)
    with open(os.path.join(out_dir, "assets.extra", METADATA_FILENAME), "w") as f:
        json.dump(facts, f, indent=2, sort_keys=True)


# The export child: standard library only until the parent watch runs, so that the
# child stops within milliseconds of its parent's death, even while importing
# TensorFlow. The parent never writes to the pipe: `os.read` returns end-of-file
# exactly when the parent's write end closes, i.e. when the parent exits however it
# dies (`kill -9` included). The child then removes the work directory and exits.
_CHILD_BOOTSTRAP = """
import json, os, shutil, sys, threading
request_path = sys.argv[1]
with open(request_path) as f:
    request = json.load(f)

def watch_parent(fd=request["parent_fd"], work_dir=request["work_dir"]):
    try:
        while os.read(fd, 1024):
            pass
    except OSError:
        pass
    shutil.rmtree(work_dir, ignore_errors=True)
    os._exit(3)

threading.Thread(target=watch_parent, name="keras-cgd-export-parent-watch", daemon=True).start()
from keras_cgd.export.saved_model import _subprocess_main
sys.exit(_subprocess_main(request_path))
"""


def _export_in_subprocess(model, model_dir, version, preprocessing, max_image_pixels, antialias,
                          verbose, max_request_pixels):
    """Export through `.keras` + a TensorFlow-backend child process.

    Everything lives in one hidden, locked `model_dir/.tmp-export-*/`: the
    `.keras` copy, the request, and the version the child writes. Only this
    (parent) process publishes, by renaming the child's finished directory; the
    child holds the read end of a pipe whose write end only this process holds,
    and when it reads end-of-file (this process died, even by `kill -9`) it
    removes the directory and exits without publishing anything.
    """
    import keras_cgd

    shown_dir = model_dir  # the returned path keeps the caller's form (relative stays relative)
    model_dir = os.path.abspath(model_dir)
    os.makedirs(model_dir, exist_ok=True)
    remove_stale_temporaries(model_dir)
    work, lock = _temp_dir(model_dir, "export")
    read_fd, write_fd = os.pipe()
    try:
        keras_path = os.path.join(work, "model.keras")
        model.save(keras_path)
        request = {
            "keras_path": keras_path,
            "output_dir": os.path.join(work, "version"),
            "work_dir": work,
            "parent_fd": read_fd,
            "image_size": preprocessing["image_size"],
            "max_image_pixels": max_image_pixels,
            "max_request_pixels": max_request_pixels,
            "antialias": bool(antialias),
            "verbose": bool(verbose),
            "result_path": os.path.join(work, "result.json"),
        }
        request_path = os.path.join(work, "request.json")
        with open(request_path, "w") as f:
            json.dump(request, f)
        env = dict(os.environ, KERAS_BACKEND="tensorflow")
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(keras_cgd.__file__)))
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, os.environ.get("PYTHONPATH")) if p
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD_BOOTSTRAP, request_path],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            pass_fds=(read_fd,),
        )
        os.close(read_fd)
        read_fd = None
        try:
            _, stderr = proc.communicate()
        except BaseException:  # e.g. KeyboardInterrupt: stop the child, publish nothing
            proc.kill()
            proc.wait()
            raise
        result_path = request["result_path"]
        if os.path.exists(result_path):
            with open(result_path) as f:
                result = json.load(f)
            if "error" in result:
                error_type = {"ValueError": ValueError, "TypeError": TypeError}.get(
                    result["error_type"], RuntimeError
                )
                raise error_type(result["error"])
            if proc.returncode == 0 and result.get("written"):
                final = _publish(request["output_dir"], model_dir,
                                 _resolve_version(model_dir, version))
                return os.path.join(shown_dir, os.path.basename(final))
        raise RuntimeError(
            "The TensorFlow-backend export subprocess failed "
            f"(exit code {proc.returncode}).\n{stderr[-4000:]}"
        )
    finally:
        for fd in (read_fd, write_fd):
            if fd is not None:
                os.close(fd)
        shutil.rmtree(work, ignore_errors=True)
        _release(lock)


def _subprocess_main(request_path):
    """Entry point of `python -m keras_cgd.export REQUEST.json` (TF backend).

    Writes the SavedModel into the request's `output_dir` (the parent
    publishes it) and `{"written": true}` or `{"error": ...}` to `result_path`.
    """
    with open(request_path) as f:
        request = json.load(f)
    result = {}
    try:
        if keras.backend.backend() != "tensorflow":
            raise RuntimeError(
                "The export subprocess must run with KERAS_BACKEND=tensorflow. "
                f"Received: backend={keras.backend.backend()!r}"
            )
        import keras_cgd.models  # noqa: F401  (registers the custom classes; `keras_cgd` alone is lazy)
        import keras_cgd.optimizers  # noqa: F401

        model = keras.saving.load_model(request["keras_path"], compile=False)
        _write_version(
            model,
            request["output_dir"],
            _preprocessing_of(model, request["image_size"]),
            _check_max_pixels(request["max_image_pixels"]),
            request["antialias"],
            request["verbose"],
            _check_max_pixels(request["max_request_pixels"], "max_request_pixels"),
        )
        result["written"] = True
    except (ValueError, TypeError) as e:
        result = {"error": str(e), "error_type": type(e).__name__}
    with open(request["result_path"], "w") as f:
        json.dump(result, f)
    return 0 if result.get("written") else 1
