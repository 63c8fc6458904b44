"""Test-wide settings: quiet TensorFlow, float32 and a fixed seed per test, shared trained models.

Known upstream warnings are filtered once, in `pyproject.toml` (`[tool.pytest.ini_options]
filterwarnings`); end-to-end tests are marked `slow` (deselected by default, see the
README's test section).
"""

import os
import types

from keras_cgd.cli._common import silence_tensorflow_logs

silence_tensorflow_logs()  # TF_CPP_MIN_LOG_LEVEL=3 unless set, and a quiet first `import tensorflow`

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _reset_state():
    """Each test starts with a float32 policy and a fixed seed."""
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(1234)
    np.random.seed(1234)
    yield
    keras.config.set_dtype_policy("float32")


def pytest_report_header(config):
    return f"keras backend: {keras.backend.backend()}"


@pytest.fixture(scope="session")
def default_job_run(tmp_path_factory):
    """The default job's test-sized twin, trained once per test process and shared.

    `keras-cgd train --small --epochs 1` in process, into `<root>/run` (run directory)
    and `<root>/savedmodels` (so `savedmodels/<DEFAULT_PRESET>/1`). Tests must not modify
    `run/`; they may add SavedModel versions.

    Returns:
        namespace with `root`, `run_dir`, `export_dir`, `code` (exit code), `out` (stdout).
    """
    import io
    from contextlib import redirect_stdout

    from keras_cgd import cli

    root = tmp_path_factory.mktemp("default_job")
    argv = ["train", "--small", "--epochs", "1", "--run-dir", str(root / "run"),
            "--export-dir", str(root / "savedmodels")]
    buf = io.StringIO()
    with redirect_stdout(buf):
        code = cli.main(argv)
    return types.SimpleNamespace(root=root, run_dir=str(root / "run"), export_dir=str(root / "savedmodels"),
                                 code=code, out=buf.getvalue())


# End-to-end tests of files owned elsewhere, marked slow here (the others carry @pytest.mark.slow),
# and the tests listed by cost in tests/slow_tests.txt.
SLOW_TESTS = (
    "tests/models/test_training.py::test_cgd_training_improves_retrieval_on_unseen_classes",
    "tests/test_cli.py::test_resume_after_sigkill",
)


def _slow_list(path=os.path.join(os.path.dirname(__file__), "slow_tests.txt")):
    with open(path) as f:
        entries = {line.split("#")[0].strip() for line in f}
    return SLOW_TESTS + tuple(sorted(e for e in entries if e))


def _is_listed(nodeid, listed):
    return any(nodeid == e or nodeid.split("[")[0] == e or nodeid.startswith(e + "::") for e in listed)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(config, items):
    listed = _slow_list()
    files = {item.nodeid.split("::")[0] for item in items}
    stale = [e for e in listed
             if e.split("::")[0] in files and not any(_is_listed(item.nodeid, (e,)) for item in items)]
    if stale:  # the file was collected, the test is not in it: renamed or removed
        raise pytest.UsageError(f"tests/slow_tests.txt names tests that do not exist: {stale}")
    for item in items:
        if _is_listed(item.nodeid, listed):
            item.add_marker(pytest.mark.slow)
