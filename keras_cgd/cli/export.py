"""`keras-cgd export`: a .keras model or run directory as the next version of a SavedModel."""

import os
import time

from keras_cgd.cli._common import Output
from keras_cgd.cli._common import add_backend
from keras_cgd.cli._common import positive_int


def add_parser(sub):
    """Adds the `export` sub-command to `sub` (an argparse sub-parsers object)."""
    p = sub.add_parser(
        "export", help="export a .keras model or run directory as the next version of a SavedModel",
        description="Write a SavedModel version for TF Serving. A run directory is exported as the next "
        "version of the model its training exported (savedmodels/<model name>/<N+1>/).")
    p.add_argument("model", help=".keras file or run directory (its last checkpoint)")
    p.add_argument("model_dir", nargs="?", default=None,
                   help="model base directory (default: for a run, where its training exported, else "
                   "savedmodels/<the run's model name>; for a .keras file, savedmodels/<file name>)")
    p.add_argument("--version", type=positive_int, default=None, help="version number (default: the next)")
    add_backend(p)
    p.set_defaults(run=run)
    return p


def default_model_dir(model_path):
    """Where `keras-cgd export MODEL` writes when no model directory is given.

    A run directory (or a checkpoint inside one): the model base directory its training
    exported to (`dirname(state["export_path"])`), else `savedmodels/<model name>` with
    the run's model name (`state["model_name"]`, else its preset or model family). A
    `.keras` file elsewhere: `savedmodels/<file name without .keras>`.
    """
    from keras_cgd import training

    run_dir = model_path if os.path.isdir(model_path) else os.path.dirname(os.path.abspath(model_path))
    state = training.read_state(run_dir) if os.path.isdir(run_dir) else None
    if state is None:
        base = os.path.basename(os.path.normpath(model_path))
        return os.path.join("savedmodels", os.path.splitext(base)[0])
    if state.get("export_path"):
        return os.path.dirname(os.path.normpath(state["export_path"]))
    name = state.get("model_name")
    if name is None:  # a run written before state.json named its model
        args = state.get("args", {})
        name = args.get("preset") or args.get("model") or "cgd_tiny"
    return os.path.join("savedmodels", name)


def run(args):
    from keras_cgd import training
    from keras_cgd.export import export_saved_model
    from keras_cgd.training.progress import busy

    out = Output(args)
    _, target = training.describe_model_path(args.model)
    model = training.load_model(args.model)
    model_dir = args.model_dir or default_model_dir(args.model)
    out.log(f"loaded {target}")
    start = time.time()
    with busy(f"exporting to {model_dir}", out.show_progress()):
        path = export_saved_model(model, model_dir, version=args.version)
    out.log(f"SavedModel version {os.path.basename(path)} of {os.path.basename(os.path.normpath(model_dir))} "
            f"written in {time.time() - start:.1f} s (serve it: keras-cgd serve {os.path.dirname(model_dir) or '.'})")
    out.result(path)
    return 0
