"""Every `python benchmarks/<script>.py ...` the README names exists and parses its
options (`--help`), so that the results table's commands cannot rot (running them is the
benchmarks' job: minutes to hours each)."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _readme_benchmarks():
    with open(os.path.join(ROOT, "README.md")) as f:
        return sorted(set(re.findall(r"python (benchmarks/[\w/]+\.py)", f.read())))


def test_the_readme_names_benchmarks():
    assert "benchmarks/default_job.py" in _readme_benchmarks()


@pytest.mark.slow
@pytest.mark.parametrize("script", _readme_benchmarks())
def test_readme_benchmark_parses_its_options(script):
    path = os.path.join(ROOT, script)
    assert os.path.isfile(path), script
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, path, "--help"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "usage:" in proc.stdout, proc.stdout
