"""`keras-cgd`: train, evaluate, export, serve and search from the command line.

    keras-cgd train                     # the default job on built-in photos
    keras-cgd train --dataset cub200:/data/CUB_200_2011 --preset cgd_resnet50_cub200
    keras-cgd evaluate runs/<run>/epoch-0008.keras --dataset photo_views
    keras-cgd export runs/<run> savedmodels/cgd_tiny
    keras-cgd serve savedmodels --port 8501
    keras-cgd embed savedmodels/<name> photos/ embeddings/     # Parquet shards, resumable
    keras-cgd index embeddings/ photos.index --backend faiss --factory IVF1024,PQ32
    keras-cgd search model.keras --gallery photo_views query.jpg --grid grid.png
    keras-cgd presets

One module per sub-command (`keras_cgd/cli/<command>.py`), each with `add_parser(sub)` and
`run(args)`; `COMMAND_MODULES` lists them. Parsing imports neither Keras nor TensorFlow,
so `keras-cgd --help` is fast; a command imports what it needs when it runs.

`--backend` sets KERAS_BACKEND; when Keras was already imported on another backend the
command re-executes itself with it. Bad arguments end with a one-line error naming the
value and the valid choices (exit 2); set KERAS_CGD_DEBUG=1 to see the traceback instead.
"""

import argparse
import importlib
import os
import sys

from keras_cgd.cli._common import EXIT_USAGE
from keras_cgd.cli._common import Parser
from keras_cgd.cli._common import UsageError
from keras_cgd.cli._common import select_backend

# Sub-commands in `--help` order: name -> module under keras_cgd.cli.
COMMAND_MODULES = {
    "train": "keras_cgd.cli.train",
    "evaluate": "keras_cgd.cli.evaluate",
    "export": "keras_cgd.cli.export",
    "search": "keras_cgd.cli.search",
    "presets": "keras_cgd.cli.presets",
}

# Sub-commands that parse their own arguments: name -> (module with `main(argv)`, help).
DELEGATED_COMMANDS = {
    "serve": ("keras_cgd.serving", "reference TF Serving REST server (see `keras-cgd serve --help`)"),
    "embed": ("keras_cgd.embedding.cli", "embed a folder, glob, file list or TFRecords into Parquet shards "
              "(resumable; --beam runs it as an Apache Beam pipeline)"),
    "index": ("keras_cgd.embedding.index_cli", "build an exact, FAISS or Milvus index from embedding shards"),
}


def build_parser():
    """The `argparse` parser of `keras-cgd`."""
    parser = Parser(
        prog="keras-cgd",
        description="CGD and MultiGrain image embeddings: train, evaluate, export, serve, search.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    names = list(COMMAND_MODULES)
    for name in names[: names.index("search")]:
        importlib.import_module(COMMAND_MODULES[name]).add_parser(sub)
    for name, (_, text) in DELEGATED_COMMANDS.items():
        p = sub.add_parser(name, help=text, add_help=False)
        p.add_argument("args", nargs=argparse.REMAINDER)
    for name in names[names.index("search"):]:
        importlib.import_module(COMMAND_MODULES[name]).add_parser(sub)
    return parser


def main(argv=None):
    """`keras-cgd` entry point; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED_COMMANDS:
        module = importlib.import_module(DELEGATED_COMMANDS[argv[0]][0])
        return module.main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 with a usage line on bad syntax
    if args.command is None:
        parser.print_help()
        return 0
    select_backend(getattr(args, "backend", None), argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return args.run(args)
    except (UsageError, ValueError, TypeError, FileNotFoundError) as e:
        if os.environ.get("KERAS_CGD_DEBUG"):
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"keras-cgd {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"\nkeras-cgd {args.command}: interrupted; rerun the same command to resume "
              "from the last completed epoch.", file=sys.stderr)
        return 130


__all__ = ["COMMAND_MODULES", "DELEGATED_COMMANDS", "EXIT_USAGE", "UsageError", "build_parser", "main"]
