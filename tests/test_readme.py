"""README.md's code blocks run as written (the markers are described in tests/readme_blocks.py).

The blocks run in README order in one scratch directory with this checkout's
keras-cgd: `keras-cgd` on PATH is this checkout's entry point (`keras_cgd.cli:main`), and
`curl` fails on HTTP errors (`--fail-with-body` is added, nothing else changes), so a
wrong model name or URL fails the test instead of printing an error page.
"""

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

from tests import readme_blocks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_code_block_is_run_somewhere():
    found = readme_blocks.blocks()
    code = [b for b in found if b.language in ("bash", "python")]
    assert code, "README.md has no bash or python block"
    for b in code:
        assert b.mode in readme_blocks.MODES, b
    # CI runs the quick start and the test command verbatim.
    script = readme_blocks.ci_script()
    assert "keras-cgd train" in script and "python -m pytest" in script
    # The documented test command runs both backends.
    assert "KERAS_BACKEND=tensorflow" in script and "KERAS_BACKEND=jax" in script


def test_markers_are_enforced(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("text\n<!-- readme-test: skip -->\n```bash\ndocker run x\n```\n")
    with pytest.raises(ValueError, match="must start with"):
        readme_blocks.blocks(str(readme))
    readme.write_text("<!-- readme-test: sometimes -->\n```bash\nls\n```\n")
    with pytest.raises(ValueError, match="sometimes"):
        readme_blocks.blocks(str(readme))
    readme.write_text("<!-- readme-test: ci -->\n```bash\nls\n```\n\n```python\nprint(1)\n```\n"
                      "<!-- readme-test: skip -->\n```bash\n# Not run by the README test: needs Docker.\ndocker x\n```\n"
                      "```bibtex\n@article{x}\n```\n")
    got = [(b.language, b.mode, b.line) for b in readme_blocks.blocks(str(readme))]
    assert got == [("bash", "ci", 2), ("python", "run", 6), ("bash", "skip", 10), ("bibtex", "run", 14)]


def test_ci_script_stops_at_a_failing_block(tmp_path):
    """A failure anywhere in a `ci` block, even before the last `&&`, fails the script."""
    readme = tmp_path / "README.md"
    readme.write_text("<!-- readme-test: ci -->\n```bash\nfalse && echo unreachable\n```\n\n"
                      "<!-- readme-test: ci -->\n```bash\ntouch second-block-ran\n```\n")
    script = readme_blocks.ci_script(str(readme))
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "README.md:2 failed (exit 1)" in proc.stderr
    assert not (tmp_path / "second-block-ran").exists()
    readme.write_text("<!-- readme-test: ci -->\n```bash\ntrue && echo 'it \"ran\"'\n```\n")
    proc = subprocess.run(["bash", "-c", readme_blocks.ci_script(str(readme))], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and 'it "ran"' in proc.stdout, proc.stdout + proc.stderr


def _shims(bin_dir):
    """`keras-cgd` = this checkout's entry point; `curl` = curl that fails on HTTP errors."""
    os.makedirs(bin_dir)
    real_curl = shutil.which("curl")
    scripts = {"keras-cgd": f'#!/bin/sh\nexec "{sys.executable}" -m keras_cgd.cli "$@"\n'}
    if real_curl:
        scripts["curl"] = f'#!/bin/sh\nexec "{real_curl}" --silent --show-error --fail-with-body "$@"\n'
    for name, text in scripts.items():
        path = os.path.join(bin_dir, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)


def _wait_for(url, server, log_path, timeout=300):
    import requests

    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            with open(log_path) as f:
                raise AssertionError(f"the background block exited with {server.returncode}:\n{f.read()[-3000:]}")
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer 200 within {timeout} s")


def _port_free(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.slow
def test_readme_blocks_run_as_written(tmp_path):
    if shutil.which("curl") is None:
        pytest.fail("the README's curl examples need curl (apt-get install curl)")
    import keras

    bin_dir = str(tmp_path / "bin")
    _shims(bin_dir)
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, PATH=bin_dir + os.pathsep + os.environ["PATH"],
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               KERAS_BACKEND=keras.backend.backend(), MPLBACKEND="Agg")
    found = readme_blocks.blocks()
    background = []
    try:
        for i, block in enumerate(found):
            if block.language not in ("bash", "python") or block.mode in ("ci", "skip"):
                continue
            path = work / f"block{i:02d}.{'sh' if block.language == 'bash' else 'py'}"
            path.write_text(block.code)
            cmd = ["bash", "-euo", "pipefail", str(path)] if block.language == "bash" else [sys.executable, str(path)]
            if block.mode == "background":
                port = int(re.search(r"--port\s+(\d+)", block.code).group(1))
                assert _port_free(port), f"{block!r}: port {port} is in use; stop what listens there"
                log_path = str(work / f"block{i:02d}.log")
                with open(log_path, "w") as log:
                    server = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True)
                background.append(server)
                later = "\n".join(b.code for b in found[i + 1:])
                url = re.search(rf"(http://localhost:{port}/v1/models/[\w.-]+)", later)
                assert url, f"{block!r}: no later block calls http://localhost:{port}/v1/models/<name>"
                _wait_for(url.group(1), server, log_path)
                continue
            result = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
            assert result.returncode == 0, f"{block!r} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    finally:
        for server in background:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
                try:
                    server.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(server.pid, signal.SIGKILL)
                    server.wait()
