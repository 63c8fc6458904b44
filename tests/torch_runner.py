"""Runs `tests/torch_reference.py` in a subprocess (torch never shares a process with Keras).

The files are written once per test session, also under pytest-xdist: the workers share
`<basetemp>/../torch_reference_<task>` and a lock file, so the first worker writes them and
the others wait and reuse them.
"""

import fcntl
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def torch_reference(task, tmp_path_factory):
    """The reference files of `task` ("resnets" or "checkpoints"): `(directory, refs)` with
    `refs` the contents of `refs.npz`. Skips the test when torch/torchvision are absent."""
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("torchvision") is None:
        pytest.skip("torch and torchvision (the test extras) are not installed")
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # shared by the workers of this session
    out = os.path.join(str(base), f"torch_reference_{task}")
    done = os.path.join(out, "refs.npz")
    with open(os.path.join(str(base), f"torch_reference_{task}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.isfile(done):
            env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
            proc = subprocess.run(
                [sys.executable, "-m", "tests.torch_reference", task, out],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"tests.torch_reference {task} failed:\n{proc.stderr[-3000:]}")
    with np.load(done) as refs:
        return out, {k: refs[k] for k in refs.files}
