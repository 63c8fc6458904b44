"""Shared pieces of the `keras-cgd` command line: the parser class, argument types, errors,
output options (`--quiet`, `--tf-logs`) and the silencing of TensorFlow's native logs.

Nothing here imports Keras, TensorFlow or NumPy: `keras-cgd --help` stays fast.

One flag style: options are kebab-case (`--embedding-dim`); the snake_case spelling of
any of them (`--embedding_dim`) is accepted as an alias by `Parser`.

Every sub-command gets `--quiet` / `-q` (no progress bars, no log lines: only results
and errors) and `--tf-logs` (TensorFlow's C++/absl logging as TensorFlow prints it; also
`KERAS_CGD_TF_LOGS=1`). By default the command line silences those logs (`silence_tensorflow_logs`).
"""

import argparse
import importlib.abc
import importlib.machinery
import os
import sys

EXIT_USAGE = 2
TF_LOGS_ENV = "KERAS_CGD_TF_LOGS"


class UsageError(Exception):
    """A bad command-line value: printed as one line, exit code 2."""


def _truthy(text):
    return str(text or "").strip().lower() not in ("", "0", "false", "no")


class _SubCommands(argparse._SubParsersAction):
    """Sub-command parsers get the output options (`--quiet`, `--tf-logs`)."""

    def add_parser(self, name, **kwargs):
        kwargs.setdefault("output_options", True)
        parser = super().add_parser(name, **kwargs)
        parser.is_subcommand = True
        return parser


class Parser(argparse.ArgumentParser):
    """An `ArgumentParser` with one-line errors (exit code 2) and snake_case aliases.

    `--some_option` is read as `--some-option` when the parser (or one of its
    sub-command parsers) defines the kebab-case spelling. Sub-command parsers get the
    output options (`add_output_options`); a stand-alone parser gets them with
    `output_options=True`. Parsing a command line applies its TensorFlow-logging choice
    at once (`apply_output_options`): it must act before TensorFlow is imported.

    Example:

    >>> p = Parser(prog="keras-cgd serve", output_options=True)
    >>> _ = p.add_argument("--poll-interval", type=float, default=1.0)
    >>> p.parse_args(["--poll_interval", "2"]).poll_interval
    2.0
    """

    is_subcommand = False

    def __init__(self, *args, output_options=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", _SubCommands)
        if output_options:
            add_output_options(self)

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")

    def _long_options(self):
        names = set(self._option_string_actions)
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    names |= set(sub._option_string_actions)
        return names

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        namespace, extras = super().parse_known_args(normalize_option_spellings(args, self._long_options()),
                                                     namespace)
        if not self.is_subcommand:  # the top-level parser: the command line is complete
            apply_output_options(namespace)
        return namespace, extras


def normalize_option_spellings(argv, known):
    """`--model_name x` -> `--model-name x` where `--model-name` is in `known`; other tokens unchanged.

    Tokens after a bare `--` are left alone.
    """
    out = []
    for i, token in enumerate(argv):
        if token == "--":
            return out + list(argv[i:])
        if token.startswith("--") and "_" in token:
            name, eq, value = token.partition("=")
            kebab = name.replace("_", "-")
            if kebab in known and name not in known:
                token = kebab + eq + value
        out.append(token)
    return out


def add_output_options(parser):
    """Adds `--quiet` / `-q` and `--tf-logs` to a sub-command parser."""
    group = parser.add_argument_group("output")
    group.add_argument("--quiet", "-q", action="store_true", default=False,
                       help="no progress bars and no log lines: print only results and errors")
    group.add_argument("--tf-logs", action="store_true", default=None,
                       help=f"show TensorFlow's C++ and absl log lines (hidden by default; also {TF_LOGS_ENV}=1)")


def apply_output_options(args):
    """Silences TensorFlow's native logging unless `args.tf_logs` or `KERAS_CGD_TF_LOGS=1` asks for it."""
    if getattr(args, "tf_logs", None) or _truthy(os.environ.get(TF_LOGS_ENV)):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")
        return
    silence_tensorflow_logs()


class Output:
    """Where a command writes: `log(line)` (hidden by `--quiet`), `result(line)`, `progress`.

    Args:
        args: the parsed arguments (reads `quiet`).
    """

    def __init__(self, args):
        self.quiet = bool(getattr(args, "quiet", False))
        self.progress = False if self.quiet else "auto"

    def log(self, line):
        if not self.quiet:
            print(line, flush=True)

    @staticmethod
    def result(line):
        print(line, flush=True)

    @property
    def log_function(self):
        """`log` as `keras_cgd.training.train` takes it (None when quiet)."""
        return None if self.quiet else self.log

    def show_progress(self):
        """True when bars are drawn (`progress.resolve_progress(self.progress)`)."""
        from keras_cgd.training.progress import resolve_progress

        return resolve_progress(self.progress)


# --------------------------------------------------------------------------- TensorFlow logs

def silence_tensorflow_logs():
    """Hides TensorFlow's native log lines in this process and the processes it starts.

    TensorFlow writes them from C++ straight to file descriptor 2, where Python's
    `warnings` and `logging` cannot reach:

    - `TF_CPP_MIN_LOG_LEVEL=3` (unless already set) hides the lines logged after
      TensorFlow initialises absl logging, including the `failed call to cuInit` error
      of machines without a GPU driver;
    - the lines written while TensorFlow's shared libraries load, before absl logging is
      initialised ("WARNING: All log messages before absl::InitializeLog() is called are
      written to STDERR", `cudart_stub.cc ... Could not find cuda drivers`), obey no
      setting: an import hook sends file descriptor 2 to /dev/null while `tensorflow` is
      first imported (`tensorflow` errors still raise as Python exceptions);
    - TensorFlow's and absl's Python loggers are set to ERROR after the import.

    Has no effect on a TensorFlow that is already imported.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules or any(isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietTensorFlowImport())


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` with the normal finders and loads it with stderr silenced (once)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once: let the normal finders find it
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            self._loader.exec_module(module)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)
        import logging

        for name in ("tensorflow", "absl"):  # TF's Python logger, and absl's (absl.logging logs to it)
            logging.getLogger(name).setLevel(logging.ERROR)


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
        help="built-in name (photo_copies, photo_views, digits), cub200:PATH, cars196:PATH, sop:PATH, "
        "inshop:PATH, a folder in one of those layouts, or an image folder <root>/<class>/* "
        f"(default {default or 'the preset dataset: photo_copies for the default preset, else photo_views'})",
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
