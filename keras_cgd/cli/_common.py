"""Shared pieces of the `keras-cgd` command line: the parser class, argument types, errors.

Nothing here imports Keras, TensorFlow or NumPy: `keras-cgd --help` stays fast.
"""

import argparse
import os
import sys

EXIT_USAGE = 2


class UsageError(Exception):
    """A bad command-line value: printed as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors are one line (no usage dump), exit code 2."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int, received {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, received {text!r}")
    return value


def add_dataset(parser, default="photo_views", required=False):
    parser.add_argument(
        "--dataset", "-d", default=None if required else default, required=required,
        help="built-in name (photo_views, digits), cub200:PATH, cars196:PATH, sop:PATH, inshop:PATH, "
        "a folder in one of those layouts, or an image folder <root>/<class>/* "
        f"(default {default})",
    )


def add_crop_to_box(parser):
    parser.add_argument(
        "--crop-to-box", action=argparse.BooleanOptionalAction, default=None,
        help="CUB-200 / CARS196: crop images to their bounding boxes (default: the preset's "
        "choice, cropped, as the CGD paper's numbers)",
    )


def add_backend(parser):
    parser.add_argument("--backend", choices=["tensorflow", "jax"], default=None,
                        help="Keras backend (sets KERAS_BACKEND before Keras is imported)")


def select_backend(backend, argv):
    """Sets KERAS_BACKEND; re-executes the process if Keras is already on another backend."""
    if backend is None:
        return
    os.environ["KERAS_BACKEND"] = backend
    keras = sys.modules.get("keras")
    if keras is not None and keras.backend.backend() != backend:
        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable, "-m", "keras_cgd.cli", *argv])


# --------------------------------------------------------------------------- commands
