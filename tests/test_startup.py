"""Start-up cost and noise: what `import keras_cgd.serving` and `keras-cgd --help` import,
and TensorFlow's native log lines, which the command line hides unless asked."""

import json
import os
import re
import subprocess
import sys

import pytest

from keras_cgd.cli import COMMAND_MODULES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAMEWORKS = ("keras", "tensorflow", "jax", "torch")
# A line TensorFlow (absl / TF C++ logging) writes itself: "I0000 00:00:17... file.cc:31] ..." and
# absl's notice before initialisation.
TF_LOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ [\w.]+:\d+\]|absl::InitializeLog|cuInit")


def _python(code, env_extra=None, drop=("TF_CPP_MIN_LOG_LEVEL",)):
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                          cwd=REPO)


def _loaded_frameworks(code):
    probe = code + f"\nimport json, sys\nprint(json.dumps([m for m in {FRAMEWORKS!r} if m in sys.modules]))"
    result = _python(probe)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_serving_client_imports_neither_keras_nor_tensorflow():
    assert _loaded_frameworks("from keras_cgd.serving import Client, ServingError") == []


def test_import_keras_cgd_imports_no_framework():
    assert _loaded_frameworks("import keras_cgd\nassert keras_cgd.__version__") == []


def test_help_of_every_command_imports_no_framework():
    commands = [[]] + [[name] for name in COMMAND_MODULES]
    code = (
        "import contextlib, io\nfrom keras_cgd.cli import main\n"
        f"for argv in {commands!r}:\n"
        "    buf = io.StringIO()\n"
        "    try:\n"
        "        with contextlib.redirect_stdout(buf):\n"
        "            main(argv + ['--help'])\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (argv, e.code)\n"
        "    assert 'usage: keras-cgd' in buf.getvalue(), argv\n"
    )
    assert _loaded_frameworks(code) == []


_TF_AFTER_PARSE = (
    "from keras_cgd.cli import build_parser\n"
    "build_parser().parse_args({argv!r})\n"
    "import tensorflow as tf\n"
    "print(float(tf.reduce_sum(tf.ones([3]))))\n"
)


def test_tensorflow_logs_hidden_by_default_and_shown_with_tf_logs():
    """Parsing a command line silences TF's C++/absl lines; `--tf-logs` leaves them as TF prints them."""
    plain = _python("import tensorflow as tf\nprint(float(tf.reduce_sum(tf.ones([3]))))")
    assert plain.returncode == 0, plain.stderr
    tf_lines = [line for line in plain.stderr.splitlines() if TF_LOG_LINE.search(line)]
    if not tf_lines:
        pytest.skip("this TensorFlow prints no native log line here: nothing to silence")
    quiet = _python(_TF_AFTER_PARSE.format(argv=["presets"]))
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.strip() == "3.0"
    assert quiet.stderr == ""
    shown = _python(_TF_AFTER_PARSE.format(argv=["presets", "--tf-logs"]))
    assert shown.returncode == 0, shown.stderr
    sources = lambda lines: sorted({m.group(0).split()[-1] for m in map(TF_LOG_LINE.search, lines) if m})
    assert sources([line for line in shown.stderr.splitlines() if TF_LOG_LINE.search(line)]) == sources(tf_lines)
    # KERAS_CGD_TF_LOGS=1 does what --tf-logs does.
    env_shown = _python(_TF_AFTER_PARSE.format(argv=["presets"]), env_extra={"KERAS_CGD_TF_LOGS": "1"})
    assert sources([line for line in env_shown.stderr.splitlines() if TF_LOG_LINE.search(line)]) == sources(tf_lines)
