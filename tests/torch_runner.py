"""Runs `tests/torch_reference.py` in a subprocess (torch never shares a process with Keras)."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def torch_reference(task, out_dir):
    """Write the reference files of `task` ("resnets" or "checkpoints") into `out_dir`;
    returns the `refs.npz` contents. Skips the test when torch/torchvision are absent."""
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("torchvision") is None:
        pytest.skip("torch and torchvision (the test extras) are not installed")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "tests.torch_reference", task, str(out_dir)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"tests.torch_reference {task} failed:\n{proc.stderr[-3000:]}")
    with np.load(os.path.join(str(out_dir), "refs.npz")) as refs:
        return {k: refs[k] for k in refs.files}
