"""`keras-cgd export`: a .keras model or run directory as a versioned SavedModel."""

import os

from keras_cgd.cli._common import add_backend


def add_parser(sub):
    """Adds the `export` sub-command to `sub` (an argparse sub-parsers object)."""
    p = sub.add_parser("export", help="export a .keras model (or run directory) as a versioned SavedModel")
    p.add_argument("model", help=".keras file or run directory")
    p.add_argument("model_dir", nargs="?", default=None,
                   help="model base directory (default savedmodels/<file or run name>)")
    p.add_argument("--version", type=int, default=None, help="version number (default: next)")
    add_backend(p)
    p.set_defaults(run=run)
    return p


def run(args):
    from keras_cgd import training
    from keras_cgd.export import export_saved_model

    model = training.load_model(args.model)
    model_dir = args.model_dir
    if model_dir is None:
        base = os.path.basename(os.path.normpath(args.model))
        model_dir = os.path.join("savedmodels", os.path.splitext(base)[0])
    print(export_saved_model(model, model_dir, version=args.version))
    return 0
